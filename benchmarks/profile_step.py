"""Where a training step's time goes: the compiled training chunk of an experiment,
traced once with `jax.profiler`, its events summed per XLA operation.

    python benchmarks/profile_step.py                              # dbl_conv_relu, 128
    python benchmarks/profile_step.py --config=experiments/modern.py --batch_size=128
    python benchmarks/profile_step.py --top=40 --out=profile.json

The chunk is `train.make_train_chunk` as `bench.measure` builds it (the experiment's
layers, conv impl and micro-batch rule; random uint8 images, no augmentation beyond the
experiment's), compiled, run twice untraced (the second timed), then once under the
profiler. Each row: an operation of the compiled program (its HLO name), the layer and
JAX operation it came from (the HLO metadata), its output shape, the milliseconds per
training step summed over every thread it ran on, and its share of the traced step.

Read the shares as indicative: the trace records what each thread ran, so an operation
split across both cores counts both halves, and work a library hands to its own thread
pool (Eigen's dots) may show only its launch. Per-operation times under the profiler
are also slower than untraced; the untraced step time is printed for comparison.

--one_core pins the process to one CPU (before jax creates its thread pool): every
operation then runs on the one thread the trace records, so the rows add up to the step.

--ceilings adds the bound table: the rows grouped by layer, operation and shape (the
micro-batch slices' copies together), each with its FLOPs (a dot's, read from the
compiled program: 2 x output elements x contraction length) or, for an operation without
a dot, the bytes it reads and writes, and its own ceiling measured in the same process:
a dot timed alone (`lax.dot_general` of random operands at the same shapes and dimension
numbers, so XLA's CPU backend picks the same library), an operation without a dot timed
as a streaming pass (`x * 2` over as many bytes); each the least of three medians of
--ceiling_repeats calls, less the cost of an empty call. Summing the ceilings gives the step
time if every operation ran at its own ceiling, and the same with only the dots counted
(everything else free): the bounds on the step's fraction of the matmul ceiling.

    python benchmarks/profile_step.py --one_core --ceilings --top=30
"""

from __future__ import annotations

import collections
import glob
import json
import os
import re
import shutil
import statistics
import tempfile
import time


import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from mnist_cnn import bench, train  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():   # at run time only, so importing this module (tests) defines none
    config_flags.DEFINE_config_file(
        "config", os.path.join(os.path.dirname(__file__), "..", "experiments",
                               "dbl_conv_relu.py"),
        "Experiment config file (variants as in run.py).")
    flags.DEFINE_integer("batch_size", 128, "Mini-batch size.")
    flags.DEFINE_string("conv_impl", "auto", "Convolution: auto | patches | xla.")
    flags.DEFINE_integer("micro_batch", 0, "Gradient pass size (0: the auto rule).")
    flags.DEFINE_integer("steps", 40, "Mini-batches in the traced chunk.")
    flags.DEFINE_integer("top", 25, "Operations to print.")
    flags.DEFINE_string("out", "", "Also write every operation's row to this JSON file.")
    flags.DEFINE_bool("one_core", False, "Pin the process to one CPU before jax starts, so "
                      "every operation's time is its own (see the module docstring).")
    flags.DEFINE_bool("ceilings", False, "Also time each operation's own ceiling and print "
                      "the bound table (see the module docstring).")
    flags.DEFINE_integer("ceiling_repeats", 30, "Timed calls per own-ceiling measurement.")

_CONTAINERS = ("while", "call", "conditional")   # their events hold other operations
_META = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) .*?op_name="([^"]*)"')


def hlo_ops(hlo_text: str) -> dict[str, tuple[str, str]]:
    """{HLO instruction name: (output shape, the JAX op_name metadata)} of a compiled
    program's text."""
    out = {}
    for line in hlo_text.splitlines():
        m = _META.match(line)
        if m and not m.group(1).startswith(_CONTAINERS):
            out[m.group(1)] = (m.group(2), m.group(3))
    return out


def short_op_name(op_name: str) -> str:
    """'jit(chunk)/while/body/.../transpose(jvp(Network))/layer1_conv/dot_general'
    -> 'backward layer1_conv/dot_general'."""
    parts = op_name.split("/")
    layer = [p for p in parts if p.startswith("layer")]
    direction = "backward" if any(p.startswith("transpose(") for p in parts) else "forward"
    tail = "/".join(layer[-1:] + parts[-1:]) if layer else parts[-1]
    return f"{direction} {tail}"


def op_times(trace_file: str, names: set[str]) -> dict[str, float]:
    """Nanoseconds per operation name, summed over every thread's events, for the names
    that are operations of the compiled program."""
    total = collections.Counter()
    data = jax.profiler.ProfileData.from_file(trace_file)
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                if event.name in names:
                    total[event.name] += event.duration_ns
    return total


