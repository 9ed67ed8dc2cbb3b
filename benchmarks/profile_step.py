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
"""

from __future__ import annotations

import collections
import glob
import json
import os
import re
import shutil
import tempfile
import time


import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
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


def profile(c, steps: int):
    model, tx, state, x, y = bench.training_inputs(c, steps)
    compiled = train.make_train_chunk(model, tx, c, steps).lower(
        state, x, y, None, 0, num_steps=steps).compile()
    ops = hlo_ops(compiled.as_text())
    state = jax.tree.map(jnp.copy, state)   # the chunk donates its state
    for _ in range(2):
        t = time.perf_counter()
        state, loss, _ = compiled(state, x, y, None, 0)
        jax.block_until_ready(loss)
    untraced = time.perf_counter() - t
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
    rows = [dict(op=name, source=short_op_name(ops[name][1]), shape=ops[name][0],
                 ms_per_step=ns / 1e6 / steps, share=ns / 1e9 / traced)
            for name, ns in times.most_common()]
    return rows, untraced / steps * 1e3, traced / steps * 1e3


def main(argv):
    del argv
    c = bench.point_config(FLAGS.config, FLAGS.batch_size, FLAGS.conv_impl, "float32", 1,
                           FLAGS.micro_batch)
    rows, untraced_ms, traced_ms = profile(c, FLAGS.steps)
    micro = train.micro_batch_size(c.micro_batch, c.batch_size,
                                   flops_per_image=bench.model_flops(c.layers)[1])
    print(f"{c.name} on {jax.default_backend()} ({bench.cpu_model()}), mini-batch "
          f"{c.batch_size} (gradient passes of {micro}): {untraced_ms:.2f} ms a step "
          f"untraced ({c.batch_size / untraced_ms * 1e3:,.0f} images/s), "
          f"{traced_ms:.2f} traced")
    print("\n| op | from | output | ms/step (all threads) | of the traced step |")
    print("|---|---|---|---|---|")
    for r in rows[:FLAGS.top]:
        print(f"| {r['op']} | {r['source']} | {r['shape']} | {r['ms_per_step']:.3f} "
              f"| {r['share']:.0%} |")
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump(dict(name=c.name, batch_size=c.batch_size, micro_batch=micro,
                           untraced_ms_per_step=untraced_ms, traced_ms_per_step=traced_ms,
                           jax=jax.__version__, cpu=bench.cpu_model(), ops=rows), f, indent=1)
        print(f"\nwrote {FLAGS.out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
