"""Accelerator benchmark of an experiment's network: `run.py --mode=benchmark`.

For each point of the sweep (batch size x conv implementation x dtype x device count)
it compiles the project's own training chunk (a `lax.scan` over mini-batches, data on
the device; over several devices pmap, or jit over a device mesh, or both side by side:
`parallel_kinds`) and measures, after one warm-up call:

- compile time of the chunk (seconds, one measurement);
- training images/s: median, min and max over `repeats` timed calls;
- evaluation images/s of the jitted predictor on 10,000 images (median);
- FLOPs per training image counted from the layer shapes (`model_flops`: the same
  count for every conv implementation), and beside it XLA's cost analysis of one
  compiled training step (a scan's cost analysis counts its body once, so the step is
  compiled on its own). XLA's count agrees on the CPU with `patches` except where
  `layers.conv_pool` fuses a first layer's max-pooling (it then counts the fused
  product's 1.44x multiply-adds: 9.9 of 9.2 MFLOP for dbl_conv_relu), and on a GPU it
  leaves out the cuDNN convolutions and cuBLAS products it calls (0.5 of 9.2 MFLOP for
  dbl_conv_relu with `xla` on an H200), so achieved GFLOP/s = counted FLOPs/image x
  images/s;
- the fraction of the machine's f32 matmul ceiling (a jitted 2048^2 matmul, measured
  in the same run, before and after; the fraction is of the larger of the two, the
  stricter figure on a noisy machine) and of the device's peak (a table of known
  peaks, or --peak_tflops).

Images are synthetic (uniform uint8): throughput does not depend on pixel values, and
the benchmark runs without MNIST.
"""

from __future__ import annotations

import copy
import itertools
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from mnist_cnn import config as config_lib
from mnist_cnn import data, networks, parallel, train

# Dense peak TFLOP/s per device as published by the vendor (no sparsity).
KNOWN_PEAK_TFLOPS = {
    ("H100", "float32"): 67.0, ("H100", "bfloat16"): 989.0,     # NVIDIA H100 SXM5
    ("H200", "float32"): 67.0, ("H200", "bfloat16"): 989.0,     # NVIDIA H200 SXM
    ("A100", "float32"): 19.5, ("A100", "bfloat16"): 312.0,     # NVIDIA A100 SXM4
}


def cpuinfo(field: str, path: str = "/proc/cpuinfo") -> str | None:
    """The first value of `field` ("model name", "flags", ...) in /proc/cpuinfo; None
    where the file or the field is missing."""
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return cpuinfo("model name") or platform.processor() or "unknown"


def known_peak(device_kind: str, dtype: str) -> float | None:
    for (name, dt), tflops in KNOWN_PEAK_TFLOPS.items():
        if name in device_kind and dt == dtype:
            return tflops
    return None


