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


def test_vmapped_hyperparameters_equal_separate_runs():
    """One stacked program with per-run learning rate, l2, momentum and seed gives each
    run's parameters as if trained alone with that config (float32 tolerance)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mnist_cnn import networks, train
    from tests.test_train import fake_data, tiny_config

    c = tiny_config(shuffle=True, momentum=0.5, schedule="cosine", num_epochs=2)
    c.layers[1].dropout = 0.0
    x, y = fake_data(40)
    nb = train.steps_per_epoch(40, c.batch_size)
    runs = [dict(learning_rate=0.05, l2=0.1, momentum=0.5, seed=0),
            dict(learning_rate=0.2, l2=0.0, momentum=0.0, seed=1),
            dict(learning_rate=0.01, l2=2.0, momentum=0.9, seed=0)]
    model = networks.from_config(c)
    tx = train.make_optimizer(c, nb, momentum=c.momentum)
    state = train.init_states(model, tx, 0, len(runs), seeds=[r["seed"] for r in runs])
    hp = {f: jnp.asarray([r[f] for r in runs], jnp.float32)
          for f in ("learning_rate", "l2", "momentum")}
    chunk = train.make_train_chunk(model, tx, c, nb, stacked=True)
    for epoch in range(2):
        order = train.epoch_order(state.key, epoch, 40, True)
        state, _, _ = chunk(state, x, y, order, 0, num_steps=nb, hp=hp)
    for k, r in enumerate(runs):
        alone_c = tiny_config(shuffle=True, schedule="cosine", num_epochs=2, **r)
        alone_c.layers[1].dropout = 0.0
        alone_tx = train.make_optimizer(alone_c, nb, momentum=r["momentum"])
        alone = train.init_state(model, alone_tx, r["seed"])
        one = train.make_train_chunk(model, alone_tx, alone_c, nb)
        for epoch in range(2):
            order = train.shuffle_order(alone.key, epoch, 40)
            alone, _, _ = one(alone, x, y, order, 0, num_steps=nb)
        for a, b in zip(jax.tree.leaves(alone.params), jax.tree.leaves(state.params)):
            np.testing.assert_allclose(np.asarray(b)[k], np.asarray(a), rtol=2e-5, atol=2e-6)


def test_vmapped_sweep_reports_like_sequential_sweep(tmp_path, mnist_dir):
    args = [*QUICK, "--config.num_epochs=2", "--config.shuffle=True",
            "--sweep=learning_rate=0.03,0.1", "--sweep=seed=0,1"]
    together = run(*args, f"--workdir={tmp_path / 'v'}")
    apart = run(*args, f"--workdir={tmp_path / 's'}", "--nosweep_vmap")
    assert together.returncode == 0 and apart.returncode == 0, (together.stderr, apart.stderr)
    assert "together (vmapped)" in together.stdout
    assert "together (vmapped)" not in apart.stdout
    rows_v = {r["dir"]: r for r in _rows(tmp_path / "v" / "sweep.csv")}
    rows_s = {r["dir"]: r for r in _rows(tmp_path / "s" / "sweep.csv")}
    assert rows_v.keys() == rows_s.keys() and len(rows_v) == 4
    for d in rows_v:
        mv = [json.loads(l) for l in (tmp_path / "v" / d / "metrics.jsonl").read_text().splitlines()]
        ms = [json.loads(l) for l in (tmp_path / "s" / d / "metrics.jsonl").read_text().splitlines()]
        for a, b in zip(mv, ms):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
            assert abs(a["validation_accuracy"] - b["validation_accuracy"]) <= 0.002
    again = run(*args, f"--workdir={tmp_path / 'v'}")      # resumable: nothing left to do
    assert again.returncode == 0 and "already finished" in again.stdout
