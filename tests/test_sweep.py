"""Grid sweeps (mnist_cnn/sweep.py and run.py --sweep): parsing, the grid, resuming,
shards and collecting, and bad input."""

import csv
import json

import pytest

from experiments import dbl_conv_relu
from mnist_cnn import sweep
from tests.test_run import assert_user_error, run

QUICK = ["--config=experiments/dbl_conv_relu.py", "--config.train_size=100",
         "--config.num_epochs=1", "--config.plots=False", "--config.batch_size=20"]


def test_parse_types_nested_fields_and_cross_product():
    c = dbl_conv_relu.get_config()
    axes = sweep.parse(["learning_rate=0.01,1", "layers[2].features=50,100,200",
                        "shuffle=true,false", "schedule=constant,cosine"], c)
    assert axes[0] == ("learning_rate", [0.01, 1.0])
    assert axes[1] == ("layers[2].features", [50, 100, 200])
    assert axes[2] == ("shuffle", [True, False])
    grid = sweep.points(axes)
    assert len(grid) == 2 * 3 * 2 * 2
    assert grid[0] == {"learning_rate": 0.01, "layers[2].features": 50, "shuffle": True,
                       "schedule": "constant"}
    assert grid[1]["schedule"] == "cosine"            # the last axis varies fastest
    applied = sweep.apply(c, grid[5])
    assert applied.layers[2].features == 100 and applied.layers[2].kind == "fc"
    assert c.layers[2].features == 100 and c.learning_rate == 0.03   # the base is untouched
    assert isinstance(applied.learning_rate, float)


@pytest.mark.parametrize("spec,fragment", [
    ("no_such=1,2", "unknown config field 'no_such'"),
    ("learning_rate=fast", "learning_rate takes float values, got 'fast'"),
    ("num_epochs=1.5", "num_epochs takes int values"),
    ("learning_rate=", "no values for learning_rate"),
    ("learning_rate", "--sweep=FIELD=V1,V2"),
    ("layers[9].features=3", "has no element 9"),
    ("layers[2]=3", "names a whole layer"),
    ("layers[2].depth=3", "unknown config field"),
    ("shuffle=maybe", "shuffle takes bool values"),
    ("seed=1,1", "repeated"),
])
def test_bad_sweep_specs(spec, fragment):
    with pytest.raises(sweep.SweepError, match=None) as e:
        sweep.parse([spec], dbl_conv_relu.get_config())
    assert fragment in str(e.value)


def test_shard_spec():
    assert sweep.parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "x", "1/0", "-1/2"):
        with pytest.raises(sweep.SweepError):
            sweep.parse_shard(bad)


def _rows(path):
    return list(csv.DictReader(open(path)))


def test_grid_runs_every_point_writes_tables_and_resumes(tmp_path, mnist_dir):
    w = tmp_path / "sw"
    args = [*QUICK, f"--workdir={w}", "--sweep=learning_rate=0.03,0.3",
            "--sweep=layers[2].features=10,30"]
    proc = run(*args)
    assert proc.returncode == 0, proc.stderr
    rows = _rows(w / "sweep.csv")
    assert len(rows) == 4
    vals = [float(r["best_validation_accuracy"]) for r in rows]
    assert vals == sorted(vals, reverse=True)
    for r in rows:
        summary = json.loads((w / r["dir"] / "summary.json").read_text())
        config = json.loads((w / r["dir"] / "config.json").read_text())
        assert float(r["test_accuracy"]) == summary["test_accuracy"]
        assert config["learning_rate"] == float(r["learning_rate"])
        assert config["layers"][2]["features"] == int(r["layers[2].features"])
    assert (w / "sweep.png").stat().st_size > 1000
    assert (w / "sweep.md").read_text().count("\n") == 2 + 4
    again = run(*args)                          # re-run: every point is already finished
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("holds a finished run") == 4


def test_shards_then_collect_and_a_disagreeing_shard(tmp_path, mnist_dir):
    w = tmp_path / "sw"
    grid = ["--sweep=seed=0,1,2"]
    for i in range(2):
        proc = run(*QUICK, f"--workdir={w}", *grid, f"--sweep_shard={i}/2")
        assert proc.returncode == 0, proc.stderr
        assert "sweep_collect" in proc.stdout
    assert not (w / "sweep.csv").exists()
    assert len(list(w.glob("p00*/summary.json"))) == 3      # shard 0: 0, 2; shard 1: 1
    proc = run(*QUICK, f"--workdir={w}", "--sweep_collect")
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["seed"] for r in _rows(w / "sweep.csv")) == ["0", "1", "2"]
    bad = run(*QUICK, f"--workdir={w}", "--sweep=seed=0,1", "--sweep_shard=0/2")
    assert_user_error(bad, "different grid")
    base = run(*QUICK, f"--workdir={w}", *grid, "--config.l2=1.0")
    assert_user_error(base, "different base config", "l2")


@pytest.mark.parametrize("args,fragment", [
    (["--sweep=learning_rate=0.1,abc"], "learning_rate takes float values"),
    (["--sweep=nope=1"], "unknown config field"),
    (["--sweep=learning_rate=-1,0.1"], "learning_rate must be positive"),
    (["--sweep=seed=0,1", "--sweep_shard=2/2"], "--sweep_shard"),
    (["--sweep_shard=0/2"], "needs the --sweep flags"),
    (["--sweep_collect"], "sweep.json is missing"),
])
def test_bad_sweeps_fail_before_training(tmp_path, args, fragment):
    w = tmp_path / "sw"
    proc = run(*QUICK, f"--workdir={w}", *args)
    assert_user_error(proc, fragment)
    assert not list(w.glob("p*"))
