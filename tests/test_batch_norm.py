"""Batch normalisation in conv layers: the forward pass in training and evaluation
against numpy, population moments (precise BN) against numpy, zero gradients for the
stored moments, a run that writes calibrated moments, and its bad input."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_cnn import checkpoint, driver, networks, train
from mnist_cnn import config as config_lib

EPS = networks.BN_EPS


def small_config(batch_norm=True):
    c = config_lib.base_config()
    c.layers = (config_lib.conv_pool(4, kernel=3, activation="relu", batch_norm=batch_norm),
                config_lib.conv_pool(5, kernel=3, activation="tanh", batch_norm=batch_norm),
                config_lib.fc(6, activation="relu", dropout=0.5),
                config_lib.softmax(10))
    c.init, c.dropout_mode = "modern", "inverted"
    return config_lib.validate(c)


def perturbed_params(init_params, model, seed=0):
    """Initial parameters with every batch-norm value moved off its default, so a
    forward pass that ignored one of them would show."""
    params = init_params(model, jax.random.PRNGKey(seed))
    rng = np.random.default_rng(seed)
    out = {}
    for name, layer in params.items():
        layer = dict(layer)
        for k in ("g", "b", "bn_mean", "bn_var"):
            if k in layer:
                noise = rng.uniform(0.5, 1.5, layer[k].shape).astype(np.float32)
                layer[k] = jnp.asarray(noise if k in ("g", "bn_var") else noise - 1.0)
        out[name] = layer
    return out


@pytest.fixture
def conv_layer_ref(np_layers):
    """conv_layer_ref(x, p, act, train) -> act(g * (maxpool(conv(x)) - mean) /
    sqrt(var + eps) + b) in float64 numpy, with the batch's moments (train) or the
    stored ones; and the batch's moments."""
    return lambda x, p, act, train: _conv_layer_ref(np_layers, x, p, act, train)


def _conv_layer_ref(np_layers, x, p, act, train):
    y = np_layers.pool(np_layers.conv(x, p["w"], (1, 1), ((0, 0), (0, 0))), (2, 2), (2, 2),
                       np.max)
    y = y.astype(np.float64)
    mean, var = y.mean((0, 1, 2)), y.var((0, 1, 2))
    if not train:
        mean, var = np.float64(p["bn_mean"]), np.float64(p["bn_var"])
    out = act(p["g"] * (y - mean) / np.sqrt(var + EPS) + p["b"])
    return out, (y.mean((0, 1, 2)), y.var((0, 1, 2)))


def relu(v):
    return np.maximum(v, 0)


@pytest.mark.parametrize("train_mode", [True, False])
def test_conv_layers_match_numpy(train_mode, conv_layer_ref, init_params):
    c = small_config()
    c.layers[2].dropout = 0.0     # deterministic forward, to compare the logits
    model = networks.from_config(c)
    params = perturbed_params(init_params, model)
    p = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
    x = np.random.default_rng(1).uniform(size=(6, 28, 28, 1))
    h, _ = conv_layer_ref(x, p["layer0_conv"], relu, train_mode)
    h, _ = conv_layer_ref(h, p["layer1_conv"], np.tanh, train_mode)
    h = relu(h.reshape(6, -1) @ p["layer2_fc"]["w"] + p["layer2_fc"]["b"])
    want = h @ p["layer3_softmax"]["w"] + p["layer3_softmax"]["b"]
    got = model.apply({"params": params}, jnp.asarray(x, jnp.float32), train=train_mode,
                      rngs={"dropout": jax.random.PRNGKey(0)})
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


def test_training_normalises_each_feature_map(init_params):
    """In training each map leaves the normalisation with mean b and std g (over the
    batch and positions), whatever its scale going in."""
    c = small_config()
    c.layers[0].activation = "linear"
    model = networks.from_config(c)
    params = perturbed_params(init_params, model, seed=3)
    x = 40.0 * jax.random.uniform(jax.random.PRNGKey(2), (32, 28, 28, 1))
    conv = networks.ConvPool(4, 3, activation="linear", init_scheme="modern",
                             batch_norm=True)
    y = np.asarray(conv.apply({"params": params["layer0_conv"]}, x, train=True), np.float64)
    np.testing.assert_allclose(y.mean((0, 1, 2)), params["layer0_conv"]["b"], atol=1e-4)
    np.testing.assert_allclose(y.std((0, 1, 2)), params["layer0_conv"]["g"], rtol=1e-3)


