"""run.py --mode=benchmark: the table and benchmark.json, and its bad input."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from mnist_cnn import bench, networks
from mnist_cnn import config as config_lib
from mnist_cnn.config import conv_pool, fc, softmax

QUICK = ["--config=experiments/dbl_conv_relu.py", "--bench_images=64", "--repeats=1"]


def test_benchmark_writes_table_and_json(tmp_path, run_py):
    out = tmp_path / "benchmark.json"
    proc = run_py("--mode=benchmark", *QUICK, "--batch_sizes=8,16", "--conv_impls=patches",
                  "--dtypes=float32,bfloat16", f"--benchmark_out={out}")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert len(result["rows"]) == 4
    for key in ("device_kind", "jax", "jaxlib", "cpu", "matmul_gflop_s_before"):
        assert result[key], key
    for r in result["rows"]:
        assert r["train_images_per_s_min"] <= r["train_images_per_s"] <= r["train_images_per_s_max"]
        assert r["train_images_per_s"] > 0 and r["eval_images_per_s"] > 0
        # XLA's count for the book's network: ~9.5 MFLOP per training image (forward
        # ~3.2 MFLOP, backward about twice that); a count off by 2x means a wrong model.
        assert 7e6 < r["xla_flops_per_image"] < 13e6, r
        assert r["model_flops_per_image"] == 9_222_000   # 3 x 3.266 MFLOP less conv 1's input gradient
        assert r["achieved_gflop_s"] == pytest.approx(
            r["train_images_per_s"] * r["model_flops_per_image"] / 1e9, rel=1e-3)
    assert "| 16 | auto: 16 | patches | bfloat16 | 1 |" in proc.stdout   # batch, micro-batch, ...


@pytest.mark.slow
def test_python_m_mnist_cnn_bench_is_the_benchmark_mode_with_micro_batches(
        tmp_path, repo_root, assert_user_error):
    """python -m mnist_cnn.bench is --mode=benchmark; micro-batches are a dimension of
    its grid (0: auto, here the whole mini-batch of 8)."""
    bench_py = lambda *args: subprocess.run(
        [sys.executable, "-m", "mnist_cnn.bench", *QUICK, *args], cwd=repo_root,
        env=dict(os.environ), capture_output=True, text=True, timeout=600)
    out = tmp_path / "b.json"
    proc = bench_py("--batch_sizes=8", "--conv_impls=patches", "--micro_batches=0,4",
                    f"--benchmark_out={out}")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["batch_size"], r["micro_batch"]) for r in rows] == [(8, 8), (8, 4)]
    # XLA's count is of the whole step, however it is sliced (its loop bodies count once).
    assert rows[1]["xla_flops_per_image"] == pytest.approx(rows[0]["xla_flops_per_image"],
                                                           rel=0.05)
    assert "| 8 | 4 | patches | float32 | 1 |" in proc.stdout
    assert "| 8 | auto: 8 | patches | float32 | 1 |" in proc.stdout
    assert_user_error(bench_py("--dtypes=float8"), "dtype")


def test_benchmark_times_pmap_and_sharding_side_by_side(tmp_path, run_py):
    """--parallels=pmap,sharding on 4 virtual CPU devices: a row of each kind at the
    same point, the mini-batch of 8 split 2 a device (the micro-batch column), and the
    ratio line."""
    out = tmp_path / "b.json"
    proc = run_py("--mode=benchmark", *QUICK, "--batch_sizes=8", "--conv_impls=patches",
                  "--device_counts=4", "--parallels=pmap,sharding",
                  f"--benchmark_out={out}",
                  env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert result["device_count"] == 4 and result["parallels"] == ["pmap", "sharding"]
    assert [(r["parallel"], r["devices"], r["micro_batch"]) for r in rows] == [
        ("pmap", 4, 2), ("sharding", 4, 2)]
    for r in rows:
        assert r["train_images_per_s"] > 0 and r["images_per_rep"] == 64, r
    assert "| 8 | auto: 2 | patches | float32 | 4 | pmap |" in proc.stdout
    assert "| 8 | auto: 2 | patches | float32 | 4 | sharding |" in proc.stdout
    ratio = rows[1]["train_images_per_s"] / rows[0]["train_images_per_s"]
    assert f"sharding {ratio:.2f}x pmap's training images/s" in proc.stdout


def test_parallel_kinds_per_device_count():
    """Default: plain jit on one device, pmap on several (as before --parallels);
    named kinds: none on one device only, pmap and sharding at any count."""
    from mnist_cnn import config as config_lib
    from mnist_cnn.cli.benchmark import parallels_list
    assert bench.parallel_kinds(1) == ["none"] and bench.parallel_kinds(4) == ["pmap"]
    kinds = parallels_list(["sharding", "none", "pmap", "none"], [1, 4])
    assert kinds == ["sharding", "none", "pmap"]
    assert bench.parallel_kinds(1, kinds) == kinds
    assert bench.parallel_kinds(4, kinds) == ["sharding", "pmap"]
    assert parallels_list(None, [1, 4]) is None
    with pytest.raises(config_lib.ConfigError, match="--device_counts=2 needs pmap"):
        parallels_list(["none"], [1, 2])
    with pytest.raises(config_lib.ConfigError, match="got nothing"):
        parallels_list([], [1])
    from experiments import dbl_conv_relu
    c = bench.point_config(dbl_conv_relu.get_config(), 8, "xla", "float32", 1, 0, "sharding")
    assert (c.parallel, c.num_devices) == ("sharding", 1)


def test_model_flops_by_hand_for_the_books_network():
    """Hand count for dbl_conv_relu: conv 20 (24x24 outputs, 5x5x1), conv 40 (8x8, 5x5x20),
    FC 640->100, softmax 100->10."""
    from experiments import dbl_conv_relu
    conv1, conv2 = 2 * 24 * 24 * 25 * 1 * 20, 2 * 8 * 8 * 25 * 20 * 40
    fwd = conv1 + conv2 + 2 * 640 * 100 + 2 * 100 * 10
    assert bench.model_flops(dbl_conv_relu.get_config().layers) == (fwd, 3 * fwd - conv1)


@pytest.mark.parametrize("layers", [
    (conv_pool(6, kernel=3, stride=2, padding="SAME", activation="relu"), fc(30), softmax(10)),
    (conv_pool(4, kernel=3, stride=(1, 2), pool="l2", pool_window=3, pool_stride=2),
     conv_pool(8, kernel=3, padding=1, pool="none"), softmax(10)),
    (fc(50), fc(20), softmax(10)),
])
def test_model_flops_agrees_with_xlas_count_of_the_forward_pass_on_cpu(layers):
    """XLA's cost analysis of the patches forward pass on the CPU (an independent count)
    is the products counted here plus the elementwise work, which is small."""
    c = config_lib.base_config()
    c.layers, c.conv_impl = layers, "patches"
    model = networks.from_config(c)
    params = networks.init_params(model, jax.random.PRNGKey(0))
    x = jnp.zeros((1, 28, 28, 1))
    cost = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False)).lower(
        params, x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    forward, training = bench.model_flops(layers)
    assert forward <= cost["flops"] <= 1.15 * forward
    first = bench.model_flops(layers[:1])[0]
    assert training == 3 * forward - first


def test_known_peaks_and_fraction():
    assert bench.known_peak("NVIDIA H100 80GB HBM3", "bfloat16") == 989.0
    assert bench.known_peak("cpu", "float32") is None
    rows = bench.add_fractions([dict(achieved_gflop_s=50.0, dtype="float32", devices=2)],
                               100.0, "NVIDIA H100", None)
    assert rows[0]["fraction_of_matmul_ceiling"] == 0.5
    assert rows[0]["fraction_of_peak"] == pytest.approx(50 / (67e3 * 2), abs=1e-4)


@pytest.mark.parametrize("args,fragment", [
    (["--dtypes=float8"], "dtype"),
    (["--conv_impls=winograd"], "conv_impl"),
    (["--device_counts=4"], "num_devices=4"),
    (["--batch_sizes=ten"], "--batch_sizes"),
    (["--batch_sizes=0"], "--batch_sizes"),
    (["--device_counts=1", "--batch_sizes=0,3"], "--batch_sizes"),
    (["--batch_sizes=8", "--micro_batches=3"], "micro_batch (3) must divide"),
    (["--micro_batches=-1"], "--micro_batches"),
    (["--parallels=pmap,spmd"], "--parallels takes none, pmap and/or sharding"),
])
def test_benchmark_bad_input(tmp_path, args, fragment, run_py, assert_user_error):
    out = tmp_path / "b.json"
    proc = run_py("--mode=benchmark", *QUICK, *args, f"--benchmark_out={out}")
    assert_user_error(proc, fragment)
    assert not out.exists()


def test_cpuinfo_reads_the_first_value_of_a_field(tmp_path):
    """Fields as Linux writes them (tab-padded names, one block per processor): the first
    block's value; None for a field or file that is not there."""
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu avx avx2 fma\n\n"
                 "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n")
    assert bench.cpuinfo("model name", str(f)) == "AMD EPYC 9B14"
    assert bench.cpuinfo("flags", str(f)).split() == ["fpu", "avx", "avx2", "fma"]
    assert bench.cpuinfo("model", str(f)) is None         # a prefix of a field is not it
    assert bench.cpuinfo("flags", str(tmp_path / "none")) is None
