"""benchmarks/gpu_plan.py: the pace estimate that decides whether a GPU run is stopped,
the plans (valid runs, votes over runs trained before them), the vote stage, the
phases table, the environment check's messages, and the smoke plan's new steps end to
end on the CPU."""

import json
import os
import subprocess
import sys
import time

import pytest

from benchmarks import gpu_plan


def test_epoch_seconds_ignores_a_single_slow_interval():
    done = [{"epoch_train_s": 2.5}] * 4
    # Epochs seen at 10 s, 14 s (a 4 s gap: a one-off), 16.7 s, 19.4 s.
    seen = [(1, 10.0), (2, 14.0), (3, 16.7), (4, 19.4)]
    assert abs(gpu_plan.epoch_seconds(seen, done) - 2.7) < 1e-9
    # Two intervals: their mean is the median of two.
    assert abs(gpu_plan.epoch_seconds(seen[:3], done[:3]) - 3.35) < 1e-9


def test_epoch_seconds_before_three_epochs_uses_the_training_time():
    done = [{"epoch_train_s": 2.0}, {"epoch_train_s": 3.0}]
    assert abs(gpu_plan.epoch_seconds([(1, 10.0), (2, 14.0)], done) - 3.45) < 1e-9
    assert abs(gpu_plan.epoch_seconds([(1, 10.0)], done[:1]) - 2.3) < 1e-9
    # Several epochs finished between two looks count as one interval of that many.
    seen = [(1, 0.0), (3, 6.0), (5, 12.0)]
    assert gpu_plan.epoch_seconds(seen, done) == 3.0


def test_every_plan_step_is_a_valid_run_and_votes_name_earlier_runs():
    from mnist_cnn import config as config_lib
    for plan, steps in gpu_plan.PLANS.items():
        names = [name for _, name, _ in steps]
        assert len(set(names)) == len(names), plan
        trained = []
        for kind, name, arg in steps:
            if kind == "train":
                exp, extra = arg
                c = config_lib.validate(gpu_plan.run_config(exp, extra))
                for flag in extra:   # each flag reached the config
                    field, _, value = flag.removeprefix("--config.").partition("=")
                    assert str(c[field]) == value, (plan, name, flag)
                assert gpu_plan.num_epochs(exp, extra) == c.num_epochs
                trained.append((name, c))
            elif kind == "vote":
                runs, rule = arg
                assert set(runs) <= {n for n, _ in trained}, (plan, name)
                voters = [c for n, c in trained if n in runs]
                assert rule or not any(c.train_on_validation for c in voters), (plan, name)


def test_full_plan_trains_each_preprocessing_with_seeds_of_its_own():
    from mnist_cnn import config as config_lib
    steps = [arg for kind, _, arg in gpu_plan.PLANS["full"] if kind == "train"]
    configs = [config_lib.validate(gpu_plan.run_config(exp, extra))
               for exp, extra in steps]
    # First the two all-convolutional ensembles (original and deskewed digits), then the
    # four-conv network's seven preprocessings.
    assert [c.layers[-2].kind == "conv_pool" for c in configs] == [True] * 2 + [False] * 7
    assert [(c.width_norm, c.deskew) for c in configs] == [(0, False), (0, True)] + [
        (0, False), (0, True), (18, False), (14, False), (16, False), (12, False),
        (20, False)]
    assert all(c.num_members == 5 and c.train_on_validation for c in configs)
    assert len(set(gpu_plan.PRE_RUNS)) == len(steps) - 2 == 7
    seeds = [int(extra[0].split("=")[1]) for _, extra in steps]
    assert min(seeds) > 74   # every seed of this plan is new: the CPU runs used 0-74
    members = 5
    spans = [set(range(s, s + members)) for s in seeds]
    assert all(not (a & b) for i, a in enumerate(spans) for b in spans[i + 1:])


def test_vote_stage_votes_only_when_every_run_finished(tmp_path):
    s = gpu_plan.Runner(str(tmp_path / "out"), 100, "", str(tmp_path / "runs"))
    calls = []
    s.run = lambda name, args, limit, watch=None: calls.append(args) or 0
    for run in ("a", "b"):
        (tmp_path / "runs" / run / "checkpoints").mkdir(parents=True)
    (tmp_path / "runs" / "a" / "summary.json").write_text("{}")
    assert gpu_plan.stage_vote(s, "v", ["a", "b"], "mean_softmax") is None
    assert calls == [] and "no finished run for b" in (tmp_path / "out" / "log.txt").read_text()
    (tmp_path / "runs" / "b" / "summary.json").write_text("{}")
    assert gpu_plan.stage_vote(s, "v", ["a", "b"], "mean_softmax") == 0
    assert calls and "--vote_rule=mean_softmax" in calls[0]


