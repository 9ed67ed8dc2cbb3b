"""benchmarks/profile_step.py: the HLO parsing and a traced step of a tiny network."""

from benchmarks import profile_step
from mnist_cnn import bench

HLO = """
  %ynn_fusion.3 = f32[4096,500]{1,0} fusion(%a, %b), kind=kCustom, calls=%f3, metadata={op_name="jit(chunk)/while/body/closed_call/transpose(jvp(Network))/layer1_conv/dot_general" stack_frame_id=177}
  ROOT %dot.4 = f32[64,10]{1,0} dot(%c, %d), metadata={op_name="jit(chunk)/while/body/jvp(Network)/layer3_softmax/dot_general"}
  %while.99 = (s32[], f32[2]) while(%t), condition=%cond, body=%body, metadata={op_name="jit(chunk)/while"}
  %constant.1 = f32[] constant(0)
"""


def test_hlo_ops_reads_shapes_and_sources_and_skips_containers():
    ops = profile_step.hlo_ops(HLO)
    assert set(ops) == {"ynn_fusion.3", "dot.4"}
    assert ops["ynn_fusion.3"][0] == "f32[4096,500]{1,0}"
    assert profile_step.short_op_name(ops["ynn_fusion.3"][1]) == \
        "backward layer1_conv/dot_general"
    assert profile_step.short_op_name(ops["dot.4"][1]) == "forward layer3_softmax/dot_general"


def test_profile_traces_a_tiny_network_and_attributes_time_to_its_layers(tiny_config):
    c = bench.point_config(tiny_config(), 4, "patches", "float32", 1)
    rows, untraced_ms, traced_ms = profile_step.profile(c, steps=3)
    assert untraced_ms > 0 and traced_ms > 0 and rows
    assert all(r["ms_per_step"] >= 0 and r["source"].split()[0] in ("forward", "backward")
               for r in rows)
    assert any("layer0_conv" in r["source"] for r in rows)
    assert sum(r["share"] for r in rows) < 2.5   # two threads at most, no container rows


FUSED_HLO = """
%fused_computation.23 (param_0.25: f32[4096,500], param_1.25: f32[40,500]) -> f32[4096,40] {
  %param_0.25 = f32[4096,500]{1,0} parameter(0)
  %param_1.25 = f32[40,500]{1,0} parameter(1)
  ROOT %dot_general.168 = f32[4096,40]{1,0} dot(%param_0.25, %param_1.25), lhs_contracting_dims={1}, rhs_contracting_dims={1}, metadata={op_name="a"}
}
ENTRY %main.45 (p0: f32[4096,500], p1: f32[40,500], p2: f32[4096,40]) -> f32[40,500] {
  %p0 = f32[4096,500]{1,0} parameter(0)
  %p1 = f32[40,500]{1,0} parameter(1)
  %p2 = f32[4096,40]{1,0} parameter(2)
  %ynn_fusion.23 = f32[4096,40]{1,0} fusion(%p0, %p1), kind=kCustom, calls=%fused_computation.23, metadata={op_name="b"}
  %select_fusion = pred[4096,40]{1,0} fusion(%ynn_fusion.23, %p2), kind=kLoop, calls=%other, metadata={op_name="c"}
  ROOT %dot.154 = f32[40,500]{1,0} dot(%p2, %p0), lhs_contracting_dims={0}, rhs_contracting_dims={0}, metadata={op_name="d"}
}
"""


def test_dots_flops_and_bytes_are_read_from_the_compiled_program():
    comps = profile_step.hlo_computations(FUSED_HLO)
    fused = profile_step.find_dot("ynn_fusion.23", comps)   # a dot inside a fusion
    assert fused["lhs"] == (4096, 500) and fused["rhs"] == (40, 500)
    assert fused["dims"] == (((1,), (1,)), ((), ()))
    assert profile_step.dot_flops(fused) == 2 * 4096 * 500 * 40
    plain = profile_step.find_dot("dot.154", comps)         # g^T p, contracting dim 0
    assert profile_step.dot_flops(plain) == 2 * 40 * 500 * 4096
    assert profile_step.find_dot("select_fusion", comps) is None
    # reads two (4096, 40) float32 arrays, writes a (4096, 40) pred
    assert profile_step.op_bytes("select_fusion", comps) == 2 * 4096 * 40 * 4 + 4096 * 40


def test_bound_table_of_a_tiny_network(tiny_config):
    c = bench.point_config(tiny_config(), 4, "patches", "float32", 1)
    rows, untraced_ms, _ = profile_step.profile(c, steps=3)
    conv = {r["source"]: r["flops"] for r in rows if "layer0_conv/dot" in r["source"]}
    # 4 images x 12 x 12 pooled positions, a 6x6 patch, 4 window offsets x 2 maps
    assert conv == {"forward layer0_conv/dot_general": 2 * 4 * 144 * 36 * 8,
                    "backward layer0_conv/dot_general": 2 * 4 * 144 * 36 * 8}
    groups = profile_step.ceiling_rows(rows, repeats=2, min_share=0.03)
    assert all(g["ceiling_ms"] > 0 for g in groups)
    assert {g["measured"] for g in groups} <= {"dot alone", "stream pass", "as traced"}
    assert sum(g["copies"] for g in groups) == len(rows)   # small ones in "other"
    assert groups[-1]["source"] == "other operations"
    summary = profile_step.bound_summary(groups, untraced_ms, 4, 1e6, 100.0)
    assert summary["all_at_ceiling"]["ms"] == sum(g["ceiling_ms"] for g in groups)
    assert summary["dots_only"]["ms"] < summary["all_at_ceiling"]["ms"]
    assert summary["step"]["images_per_s"] == 4 / untraced_ms * 1e3
    assert "dot alone" in profile_step.ceiling_table(groups, summary)
