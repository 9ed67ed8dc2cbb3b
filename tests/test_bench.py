"""run.py --mode=benchmark: the table and benchmark.json, and its bad input."""

import json

import pytest

from mnist_cnn import bench
from tests.test_run import assert_user_error, run

QUICK = ["--config=experiments/dbl_conv_relu.py", "--bench_images=64", "--repeats=1"]


def test_benchmark_writes_table_and_json(tmp_path):
    out = tmp_path / "benchmark.json"
    proc = run("--mode=benchmark", *QUICK, "--batch_sizes=8,16", "--conv_impls=patches",
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
        assert r["achieved_gflop_s"] == pytest.approx(
            r["train_images_per_s"] * r["xla_flops_per_image"] / 1e9, rel=1e-3)
    assert "| 16 | patches | bfloat16 | 1 |" in proc.stdout


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
])
def test_benchmark_bad_input(tmp_path, args, fragment):
    out = tmp_path / "b.json"
    proc = run("--mode=benchmark", *QUICK, *args, f"--benchmark_out={out}")
    assert_user_error(proc, fragment)
    assert not out.exists()