_COMP = re.compile(r'^(?:ENTRY )?%([\w.\-]+) \(.*\{$')
_INSTR = re.compile(r'^\s*(?:ROOT )?%([\w.\-]+) = (\w+\[[\d,]*\])\S* ([\w\-]+)\((.*)$')
_BYTES = {"f64": 8, "s64": 8, "u64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2,
          "s16": 2, "u16": 2, "s8": 1, "u8": 1, "pred": 1}


def shape_dims(shape: str) -> tuple[int, ...]:
    """'f32[64,12,20]{2,1,0}' -> (64, 12, 20); a scalar -> ()."""
    inner = shape[shape.index("[") + 1:shape.index("]")]
    return tuple(int(d) for d in inner.split(",") if d)


def shape_bytes(shape: str) -> int:
    n = 1
    for d in shape_dims(shape):
        n *= d
    return n * _BYTES.get(shape[:shape.index("[")], 4)


def hlo_computations(hlo_text: str) -> dict[str, dict[str, tuple[str, str, str]]]:
    """{computation: {instruction: (output shape, opcode, the rest of its line)}} of a
    compiled program's text (array-shaped instructions only)."""
    comps, current = {}, None
    for line in hlo_text.splitlines():
        head = _COMP.match(line)
        if head:
            current = comps.setdefault(head.group(1), {})
            continue
        m = _INSTR.match(line)
        if m and current is not None:
            current[m.group(1)] = (m.group(2), m.group(3), m.group(4))
    return comps


def _dims(text: str, key: str) -> tuple[int, ...]:
    m = re.search(key + r"=\{([\d,]*)\}", text)
    return tuple(int(d) for d in m.group(1).split(",") if d) if m else ()


def find_dot(name: str, comps) -> dict | None:
    """The dot an operation of the program computes (itself, or inside the computation
    it calls): its operand and output shapes and dimension numbers; None without one."""
    for comp in comps.values():
        if name in comp:
            _, opcode, rest = comp[name]
            break
    else:
        return None
    if opcode == "dot":
        scope, lines = comp, [(name, comp[name])]
    else:
        called = re.search(r"calls=%([\w.\-]+)", rest)
        scope = comps.get(called.group(1), {}) if called else {}
        lines = [(n, v) for n, v in scope.items() if v[1] == "dot"]
    if len(lines) != 1:
        return None
    _, (out, _, rest) = lines[0]
    lhs, rhs = re.findall(r"%([\w.\-]+)", rest.split(")")[0])[:2]
    return dict(lhs=shape_dims(scope[lhs][0]), rhs=shape_dims(scope[rhs][0]),
                out=shape_dims(out), dims=(
                    (_dims(rest, "lhs_contracting_dims"), _dims(rest, "rhs_contracting_dims")),
                    (_dims(rest, "lhs_batch_dims"), _dims(rest, "rhs_batch_dims"))))


def dot_flops(dot: dict) -> float:
    """2 x output elements x contraction length."""
    k = 1
    for d in dot["dims"][0][0]:
        k *= dot["lhs"][d]
    n = 1
    for d in dot["out"]:
        n *= d
    return 2.0 * n * k


def op_bytes(name: str, comps) -> int:
    """Bytes an operation reads (its array operands, once each) and writes."""
    for comp in comps.values():
        if name in comp:
            shape, _, rest = comp[name]
            args = set(re.findall(r"%([\w.\-]+)", rest.split("), ")[0]))
            return shape_bytes(shape) + sum(shape_bytes(comp[a][0]) for a in args if a in comp)
    return 0


def profile(c, steps: int):
    """(rows, untraced ms a step (median of 3 calls after one), traced ms a step); a row
    per operation of the compiled chunk, with its dot (find_dot), FLOPs and bytes."""
    model, tx, state, x, y = bench.training_inputs(c, steps)
    compiled = train.make_train_chunk(model, tx, c, steps).lower(
        state, x, y, None, 0, num_steps=steps).compile()
    text = compiled.as_text()
    ops, comps = hlo_ops(text), hlo_computations(text)
    state = jax.tree.map(jnp.copy, state)   # the chunk donates its state
    untraced = []
    for _ in range(4):
        t = time.perf_counter()
        state, loss, _ = compiled(state, x, y, None, 0)
        jax.block_until_ready(loss)
        untraced.append(time.perf_counter() - t)
    tmp = tempfile.mkdtemp(prefix="profile_step_")
    try:
        with jax.profiler.trace(tmp):
            t = time.perf_counter()
            state, loss, _ = compiled(state, x, y, None, 0)
            jax.block_until_ready(loss)
            traced = time.perf_counter() - t
        trace_file = glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True)[0]
        times = op_times(trace_file, set(ops))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for name, ns in times.most_common():
        dot = find_dot(name, comps)
        rows.append(dict(op=name, source=short_op_name(ops[name][1]), shape=ops[name][0],
                         ms_per_step=ns / 1e6 / steps, share=ns / 1e9 / traced, dot=dot,
                         flops=dot_flops(dot) if dot else 0.0, bytes=op_bytes(name, comps)))
    return rows, statistics.median(untraced[1:]) / steps * 1e3, traced / steps * 1e3


