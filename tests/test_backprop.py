"""The hand-written backward passes (mnist_cnn/backprop.py) against JAX's autodiff
(float32 tolerance) and float64 central finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mnist_cnn import backprop as B
from mnist_cnn import config as config_lib
from mnist_cnn import layers as L
from mnist_cnn import losses, networks

RTOL, ATOL = 2e-5, 2e-6


def rand(key, shape, scale=1.0):
    return scale * jax.random.normal(jax.random.PRNGKey(key), shape, jnp.float32)


def vjp(f, x, dy):
    return jax.vjp(f, x)[1](dy)[0]


@pytest.mark.parametrize("kernel,stride,padding,c,o", [
    (5, 1, "VALID", 1, 3), (5, 1, "VALID", 4, 6), (3, 2, "VALID", 2, 5),
    (3, 1, "SAME", 3, 2), (4, 3, "SAME", 2, 2), (1, 1, "VALID", 3, 4), (5, 2, 1, 2, 3)])
def test_conv_backward_matches_autodiff(kernel, stride, padding, c, o):
    x, w = rand(0, (2, 11, 10, c)), rand(1, (kernel, kernel, c, o), 0.3)
    y = L.conv2d(x, w, None, stride, padding, "xla")
    dy = rand(2, y.shape)
    dx, dw = B.conv_backward(x, w, dy, stride, padding)
    np.testing.assert_allclose(dx, vjp(lambda x: L.conv2d(x, w, None, stride, padding, "xla"),
                                       x, dy), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(dw, vjp(lambda w: L.conv2d(x, w, None, stride, padding, "xla"),
                                       w, dy), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@settings(max_examples=8, deadline=None)
@given(h=st.integers(5, 12), w_=st.integers(5, 12), k=st.integers(1, 5),
       s=st.integers(1, 3), c=st.integers(1, 3), o=st.integers(1, 3),
       same=st.booleans(), seed=st.integers(0, 1000))
def test_conv_backward_property_over_shapes(h, w_, k, s, c, o, same, seed):
    padding = "SAME" if same else "VALID"
    if not same and (k > h or k > w_):
        return
    x, w = rand(seed, (1, h, w_, c)), rand(seed + 1, (k, k, c, o), 0.5)
    f = lambda x, w: L.conv2d(x, w, None, s, padding, "patches")
    y = jax.jit(f)(x, w)
    dy = rand(seed + 2, y.shape)
    # jitted: one compile per example instead of one per operation
    dx, dw = jax.jit(B.conv_backward, static_argnums=(3, 4))(x, w, dy, s, padding)
    want_dx, want_dw = jax.jit(lambda x, w, dy: jax.vjp(f, x, w)[1](dy))(x, w, dy)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dw, want_dw, rtol=1e-4, atol=1e-4)


POOL_CASES = [((2, 8, 8, 3), 2, None), ((2, 7, 9, 2), 2, None), ((1, 9, 9, 2), 3, 2),
              ((1, 8, 8, 2), 3, 1), ((2, 6, 6, 1), 3, None)]


@pytest.mark.parametrize("shape,window,stride", POOL_CASES)
@pytest.mark.parametrize("kind", ["max", "avg", "l2"])
def test_pool_backward_matches_autodiff(kind, shape, window, stride):
    x = rand(3, shape)
    if kind == "l2":
        x = x.at[:, :2, :2, :].set(0.0)          # an all-zero window: the subgradient
    f = lambda x: L.pool(x, kind, window, stride)
    y = f(x)
    dy = rand(4, y.shape)
    np.testing.assert_allclose(B.pool_backward(kind, x, y, dy, window, stride),
                               vjp(f, x, dy), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("shape,window,stride", POOL_CASES)
def test_max_pool_ties_split_as_jax_does(shape, window, stride):
    """Integer-valued inputs make many tied maxima; the error is shared as JAX shares
    it (equally in non-overlapping windows, pairwise halves in overlapping ones)."""
    x = jnp.round(rand(5, shape))
    x = x.at[0, :4, :4, 0].set(1.0)              # a block of exact ties
    dy = rand(6, L.max_pool(x, window, stride).shape)
    got = B.max_pool_backward(x, dy, window, stride)
    np.testing.assert_allclose(got, vjp(lambda x: L.max_pool(x, window, stride), x, dy),
                               rtol=RTOL, atol=ATOL)
    # Nothing lost or invented: the sums agree to float32 rounding of the terms (the sum
    # itself may be near zero, so the bound scales with their magnitudes).
    np.testing.assert_allclose(got.sum(), dy.sum(), rtol=0,
                               atol=1e-6 * float(jnp.abs(dy).sum()))


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "relu", "linear"])
def test_activation_backward(name):
    z = rand(7, (4, 9)).at[0, 0].set(0.0)
    da = rand(8, z.shape)
    np.testing.assert_allclose(B.activation_backward(name, z, da),
                               vjp(L.activation(name), z, da), rtol=RTOL, atol=ATOL)


def test_dense_softmax_l2_and_dropout_backward():
    x, w, b = rand(9, (5, 7)), rand(10, (7, 4)), rand(11, (4,))
    dy = rand(12, (5, 4))
    dx, dw, db = B.dense_backward(x, w, dy)
    want = jax.vjp(lambda x, w, b: L.dense(x, w, b), x, w, b)[1](dy)
    for got, ref in zip((dx, dw, db), want):
        np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)
    labels = jnp.array([0, 3, 1, 1, 2])
    np.testing.assert_allclose(B.softmax_log_likelihood_backward(dy, labels),
                               jax.grad(losses.log_likelihood)(dy, labels), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(B.l2_backward(w, 0.3, 7), jax.grad(
        lambda w: losses.l2_penalty({"l": {"w": w}}, 0.3, 7))(w), rtol=RTOL)
    key = jax.random.PRNGKey(3)
    for mode in ("network3", "inverted"):
        mask = jax.random.bernoulli(key, 0.6, x.shape)
        f = lambda x: L.dropout(x, 0.4, key, True, mode)
        np.testing.assert_allclose(B.dropout_backward(mask, rand(13, x.shape), 0.4, mode),
                                   vjp(f, x, rand(13, x.shape)), rtol=RTOL, atol=ATOL)


NETWORKS = [
    (config_lib.conv_pool(3, kernel=5, activation="sigmoid"),
     config_lib.fc(10, activation="sigmoid"), config_lib.softmax(10)),
    (config_lib.conv_pool(4, kernel=5, activation="relu"),
     config_lib.conv_pool(5, kernel=5, activation="relu"),
     config_lib.fc(12, activation="relu"), config_lib.softmax(10)),
    (config_lib.conv_pool(3, kernel=3, stride=2, pool="l2", activation="tanh", padding="SAME"),
     config_lib.conv_pool(4, kernel=3, pool="avg", pool_window=3, pool_stride=2,
                          activation="relu"),
     config_lib.softmax(10)),
    (config_lib.conv_pool(2, kernel=4, pool="none", activation="tanh"),
     config_lib.conv_pool(3, kernel=3, pool="max", pool_window=3, pool_stride=2),
     config_lib.fc(8, activation="linear"), config_lib.fc(6, activation="relu"),
     config_lib.softmax(10)),
]


@pytest.mark.parametrize("spec", range(len(NETWORKS)))
@pytest.mark.parametrize("init", ["network3", "modern"])
def test_network_grads_equal_jax_grad_of_the_flax_model(spec, init, init_params):
    """The manual backward pass of a whole network equals jax.grad of the cost the
    training step differentiates (the Flax model + network3's L2 term)."""
    layers = tuple(dict(l) for l in NETWORKS[spec])
    model = networks.Network(layers=layers, init_scheme=init, conv_impl="xla")
    params = init_params(model, jax.random.PRNGKey(spec))
    x = jax.random.uniform(jax.random.PRNGKey(20), (6, 28, 28, 1))
    y = jnp.array([0, 1, 2, 3, 4, 9])

    def cost(p):
        logits = model.apply({"params": p}, x)
        return losses.log_likelihood(logits, y) + losses.l2_penalty(p, 0.1, 50)

    want_cost, want = jax.jit(jax.value_and_grad(cost))(params)
    got_cost, got = jax.jit(lambda p: B.network_grads(p, layers, x, y, lmbda=0.1,
                                                      num_batches=50))(params)
    assert float(got_cost) == pytest.approx(float(want_cost), rel=1e-5)
    for path, g in jax.tree_util.tree_flatten_with_path(want)[0]:
        mine = got[path[0].key][path[1].key]
        scale = float(jnp.abs(g).max()) + 1e-6
        np.testing.assert_allclose(mine, g, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.slow
def test_network_grads_with_dropout_masks_equal_autodiff(init_params):
    layers = (dict(config_lib.conv_pool(3, activation="relu")),
              dict(config_lib.fc(20, activation="relu", dropout=0.5)),
              dict(config_lib.softmax(10, dropout=0.3)))
    model = networks.Network(layers=layers, init_scheme="modern")
    params = init_params(model, jax.random.PRNGKey(1))
    x = jax.random.uniform(jax.random.PRNGKey(2), (4, 28, 28, 1))
    y = jnp.array([1, 2, 3, 4])
    masks = {"layer1_fc": jax.random.bernoulli(jax.random.PRNGKey(3), 0.5, (4, 432)),
             "layer2_softmax": jax.random.bernoulli(jax.random.PRNGKey(4), 0.7, (4, 20))}
    for mode in ("network3", "inverted"):
        cost_and_grads = lambda p: B.network_grads(p, layers, x, y, masks=masks,
                                                   dropout_mode=mode)
        got = jax.jit(cost_and_grads)(params)[1]
        want = jax.jit(jax.grad(lambda p: cost_and_grads(p)[0]))(params)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_network_grads_agree_with_float64_finite_differences(init_params):
    layers = (dict(config_lib.conv_pool(2, kernel=5, activation="tanh")),
              dict(config_lib.conv_pool(2, kernel=3, pool="l2", activation="sigmoid")),
              dict(config_lib.softmax(10)))
    with jax.enable_x64(True):
        model = networks.Network(layers=layers, init_scheme="modern")
        params = jax.tree.map(lambda p: p.astype(jnp.float64),
                              init_params(model, jax.random.PRNGKey(5)))
        x = jax.random.uniform(jax.random.PRNGKey(6), (3, 28, 28, 1), jnp.float64)
        y = jnp.array([3, 1, 4])
        cost_and_grads = jax.jit(lambda p: B.network_grads(p, layers, x, y, lmbda=0.2,
                                                           num_batches=10))
        cost = lambda p: cost_and_grads(p)[0]
        _, grads = cost_and_grads(params)
        rng = np.random.default_rng(0)
        eps = 1e-6
        for name in params:
            for leaf in ("w", "b"):
                p = np.asarray(params[name][leaf])
                for _ in range(4):
                    idx = tuple(rng.integers(0, n) for n in p.shape)
                    plus, minus = p.copy(), p.copy()
                    plus[idx] += eps
                    minus[idx] -= eps
                    at = lambda v: {**params, name: {**params[name], leaf: jnp.asarray(v)}}
                    fd = (float(cost(at(plus))) - float(cost(at(minus)))) / (2 * eps)
                    assert float(grads[name][leaf][idx]) == pytest.approx(fd, rel=1e-5,
                                                                          abs=1e-8)


def test_training_with_manual_gradients_equals_autodiff(tiny_config, fake_data):
    """--config.grad=manual: an epoch of SGD with momentum, L2 and shuffling through the
    same optax step gives autodiff's parameters (float32 tolerance)."""
    from mnist_cnn import train
    x, y = fake_data(40)
    out = {}
    for grad in ("autodiff", "manual"):
        c = tiny_config(shuffle=True, momentum=0.9, grad=grad)
        c.layers = (config_lib.conv_pool(3, activation="relu"),
                    config_lib.conv_pool(4, kernel=3, pool="l2", activation="tanh"),
                    config_lib.fc(8, activation="sigmoid"), config_lib.softmax(10))
        model = networks.from_config(c)
        tx = train.make_optimizer(c, 10)
        state = train.init_states(model, tx, 0, 1)
        chunk = train.make_train_chunk(model, tx, c, 10)
        state, losses_, _ = chunk(state, x, y, train.shuffle_order(state.key, 0, 40), 0,
                                  num_steps=10)
        out[grad] = state, losses_
    np.testing.assert_allclose(out["manual"][1], out["autodiff"][1], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(out["manual"][0].params),
                    jax.tree.leaves(out["autodiff"][0].params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["network3", "inverted"])
def test_manual_training_steps_with_dropout_equal_jax_grad_with_the_same_masks(
        mode, tiny_config, fake_data):
    """config.grad=manual with dropout on the FC layer's and the softmax layer's inputs:
    two SGD steps, each equal to a step down jax.grad of a forward pass written here
    from mnist_cnn.layers with the masks of the manual path's stream: bernoulli(keep)
    under fold_in(step key, layer index), the step key fold_in(fold_in(state.key, 0),
    step)."""
    from mnist_cnn import data, train
    c = tiny_config(grad="manual", dropout_mode=mode, l2=0.1)
    c.layers = (config_lib.conv_pool(3, activation="relu"),
                config_lib.fc(12, activation="sigmoid", dropout=0.4),
                config_lib.softmax(10, dropout=0.3))
    x, y = fake_data(4)
    x = data.to_float(x)
    model = networks.from_config(c)
    tx = train.make_optimizer(c, 10)
    state = train.init_states(model, tx, 0, 1)
    step = jax.jit(train.make_train_step(model, tx, c.l2, 10, config=c))

    def reference_step(state, dropped=True):
        key = jax.random.fold_in(jax.random.fold_in(state.key, 0), state.step)
        masks = [jax.random.bernoulli(jax.random.fold_in(key, i), keep if dropped else 1.0,
                                      shape)
                 for i, keep, shape in ((1, 0.6, (4, 432)), (2, 0.7, (4, 12)))]

        def drop(h, mask, rate):
            h = jnp.where(mask, h, 0.0)
            return h / (1 - rate) if mode == "inverted" else h

        def cost(p):
            h = L.max_pool(L.conv2d(x, p["layer0_conv"]["w"], impl="xla"), 2)
            h = jax.nn.relu(h + p["layer0_conv"]["b"]).reshape(4, -1)
            h = jax.nn.sigmoid(drop(h, masks[0], 0.4) @ p["layer1_fc"]["w"]
                               + p["layer1_fc"]["b"])
            logits = drop(h, masks[1], 0.3) @ p["layer2_softmax"]["w"] + p["layer2_softmax"]["b"]
            return losses.log_likelihood(logits, y) + losses.l2_penalty(p, 0.1, 10)

        g = jax.grad(cost)(state.params)
        return jax.tree.map(lambda p, d: p - c.learning_rate * d, state.params, g)

    for _ in range(2):
        want, undropped = reference_step(state), reference_step(state, dropped=False)
        state, _ = step(state, x, y)
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert not np.allclose(state.params["layer1_fc"]["w"],   # the masks mattered
                               undropped["layer1_fc"]["w"], rtol=1e-4, atol=1e-5)
