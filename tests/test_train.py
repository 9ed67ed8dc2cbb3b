"""Training steps: SGD arithmetic, chunked scans, shuffling, evaluation, best epoch."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_cnn import config as config_lib
from mnist_cnn import augment, data, losses, networks, train


def setup(c, num_batches):
    model = networks.from_config(c)
    tx = train.make_optimizer(c, num_batches)
    return model, tx, train.init_states(model, tx, c.seed, 1)


def test_one_step_is_sgd_on_loglikelihood_plus_network3_l2(tiny_config, fake_data):
    c = tiny_config()
    c.layers[1].dropout = 0.0
    x, y = fake_data(4)
    model, tx, state = setup(c, num_batches=10)
    step = train.make_train_step(model, tx, c.l2, 10)
    new, _ = step(state, data.to_float(x), y)

    def nll(params):
        return losses.log_likelihood(model.apply({"params": params}, data.to_float(x)), y)

    g = jax.grad(nll)(state.params)
    for path, p in jax.tree_util.tree_flatten_with_path(state.params)[0]:
        is_w = path[-1].key == "w"
        want = p - c.learning_rate * (_get(g, path) + (c.l2 * p / 10 if is_w else 0))
        np.testing.assert_allclose(_get(new.params, path), want, rtol=1e-5, atol=1e-7)
    assert int(new.step) == 1


def _get(tree, path):
    for k in path:
        tree = tree[k.key]
    return tree


@pytest.mark.parametrize("shuffle", [False, True])
def test_chunked_scan_equals_one_whole_epoch(shuffle, tiny_config, fake_data):
    c = tiny_config(shuffle=shuffle)
    x, y = fake_data(40)
    nb = train.steps_per_epoch(40, c.batch_size)
    model, tx, state = setup(c, nb)
    chunk = train.make_train_chunk(model, tx, c, nb)
    order = train.shuffle_order(state.key, 0, 40) if shuffle else None
    whole, loss_whole, _ = chunk(state, x, y, order, 0, num_steps=nb)
    loss_whole = float(jnp.sum(loss_whole))
    _, _, state2 = setup(c, nb)
    parts, loss_parts = state2, 0.0
    for start in range(0, nb, 5):
        parts, loss, _ = chunk(parts, x, y, order, start, num_steps=5)
        loss_parts += float(jnp.sum(loss))
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(parts.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(loss_whole, loss_parts, rtol=1e-5)


def test_scan_equals_python_loop_of_steps(tiny_config, fake_data):
    c = tiny_config()
    x, y = fake_data(20)
    nb = 5
    model, tx, state = setup(c, nb)
    step = jax.jit(train.make_train_step(model, tx, c.l2, nb))
    loop = state
    for i in range(nb):
        loop, _ = step(loop, data.to_float(x[4 * i:4 * i + 4]), y[4 * i:4 * i + 4])
    _, _, state2 = setup(c, nb)
    scanned, _, _ = train.make_train_chunk(model, tx, c, nb)(state2, x, y, None, 0, num_steps=nb)
    for a, b in zip(jax.tree.leaves(loop.params), jax.tree.leaves(scanned.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shift,rotate,zoom,elastic", [
    (0, 15.0, 0.0, 0.0), (2, 10.0, 0.1, 0.0), (0, 0.0, 0.2, 0.0), (0, 0.0, 0.0, 34.0),
    (2, 10.0, 0.1, 20.0)])
def test_scan_augments_each_step_with_its_own_seeded_affine_draw(shift, rotate, zoom, elastic,
                                                                 tiny_config, fake_data):
    """The jitted epoch equals a Python loop that applies augment.random_shift and
    augment.random_affine (augment.random_warp with an elastic field) with the documented
    per-step keys; and it differs from no augmentation."""
    c = tiny_config(augment_shift=shift, augment_rotate=rotate, augment_scale=zoom,
                    augment_elastic=elastic, augment_elastic_sigma=5.0)
    x, y = fake_data(20)
    nb = 5
    model, tx, state = setup(c, nb)
    step = jax.jit(train.make_train_step(model, tx, c.l2, nb))
    loop = state
    for i in range(nb):
        xb = x[4 * i:4 * i + 4]
        if shift:
            xb = augment.random_shift(
                jax.random.fold_in(jax.random.fold_in(loop.key, 2), loop.step), xb, shift)
        key = jax.random.fold_in(jax.random.fold_in(loop.key, 3), loop.step)
        if elastic:
            xf = augment.random_warp(key, data.to_float(xb)[..., 0], rotate, zoom, elastic, 5.0)
        else:
            xf = augment.random_affine(key, data.to_float(xb)[..., 0], rotate, zoom)
        xf = xf[..., None]
        loop, _ = step(loop, xf, y[4 * i:4 * i + 4])
    _, _, state2 = setup(c, nb)
    scanned, _, _ = train.make_train_chunk(model, tx, c, nb)(state2, x, y, None, 0, num_steps=nb)
    for a, b in zip(jax.tree.leaves(loop.params), jax.tree.leaves(scanned.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    plain = tiny_config(augment_shift=shift)
    _, _, state3 = setup(plain, nb)
    unaugmented, _, _ = train.make_train_chunk(model, tx, plain, nb)(state3, x, y, None, 0,
                                                                      num_steps=nb)
    assert not np.allclose(jax.tree.leaves(unaugmented.params)[0],
                           jax.tree.leaves(scanned.params)[0])


def test_training_reduces_the_loss_on_a_fixed_batch(tiny_config, fake_data):
    c = tiny_config(l2=0.0)
    c.layers[1].dropout = 0.0
    x, y = fake_data(8)
    model, tx, state = setup(c, 2)
    chunk = train.make_train_chunk(model, tx, c, 2)
    losses_seen = []
    for _ in range(80):
        state, loss, _ = chunk(state, x, y, None, 0, num_steps=2)
        losses_seen.append(float(jnp.sum(loss)))
    assert losses_seen[-1] < 0.5 * losses_seen[0]


def test_shuffle_order_is_a_seeded_permutation():
    key = jax.random.PRNGKey(0)
    a = np.asarray(train.shuffle_order(key, 3, 100))
    assert sorted(a) == list(range(100))
    np.testing.assert_array_equal(a, train.shuffle_order(key, 3, 100))
    assert not np.array_equal(a, train.shuffle_order(key, 4, 100))


@pytest.mark.parametrize("n,bs", [(25, 10), (30, 7), (10, 1000)])
def test_predict_any_size_matches_softmax_of_apply(n, bs, tiny_config, fake_data):
    c = tiny_config()
    model, _, state = setup(c, 1)
    x, y = fake_data(n, seed=n)
    probs = train.make_predict(model, bs)(state.params, x)
    logits = np.asarray(model.apply({"params": state.params}, data.to_float(x)))
    want = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-6)
    assert train.accuracy(probs, y) == float(np.mean(want.argmax(-1) == np.asarray(y)))


def test_best_epoch_later_tie_wins():
    assert train.best_epoch([0.9, 0.95, 0.93, 0.95, 0.94]) == 3
    assert train.best_epoch([0.5]) == 0


def _metrics(vals, tests, prefix=""):
    return [{"epoch": i + 1, prefix + "validation_accuracy": v, prefix + "test_accuracy": t,
             "members_validation_accuracy": [v, v], "members_test_accuracy": [t, 1 - t]}
            for i, (v, t) in enumerate(zip(vals, tests))]


@pytest.mark.parametrize("trained_on_val", [False, True])
def test_summary_reports_best_validation_epoch_or_the_last_when_validation_is_trained_on(
        trained_on_val):
    from mnist_cnn import driver
    c = config_lib.base_config()
    c.train_on_validation = trained_on_val
    vals, tests = [0.90, 0.96, 0.93], [0.91, 0.92, 0.94]
    m = _metrics(vals, tests)
    for a, b in zip(m, _metrics([0.97, 0.90, 0.95], [0.80, 0.81, 0.82], "raw_")):
        a.update(b)
    got = driver.summarize(c, m, members=1)
    want, want_raw = (2, 2) if trained_on_val else (1, 0)
    assert got["selection"] == ("last_epoch" if trained_on_val else "best_validation")
    assert (got["best_epoch"], got["test_accuracy"]) == (want + 1, tests[want])
    assert got["best_validation_accuracy"] == vals[want] and got["final_test_accuracy"] == 0.94
    assert (got["raw_best_epoch"], got["raw_test_accuracy"]) == (want_raw + 1,
                                                                 [0.80, 0.81, 0.82][want_raw])
    c.num_members = 2
    got = driver.summarize(c, _metrics(vals, tests), members=2)
    assert got["members_test_accuracy"] == [tests[want], 1 - tests[want]]


@pytest.mark.parametrize("vals,chosen", [
    # each run's validation accuracy per epoch; the run the book keeps
    ([[0.90, 0.92], [0.93, 0.91], [0.93, 0.95]], 2),
    ([[0.90, 0.92], [0.95, 0.91], [0.93, 0.95]], 1),     # a tie: the earlier run
    ([[0.97, 0.92], [0.95, 0.91], [0.93, 0.96]], 0)])
def test_summary_of_several_runs_keeps_the_best_validation_run(vals, chosen):
    """num_runs: each run's best epoch (a later tie wins) and its test accuracy there;
    the reported run is the one with the highest best validation accuracy (the earliest
    on a tie), written out here for each case."""
    from mnist_cnn import driver
    c = config_lib.base_config()
    c.num_runs, c.seed = 3, 5
    tests = [[0.80, 0.81], [0.82, 0.83], [0.84, 0.85]]
    metrics = [{"epoch": e + 1, "validation_accuracy": 0.5, "test_accuracy": 0.5,
                "members_validation_accuracy": [vals[r][e] for r in range(3)],
                "members_test_accuracy": [tests[r][e] for r in range(3)]} for e in range(2)]
    got = driver.summarize(c, metrics, members=3)
    best = [max(range(2), key=lambda e: (v[e], e)) for v in vals]
    assert got["runs"] == [dict(run=r, seed=5 + r, best_epoch=best[r] + 1,
                                best_validation_accuracy=vals[r][best[r]],
                                test_accuracy=tests[r][best[r]],
                                final_test_accuracy=tests[r][1]) for r in range(3)]
    assert got["chosen_run"] == chosen and got["selection"] == "best_validation"
    assert (got["test_accuracy"], got["best_epoch"]) == (tests[chosen][best[chosen]],
                                                         best[chosen] + 1)
    assert got["best_validation_accuracy"] == vals[chosen][best[chosen]]
    assert got["final_test_accuracy"] == tests[chosen][1] and got["epochs_run"] == 2


def test_chunk_size_divides_the_epoch():
    assert train.chunk_size(5000, 500) == 500
    for steps, target in [(5000, 500), (4999, 500), (12, 5), (7, 100)]:
        n = train.chunk_size(steps, target)
        assert steps % n == 0 and n <= max(target, 1)


def schedule_by_hand(kind, lr, steps, warm):
    """The learning rate of each of `steps` steps: constant; cosine from lr to 0; or
    one cycle: linear from lr/25 up to lr over `warm` steps, then cosine down to lr/1e4."""
    t = np.arange(steps, dtype=np.float64)
    if kind == "constant":
        return np.full(steps, lr)
    if kind == "cosine":
        return lr * 0.5 * (1 + np.cos(np.pi * t / steps))
    up = lr / 25 + (lr - lr / 25) * t / warm
    end = lr / 1e4
    down = end + (lr - end) * 0.5 * (1 + np.cos(np.pi * (t - warm) / (steps - warm)))
    return np.where(t < warm, up, down)


def sgd_by_hand(params, grads, rates, momentum, nesterov):
    """numpy SGD, float64: the trace v <- g + momentum * v, the step lr * v, or with
    Nesterov lr * (g + momentum * v); momentum 0 is plain SGD. The parameters after
    each step."""
    p = [np.asarray(a, np.float64) for a in params]
    v = [np.zeros_like(a) for a in p]
    history = []
    for g, lr in zip(grads, rates):
        g = [np.asarray(a, np.float64) for a in g]
        v = [gi + momentum * vi for gi, vi in zip(g, v)]
        d = [gi + momentum * vi for gi, vi in zip(g, v)] if nesterov else v
        p = [pi - lr * di for pi, di in zip(p, d)]
        history.append(p)
    return history


@pytest.mark.parametrize("momentum,nesterov,schedule", [
    (0.0, False, "constant"), (0.9, False, "constant"), (0.9, True, "constant"),
    (0.5, True, "cosine"), (0.9, False, "onecycle"), (0.0, False, "onecycle")])
def test_optimizer_is_sgd_with_momentum_nesterov_and_schedule_by_hand(
        momentum, nesterov, schedule, tiny_config):
    """make_optimizer over 10 steps (2 epochs of 5, one-cycle warm-up 0.4 epochs = 2
    steps) with random gradients: the parameters of a numpy momentum / Nesterov
    recursion with the schedule written out by hand."""
    c = tiny_config(momentum=momentum, nesterov=nesterov, schedule=schedule,
                    num_epochs=2, warmup_epochs=0.4, learning_rate=0.1)
    tx = train.make_optimizer(c, 5)
    rng = np.random.default_rng(0)
    params = [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=5).astype(np.float32)]
    grads = [[rng.normal(size=p.shape).astype(np.float32) for p in params] for _ in range(10)]
    want = sgd_by_hand(params, grads, schedule_by_hand(schedule, 0.1, 10, 2), momentum,
                       nesterov)
    state, p = tx.init(params), params
    for g, w in zip(grads, want):
        updates, state = tx.update(g, state, p)
        p = [a + u for a, u in zip(p, updates)]
        for a, b in zip(p, w):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def adam_by_hand(params, grads, rates, b1, b2, eps=1e-8):
    """numpy Adam (Kingma & Ba 2015), float64: m <- b1 m + (1-b1) g, v <- b2 v +
    (1-b2) g^2, the step lr * m_hat / (sqrt(v_hat) + eps) with the bias corrections
    m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t). The parameters after each step."""
    p = [np.asarray(a, np.float64) for a in params]
    m = [np.zeros_like(a) for a in p]
    v = [np.zeros_like(a) for a in p]
    history = []
    for t, (g, lr) in enumerate(zip(grads, rates), 1):
        g = [np.asarray(a, np.float64) for a in g]
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
        v = [b2 * vi + (1 - b2) * gi ** 2 for vi, gi in zip(v, g)]
        p = [pi - lr * (mi / (1 - b1 ** t)) / (np.sqrt(vi / (1 - b2 ** t)) + eps)
             for pi, mi, vi in zip(p, m, v)]
        history.append(p)
    return history


@pytest.mark.parametrize("schedule", ["constant", "onecycle"])
def test_adam_optimizer_is_adam_with_its_betas_and_schedule_by_hand(schedule, tiny_config):
    """config.optimizer=adam over 10 steps with random gradients: the parameters of the
    numpy Adam recursion with config.adam_b1, adam_b2 and the schedule by hand."""
    c = tiny_config(optimizer="adam", adam_b1=0.7, adam_b2=0.9, schedule=schedule,
                    num_epochs=2, warmup_epochs=0.4, learning_rate=0.01)
    tx = train.make_optimizer(c, 5)
    rng = np.random.default_rng(1)
    params = [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=5).astype(np.float32)]
    grads = [[rng.normal(size=p.shape).astype(np.float32) for p in params] for _ in range(10)]
    want = adam_by_hand(params, grads, schedule_by_hand(schedule, 0.01, 10, 2), 0.7, 0.9)
    state, p = tx.init(params), params
    for g, w in zip(grads, want):
        updates, state = tx.update(g, state, p)
        p = [a + u for a, u in zip(p, updates)]
        for a, b in zip(p, w):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="sweep over momentum needs config.optimizer=sgd"):
        train.make_optimizer(c, 5, momentum=0.9)


def test_train_step_takes_nesterov_steps_on_the_costs_gradient(tiny_config, fake_data):
    """Three steps with config.momentum and config.nesterov on one batch: the numpy
    Nesterov recursion over jax.grad of the log-likelihood plus network3's L2 term, each
    gradient taken at the reference's own parameters."""
    c = tiny_config(momentum=0.9, nesterov=True)
    c.layers[1].dropout = 0.0
    x, y = fake_data(4)
    model, tx, state = setup(c, num_batches=10)
    step = jax.jit(train.make_train_step(model, tx, c.l2, 10, config=c))
    paths, leaves = zip(*jax.tree_util.tree_flatten_with_path(state.params)[0])
    treedef = jax.tree.structure(state.params)

    def grads_at(flat):
        params = jax.tree.unflatten(treedef, [jnp.asarray(a, jnp.float32) for a in flat])
        g = jax.grad(lambda p: losses.log_likelihood(
            model.apply({"params": p}, data.to_float(x)), y))(params)
        return [np.asarray(_get(g, path), np.float64)
                + (c.l2 * a / 10 if path[-1].key == "w" else 0)
                for path, a in zip(paths, flat)]

    ref = [np.asarray(a, np.float64) for a in leaves]
    v = [np.zeros_like(a) for a in ref]
    for _ in range(3):
        state, _ = step(state, data.to_float(x), y)
        g = grads_at(ref)
        v = [gi + 0.9 * vi for gi, vi in zip(g, v)]
        ref = [a - c.learning_rate * (gi + 0.9 * vi) for a, gi, vi in zip(ref, g, v)]
        for path, want in zip(paths, ref):
            np.testing.assert_allclose(_get(state.params, path), want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("init", ["network3", "modern"])
def test_compiled_init_equals_the_eager_init_bit_for_bit(init, tiny_config, init_params):
    """init_states compiles at a low XLA optimisation level; it must not change a bit
    of the initial state (the README's measured runs were made with the eager init).
    Nor the tests' compiled networks.init_params."""
    c = tiny_config(init=init)
    c.layers = (config_lib.conv_pool(3), config_lib.conv_pool(4, kernel=3),
                config_lib.fc(7, activation="relu"), config_lib.softmax(10))
    model = networks.from_config(c)
    tx = train.make_optimizer(c, 10)
    eager = jax.tree.leaves(train.init_state(model, tx, 5))
    compiled = train.init_states(model, tx, 5, 1)
    stacked = train.init_states(model, tx, 4, 3)
    for a, b, s in zip(eager, jax.tree.leaves(compiled), jax.tree.leaves(stacked)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, s[1])
    key = jax.random.PRNGKey(9)
    for a, b in zip(jax.tree.leaves(networks.init_params(model, key)),
                    jax.tree.leaves(init_params(model, key))):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("members,ema,optimizer", [(1, 0.0, "sgd"), (3, 0.99, "adam")])
def test_state_shapes_are_the_initial_states_without_computing_them(members, ema,
                                                                    optimizer, tiny_config,
                                                                    caplog):
    """state_shapes, the template a checkpoint restores into, has the tree, shapes and
    dtypes of the state init_states computes (with a weight average when ema > 0),
    and compiles nothing."""
    c = tiny_config(optimizer=optimizer, momentum=0.9)
    model = networks.from_config(c)
    tx = train.make_optimizer(c, 10)
    compilations = lambda: [m for m in caplog.messages if "XLA compilation" in m]
    caplog.set_level(logging.WARNING)
    with jax.log_compiles(True):
        real = train.with_ema(train.init_states(model, tx, 7, members), ema)
        before = len(compilations())
        shapes = train.state_shapes(model, tx, members, ema)
    assert before > 0   # the check sees a compilation where there is one
    assert len(compilations()) == before
    assert jax.tree.structure(shapes) == jax.tree.structure(real)
    for s, r in zip(jax.tree.leaves(shapes), jax.tree.leaves(real)):
        assert isinstance(s, jax.ShapeDtypeStruct)
        assert (s.shape, s.dtype) == (r.shape, r.dtype)
    assert (shapes.ema is None) == (ema == 0.0)


@pytest.mark.parametrize("micro", [2, 4])
def test_micro_batches_give_the_whole_mini_batch_sgd_step(micro, tiny_config, fake_data):
    """A mini-batch of 8 as micro-batches of 2 or 4, accumulated in a scan: the same
    update as SGD on the whole batch's cost (computed here directly by jax.grad)."""
    c = tiny_config(batch_size=8, micro_batch=micro)
    c.layers[1].dropout = 0.0
    config_lib.validate(c)
    x, y = fake_data(8, seed=3)
    model, tx, state = setup(c, num_batches=10)
    step = jax.jit(train.make_train_step(model, tx, c.l2, 10, config=c))
    new, (loss, nll) = step(state, data.to_float(x), y)

    def cost(params):
        logits = model.apply({"params": params}, data.to_float(x))
        n = losses.log_likelihood(logits, y)
        return n + losses.l2_penalty(params, c.l2, 10), n

    (want_loss, want_nll), g = jax.value_and_grad(cost, has_aux=True)(state.params)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(nll, want_nll, rtol=1e-5)
    for path, p in jax.tree_util.tree_flatten_with_path(state.params)[0]:
        np.testing.assert_allclose(_get(new.params, path), p - c.learning_rate * _get(g, path),
                                   rtol=1e-5, atol=1e-6)


def test_micro_batch_size_auto_and_explicit():
    size = train.micro_batch_size
    book = 9.222e6        # dbl_conv_relu's training FLOPs an image (networks.model_flops)
    assert [size(0, b, "cpu", book) for b in (10, 64, 100, 128, 256, 97, 1024)] == \
        [10, 64, 100, 64, 64, 97, 64]
    assert size(0, 128, "cpu", 1.85e6) == 128            # a narrow network: whole
    assert size(0, 256, "cpu", 1e9) == 64                 # the smallest slice allowed
    assert size(0, 128, "cpu") == 128                     # work unknown: whole
    assert size(0, 128, "gpu", book) == 128 and size(0, 1024, "tpu", book) == 1024
    assert size(32, 128, "gpu") == 32 and size(128, 128) == 128 and size(500, 128) == 128
    with pytest.raises(ValueError, match="micro_batch \\(48\\) must divide"):
        size(48, 128)


@pytest.mark.parametrize("micro,msg", [(-1, "must be >= 0"), (48, "must divide config.batch_size")])
def test_bad_micro_batch_is_a_config_error(micro, msg, tiny_config):
    c = tiny_config(batch_size=128, micro_batch=micro)
    with pytest.raises(config_lib.ConfigError, match=msg):
        config_lib.validate(c)


def test_weight_average_is_the_exponential_average_of_every_step(tiny_config, fake_data):
    """config.ema_decay: after each step ema <- d * ema + (1 - d) * params, starting at the
    initial parameters; a numpy recursion over the parameters of a step-by-step run is the
    reference. Keeping the average leaves the training itself unchanged."""
    c = tiny_config(ema_decay=0.8, momentum=0.9)
    x, y = fake_data(24)
    nb = 6
    model, tx, state = setup(c, nb)
    step = jax.jit(train.make_train_step(model, tx, c.l2, nb, config=c))
    history, s = [state.params], state
    for i in range(nb):
        s, _ = step(s, data.to_float(x[4 * i:4 * i + 4]), y[4 * i:4 * i + 4])
        history.append(s.params)
    want = jax.tree.map(np.asarray, history[0])
    first_w = want["layer0_conv"]["w"]
    for p in history[1:]:
        want = jax.tree.map(lambda e, q: 0.8 * e + 0.2 * np.asarray(q), want, p)
    start = train.with_ema(state, c.ema_decay)
    assert train.with_ema(state, 0.0).ema is None
    out, _, _ = train.make_train_chunk(model, tx, c, nb)(start, x, y, None, 0, num_steps=nb)
    # (the chunk donated `start`, whose params are `state`'s: only numpy copies remain)
    for a, b in zip(jax.tree.leaves(out.ema), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(out.params), jax.tree.leaves(s.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert train.eval_params(out) is out.ema and train.eval_params(s) is s.params
    # the average moved away from both the start and the last parameters
    ema_w, last_w = out.ema["layer0_conv"]["w"], s.params["layer0_conv"]["w"]
    assert not np.allclose(ema_w, last_w) and not np.allclose(ema_w, first_w)


def _eqns(jaxpr):
    """Every equation of a jaxpr, nested ones (jit, scan bodies, custom VJPs) included."""
    for e in jaxpr.eqns:
        yield e
        for v in e.params.values():
            for sub in (v if isinstance(v, (tuple, list)) else (v,)):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _eqns(inner)


@pytest.mark.parametrize("batch,micro,unrolled", [(8, 4, True), (8, 1, True), (16, 1, False)])
def test_micro_batch_scan_is_unrolled_up_to_a_few_slices(batch, micro, unrolled, tiny_config,
                                                         fake_data):
    """Up to train.MAX_UNROLLED_SLICES slices the accumulation is unrolled (XLA's CPU
    runtime then runs the slices side by side); more stay a loop."""
    c = tiny_config(batch_size=batch, micro_batch=micro)
    config_lib.validate(c)
    x, y = fake_data(batch, seed=3)
    model, tx, state = setup(c, num_batches=10)
    step = train.make_train_step(model, tx, c.l2, 10, config=c)
    jaxpr = jax.make_jaxpr(step)(state, data.to_float(x), y).jaxpr
    scans = [e for e in _eqns(jaxpr) if e.primitive.name == "scan"]
    k = batch // micro
    assert [(e.params["length"], e.params["unroll"] > 1) for e in scans] == [(k, unrolled)]


@pytest.mark.parametrize("stacked", [False, True])
def test_compiled_epoch_order_equals_the_eager_shuffle(stacked):
    """epoch_order runs one cheaply compiled program for every epoch; each epoch's
    order must be the eager jax.random permutation of shuffle_order, bit for bit."""
    keys = jax.random.split(jax.random.PRNGKey(11), 3)
    for epoch in (0, 1, 7):
        got = np.asarray(train.epoch_order(keys if stacked else keys[0], epoch, 1000,
                                           stacked))
        want = [np.asarray(train.shuffle_order(k, epoch, 1000)) for k in keys]
        np.testing.assert_array_equal(got, np.stack(want) if stacked else want[0])
