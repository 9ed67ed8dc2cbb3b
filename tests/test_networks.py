"""Networks built from configs: shapes, network3 initialisation, forward vs numpy."""

import importlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_cnn import config as config_lib
from mnist_cnn import networks

EXPERIMENTS = ["intro_conv", "shallow", "basic_conv", "omit_fc", "dbl_conv",
               "dbl_conv_tanh", "dbl_conv_relu", "expanded_data", "expanded_data_double_fc",
               "ensemble", "double_fc_dropout", "modern", "speedrun", "speedrun_sgd"]


def shapes(params):
    return {k: {n: v.shape for n, v in layer.items()} for k, layer in params.items()}


def abstract_params(model):
    """The model's parameters as shapes and dtypes, without computing them."""
    return jax.eval_shape(lambda: networks.init_params(model, jax.random.PRNGKey(0)))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_validates_and_builds(name):
    c = importlib.import_module(f"experiments.{name}").get_config()
    config_lib.validate(c)
    for field in ("num_epochs", "batch_size", "learning_rate", "l2", "seed", "train_size",
                  "data_dir"):
        assert field in c
    model = networks.from_config(c)
    logits = jax.eval_shape(lambda p: model.apply({"params": p}, jnp.zeros((2, 28, 28, 1))),
                            abstract_params(model))   # shapes only: nothing is computed
    assert logits.shape == (2, 10)


def test_dbl_conv_has_the_books_shapes():
    from experiments import dbl_conv
    params = abstract_params(networks.from_config(dbl_conv.get_config()))
    assert shapes(params) == {
        "layer0_conv": {"w": (5, 5, 1, 20), "b": (20,)},
        "layer1_conv": {"w": (5, 5, 20, 40), "b": (40,)},
        "layer2_fc": {"w": (40 * 4 * 4, 100), "b": (100,)},
        "layer3_softmax": {"w": (100, 10), "b": (10,)},
    }


def test_network3_initialisation_statistics():
    from experiments import basic_conv
    c = basic_conv.get_config()
    c.layers[0].features = 200   # enough samples for the statistics
    model = networks.from_config(c)
    params = jax.jit(lambda k: networks.init_params(model, k))(jax.random.PRNGKey(1))
    conv_w = np.asarray(params["layer0_conv"]["w"])
    # n_out = 200 * 5 * 5 / (2 * 2) = 1250 -> std sqrt(1/1250)
    assert conv_w.std() == pytest.approx(np.sqrt(1 / 1250), rel=0.05)
    assert np.asarray(params["layer0_conv"]["b"]).std() == pytest.approx(1.0, rel=0.2)
    assert np.asarray(params["layer1_fc"]["w"]).std() == pytest.approx(np.sqrt(1 / 100), rel=0.05)
    assert not np.any(np.asarray(params["layer2_softmax"]["w"]))
    assert not np.any(np.asarray(params["layer2_softmax"]["b"]))


def test_modern_initialisation_zero_biases_he_for_relu():
    from experiments import dbl_conv_relu
    c = dbl_conv_relu.get_config()
    c.init = "modern"
    model = networks.from_config(c)
    params = jax.jit(lambda k: networks.init_params(model, k))(jax.random.PRNGKey(2))
    assert not np.any(np.asarray(params["layer1_conv"]["b"]))
    fan_in = 5 * 5 * 20
    assert np.asarray(params["layer1_conv"]["w"]).std() == pytest.approx(
        np.sqrt(2 / fan_in), rel=0.1)


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def test_forward_matches_numpy_composition(np_layers):
    """act(maxpool(conv(x)) + b) -> fc -> softmax logits, computed with numpy loops."""
    c = config_lib.base_config()
    c.layers = (config_lib.conv_pool(3, kernel=3, activation="sigmoid"),
                config_lib.fc(7, activation="tanh"), config_lib.softmax(10))
    c.init = "modern"   # non-zero softmax weights so the whole path is exercised
    model = networks.from_config(c)
    params = networks.init_params(model, jax.random.PRNGKey(3), image_shape=(10, 10, 1))
    params = jax.tree.map(lambda p: p + 0.1, params)   # non-zero biases too
    p = jax.tree.map(np.asarray, params)
    x = np.random.default_rng(4).uniform(size=(2, 10, 10, 1)).astype(np.float32)
    h = np_layers.conv(x, p["layer0_conv"]["w"], (1, 1), ((0, 0), (0, 0)))
    h = sigmoid(np_layers.pool(h, (2, 2), (2, 2), np.max) + p["layer0_conv"]["b"])
    h = np.tanh(h.reshape(2, -1) @ p["layer1_fc"]["w"] + p["layer1_fc"]["b"])
    want = h @ p["layer2_softmax"]["w"] + p["layer2_softmax"]["b"]
    got = model.apply({"params": params}, jnp.asarray(x))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_network3_dropout_scales_inputs_at_evaluation():
    c = config_lib.base_config()
    c.layers = (config_lib.fc(5, activation="linear"), config_lib.softmax(3, dropout=0.4))
    c.init = "modern"
    model = networks.from_config(c)
    params = networks.init_params(model, jax.random.PRNGKey(5), image_shape=(4,))
    x = jnp.ones((2, 4))
    h = x @ params["layer0_fc"]["w"] + params["layer0_fc"]["b"]
    want = (1 - 0.4) * h @ params["layer1_softmax"]["w"] + params["layer1_softmax"]["b"]
    np.testing.assert_allclose(model.apply({"params": params}, x, train=False), want, rtol=1e-5)
    # In training the output depends on the dropout key.
    a = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(0)})
    b = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    assert not np.allclose(a, b)