def batch_moments_ref(conv_layer_ref, x, p):
    """Layer 0's and layer 1's moments for one batch, as training sees them: layer 0
    normalised by this batch's own moments."""
    h, m0 = conv_layer_ref(x, p["layer0_conv"], relu, True)
    _, m1 = conv_layer_ref(h, p["layer1_conv"], np.tanh, True)
    return m0, m1


def test_calibrate_sets_population_moments(conv_layer_ref, init_params):
    """make_calibrate = the size-weighted mean over batches (250 images in batches of
    80: three and a remainder of 10) of each batch's mean and mean square, computed in
    numpy; for one network and for stacked members."""
    c = small_config()
    model = networks.from_config(c)
    members = [perturbed_params(init_params, model, seed=s) for s in (0, 1)]
    images = np.random.default_rng(5).integers(0, 256, (250, 28, 28), dtype=np.uint8)
    x = images[..., None].astype(np.float64) / 255.0
    x[160:] *= 0.3    # the last batch and the remainder unlike the first ones
    images = np.round(x[..., 0] * 255).astype(np.uint8)
    x = images[..., None].astype(np.float64) / 255.0
    batches = [x[0:80], x[80:160], x[160:240], x[240:]]
    for stacked in (False, True):
        calibrate = train.make_calibrate(model, batch_size=80, stacked=stacked)
        params = (jax.tree.map(lambda *v: jnp.stack(v), *members) if stacked
                  else members[0])
        got = calibrate(params, jnp.asarray(images))
        for m, p in enumerate(members if stacked else members[:1]):
            g = jax.tree.map(lambda v: np.asarray(v[m] if stacked else v), got)
            p = jax.tree.map(lambda v: np.asarray(v, np.float64), p)
            per = [batch_moments_ref(conv_layer_ref, xb, p) for xb in batches]
            sizes = np.array([len(xb) for xb in batches], np.float64)
            for layer, name in enumerate(("layer0_conv", "layer1_conv")):
                means = np.array([q[layer][0] for q in per])
                mean_sqs = np.array([q[layer][1] + q[layer][0] ** 2 for q in per])
                mean = sizes @ means / sizes.sum()
                var = sizes @ mean_sqs / sizes.sum() - mean ** 2
                np.testing.assert_allclose(g[name]["bn_mean"], mean, rtol=1e-4, atol=1e-6)
                np.testing.assert_allclose(g[name]["bn_var"], var, rtol=1e-4, atol=1e-6)
                # ... which is not what the plain mean over the four batches gives
                assert not np.allclose(means.mean(0), mean, rtol=1e-3)
            for name in ("layer0_conv", "layer1_conv", "layer2_fc"):   # the rest kept
                np.testing.assert_array_equal(g[name]["w"], p[name]["w"].astype(np.float32))


def test_calibrating_twice_gives_what_once_does(init_params):
    """Calibrating layer 1 uses layer 0 at its population moments: calibrating twice
    gives what calibrating once does (the moments are a function of the weights and
    images only, not of the stored moments)."""
    model = networks.from_config(small_config())
    params = perturbed_params(init_params, model, seed=4)
    images = jnp.asarray(np.random.default_rng(6).integers(0, 256, (100, 28, 28),
                                                           dtype=np.uint8))
    calibrate = train.make_calibrate(model, batch_size=50)
    once = calibrate(params, images)
    twice = calibrate(once, images)
    for a, b in zip(jax.tree.leaves(once), jax.tree.leaves(twice)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_stored_moments_get_no_gradient_and_stay_put_in_training(init_params):
    c = small_config()
    c.momentum, c.nesterov, c.l2 = 0.9, True, 1.0
    model = networks.from_config(c)
    params = perturbed_params(init_params, model)
    x = jax.random.uniform(jax.random.PRNGKey(1), (8, 28, 28, 1))
    y = jnp.arange(8) % 10
    grads, _ = jax.jit(lambda p: jax.grad(train.loss_fn, has_aux=True)(   # jit: one compile
        p, model, x, y, jax.random.PRNGKey(0), 1.0, 10))(params)            # not one per op
    for name in ("layer0_conv", "layer1_conv"):
        assert not np.any(np.asarray(grads[name]["bn_mean"]))
        assert not np.any(np.asarray(grads[name]["bn_var"]))
        assert np.any(np.asarray(grads[name]["g"]))   # the scale does learn
    tx = train.make_optimizer(c, 10)
    state = train.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params),
                             jax.random.PRNGKey(0))
    step = jax.jit(train.make_train_step(model, tx, c.l2, 10, config=c))
    for _ in range(3):
        state, _ = step(state, x, y)
    for name in ("layer0_conv", "layer1_conv"):
        for k in ("bn_mean", "bn_var"):
            np.testing.assert_array_equal(state.params[name][k], params[name][k])
        assert not np.allclose(state.params[name]["g"], params[name]["g"])