def _median_s(fn, args, repeats: int, rounds: int = 3) -> float:
    """Seconds of a call of fn(*args): the least of `rounds` medians of `repeats` calls
    each, after two untimed calls (the least: a ceiling, on a machine with other load)."""
    for _ in range(2):
        jax.block_until_ready(fn(*args))
    medians = []
    for _ in range(rounds):
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times.append(time.perf_counter() - t)
        medians.append(statistics.median(times))
    return min(medians)


def call_overhead_s(repeats: int) -> float:
    """Seconds of a jitted call that does next to nothing (two scalar operands): what a
    call alone costs beyond its operation, taken off each own-ceiling time."""
    one = jnp.ones((), jnp.float32)
    return _median_s(jax.jit(lambda a, b: a * b), (one, one), repeats)


def dot_alone_s(dot: dict, repeats: int) -> float:
    """Seconds of the dot alone: random float32 operands of its shapes, its dimension
    numbers, jitted (call overhead included)."""
    key = jax.random.PRNGKey(0)
    a = jax.random.normal(key, dot["lhs"], jnp.float32)
    b = jax.random.normal(jax.random.fold_in(key, 1), dot["rhs"], jnp.float32)
    return _median_s(jax.jit(lambda a, b: lax.dot_general(a, b, dot["dims"])), (a, b),
                     repeats)


