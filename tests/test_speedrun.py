"""benchmarks/speedrun.py: the summary of timed runs against hand-computed figures, the
cache flags it passes, and a tiny plan end to end (one seed, cold and warm)."""

import json
import subprocess
import sys

import pytest

from benchmarks import speedrun


def row(wall, plan, train, test_pass, acc, compile_s=1.0):
    phases = dict(load_s=0.3, plan_s=plan, compile_s=compile_s, train_s=train,
                  evaluate_s=2 * test_pass, test_pass_s=test_pass, outside_run_s=1.0)
    return dict(wall_s=wall, run_s=speedrun.record_s(
        {k[:-2]: v for k, v in phases.items()}), test_accuracy=acc, **phases)


def test_summary_medians_ranges_record_timing_and_mean_accuracy():
    cold = [row(7.0, 3.0, 3.0, 0.2, 0.991), row(6.0, 2.5, 3.0, 0.1, 0.989),
            row(9.0, 3.5, 3.0, 0.3, 0.992)]
    warm = [row(5.0, 0.5, 3.0, 0.2, 0.991), row(4.0, 0.4, 3.0, 0.1, 0.989),
            row(4.5, 0.6, 3.0, 0.3, 0.992)]
    s = speedrun.summarize(dict(cold=cold, warm=warm), 0.99)
    assert s["cold_wall_s"] == dict(median=7.0, min=6.0, max=9.0)
    assert s["warm_wall_s"] == dict(median=4.5, min=4.0, max=5.0)
    # in the run: plan + train + test pass, 6.2 / 5.6 / 6.8 cold, 3.7 / 3.5 / 3.9 warm
    assert s["cold_run_s"] == dict(median=6.2, min=5.6, max=6.8)
    assert s["warm_run_s"] == dict(median=3.7, min=3.5, max=3.9)
    assert s["cold_phases_s"]["plan_s"] == 3.0 and s["warm_phases_s"]["plan_s"] == 0.5
    assert s["test_accuracy"] == dict(mean=0.990667, min=0.989, max=0.992)
    assert s["reached"] and s["warm_same_accuracy"] and s["seeds"] == 3
    assert not s["fast"] and not s["met"] and s["target_s"] == 5.0   # 7.0 s cold
    quick = speedrun.summarize(dict(cold=cold, warm=warm), 0.99, target_s=7.5)
    assert quick["fast"] and quick["met"]
    assert not speedrun.summarize(dict(cold=cold, warm=warm), 0.9915, 7.5)["met"]
    warm[1]["test_accuracy"] = 0.98   # a warm run whose program differed
    assert not speedrun.summarize(dict(cold=cold, warm=warm), 0.999)["warm_same_accuracy"]
    text = speedrun.table(s)
    assert "| 3 | 7.00 (6.00-9.00) | 4.50 (4.00-5.00) | 6.20 (5.60-6.80) |" in text
    assert "99.067 (98.90-99.20)" in text


def test_cold_turns_every_cache_off_and_warm_names_its_folder(monkeypatch):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/somewhere")
    flags, env = speedrun.cache_args("")
    assert flags == ["--config.compile_cache="] and "JAX_COMPILATION_CACHE_DIR" not in env
    flags, env = speedrun.cache_args("/tmp/c")
    assert flags == ["--config.compile_cache=/tmp/c"]


@pytest.mark.slow
def test_a_tiny_plan_times_cold_and_warm_runs_of_the_same_program(tmp_path, mnist_dir,
                                                                  repo_root):
    out = tmp_path / "s.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/speedrun.py", "--seeds=1", "--override=train_size=256",
         f"--out={out}"], cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    s = json.loads(out.read_text())
    cold, warm = s["runs"]["cold"][0], s["runs"]["warm"][0]
    assert s["seeds"] == 1 and s["warm_same_accuracy"]
    assert warm["compile_s"] < cold["compile_s"]   # read back from the cache
    assert cold["wall_s"] > cold["run_s"] > cold["train_s"] > 0
    assert "| 1 |" in proc.stdout and "cold phases" in proc.stdout
