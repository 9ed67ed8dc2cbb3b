"""Vmapped sweep vs the same points run one after another: point-images/s on this CPU.

A grid over learning rate x l2 (x seed for 27 points) of the given experiment's
network: the points trained together by the stacked, vmapped chunk a vmapped sweep
uses (per-run hyperparameters fed to the step), against each point's own compiled chunk
run in turn. Same number of mini-batches per point; warm-up excluded; median of
--repeats; compile times reported separately.

    python benchmarks/sweep_vmap.py                      # 3, 9 and 27 points, batch 10
    python benchmarks/sweep_vmap.py --points=9 --batch_size=128 --steps=100
"""

from __future__ import annotations

import json
import statistics
import sys
import time


import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments import dbl_conv_relu  # noqa: E402
from mnist_cnn import bench, networks, train  # noqa: E402

flags.DEFINE_list("points", ["3", "9", "27"], "Sweep sizes.")
flags.DEFINE_integer("batch_size", 10, "Mini-batch size.")
flags.DEFINE_integer("steps", 300, "Mini-batches per point per timed repetition.")
flags.DEFINE_integer("repeats", 3, "Timed repetitions after one warm-up.")
flags.DEFINE_string("out", "benchmark_sweep_vmap.json", "JSON output path.")
FLAGS = flags.FLAGS


def grid(n: int) -> list[dict]:
    lrs = [0.01, 0.03, 0.1]
    l2s = [0.0, 0.1, 1.0]
    pts = [dict(learning_rate=lr, l2=l2, seed=s) for s in range(3) for lr in lrs for l2 in l2s]
    return pts[:n]


def timed(fn, repeats):
    return statistics.median(bench.timed(fn, repeats))


def bench_points(n: int, x, y) -> dict:
    c = dbl_conv_relu.get_config()
    c.batch_size = FLAGS.batch_size
    steps = FLAGS.steps
    model = networks.from_config(c)
    pts = grid(n)
    tx = train.make_optimizer(c, steps)
    hp = {f: jnp.asarray([p[f] for p in pts], jnp.float32) for f in ("learning_rate", "l2")}
    holder = [train.init_states(model, tx, 0, n, seeds=[p["seed"] for p in pts])]
    t = time.perf_counter()
    stacked = train.make_train_chunk(model, tx, c, steps, stacked=True).lower(
        holder[0], x, y, None, 0, num_steps=steps, hp=hp).compile()
    compile_vmapped = time.perf_counter() - t

    def run_stacked():
        holder[0], loss, _ = stacked(holder[0], x, y, None, 0, hp=hp)
        loss.block_until_ready()

    t_vmapped = timed(run_stacked, FLAGS.repeats)
    singles, compile_seq = [], 0.0
    for p in pts:
        pc = dbl_conv_relu.get_config()
        pc.batch_size, pc.learning_rate, pc.l2, pc.seed = (FLAGS.batch_size, p["learning_rate"],
                                                           p["l2"], p["seed"])
        ptx = train.make_optimizer(pc, steps)
        st = train.init_state(model, ptx, p["seed"])
        t = time.perf_counter()
        fn = train.make_train_chunk(model, ptx, pc, steps).lower(
            st, x, y, None, 0, num_steps=steps).compile()
        compile_seq += time.perf_counter() - t
        singles.append([fn, st])

    def run_sequential():
        for s in singles:
            s[1], loss, _ = s[0](s[1], x, y, None, 0)
            loss.block_until_ready()

    t_seq = timed(run_sequential, FLAGS.repeats)
    images = n * steps * FLAGS.batch_size
    return dict(points=n, batch_size=FLAGS.batch_size, steps_per_point=steps,
                vmapped_point_images_per_s=round(images / t_vmapped, 1),
                sequential_point_images_per_s=round(images / t_seq, 1),
                speedup=round(t_seq / t_vmapped, 2),
                compile_vmapped_s=round(compile_vmapped, 2),
                compile_sequential_s=round(compile_seq, 2))


def main(argv):
    del argv
    rng = np.random.default_rng(0)
    n_img = FLAGS.steps * FLAGS.batch_size
    x = jax.device_put(rng.integers(0, 256, (n_img, 28, 28), dtype=np.uint8))
    y = jax.device_put(rng.integers(0, 10, n_img).astype(np.int32))
    rows = []
    for n in map(int, FLAGS.points):
        rows.append(bench_points(n, x, y))
        print(f"  {rows[-1]}", file=sys.stderr)
    env = bench.environment()
    print(f"\ndbl_conv_relu, batch {FLAGS.batch_size}, {FLAGS.steps} mini-batches per point; "
          f"{env['cpu']} ({env['cores']} cores), jax {env['jax']}\n")
    print("| points | vmapped point-images/s | sequential point-images/s | speed-up "
          "| compile vmapped (s) | compile sequential, all points (s) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['points']} | {r['vmapped_point_images_per_s']:,.0f} | "
              f"{r['sequential_point_images_per_s']:,.0f} | {r['speedup']:.2f}x | "
              f"{r['compile_vmapped_s']:.1f} | {r['compile_sequential_s']:.1f} |")
    with open(FLAGS.out, "w") as f:
        json.dump(dict(**env, rows=rows), f, indent=1)


if __name__ == "__main__":
    app.run(main)