@pytest.mark.slow
def test_run_stores_calibrated_moments(tmp_path, mnist_dir):
    """A run with batch norm evaluates and checkpoints the population moments of the
    first bn_calibration_images training images."""
    c = small_config()
    c.num_epochs, c.train_size, c.batch_size, c.bn_calibration_images = 1, 200, 20, 150
    c.data_dir, c.plots = mnist_dir, False
    summary = driver.run(c, str(tmp_path), log=lambda *a: None)
    assert summary["epochs_run"] == 1 and summary["test_accuracy"] > 0.15
    model = networks.from_config(c)
    template = train.init_states(model, train.make_optimizer(c, 10), 0, 1)
    state, _ = checkpoint.restore_latest(checkpoint.manager(str(tmp_path), 3), template)
    from mnist_cnn import data
    ds = data.load(data_dir=mnist_dir, train_size=200)
    want = train.make_calibrate(model)(state.params, jnp.asarray(ds.train.images[:150]))
    for name in ("layer0_conv", "layer1_conv"):
        assert not np.allclose(state.params[name]["bn_var"], 1.0)
        np.testing.assert_allclose(state.params[name]["bn_mean"], want[name]["bn_mean"],
                                   rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(state.params[name]["bn_var"], want[name]["bn_var"],
                                   rtol=1e-5, atol=1e-7)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["layers"][0]["batch_norm"] is True


@pytest.mark.parametrize("change,fragment", [
    (lambda c: setattr(c, "layers", (config_lib.conv_pool(4, batch_norm="yes"),
                                      config_lib.softmax(10))),
     "config.layers[0].batch_norm"),
    (lambda c: setattr(c, "grad", "manual"), "config.grad=manual has no batch"),
    (lambda c: setattr(c, "bn_calibration_images", 0), "config.bn_calibration_images"),
])
def test_bad_batch_norm_settings(change, fragment):
    c = small_config()
    change(c)
    with pytest.raises(config_lib.ConfigError, match=fragment.replace("[", r"\[")
                       .replace("]", r"\]").replace(".", r"\.")):
        config_lib.validate(c)


@pytest.mark.slow
def test_eval_every_skips_evaluations_without_changing_the_training(tmp_path,
                                                                   load_synthetic):
    """A batch-norm ensemble run evaluated after every epoch and the same run evaluated
    after epochs 2 and 3 only (config.eval_every=2, the last always): the same training
    costs every epoch, the same weights and accuracies at the end (calibrating for an
    evaluation changes no trained weight); the skipped epoch records its cost only, and
    the summary's best-validation choice sees the evaluated epochs."""
    from mnist_cnn import committee, driver
    from experiments import modern
    load_synthetic(n_train=300, n_validation=500, n_test=500)
    got = {}
    for every in (1, 2):
        c = modern.get_config("members=2,bn=1,fc=16")
        c.update(num_epochs=3, warmup_epochs=0.5, train_size=300, batch_size=30,
                 plots=True, bn_calibration_images=200, eval_every=every)
        c.layers[0].features, c.layers[1].features = 4, 8
        d = tmp_path / f"every{every}"
        summary = driver.run(c, str(d), log=lambda *a: None)
        lines = (d / "metrics.jsonl").read_text().splitlines()
        _, _, params, _ = committee.load_run(str(d))
        got[every] = summary, [json.loads(l) for l in lines], params
    (s1, m1, p1), (s2, m2, p2) = got[1], got[2]
    assert [m["train_loss"] for m in m2] == pytest.approx([m["train_loss"] for m in m1],
                                                          rel=1e-6)
    assert [("validation_accuracy" in m) for m in m2] == [False, True, True]
    assert m2[0]["members_train_loss"] == pytest.approx(m1[0]["members_train_loss"])
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    for k in ("final_test_accuracy", "members_test_accuracy"):
        assert s2[k] == pytest.approx(s1[k])
    assert s2["epochs_run"] == 3 and s2["best_epoch"] in (2, 3)
    best = max((2, 3), key=lambda e: (m1[e - 1]["validation_accuracy"], e))
    assert s2["best_epoch"] == best   # the later of a tie, among evaluated epochs
    assert (tmp_path / "every2" / "learning_curves.png").is_file()