def test_phase_rows_read_finished_runs_and_speedrun_processes(tmp_path):
    """A finished train step gives a row from its summary.json and the process time
    measured by the plan; a stopped one none; a speedrun step a row per process."""
    s = gpu_plan.Runner(str(tmp_path / "out"), 100, "", str(tmp_path / "runs"))
    (tmp_path / "runs" / "t").mkdir()
    phases = dict(load=0.5, plan=2.0, compile=1.5, train=4.0, evaluate=1.0, test_pass=0.2)
    (tmp_path / "runs" / "t" / "summary.json").write_text(
        json.dumps(dict(wall_time_s=8.0, phase_time_s=phases)))
    speed = dict(seed=0, wall_s=5.0, outside_run_s=1.5, **{f"{k}_s": v for k, v in
                                                           phases.items()})
    (tmp_path / "out" / "sp.json").write_text(json.dumps(dict(runs=dict(cold=[speed]))))
    s.steps = dict(t=dict(status="done", process_s=10.0), u=dict(status="stopped"),
                   sp=dict(status="done", process_s=9.0))
    steps = [("train", "t", None), ("train", "u", None), ("speedrun", "sp", None)]
    rows = gpu_plan.phase_rows(s, steps)
    assert [r["run"] for r in rows] == ["t", "sp cold seed 0"]
    assert rows[0]["fraction_outside"] == 0.6 and rows[0]["outside_run_s"] == 2.0
    assert rows[1]["fraction_outside"] == 0.2 and rows[1]["in_run_s"] == 3.5
    gpu_plan.write_phases(s, rows[:1])
    gpu_plan.write_phases(s, rows[1:])   # a second call adds to the first's rows
    md = (tmp_path / "out" / "phases.md").read_text()
    assert "| t | 10.00 | 8.00 | 4.00 | 6.00 | 60.0% |" in md
    assert "| sp cold seed 0 | 5.00 |" in md


def test_environment_problems_are_one_line_with_the_fix():
    info = dict(missing=["ml_collections", "yaml"], python="3.12.3", date="2026-12-01")
    problem = gpu_plan.env_problem(info, "full")
    assert "ml_collections PyYAML" in problem and "--wheels=wheels/" in problem
    assert "no GPU" in gpu_plan.env_problem(dict(missing=[], backend="cpu"), "full")
    assert gpu_plan.env_problem(dict(missing=[], backend="cpu"), "smoke") is None
    info = dict(device_kind="NVIDIA H200", date="2026-12-01")
    assert gpu_plan.out_dir("results/{date}-{card}/", info) == "results/2026-12-01-nvidia-h200/"
    assert gpu_plan.bench_device_counts(1) == "1" and gpu_plan.bench_device_counts(8) == "1,8"


def test_bench_stage_times_the_kinds_over_every_device_and_writes_the_table(tmp_path):
    s = gpu_plan.Runner(str(tmp_path / "out"), 100, "", str(tmp_path / "runs"))
    s.info = dict(device_count=4)
    calls = []

    def run(name, args, limit, watch=None):
        calls.append(args)
        out = next(a.split("=", 1)[1] for a in args if a.startswith("--benchmark_out="))
        with open(out, "w") as f:
            json.dump(dict(table="| batch |"), f)
        return 0
    s.run = run
    sweep = next(
        arg for kind, name, arg in gpu_plan.PLANS["smoke"] if name == "bench_parallel")
    assert gpu_plan.stage_bench(s, "bench_parallel", sweep) == 0
    assert {"--parallels=none,pmap,sharding", "--device_counts=1,4"} <= set(calls[0])
    md = (tmp_path / "out" / "bench_parallel.md").read_text()
    assert md.startswith("`python run.py --mode=benchmark") and "| batch |" in md


@pytest.mark.slow
def test_smoke_plan_new_steps_write_their_files(tmp_path, mnist_dir, repo_root):
    """The speedrun and throughput steps of --plan=smoke on the CPU, end to end: each
    file they write, checked against the others (bench_parallel's run.py call is the
    benchmark mode's, tested in test_bench.py; its arguments below)."""
    import jax
    steps = "speedrun,bench_throughput"
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_plan.py", "--plan=smoke", f"--only={steps}",
         f"--out={tmp_path}/{{date}}-{{card}}", f"--runs_dir={tmp_path / 'runs'}",
         "--budget=400"], cwd=repo_root, capture_output=True, text=True, timeout=600,
        env={**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
             "MNIST_DATA_DIR": mnist_dir})   # one device: bench_parallel at count 1
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    kind = jax.devices()[0].device_kind
    out = tmp_path / f"{time.strftime('%Y-%m-%d')}-{gpu_plan.card_slug(kind)}"
    read = lambda name: json.loads((out / name).read_text())
    manifest = read("manifest.json")
    assert manifest["device_kind"] == kind and manifest["date"] == time.strftime("%Y-%m-%d")
    assert {n: r["status"] for n, r in manifest["calls"][-1]["steps"].items()} == dict.fromkeys(
        steps.split(","), "done")
    rows = read("bench_throughput.json")["rows"]
    assert sorted({r["dtype"] for r in rows}) == ["bfloat16", "float32"]
    assert all(r["train_images_per_s"] > 0 for r in rows)
    assert "| bfloat16 |" in (out / "bench_throughput.md").read_text()
    speed = read("speedrun.json")
    assert speed["cold_wall_s"]["median"] > 0 and speed["warm_wall_s"]["median"] > 0
    runs = speed["runs"]["cold"] + speed["runs"]["warm"]
    phases = read("phases.json")["rows"]
    assert [p["run"] for p in phases] == ["speedrun cold seed 0", "speedrun warm seed 0"]
    for p, r in zip(phases, runs):
        assert 0 < p["fraction_outside"] < 1
        assert p["fraction_outside"] == pytest.approx(1 - r["train_s"] / r["wall_s"], abs=1e-3)
    assert (out / "phases.md").read_text().count("| speedrun ") == 2
