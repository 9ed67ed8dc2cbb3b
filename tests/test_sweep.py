"""Grid sweeps (mnist_cnn/sweep.py and run.py --sweep): parsing, the grid, resuming,
shards and collecting, and bad input."""

import csv
import json

import pytest

from experiments import dbl_conv_relu
from mnist_cnn import sweep

# dbl_conv_relu's layers narrowed to 4 and 8 maps: the same network shape for the sweep
# machinery, in about two thirds of the time.
QUICK = ["--config=experiments/dbl_conv_relu.py", "--config.train_size=100",
         "--config.num_epochs=1", "--config.plots=False", "--config.batch_size=20",
         "--config.layers[0].features=4", "--config.layers[1].features=8"]


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
    ("train_on_validation=false,true", "ranks its points by validation"),
])
def test_bad_sweep_specs(spec, fragment):
    with pytest.raises(sweep.SweepError, match=None) as e:
        sweep.parse([spec], dbl_conv_relu.get_config())
    assert fragment in str(e.value)


def test_sweep_of_a_config_trained_on_validation_refused():
    c = dbl_conv_relu.get_config()
    c.train_on_validation = True
    with pytest.raises(sweep.SweepError, match="ranks its points by validation"):
        sweep.parse(["learning_rate=0.1,0.2"], c)


def test_shard_spec():
    assert sweep.parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "x", "1/0", "-1/2"):
        with pytest.raises(sweep.SweepError):
            sweep.parse_shard(bad)


def _rows(path):
    return list(csv.DictReader(open(path)))


def test_grid_runs_every_point_writes_tables_and_resumes(tmp_path, mnist_dir, run_py):
    w = tmp_path / "sw"
    args = [*QUICK, f"--workdir={w}", "--sweep=learning_rate=0.03,0.3",
            "--sweep=layers[2].features=10,30"]
    proc = run_py(*args)
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
    again = run_py(*args)                          # re-run: every point is already finished
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("holds a finished run") == 4


def test_shards_then_collect_and_a_disagreeing_shard(tmp_path, mnist_dir, run_py,
                                                     assert_user_error):
    w = tmp_path / "sw"
    grid = ["--sweep=seed=0,1,2"]
    for i in range(2):
        proc = run_py(*QUICK, f"--workdir={w}", *grid, f"--sweep_shard={i}/2")
        assert proc.returncode == 0, proc.stderr
        assert "sweep_collect" in proc.stdout
    assert not (w / "sweep.csv").exists()
    assert len(list(w.glob("p00*/summary.json"))) == 3      # shard 0: 0, 2; shard 1: 1
    proc = run_py(*QUICK, f"--workdir={w}", "--sweep_collect")
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["seed"] for r in _rows(w / "sweep.csv")) == ["0", "1", "2"]
    bad = run_py(*QUICK, f"--workdir={w}", "--sweep=seed=0,1", "--sweep_shard=0/2")
    assert_user_error(bad, "different grid")
    base = run_py(*QUICK, f"--workdir={w}", *grid, "--config.l2=1.0")
    assert_user_error(base, "different base config", "l2")


@pytest.mark.parametrize("args,fragment", [
    (["--sweep=learning_rate=0.1,abc"], "learning_rate takes float values"),
    (["--sweep=nope=1"], "unknown config field"),
    (["--sweep=learning_rate=-1,0.1"], "learning_rate must be positive"),
    (["--sweep=seed=0,1", "--sweep_shard=2/2"], "--sweep_shard"),
    (["--sweep_shard=0/2"], "needs the --sweep flags"),
    (["--sweep_collect"], "sweep.json is missing"),
])
def test_bad_sweeps_fail_before_training(tmp_path, args, fragment, run_py, assert_user_error):
    w = tmp_path / "sw"
    proc = run_py(*QUICK, f"--workdir={w}", *args)
    assert_user_error(proc, fragment)
    assert not list(w.glob("p*"))