def matmul_ceiling(n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a jitted n x n f32 matmul: the machine's practical dense peak."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times) / 1e9


model_flops = networks.model_flops   # counted from the layer shapes


def step_flops(model, tx, c, state, x, y) -> float:
    """FLOPs of one training step by XLA's cost analysis of the compiled step, taken
    with the whole mini-batch in one gradient pass: the analysis counts a loop's body
    once, so a micro-batched step would show 1/k of its work."""
    c = copy.deepcopy(c)
    c.micro_batch = x.shape[0]
    step = train.make_train_step(model, tx, c.l2, 1, config=c)
    cost = jax.jit(step).lower(state, data.to_float(x), y).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", float("nan")))


def timed(fn, repeats) -> list[float]:
    """Seconds of each of `repeats` calls of fn, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


PARALLEL_KINDS = ("none", "pmap", "sharding")   # what --parallels takes


def parallel_kinds(devices: int, parallels=None) -> list[str]:
    """The config.parallel values timed at a device count. parallels None: plain jit
    ("none") on one device, pmap on several. Else each named kind that can run there:
    "none" on one device only, pmap and sharding at any count (on one device a
    one-device pmap or mesh: nothing split, the wrapper's cost shows)."""
    if parallels is None:
        return ["pmap" if devices > 1 else "none"]
    return [k for k in parallels if k != "none" or devices == 1]


def point_config(base, batch_size: int, conv_impl: str, dtype: str, devices: int,
                 micro_batch: int = 0, parallel_kind: str | None = None):
    c = copy.deepcopy(base)
    c.batch_size, c.conv_impl, c.dtype = batch_size, conv_impl, dtype
    c.micro_batch = micro_batch
    c.num_devices = devices
    c.parallel = parallel_kind or parallel_kinds(devices)[0]
    c.num_members, c.num_runs, c.shuffle = 1, 1, False
    c.train_size = max(batch_size, c.train_size)
    config_lib.validate(c)
    return c


def training_inputs(c, steps: int):
    """(model, optimizer, initial state, images, labels) for timing `steps` mini-batches of
    config c: random uint8 images and labels, seed 0."""
    model = networks.from_config(c)
    tx = train.make_optimizer(c, steps)
    state = train.with_ema(train.init_states(model, tx, 0, 1), c.ema_decay)
    rng = np.random.default_rng(0)
    n = steps * c.batch_size
    x = jax.device_put(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
    y = jax.device_put(rng.integers(0, 10, n).astype(np.int32))
    return model, tx, state, x, y


def measure(base, batch_size: int, conv_impl: str, dtype: str, devices: int,
            images: int, repeats: int, micro_batch: int = 0,
            parallel_kind: str | None = None) -> dict:
    """One point of the sweep. Raises parallel.ParallelError / ConfigError for a point
    the machine or the config cannot run."""
    c = point_config(base, batch_size, conv_impl, dtype, devices, micro_batch, parallel_kind)
    steps = max(1, images // batch_size)
    model, tx, state, x, y = training_inputs(c, steps)
    par = parallel.setup(c, 1)
    t = time.perf_counter()
    if par is None:
        compiled = train.make_train_chunk(model, tx, c, steps).lower(
            state, x, y, None, 0, num_steps=steps).compile()
        args = [jax.tree.map(jnp.copy, state), x, y]   # the chunk donates its state
    else:
        fn = parallel.make_chunk(par, model, tx, c, steps, steps, False, False)
        args = [parallel.place(par, state), parallel.place_data(par, x),
                parallel.place_data(par, y)]
        compiled = fn.lower(*args, None, 0).compile()
    compile_s = time.perf_counter() - t

    def run_chunk():
        args[0], loss, _ = compiled(args[0], args[1], args[2], None, 0)
        jax.block_until_ready(loss)

    flops = step_flops(model, tx, c, state, x[:batch_size], y[:batch_size]) / batch_size
    counted = model_flops(c.layers)[1]
    predict = train.make_predict(model, c.eval_batch_size)
    test_x = jnp.resize(x, (10_000, 28, 28))   # repeats x when it holds fewer
    eval_times = timed(lambda: predict(state.params, test_x).block_until_ready(), repeats)
    train_times = timed(run_chunk, repeats)
    rates = [steps * batch_size / t for t in train_times]
    median = statistics.median(rates)
    micro = train.micro_batch_size(c.micro_batch, batch_size // devices,
                                   flops_per_image=counted)
    return dict(batch_size=batch_size, conv_impl=conv_impl, dtype=dtype, devices=devices,
                parallel=c.parallel, micro_batch=micro, micro_batch_requested=micro_batch,
                images_per_rep=steps * batch_size, compile_s=round(compile_s, 2),
                train_images_per_s=round(median, 1),
                train_images_per_s_min=round(min(rates), 1),
                train_images_per_s_max=round(max(rates), 1),
                eval_images_per_s=round(10_000 / statistics.median(eval_times), 1),
                xla_flops_per_image=round(flops), model_flops_per_image=round(counted),
                achieved_gflop_s=round(median * counted / 1e9, 2))


def environment() -> dict:
    d = jax.devices()[0]
    import jaxlib
    return dict(device_kind=d.device_kind, platform=d.platform,
                device_count=jax.local_device_count(), cpu=cpu_model(), cores=os.cpu_count(),
                jax=jax.__version__, jaxlib=getattr(jaxlib, "__version__", ""))


def add_fractions(rows, ceiling_gflop_s: float, device_kind: str, peak_tflops=None):
    for r in rows:
        r["fraction_of_matmul_ceiling"] = round(r["achieved_gflop_s"] / ceiling_gflop_s, 3)
        peak = peak_tflops or known_peak(device_kind, r["dtype"])
        r["peak_tflops"] = peak
        r["fraction_of_peak"] = (round(r["achieved_gflop_s"] / (peak * 1e3 * r["devices"]), 4)
                                 if peak else None)
    return rows


def _micro(row) -> str:
    """The micro-batch column: the images a gradient pass took, "auto: N" when chosen."""
    return ("auto: " if row.get("micro_batch_requested") == 0 else "") + str(row["micro_batch"])


def markdown(rows, env: dict, ceiling: tuple[float, float], name: str) -> str:
    head = (f"{name} on {env['device_kind']} ({env['cpu']}, {env['cores']} cores; "
            f"{env['device_count']} device(s)), jax {env['jax']}; 2048^2 f32 matmul "
            f"{ceiling[0]:.1f} GFLOP/s before, {ceiling[1]:.1f} after\n\n")
    lines = ["| batch | micro-batch | conv | dtype | devices | parallel | compile s "
             "| train images/s median [min, max] | eval images/s "
             "| MFLOP/image (XLA's count) | GFLOP/s | of matmul ceiling | of peak |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = f"{100 * r['fraction_of_peak']:.2f}%" if r["fraction_of_peak"] else "-"
        lines.append(
            f"| {r['batch_size']} | {_micro(r)} | {r['conv_impl']} | {r['dtype']} | "
            f"{r['devices']} | {r.get('parallel', '-')} | {r['compile_s']:.1f} | "
            f"{r['train_images_per_s']:,.0f} "
            f"[{r['train_images_per_s_min']:,.0f}, {r['train_images_per_s_max']:,.0f}] | "
            f"{r['eval_images_per_s']:,.0f} | {r['model_flops_per_image'] / 1e6:.2f} "
            f"({r['xla_flops_per_image'] / 1e6:.2f}) | "
            f"{r['achieved_gflop_s']:.1f} | {100 * r['fraction_of_matmul_ceiling']:.0f}% | "
            f"{peak} |")
    return head + "\n".join(lines) + _kind_ratios(rows) + _one_device_note(rows)


def _kind_ratios(rows) -> str:
    """A line per point timed under both pmap and sharding: sharding's training
    images/s over pmap's (median over median)."""
    by_point = {}
    for r in rows:
        key = (r["devices"], r["batch_size"], r["conv_impl"], r["dtype"], r["micro_batch"])
        by_point.setdefault(key, {})[r.get("parallel")] = r["train_images_per_s"]
    lines = [f"- {d} device(s), batch {bs}, {impl}, {dtype}, micro-batch {mb}: sharding "
             f"{k['sharding'] / k['pmap']:.2f}x pmap's training images/s"
             for (d, bs, impl, dtype, mb), k in by_point.items()
             if k.get("pmap") and k.get("sharding")]
    return "\n\n" + "\n".join(lines) if lines else ""


def _one_device_note(rows) -> str:
    """What a one-device pmap or sharding row shows, when the table has one."""
    if not any(r["devices"] == 1 and r.get("parallel") in ("pmap", "sharding")
               for r in rows):
        return ""
    return ("\n\nOn one device pmap and sharding split nothing: their rows time the same "
            "step as `none` (plain jit) inside a one-device pmap or mesh, the wrapper's "
            "cost; a comparison of the kinds needs several devices.")


def sweep(base, batch_sizes, conv_impls, dtypes, device_counts, images, repeats,
          peak_tflops=None, log=print, micro_batches=(0,), parallels=None) -> dict:
    """Every point of the sweep; returns the benchmark.json content (with 'table').
    parallels: the kinds compared at each device count (parallel_kinds), side by side."""
    env = environment()
    before = matmul_ceiling()
    rows = []
    for devices in device_counts:
        for bs in batch_sizes:
            for impl in conv_impls:
                for dtype, mb, kind in itertools.product(
                        dtypes, micro_batches, parallel_kinds(devices, parallels)):
                    rows.append(measure(base, bs, impl, dtype, devices, images, repeats,
                                        mb, kind))
                    r = rows[-1]
                    log(f"  batch {bs} (micro {r['micro_batch']}), {impl}, {dtype}, "
                        f"{devices} device(s), {kind}: "
                        f"{r['train_images_per_s']:,.0f} train images/s, compile "
                        f"{r['compile_s']:.1f} s")
    after = matmul_ceiling()
    add_fractions(rows, max(before, after), env["device_kind"], peak_tflops)
    name = base.name or "network"
    return dict(name=name, **env, matmul_gflop_s_before=round(before, 1),
                matmul_gflop_s_after=round(after, 1), images_per_rep=images,
                repeats=repeats, parallels=parallels, rows=rows,
                table=markdown(rows, env, (before, after), name))


def _main():
    """`python -m mnist_cnn.bench FLAGS`: `python run.py --mode=benchmark FLAGS`, the
    same flags, errors and outputs."""
    import sys
    from mnist_cnn import main
    sys.argv = [sys.argv[0], "--mode=benchmark", *sys.argv[1:]]
    main.run()


if __name__ == "__main__":
    _main()
