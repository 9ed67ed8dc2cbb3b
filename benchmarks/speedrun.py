"""Wall-clock time to a test accuracy, end to end: `run.py` as a user runs it.

Each seed is one fresh `python run.py --config=experiments/speedrun.py` process, timed
from before the process starts to after it exits (interpreter start, imports, data
loading, compilation, training, evaluation, checkpoints). Reports every seed, then the
median and the range of wall time and test accuracy. No compilation cache is used
(jax's persistent cache is off by default and this script does not turn it on).

    python benchmarks/speedrun.py --seeds=5
    python benchmarks/speedrun.py --config=experiments/speedrun.py --seeds=5 --target=0.99
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from mnist_cnn import bench  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_string("config", "experiments/speedrun.py", "Experiment config to time.")
flags.DEFINE_integer("seeds", 5, "Seeds 0..N-1, one fresh process each.")
flags.DEFINE_float("target", 0.99, "Test accuracy the speedrun must reach.")
flags.DEFINE_multi_string("override", [], "Extra --config.* overrides, e.g. num_epochs=3.")
flags.DEFINE_string("out", "benchmark_speedrun.json", "JSON output path.")
FLAGS = flags.FLAGS


def time_one(seed: int, workdir: str) -> dict:
    cmd = [sys.executable, os.path.join(ROOT, "run.py"), f"--config={FLAGS.config}",
           f"--workdir={workdir}", f"--config.seed={seed}", "--overwrite", "--noprogress"]
    cmd += [f"--config.{o}" for o in FLAGS.override]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"seed {seed} failed: {proc.stderr.strip().splitlines()[-1]}")
    with open(os.path.join(workdir, "summary.json")) as f:
        s = json.load(f)
    return dict(seed=seed, wall_s=round(wall, 2), test_accuracy=s["test_accuracy"],
                validation_accuracy=s["best_validation_accuracy"],
                compile_s=s["compile_time_s"], train_images_per_s=s["train_images_per_s"])


def main(_):
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(FLAGS.seeds):
            rows.append(time_one(seed, os.path.join(tmp, f"seed{seed}")))
            r = rows[-1]
            print(f"seed {seed}: {r['wall_s']:.1f} s, test {100 * r['test_accuracy']:.2f}%, "
                  f"validation {100 * r['validation_accuracy']:.2f}%", flush=True)
    walls = [r["wall_s"] for r in rows]
    accs = [r["test_accuracy"] for r in rows]
    hits = sum(a >= FLAGS.target for a in accs)
    print(f"\n| config | seeds | wall s median (min-max) | test % median (min-max) | "
          f">= {100 * FLAGS.target:.1f}% |\n|---|---|---|---|---|\n"
          f"| {FLAGS.config} {' '.join(FLAGS.override)} | {len(rows)} | "
          f"{statistics.median(walls):.1f} ({min(walls):.1f}-{max(walls):.1f}) | "
          f"{100 * statistics.median(accs):.2f} ({100 * min(accs):.2f}-{100 * max(accs):.2f}) "
          f"| {hits}/{len(rows)} |")
    print(f"CPU: {bench.cpu_model()}, {os.cpu_count()} cores")
    with open(FLAGS.out, "w") as f:
        json.dump(dict(config=FLAGS.config, overrides=FLAGS.override, cpu=bench.cpu_model(),
                       cores=os.cpu_count(), target=FLAGS.target, runs=rows,
                       median_wall_s=statistics.median(walls),
                       median_test_accuracy=statistics.median(accs)), f, indent=1)


if __name__ == "__main__":
    app.run(main)