def test_vmapped_hyperparameters_equal_separate_runs(tiny_config, fake_data):
    """One stacked program with per-run learning rate, l2, momentum and seed gives each
    run's parameters as if trained alone with that config (float32 tolerance)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mnist_cnn import networks, train

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


@pytest.fixture
def vmapped_and_sequential(run_py, read_scalars):
    """vmapped_and_sequential(tmp_path, args, num_points) runs a sweep vmapped (in
    tmp_path/v) and with --nosweep_vmap (tmp_path/s); checks both ran as asked, over the
    same points, with the same training loss and validation accuracy per epoch. Returns
    {point dir: (vmapped metrics, sequential metrics)}."""
    return lambda *args: _vmapped_and_sequential(run_py, read_scalars, *args)


def _vmapped_and_sequential(run_py, read_scalars, tmp_path, args, num_points):
    together = run_py(*args, f"--workdir={tmp_path / 'v'}")
    apart = run_py(*args, f"--workdir={tmp_path / 's'}", "--nosweep_vmap")
    assert together.returncode == 0 and apart.returncode == 0, (together.stderr, apart.stderr)
    assert "together (vmapped)" in together.stdout
    assert "together (vmapped)" not in apart.stdout
    rows_v = {r["dir"]: r for r in _rows(tmp_path / "v" / "sweep.csv")}
    rows_s = {r["dir"]: r for r in _rows(tmp_path / "s" / "sweep.csv")}
    assert rows_v.keys() == rows_s.keys() and len(rows_v) == num_points
    pairs = {}
    for d in rows_v:
        mv, ms = ([json.loads(l) for l in (tmp_path / w / d / "metrics.jsonl").read_text()
                   .splitlines()] for w in ("v", "s"))
        for a, b in zip(mv, ms):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
            assert ("validation_accuracy" in a) == ("validation_accuracy" in b)
            if "validation_accuracy" in a:
                assert abs(a["validation_accuracy"] - b["validation_accuracy"]) <= 0.002
        lr_v, lr_s = (read_scalars(tmp_path / w / d / "tensorboard")["learning_rate"]
                      for w in ("v", "s"))   # each point's own schedule, both ways
        assert lr_v.keys() == lr_s.keys() and lr_v == pytest.approx(lr_s, rel=1e-6)
        pairs[d] = (mv, ms)
    return pairs


def test_vmapped_sweep_reports_like_sequential_sweep(tmp_path, mnist_dir, run_py,
                                                    vmapped_and_sequential):
    args = [*QUICK, "--config.num_epochs=2", "--config.shuffle=True",
            "--sweep=learning_rate=0.03,0.1", "--sweep=seed=0,1"]
    vmapped_and_sequential(tmp_path, args, 4)
    again = run_py(*args, f"--workdir={tmp_path / 'v'}")      # resumable: nothing left to do
    assert again.returncode == 0 and "already finished" in again.stdout


# ---- dropout rates as vmapped fields ----

@pytest.mark.parametrize("mode", ["network3", "inverted"])
@pytest.mark.parametrize("rate", [0.0, 0.058, 0.2, 0.5, 0.9])
def test_traced_keep_probability_is_the_static_rate_bit_for_bit(mode, rate):
    """layers.dropout with a traced keep probability from train.traced_hp draws the same
    mask and scales the same as the Python-float rate (0.058: float32 1 - p would be
    one ulp off float32(1 - p); traced_hp rounds once, as the static path does)."""
    import jax
    import numpy as np

    from mnist_cnn import layers, train

    x = jax.random.normal(jax.random.PRNGKey(3), (16, 50))
    key = jax.random.PRNGKey(4)
    keep = train.traced_hp({"layers[1].dropout": [rate]})["keep"][1][0]
    for is_train in (True, False):
        static = layers.dropout(x, rate, key, is_train, mode)
        static_jit = jax.jit(lambda: layers.dropout(x, rate, key, is_train, mode))()
        traced = jax.jit(lambda k: layers.dropout(x, 0.0, key, is_train, mode, keep=k))(keep)
        np.testing.assert_array_equal(np.asarray(static_jit), np.asarray(static))
        np.testing.assert_array_equal(np.asarray(traced), np.asarray(static))


def _train_dropout_sweep(tiny_config, fake_data, mode, rates, epochs=2, n=40):
    """Trains len(rates[k]) runs stacked (vmapped), run j with layers[k].dropout =
    rates[k][j] for each swept layer k, and each run alone with its rates in the config.
    Returns [(stacked params j, stacked probabilities j, alone params, alone probabilities)]."""
    import jax
    import numpy as np

    from mnist_cnn import networks, train

    def config(rate_of):
        c = tiny_config(shuffle=True, num_epochs=epochs, dropout_mode=mode)
        for k, r in rate_of.items():
            c.layers[k].dropout = r
        return c

    runs = len(next(iter(rates.values())))
    x, y = fake_data(n)
    vx, _ = fake_data(30, seed=7)
    base = config({k: 0.0 for k in rates})      # the group's config: rates come traced
    nb = train.steps_per_epoch(n, base.batch_size)
    model = networks.from_config(base)
    tx = train.make_optimizer(base, nb)
    state = train.init_states(model, tx, 0, runs, seeds=[0] * runs)
    hp = train.traced_hp({f"layers[{k}].dropout": v for k, v in rates.items()})
    chunk = train.make_train_chunk(model, tx, base, nb, stacked=True)
    for epoch in range(epochs):
        order = train.epoch_order(state.key, epoch, n, True)
        state, _, _ = chunk(state, x, y, order, 0, num_steps=nb, hp=hp)
    probs = np.asarray(train.make_predict(model, 20, stacked=True)(state.params, vx,
                                                                   hp["keep"]))
    out = []
    for j in range(runs):
        c = config({k: v[j] for k, v in rates.items()})
        alone_model = networks.from_config(c)
        alone_tx = train.make_optimizer(c, nb)
        alone = train.init_state(alone_model, alone_tx, 0)
        one = train.make_train_chunk(alone_model, alone_tx, c, nb)
        for epoch in range(epochs):
            alone, _, _ = one(alone, x, y, train.shuffle_order(alone.key, epoch, n), 0,
                              num_steps=nb)
        alone_probs = np.asarray(train.make_predict(alone_model, 20)(alone.params, vx))
        out.append((jax.tree.map(lambda a: np.asarray(a)[j], state.params), probs[j],
                    jax.tree.map(np.asarray, alone.params), alone_probs))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["network3", "inverted"])
def test_vmapped_dropout_rates_equal_separate_runs(mode, tiny_config, fake_data):
    """Per-run dropout rates on two layers (the fc layer and the softmax layer's inputs),
    0 included (that run's layer draws an all-ones mask where the run alone has no
    dropout at all): each stacked run's parameters and evaluation (network3's (1-p)
    scaling) equal its own sequential run's; runs with different rates differ."""
    import jax
    import numpy as np

    rates = {1: [0.0, 0.2, 0.5], 2: [0.3, 0.0, 0.25]}
    results = _train_dropout_sweep(tiny_config, fake_data, mode, rates)
    for got_params, got_probs, want_params, want_probs in results:
        for a, b in zip(jax.tree.leaves(got_params), jax.tree.leaves(want_params)):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(got_probs, want_probs, rtol=2e-5, atol=2e-6)
    for j in range(1, len(results)):    # the rate is not ignored: the runs differ
        w0, wj = (jax.tree.leaves(results[i][2]) for i in (0, j))
        assert max(float(np.max(np.abs(a - b))) for a, b in zip(w0, wj)) > 1e-3
        assert np.max(np.abs(results[0][3] - results[j][3])) > 1e-3


