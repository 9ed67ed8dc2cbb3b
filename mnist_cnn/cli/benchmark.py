"""--mode=benchmark: training and evaluation speed of an experiment's network
(mnist_cnn/bench.py, docs/benchmarks.md).

    python run.py --mode=benchmark --config=experiments/dbl_conv_relu.py --batch_sizes=10,128
    XLA_FLAGS=--xla_force_host_platform_device_count=4 python run.py --mode=benchmark \
        --config=experiments/dbl_conv_relu.py --device_counts=4 --parallels=pmap,sharding
"""

from __future__ import annotations

import itertools
import sys

from absl import flags

flags.DEFINE_list("batch_sizes", ["10", "128"], "benchmark: mini-batch sizes.")
flags.DEFINE_list("conv_impls", ["patches", "xla"], "benchmark: conv implementations.")
flags.DEFINE_list("dtypes", ["float32"], "benchmark: float32 and/or bfloat16.")
flags.DEFINE_list("device_counts", ["1"], "benchmark: device counts (pmap when > 1, "
                  "unless --parallels).")
flags.DEFINE_list("parallels", None, "benchmark: config.parallel kinds timed side by side "
                  "at each device count: none (plain jit, one device only), pmap, sharding "
                  "(default: none on one device, pmap on several).")
flags.DEFINE_list("micro_batches", ["0"], "benchmark: config.micro_batch values (0: auto, "
                  "N: gradient passes of N images, >= the batch: whole).")
flags.DEFINE_integer("bench_images", 10_000, "benchmark: training images per timed call.")
flags.DEFINE_integer("repeats", 3, "benchmark: timed repetitions after one warm-up.")
flags.DEFINE_float("peak_tflops", None, "benchmark: the device's peak TFLOP/s, for the "
                   "fraction of peak (default: a table of known accelerators).")
flags.DEFINE_string("benchmark_out", "benchmark.json", "benchmark: JSON output path.")


def _ints(name, values, lowest):
    from mnist_cnn import config as config_lib
    try:
        out = [int(v) for v in values]
    except ValueError:
        raise config_lib.ConfigError(f"--{name} must be integers, got {','.join(values)}") from None
    if not out or min(out) < lowest:
        raise config_lib.ConfigError(f"--{name} must be integers >= {lowest}, got "
                                     f"{','.join(values) or 'nothing'}")
    return out


def parallels_list(values, device_counts):
    """--parallels as a list without repeats (None: the default), checked: known kinds,
    and one that runs at every device count."""
    from mnist_cnn import bench
    from mnist_cnn import config as config_lib
    if values is None:
        return None
    kinds = list(dict.fromkeys(values))
    wrong = [k for k in kinds if k not in bench.PARALLEL_KINDS]
    if wrong or not kinds:
        raise config_lib.ConfigError(
            f"--parallels takes none, pmap and/or sharding, comma-separated (e.g. "
            f"--parallels=pmap,sharding), got {','.join(values) or 'nothing'}")
    several = [d for d in device_counts if d > 1]
    if kinds == ["none"] and several:
        raise config_lib.ConfigError(
            f"--parallels=none times one device only; --device_counts={several[0]} needs "
            f"pmap or sharding too (e.g. --parallels=none,pmap,sharding)")
    return kinds


def _points(flags):
    """The sweep's axes (ints, --parallels' kinds), every point's config checked before
    any is timed."""
    from mnist_cnn import bench, parallel
    from mnist_cnn import config as config_lib
    batch_sizes = _ints("batch_sizes", flags.batch_sizes, 1)
    device_counts = _ints("device_counts", flags.device_counts, 1)
    micro_batches = _ints("micro_batches", flags.micro_batches, 0)
    if flags.bench_images < 1 or flags.repeats < 1:
        raise config_lib.ConfigError("--bench_images and --repeats must be positive")
    kinds = parallels_list(flags.parallels, device_counts)
    for bs, impl, dtype, d, mb in itertools.product(
            batch_sizes, flags.conv_impls, flags.dtypes, device_counts, micro_batches):
        for kind in bench.parallel_kinds(d, kinds):
            parallel.setup(bench.point_config(flags.config, bs, impl, dtype, d, mb, kind), 1)
    return batch_sizes, device_counts, micro_batches, kinds


def benchmark(flags) -> int:
    """--mode=benchmark: the sweep's Markdown table on stdout, every figure in JSON."""
    from mnist_cnn import bench, metrics_io, parallel
    from mnist_cnn import config as config_lib
    try:
        problem = metrics_io.output_path_problem(flags.benchmark_out)   # before timing
        if problem:
            raise config_lib.ConfigError(f"--benchmark_out={flags.benchmark_out}: {problem}")
        batch_sizes, device_counts, micro_batches, kinds = _points(flags)
        result = bench.sweep(flags.config, batch_sizes, flags.conv_impls, flags.dtypes,
                             device_counts, flags.bench_images, flags.repeats,
                             flags.peak_tflops, log=lambda m: print(m, file=sys.stderr),
                             micro_batches=micro_batches, parallels=kinds)
    except (config_lib.ConfigError, parallel.ParallelError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    print(result["table"])
    metrics_io.write_json_atomic(flags.benchmark_out, result)
    print(f"\nwrote {flags.benchmark_out}")
    return 0