@pytest.mark.parametrize("name,arg,fc_sizes,dropouts,epochs,l2", [
    ("expanded_data", "n=300", [300], [0.0, 0.0], 60, 0.1),
    ("expanded_data_double_fc", "n=1000", [1000, 1000], [0.0, 0.0, 0.0], 60, 0.1),
    ("double_fc_dropout", None, [1000, 1000], [0.5, 0.5, 0.5], 40, 0.0),
])
def test_chapter_end_experiments_have_the_books_settings(name, arg, fc_sizes, dropouts,
                                                         epochs, l2):
    mod = importlib.import_module(f"experiments.{name}")
    c = mod.get_config(arg) if arg else mod.get_config()
    assert c.expand_data and c.learning_rate == 0.03 and c.batch_size == 10
    assert c.num_epochs == epochs and c.l2 == l2
    assert [l.features for l in c.layers if l.kind == "fc"] == fc_sizes
    assert [l.dropout for l in c.layers if l.kind in ("fc", "softmax")] == dropouts
    assert [l.activation for l in c.layers if l.kind != "softmax"] == ["relu"] * (
        2 + len(fc_sizes))


def test_modern_batch_norm_variant():
    from experiments import modern
    c = config_lib.validate(modern.get_config("bn=1"))
    assert [layer.get("batch_norm", False) for layer in c.layers] == [True, True, False,
                                                                      False]
    params = abstract_params(networks.from_config(c))
    assert set(params["layer1_conv"]) == {"w", "b", "g", "bn_mean", "bn_var"}
    plain = config_lib.validate(modern.get_config())
    assert not config_lib.uses_batch_norm(plain)


def test_variant_argument_errors():
    from experiments import expanded_data
    with pytest.raises(config_lib.ConfigError, match="must be a int"):
        expanded_data.get_config("n=big")
    with pytest.raises(config_lib.ConfigError, match="takes n="):
        expanded_data.get_config("m=3")


@pytest.mark.parametrize("k1, side", [(3, 4), (5, 3), (7, 3)])
def test_modern_deep_first_kernel_variant(k1, side):
    """k1 sets the first conv's receptive field; the rest of the four-conv net follows
    (VALID convs, 2x2 pools), so the FC layer sees side x side x 64."""
    from experiments import modern
    c = config_lib.validate(modern.get_config(f"deep=1,bn=1,k1={k1}"))
    params = abstract_params(networks.from_config(c))
    assert params["layer0_conv"]["w"].shape == (k1, k1, 1, 32)
    assert [params[f"layer{i}_conv"]["w"].shape[0] for i in (1, 2, 3)] == [3, 3, 3]
    assert params["layer4_fc"]["w"].shape == (side * side * 64, 1024)
    shallow = config_lib.validate(modern.get_config(f"k1={k1}"))
    assert shallow.layers[0].kernel == k1 and shallow.layers[1].kernel == 5


def test_modern_pool_variant():
    """pool=l2 puts the chapter's L2 pooling in every pooling layer of the modern nets
    (the deep net's unpooled convs stay unpooled); a misspelt kind fails validation."""
    from experiments import modern
    deep = config_lib.validate(modern.get_config("deep=1,bn=1,k1=7,pool=l2"))
    assert [layer.pool for layer in deep.layers[:4]] == ["none", "l2", "none", "l2"]
    shallow = config_lib.validate(modern.get_config("pool=l2"))
    assert [layer.pool for layer in shallow.layers[:2]] == ["l2", "l2"]
    assert [layer.pool for layer in modern.get_config().layers[:2]] == ["max", "max"]
    with pytest.raises(config_lib.ConfigError, match="pool must be one of"):
        config_lib.validate(modern.get_config("pool=L2"))


def test_modern_variants_that_only_set_fields_name_the_flag_instead():
    """Variants change structure; a key that only set config fields (rot=, tta=,
    deskew=, ...) is refused with the --config.FIELD=V flag that does it."""
    from experiments import modern
    for arg, flag in (("rot=10", "--config.augment_rotate=10"),
                      ("deskew=1", "--config.deskew=True"),
                      ("tta=1", "--config.eval_shifts=1"),
                      ("epochs=80", "--config.num_epochs=80")):
        with pytest.raises(config_lib.ConfigError, match=re.escape(flag)):
            modern.get_config(f"deep=1,{arg}")
    assert modern.get_config().deskew is False
    assert config_lib.base_config().deskew is False