def stream_s(nbytes: int, repeats: int) -> float:
    """Seconds of a streaming pass over nbytes (x * 2: reads half, writes half; call
    overhead included)."""
    x = jnp.ones((max(1, nbytes // 8),), jnp.float32)
    return _median_s(jax.jit(lambda x: x * 2.0), (x,), repeats)


def ceiling_rows(rows, repeats: int, min_share: float = 0.005):
    """The profile's rows grouped by (source, output shape), each group's own ceiling
    time added (dots: dot_alone_s; the rest: stream_s of its bytes; less the call
    overhead, and at least a tenth of the time alone; the lesser of two passes over
    the groups), heaviest first. Groups under min_share of the step without a dot go
    together in one 'other' row, at its traced time."""
    overhead = call_overhead_s(repeats)
    groups = collections.OrderedDict()
    for r in rows:
        g = groups.setdefault((r["source"], r["shape"]), dict(
            source=r["source"], shape=r["shape"], copies=0, ms_per_step=0.0, share=0.0,
            flops=0.0, bytes=0, dot=r["dot"]))
        g["copies"] += 1
        for k in ("ms_per_step", "share", "flops", "bytes"):
            g[k] += r[k]
    out, other = [], dict(source="other operations", shape="", copies=0, ms_per_step=0.0,
                          share=0.0, flops=0.0, bytes=0, dot=None, ceiling_ms=0.0,
                          measured="as traced")
    for g in sorted(groups.values(), key=lambda g: -g["ms_per_step"]):
        if g["share"] < min_share and not g["flops"]:
            for k in ("copies", "ms_per_step", "share", "bytes"):
                other[k] += g[k]
            other["ceiling_ms"] += g["ms_per_step"]
            continue
        out.append(g)
    for g in out * 2:   # twice over, the lesser time: load comes and goes
        alone = (dot_alone_s(g["dot"], repeats) if g["dot"]
                 else stream_s(g["bytes"] // g["copies"], repeats))
        each = max(alone - overhead, alone / 10) * g["copies"] * 1e3
        g["ceiling_ms"] = min(g.get("ceiling_ms", each), each)
        g["measured"] = "dot alone" if g["dot"] else "stream pass"
    return out + ([other] if other["copies"] else [])


def bound_summary(groups, untraced_ms: float, batch: int, flops_per_image: float,
                  matmul_gflop_s: float) -> dict:
    """Images/s and fraction of the matmul ceiling (counted FLOPs) of the step as it
    runs, with every operation at its own ceiling, and with only the dots (the rest
    free)."""
    def point(ms):
        rate = batch / ms * 1e3
        return dict(ms=ms, images_per_s=rate,
                    fraction=rate * flops_per_image / 1e9 / matmul_gflop_s)
    return dict(step=point(untraced_ms),
                all_at_ceiling=point(sum(g["ceiling_ms"] for g in groups)),
                dots_only=point(sum(g["ceiling_ms"] for g in groups if g["flops"])),
                dot_share=sum(g["share"] for g in groups if g["flops"]),
                matmul_gflop_s=matmul_gflop_s)


def ceiling_table(groups, summary) -> str:
    lines = ["| op (layer, operation) | output | copies | of the traced step | MFLOP/step "
             "| achieved | its own ceiling (how) | ms/step at its own ceiling |",
             "|---|---|---|---|---|---|---|---|"]
    for g in groups:
        if g["flops"]:
            rate = f"{g['flops'] / g['ms_per_step'] / 1e6:.0f} GFLOP/s"
            own = f"{g['flops'] / g['ceiling_ms'] / 1e6:.0f} GFLOP/s ({g['measured']})"
        else:
            rate = f"{g['bytes'] / g['ms_per_step'] / 1e6:.1f} GB/s" if g["bytes"] else "-"
            own = (f"{g['bytes'] / g['ceiling_ms'] / 1e6:.1f} GB/s ({g['measured']})"
                   if g["measured"] != "as traced" else "as traced")
        lines.append(f"| {g['source']} | {g['shape']} | {g['copies']} | {g['share']:.1%} | "
                     f"{g['flops'] / 1e6:.1f} | {rate} | {own} | {g['ceiling_ms']:.3f} |")
    m = summary["matmul_gflop_s"]
    lines.append("")
    for key, what in (("step", "the step as it runs (untraced)"),
                      ("all_at_ceiling", "every operation at its own ceiling"),
                      ("dots_only", "only the dots, each at its own ceiling")):
        p = summary[key]
        lines.append(f"- {what}: {p['ms']:.2f} ms, {p['images_per_s']:,.0f} images/s, "
                     f"{p['fraction']:.0%} of the {m:.0f} GFLOP/s matmul ceiling")
    lines.append(f"- the dots' share of the traced step: {summary['dot_share']:.0%}")
    return "\n".join(lines)


def pin_to_one_core() -> int:
    """Restricts this process to its lowest allowed CPU; call before jax starts its
    backend (its thread pool is sized and placed then). Returns the CPU."""
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def bound(c, rows, untraced_ms: float, repeats: int):
    """(groups, summary): ceiling_rows and bound_summary, the matmul ceiling measured
    before and after the ceilings (the larger counts)."""
    before = bench.matmul_ceiling()
    groups = ceiling_rows(rows, repeats)
    ceiling = max(before, bench.matmul_ceiling())
    summary = bound_summary(groups, untraced_ms, c.batch_size,
                            bench.model_flops(c.layers)[1], ceiling)
    return groups, summary


def main(argv):
    del argv
    if FLAGS.one_core:
        print(f"pinned to CPU {pin_to_one_core()}")
    c = bench.point_config(FLAGS.config, FLAGS.batch_size, FLAGS.conv_impl, "float32", 1,
                           FLAGS.micro_batch)
    rows, untraced_ms, traced_ms = profile(c, FLAGS.steps)
    micro = train.micro_batch_size(c.micro_batch, c.batch_size,
                                   flops_per_image=bench.model_flops(c.layers)[1])
    print(f"{c.name} on {jax.default_backend()} ({bench.cpu_model()}, "
          f"{len(os.sched_getaffinity(0))} core(s)), jax {jax.__version__}, mini-batch "
          f"{c.batch_size} (gradient passes of {micro}): {untraced_ms:.2f} ms a step "
          f"untraced ({c.batch_size / untraced_ms * 1e3:,.0f} images/s), "
          f"{traced_ms:.2f} traced")
    print("\n| op | from | output | ms/step (all threads) | of the traced step |")
    print("|---|---|---|---|---|")
    for r in rows[:FLAGS.top]:
        print(f"| {r['op']} | {r['source']} | {r['shape']} | {r['ms_per_step']:.3f} "
              f"| {r['share']:.0%} |")
    result = dict(name=c.name, batch_size=c.batch_size, micro_batch=micro,
                  cores=len(os.sched_getaffinity(0)), untraced_ms_per_step=untraced_ms,
                  traced_ms_per_step=traced_ms, jax=jax.__version__, cpu=bench.cpu_model(),
                  ops=rows)
    if FLAGS.ceilings:
        groups, summary = bound(c, rows, untraced_ms, FLAGS.ceiling_repeats)
        print("\n" + ceiling_table(groups, summary))
        result.update(groups=groups, bound=summary)
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"\nwrote {FLAGS.out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
