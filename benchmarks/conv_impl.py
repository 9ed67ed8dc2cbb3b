"""Training throughput of the book's dbl_conv_relu network per conv implementation.

Times the project's own jitted training chunk (a `lax.scan` over mini-batches with the
data on the device) for each conv implementation and mini-batch size, with compile time
separate, and measures the machine's f32 matmul ceiling in the same run.

    python benchmarks/conv_impl.py                      # CPU defaults: batch 10 and 128
    python benchmarks/conv_impl.py --batch_sizes=10 --impls=patches --repeats=5

Prints a Markdown table and writes benchmark_conv_impl.json (or --out).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time


import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments import dbl_conv_relu  # noqa: E402
from mnist_cnn import networks, train  # noqa: E402
from mnist_cnn.bench import cpu_model, matmul_ceiling, step_flops  # noqa: E402

flags.DEFINE_list("batch_sizes", ["10", "128"], "Mini-batch sizes.")
flags.DEFINE_list("impls", ["patches", "xla"], "Conv implementations.")
flags.DEFINE_integer("images", 20_000, "Training images per timed repetition (per impl "
                     "'xla' at batch 10 a quarter of it: it is ~10x slower on CPU).")
flags.DEFINE_integer("repeats", 3, "Timed repetitions after one warm-up.")
flags.DEFINE_string("out", "benchmark_conv_impl.json", "JSON output path.")
FLAGS = flags.FLAGS

def bench_one(impl: str, batch_size: int, images: int, repeats: int) -> dict:
    c = dbl_conv_relu.get_config()
    c.conv_impl, c.batch_size = impl, batch_size
    steps = max(1, images // batch_size)
    model = networks.from_config(c)
    tx = train.make_optimizer(c, steps)
    state = train.init_state(model, tx, 0)
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.integers(0, 256, (steps * batch_size, 28, 28), dtype=np.uint8))
    y = jax.device_put(rng.integers(0, 10, steps * batch_size).astype(np.int32))
    chunk = train.make_train_chunk(model, tx, c, steps)
    t = time.perf_counter()
    lowered = chunk.lower(state, x, y, None, 0, num_steps=steps)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t
    flops_per_image = step_flops(model, tx, c, state, x[:batch_size],
                                 y[:batch_size]) / batch_size
    state, loss, _ = compiled(state, x, y, None, 0)   # warm-up
    loss.block_until_ready()
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        state, loss, _ = compiled(state, x, y, None, 0)
        loss.block_until_ready()
        rates.append(steps * batch_size / (time.perf_counter() - t))
    return dict(impl=impl, batch_size=batch_size, images_per_rep=steps * batch_size,
                compile_s=round(compile_s, 2), images_per_s=round(statistics.median(rates), 1),
                images_per_s_min=round(min(rates), 1), images_per_s_max=round(max(rates), 1),
                xla_flops_per_image=round(flops_per_image))


def main(argv):
    del argv
    ceiling = matmul_ceiling()
    rows = []
    for bs in map(int, FLAGS.batch_sizes):
        for impl in FLAGS.impls:
            n = FLAGS.images // 4 if (impl == "xla" and bs < 64
                                      and jax.default_backend() == "cpu") else FLAGS.images
            rows.append(bench_one(impl, bs, n, FLAGS.repeats))
            print(f"  measured {rows[-1]}", file=sys.stderr)
    ceiling_after = matmul_ceiling()
    for r in rows:
        gflops = r["images_per_s"] * r["xla_flops_per_image"] / 1e9
        r["achieved_gflop_s"] = round(gflops, 2)
        r["fraction_of_matmul_ceiling"] = round(gflops / ceiling, 3)
    device = jax.devices()[0]
    out = dict(device_kind=device.device_kind, platform=jax.default_backend(),
               cpu=cpu_model(), cores=os.cpu_count(), jax=jax.__version__,
               jaxlib=jax.lib.__version__ if hasattr(jax.lib, "__version__") else "",
               matmul_gflop_s_before=round(ceiling, 1),
               matmul_gflop_s_after=round(ceiling_after, 1), rows=rows)
    with open(FLAGS.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"\n{out['device_kind']} ({out['cpu']}, {out['cores']} cores), jax {out['jax']}; "
          f"2048^2 f32 matmul {ceiling:.1f} GFLOP/s before, {ceiling_after:.1f} after\n")
    print("| conv impl | batch | compile (s) | train images/s (median [min, max]) "
          "| XLA FLOP/image | GFLOP/s | of matmul ceiling |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['impl']} | {r['batch_size']} | {r['compile_s']:.1f} | "
              f"{r['images_per_s']:,.0f} [{r['images_per_s_min']:,.0f}, "
              f"{r['images_per_s_max']:,.0f}] | {r['xla_flops_per_image'] / 1e6:.1f} M | "
              f"{r['achieved_gflop_s']:.1f} | {100 * r['fraction_of_matmul_ceiling']:.0f}% |")
    by = {(r["impl"], r["batch_size"]): r for r in rows}
    for bs in map(int, FLAGS.batch_sizes):
        if ("patches", bs) in by and ("xla", bs) in by:
            p, x = by[("patches", bs)], by[("xla", bs)]
            print(f"\nbatch {bs}: patches/xla throughput {p['images_per_s'] / x['images_per_s']:.1f}x,"
                  f" compile xla/patches {x['compile_s'] / max(p['compile_s'], 1e-9):.1f}x")


if __name__ == "__main__":
    app.run(main)
