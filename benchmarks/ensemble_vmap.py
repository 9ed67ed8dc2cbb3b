"""Member-images/s for an ensemble trained vmapped in one program vs one after another.

Same network, batch size and number of mini-batches for both; each timing is the
median of --repeats after a warm-up, compile excluded (reported separately).

    python benchmarks/ensemble_vmap.py                       # dbl_conv_relu, 5 members, batch 10
    python benchmarks/ensemble_vmap.py --experiment=double_fc_dropout --members=5
"""

from __future__ import annotations

import importlib
import json
import statistics
import time


import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from mnist_cnn import bench, networks, train  # noqa: E402

flags.DEFINE_string("experiment", "dbl_conv_relu", "Experiment whose network to train.")
flags.DEFINE_integer("members", 5, "Ensemble members.")
flags.DEFINE_integer("batch_size", 10, "Mini-batch size.")
flags.DEFINE_integer("steps", 500, "Mini-batches per member per timed repetition.")
flags.DEFINE_integer("repeats", 3, "Timed repetitions after one warm-up.")
flags.DEFINE_string("out", "benchmark_ensemble_vmap.json", "JSON output path.")
FLAGS = flags.FLAGS


def timed(fn, repeats):
    times = bench.timed(fn, repeats)
    return statistics.median(times), min(times), max(times)


def main(argv):
    del argv
    c = importlib.import_module(f"experiments.{FLAGS.experiment}").get_config()
    c.batch_size, c.expand_data = FLAGS.batch_size, False
    m, steps = FLAGS.members, FLAGS.steps
    model = networks.from_config(c)
    tx = train.make_optimizer(c, steps)
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.integers(0, 256, (steps * c.batch_size, 28, 28), dtype=np.uint8))
    y = jax.device_put(rng.integers(0, 10, steps * c.batch_size).astype(np.int32))

    t = time.perf_counter()
    vmapped = train.make_train_chunk(model, tx, c, steps, stacked=True).lower(
        train.init_states(model, tx, 0, m), x, y, None, 0, num_steps=steps).compile()
    compile_vmapped = time.perf_counter() - t
    t = time.perf_counter()
    single = train.make_train_chunk(model, tx, c, steps).lower(
        train.init_state(model, tx, 0), x, y, None, 0, num_steps=steps).compile()
    compile_single = time.perf_counter() - t

    def run_vmapped():
        state = train.init_states(model, tx, 0, m)
        jax.block_until_ready(vmapped(state, x, y, None, 0))

    def run_sequential():
        for i in range(m):
            jax.block_until_ready(single(train.init_state(model, tx, i), x, y, None, 0))

    work = m * steps * c.batch_size
    v = timed(run_vmapped, FLAGS.repeats)
    s = timed(run_sequential, FLAGS.repeats)
    out = dict(device_kind=jax.devices()[0].device_kind, jax=jax.__version__,
               experiment=FLAGS.experiment, members=m, batch_size=c.batch_size,
               steps=steps, compile_vmapped_s=round(compile_vmapped, 2),
               compile_single_s=round(compile_single, 2),
               vmapped_member_images_per_s=round(work / v[0], 1),
               vmapped_range=[round(work / v[2], 1), round(work / v[1], 1)],
               sequential_member_images_per_s=round(work / s[0], 1),
               sequential_range=[round(work / s[2], 1), round(work / s[1], 1)])
    out["speedup"] = round(out["vmapped_member_images_per_s"]
                           / out["sequential_member_images_per_s"], 2)
    with open(FLAGS.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"| {FLAGS.experiment}, {m} members, batch {c.batch_size} | member-images/s "
          f"(median [min, max]) | compile (s) |\n|---|---|---|")
    print(f"| vmapped, one program | {out['vmapped_member_images_per_s']:,.0f} "
          f"[{out['vmapped_range'][0]:,.0f}, {out['vmapped_range'][1]:,.0f}] | "
          f"{compile_vmapped:.1f} |")
    print(f"| {m} runs one after another | {out['sequential_member_images_per_s']:,.0f} "
          f"[{out['sequential_range'][0]:,.0f}, {out['sequential_range'][1]:,.0f}] | "
          f"{compile_single:.1f} (once) |")
    print(f"\nspeed-up of vmapped over sequential: {out['speedup']:.2f}x")


if __name__ == "__main__":
    app.run(main)