def test_network3_evaluation_scales_by_each_runs_keep_probability(tiny_config, fake_data):
    """The same parameters evaluated with keep probabilities 1 and 0.5 in network3 mode
    differ (its inputs are scaled by 1-p at evaluation) and equal the static models';
    in inverted mode evaluation ignores the rate."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mnist_cnn import networks, train

    x, _ = fake_data(10)
    for mode in ("network3", "inverted"):
        c = tiny_config(dropout_mode=mode)
        c.layers[1].dropout = 0.0
        model = networks.from_config(c)
        params = networks.init_params(model, jax.random.PRNGKey(0))
        stacked = jax.tree.map(lambda a: jnp.stack([a, a]), params)
        keep = train.traced_hp({"layers[1].dropout": [0.0, 0.5]})["keep"]
        got = np.asarray(train.make_predict(model, 5, stacked=True)(stacked, x, keep))
        for j, rate in enumerate((0.0, 0.5)):
            c.layers[1].dropout = rate
            want = train.make_predict(networks.from_config(c), 5)(params, x)
            np.testing.assert_allclose(got[j], want, rtol=1e-6, atol=1e-7)
        assert (np.max(np.abs(got[0] - got[1])) > 1e-3) == (mode == "network3")


def test_dropout_sweeps_are_vmappable_with_autodiff_only(tiny_config, fake_data):
    from mnist_cnn import data, networks, train

    c = dbl_conv_relu.get_config()
    axes = sweep.parse(["layers[3].dropout=0.0,0.5", "learning_rate=0.01,0.1"], c)
    assert sweep.vmappable(axes, c)
    assert sweep.vmappable(sweep.parse(["layers[2].dropout=0.1,0.5"], c), c)
    with c.unlocked():
        c.grad = "manual"
    assert not sweep.vmappable(axes, c)          # falls back to one run per point
    assert sweep.vmappable(sweep.parse(["learning_rate=0.01,0.1"], c), c)
    assert not sweep.vmappable(sweep.parse(["layers[2].features=10,20"], c), c)
    # and the manual step refuses per-run rates rather than ignoring them
    tc = tiny_config(grad="manual")
    model = networks.from_config(tc)
    tx = train.make_optimizer(tc, 10)
    step = train.make_train_step(model, tx, tc.l2, 10, config=tc)
    x, y = fake_data(4)
    with pytest.raises(ValueError, match="grad=manual"):
        step(train.init_state(model, tx, 0), data.to_float(x), y, {"keep": {1: 0.5}})


def test_vmapped_dropout_sweep_evaluating_every_second_epoch_reports_like_sequential(
        tmp_path, mnist_dir, vmapped_and_sequential):
    """A sweep over a dropout rate (vmapped as a traced keep probability), evaluated
    after epochs 2 and 3 only: the same costs and accuracies vmapped and one point at a
    time, the evaluated epochs reported, and the two rates trained differently."""
    args = [*QUICK, "--config.num_epochs=3", "--config.eval_every=2",
            "--sweep=layers[2].dropout=0.0,0.5"]
    losses = {}
    for d, (mv, ms) in vmapped_and_sequential(tmp_path, args, 2).items():
        for metrics in (mv, ms):
            assert [("test_accuracy" in m) for m in metrics] == [False, True, True]
        for a, b in zip(mv[1:], ms[1:]):
            assert abs(a["test_accuracy"] - b["test_accuracy"]) <= 0.002
        losses[d] = mv[-1]["train_loss"]
    assert len(set(losses.values())) == 2           # the two rates trained differently
    for r in _rows(tmp_path / "v" / "sweep.csv"):
        assert int(r["best_epoch"]) in (2, 3)