def test_named_recipes_are_modern_variants_with_their_fields():
    """four_conv_elastic and allconv are modern's deep and allconv networks with the
    elastic recipe, retrained on 60,000 images; allconv trains 25 epochs, dropout 0.4."""
    from experiments import allconv, four_conv_elastic, modern
    deep, ac = four_conv_elastic.get_config(), allconv.get_config()
    assert [l.to_dict() for l in deep.layers] == [
        l.to_dict() for l in modern.get_config("deep=1,bn=1").layers]
    for c in (deep, ac):
        config_lib.validate(c)
        assert (c.augment_rotate, c.augment_scale, c.augment_elastic,
                c.augment_elastic_sigma, c.eval_shifts) == (10, 0.1, 36, 6, 1)
        assert c.train_on_validation and c.batch_size == 128 and c.augment_shift == 2
    assert deep.num_epochs == 40 and ac.num_epochs == 25
    assert ac.layers[-1].dropout == 0.4 and len(ac.layers) == 8


def test_modern_allconv_variant_forward_matches_numpy(np_layers):
    """allconv=1: seven convs (3x3, 3x3, 5x5 stride 2 SAME; again with 64 maps; 4x4 to
    128), no pooling, no FC layer, softmax. The evaluation forward pass (batch norm with
    its stored moments) equals a numpy loop composition with SAME padding written out
    by hand (TensorFlow's convention: 24 -> 12 pads 1 above, 2 below; 8 -> 4 likewise)."""
    from experiments import modern
    c = config_lib.validate(modern.get_config("allconv=1,bn=1"))
    assert [l.kind for l in c.layers] == ["conv_pool"] * 7 + ["softmax"]
    assert {l.pool for l in c.layers[:7]} == {"none"}
    model = networks.from_config(c)
    rng = np.random.default_rng(1)
    shapes_in = [(3, 1, 32), (3, 32, 32), (5, 32, 32), (3, 32, 64), (3, 64, 64), (5, 64, 64),
                 (4, 64, 128)]
    p = {f"layer{i}_conv": dict(w=rng.normal(0, (2 / (k * k * ci)) ** 0.5, (k, k, ci, co)),
                                b=rng.normal(0, 0.1, co), g=rng.uniform(0.5, 1.5, co),
                                bn_mean=rng.normal(0, 0.1, co), bn_var=rng.uniform(0.5, 2, co))
         for i, (k, ci, co) in enumerate(shapes_in)}
    p["layer7_softmax"] = dict(w=rng.normal(0, 0.1, (128, 10)), b=rng.normal(0, 0.1, 10))
    p = jax.tree.map(lambda v: np.asarray(v, np.float32), p)
    params = jax.tree.map(jnp.asarray, p)   # the shapes the model asks for, or apply fails
    x = rng.uniform(size=(1, 28, 28, 1)).astype(np.float32)
    same = ((1, 2), (1, 2))
    steps = [(1, None), (1, None), (2, same), (1, None), (1, None), (2, same), (1, None)]
    h = x.astype(np.float64)
    sides = []
    for i, (stride, pads) in enumerate(steps):
        q = p[f"layer{i}_conv"]
        h = np_layers.conv(h, q["w"], (stride, stride), pads or ((0, 0), (0, 0)))
        h = (h - q["bn_mean"]) * q["g"] / np.sqrt(q["bn_var"] + networks.BN_EPS) + q["b"]
        h = np.maximum(h, 0.0)
        sides.append(h.shape[1])
    assert sides == [26, 24, 12, 10, 8, 4, 1] and h.shape[-1] == 128
    q = p["layer7_softmax"]
    want = h.reshape(1, -1) @ q["w"] + q["b"]   # inverted dropout: no scaling at evaluation
    got = jax.jit(model.apply)({"params": params}, jnp.asarray(x))
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
    forward, _ = networks.model_flops(c.layers)
    hand = 2 * (26 * 26 * 9 * 32 + 24 * 24 * 9 * 32 * 32 + 12 * 12 * 25 * 32 * 32
                + 10 * 10 * 9 * 32 * 64 + 8 * 8 * 9 * 64 * 64 + 4 * 4 * 25 * 64 * 64
                + 16 * 64 * 128 + 128 * 10)
    assert forward == hand


def test_modern_allconv_variant_rejects_options_it_has_no_place_for():
    from experiments import modern
    for arg in ("allconv=1,deep=1", "allconv=1,k1=7", "allconv=1,pool=l2", "allconv=1,fc=256"):
        with pytest.raises(config_lib.ConfigError, match="allconv=1"):
            modern.get_config(arg)
    assert modern.get_config("allconv=1").layers[-1].dropout == 0.5
