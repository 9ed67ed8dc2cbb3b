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
