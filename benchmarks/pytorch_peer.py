"""Peer comparison: the book's dbl_conv_relu network trained in PyTorch and in this
project, same mini-batch sizes, same CPU, timed in the same run.

PyTorch is a benchmark-only dependency (not in requirements.txt):

    pip install torch==2.13.0
    python benchmarks/pytorch_peer.py                  # batch 10 and 128
    python benchmarks/pytorch_peer.py --batch_sizes=128 --images=20000 --repeats=5

Both sides: conv 20 (5x5) -> 2x2 max-pool -> ReLU -> conv 40 (5x5) -> max-pool -> ReLU
-> FC 100 ReLU -> softmax 10, log-likelihood loss, plain SGD (eta 0.03) plus network3's
L2 term (lambda 0.1), float32, the training images already in memory as uint8 and
scaled per mini-batch. PyTorch runs an eager loop (its idiomatic training loop) with
torch.set_num_threads(os.cpu_count()); this project runs its jitted `lax.scan` chunk
(bench.measure, conv 'patches', config.micro_batch auto: on a CPU a mini-batch of 128
is two gradient passes of 64). Each timing: one warm-up pass, then the median of
--repeats passes over --images images. The f32 matmul ceiling (jitted 2048^2 matmul)
is measured in the same run, before and after; the fraction is of the larger.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time


import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments import dbl_conv_relu  # noqa: E402
from mnist_cnn import bench  # noqa: E402

flags.DEFINE_list("batch_sizes", ["10", "128"], "Mini-batch sizes.")
flags.DEFINE_integer("images", 20_000, "Training images per timed pass.")
flags.DEFINE_integer("repeats", 3, "Timed passes after one warm-up.")
flags.DEFINE_string("out", "benchmark_pytorch_peer.json", "JSON output path.")
FLAGS = flags.FLAGS


def torch_rate(batch_size: int, images: int, repeats: int) -> tuple[float, list[float]]:
    import torch
    from torch import nn
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(20, 40, 5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(), nn.Linear(640, 100), nn.ReLU(), nn.Linear(100, 10))
    steps = max(1, images // batch_size)
    n_train = 50_000
    lmbda, eta = 0.1, 0.03
    opt = torch.optim.SGD(net.parameters(), lr=eta)
    weights = [p for name, p in net.named_parameters() if name.endswith("weight")]
    rng = np.random.default_rng(0)
    x_u8 = torch.from_numpy(rng.integers(0, 256, (steps * batch_size, 1, 28, 28),
                                         dtype=np.uint8))
    y = torch.from_numpy(rng.integers(0, 10, steps * batch_size))
    loss_fn = nn.CrossEntropyLoss()

    def one_pass():
        for i in range(steps):
            xb = x_u8[i * batch_size:(i + 1) * batch_size].float().div_(255.0)
            yb = y[i * batch_size:(i + 1) * batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(xb), yb)
            loss = loss + 0.5 * lmbda * sum((w * w).sum() for w in weights) / (
                n_train // batch_size)
            loss.backward()
            opt.step()

    one_pass()
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        one_pass()
        rates.append(steps * batch_size / (time.perf_counter() - t))
    return statistics.median(rates), rates


def main(argv):
    del argv
    import torch
    before = bench.matmul_ceiling()
    base = dbl_conv_relu.get_config()
    rows = []
    for bs in map(int, FLAGS.batch_sizes):
        ours = bench.measure(base, bs, "patches", "float32", 1, FLAGS.images, FLAGS.repeats)
        theirs, theirs_all = torch_rate(bs, FLAGS.images, FLAGS.repeats)
        rows.append(dict(batch_size=bs, micro_batch=ours["micro_batch"],
                         jax_images_per_s=ours["train_images_per_s"],
                         jax_min=ours["train_images_per_s_min"],
                         jax_max=ours["train_images_per_s_max"],
                         torch_images_per_s=round(theirs, 1),
                         torch_min=round(min(theirs_all), 1),
                         torch_max=round(max(theirs_all), 1),
                         ratio=round(ours["train_images_per_s"] / theirs, 2),
                         xla_flops_per_image=ours["xla_flops_per_image"],
                         jax_gflop_s=ours["achieved_gflop_s"]))
        print(f"  batch {bs}: jax {ours['train_images_per_s']:,.0f}, torch {theirs:,.0f} "
              f"images/s", file=sys.stderr)
    after = bench.matmul_ceiling()
    env = bench.environment()
    print(f"\n{env['cpu']} ({env['cores']} cores), jax {env['jax']}, torch "
          f"{torch.__version__}; 2048^2 f32 matmul {before:.1f} GFLOP/s before, "
          f"{after:.1f} after\n")
    print("| batch | this project images/s [min, max] | PyTorch images/s [min, max] "
          "| ratio | GFLOP/s (counted) | of matmul ceiling |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch_size']} | {r['jax_images_per_s']:,.0f} [{r['jax_min']:,.0f}, "
              f"{r['jax_max']:,.0f}] | {r['torch_images_per_s']:,.0f} [{r['torch_min']:,.0f}, "
              f"{r['torch_max']:,.0f}] | {r['ratio']:.2f}x | {r['jax_gflop_s']:.1f} | "
              f"{100 * r['jax_gflop_s'] / max(before, after):.0f}% |")
    with open(FLAGS.out, "w") as f:
        json.dump(dict(**env, torch=torch.__version__, matmul_gflop_s_before=before,
                       matmul_gflop_s_after=after, rows=rows), f, indent=1)


if __name__ == "__main__":
    app.run(main)
