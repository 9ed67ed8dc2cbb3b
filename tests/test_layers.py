"""Layers against naive numpy loops, and their gradients against finite differences."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_cnn import layers as L

CONV_CASES = [  # (x shape, kernel, stride, padding)
    ((2, 8, 8, 1), 5, 1, "VALID"),
    ((2, 9, 7, 3), 3, 2, "VALID"),
    ((1, 12, 12, 4), (2, 3), (1, 2), "VALID"),
    ((2, 7, 7, 2), 3, 1, "SAME"),
    ((1, 6, 5, 2), 4, 3, "SAME"),
    ((1, 7, 6, 1), (4, 2), 1, "SAME"),     # odd totals: the extra zero below and right
    ((1, 6, 6, 1), 3, 2, 1),
    ((1, 6, 6, 1), 3, 1, ((1, 2), (0, 1))),
]


@pytest.mark.parametrize("impl", ["patches", "xla"])
@pytest.mark.parametrize("shape,kernel,stride,padding", CONV_CASES)
def test_conv2d_matches_numpy_loops(impl, shape, kernel, stride, padding, np_layers):
    rng = np.random.default_rng(0)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = rng.normal(size=shape).astype(np.float32)
    w = rng.normal(size=(kh, kw, shape[-1], 5)).astype(np.float32)
    b = rng.normal(size=(5,)).astype(np.float32)
    st = (stride, stride) if isinstance(stride, int) else stride
    want = np_layers.conv(x, w, st, np_layers.pads(padding, (kh, kw), st, shape[1:3])) + b
    got = L.conv2d(jnp.asarray(x), jnp.asarray(w), jnp.asarray(b), stride, padding, impl)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shape,kernel,stride", [((2, 12, 12, 3), (5, 5), (1, 1)),
                                                  ((1, 28, 28, 1), (5, 5), (1, 1)),
                                                  ((2, 9, 11, 2), (2, 3), (2, 1)),
                                                  ((1, 12, 12, 2), (9, 9), (1, 1)),
                                                  ((1, 5, 5, 4), (1, 1), (1, 1))])
def test_patches_are_numpy_im2col_in_i_j_c_order(shape, kernel, stride):
    """extract_patches (a nested stack, for XLA CPU's fusion) against a numpy im2col
    whose last axis runs over (i, j, c): the order an HWIO kernel reshapes to."""
    x = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    (kh, kw), (sh, sw) = kernel, stride
    n, h, w, c = shape
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    want = np.zeros((n, ho, wo, kh * kw * c), np.float32)
    for a, b in itertools.product(range(ho), range(wo)):
        want[:, a, b] = x[:, a * sh:a * sh + kh, b * sw:b * sw + kw, :].reshape(n, -1)
    np.testing.assert_array_equal(L.extract_patches(jnp.asarray(x), kernel, stride), want)


def test_patch_matmul_gradients_match_plain_matmul_and_numpy():
    """conv2d's CPU matmul with the kernel gradient as (g^T p)^T: the same value and
    gradients as autodiff of p @ w (and numpy's p^T g, g w^T), stacked under vmap too."""
    rng = np.random.default_rng(3)
    p = rng.normal(size=(64, 50)).astype(np.float32)
    w = rng.normal(size=(50, 7)).astype(np.float32)
    g = rng.normal(size=(64, 7)).astype(np.float32)
    f = lambda mm: lambda p, w: jnp.sum(mm(p, w) * g)
    np.testing.assert_allclose(L._patch_matmul(p, w), p @ w, rtol=1e-5, atol=1e-4)
    dp, dw = jax.grad(f(L._patch_matmul), argnums=(0, 1))(p, w)
    np.testing.assert_allclose(dw, p.T @ g, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dp, g @ w.T, rtol=1e-5, atol=1e-4)
    ref = jax.grad(f(jnp.matmul), argnums=(0, 1))(p, w)
    np.testing.assert_allclose(dw, ref[1], rtol=1e-5, atol=1e-4)
    ps, ws = np.stack([p, 2 * p]), np.stack([w, -w])
    loss = lambda mm: lambda ps, ws: jnp.sum(jax.vmap(mm)(ps, ws) * g)
    got = jax.grad(loss(L._patch_matmul), argnums=(0, 1))(ps, ws)
    want = jax.grad(loss(jnp.matmul), argnums=(0, 1))(ps, ws)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_patch_matmul_keeps_the_faster_kernel_gradient_orientation():
    """Reverse mode computes the kernel's gradient as g^T @ p, (O, K), behind an
    optimization barrier, then transposes it: the form XLA's CPU backend runs faster
    (autodiff of a plain p @ w computes p^T @ g, (K, O))."""
    p, w, g = jnp.ones((64, 50)), jnp.ones((50, 7)), jnp.ones((64, 7))
    jaxpr = jax.make_jaxpr(jax.grad(lambda w: jnp.sum(L._patch_matmul(p, w) * g)))(w).jaxpr
    dots = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
    dw = [e for e in dots if e.outvars[0].aval.shape == (7, 50)]
    assert len(dw) == 1 and dw[0].params["dimension_numbers"][0] == ((0,), (0,))
    users = [e.primitive.name for e in jaxpr.eqns if dw[0].outvars[0] in e.invars]
    assert users == ["optimization_barrier"]
    assert not [e for e in dots if e.outvars[0].aval.shape == (50, 7)]


def _plain_max_pool(x, k=2):
    """Max over k x k blocks as a plain jnp.max (JAX's own derivative rules)."""
    n, h, w, c = x.shape
    ho, wo = h // k, w // k
    return jnp.max(x[:, :ho * k, :wo * k].reshape(n, ho, k, wo, k, c), axis=(2, 4))


@pytest.mark.slow
def test_forward_mode_autodiff_matches_plain_jax_layers():
    """jvp, jacfwd and forward-over-reverse Hessian-vector products through the CPU
    layers (patch conv, fused conv + max-pool, hand-fused max-pool, with exact ties) equal
    the same through XLA's convolution and a plain jnp.max, and the HVP equals
    reverse-over-reverse."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.integers(0, 2, size=(2, 14, 14, 1)), jnp.float32)
    w1 = jnp.asarray(rng.normal(size=(5, 5, 1, 4)), jnp.float32)
    w2 = jnp.asarray(rng.normal(size=(3, 3, 4, 3)), jnp.float32)
    ct = jnp.asarray(rng.normal(size=(2, 1, 1, 3)), jnp.float32)
    assert L.fuses_max_pool(x.shape, w1.shape, 1, "VALID", "auto", "max", 2, None, "cpu")

    def ours(ws):
        h = jax.nn.relu(L.conv_pool(x, ws[0]))                     # (2, 5, 5, 4)
        return jnp.sum(L.max_pool(L.conv2d(h, ws[1], impl="patches"), 2) * ct)

    def plain(ws):
        h = jax.nn.relu(_plain_max_pool(L.conv2d(x, ws[0], impl="xla")))
        return jnp.sum(_plain_max_pool(L.conv2d(h, ws[1], impl="xla")) * ct)

    ws = (w1, w2)
    v = tuple(jnp.asarray(rng.normal(size=a.shape), jnp.float32) for a in ws)
    close = lambda a, b: jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4), a, b)
    run = lambda f: jax.jit(f)()    # one compilation per check, not one per operation
    close(run(lambda: jax.jvp(ours, (ws,), (v,))), run(lambda: jax.jvp(plain, (ws,), (v,))))
    close(run(lambda: jax.jacfwd(ours)(ws)), run(lambda: jax.jacfwd(plain)(ws)))
    hvp = lambda f: jax.jvp(jax.grad(f), (ws,), (v,))[1]
    rr = lambda f: jax.grad(lambda ws: sum(jnp.vdot(a, b) for a, b in
                                           zip(jax.grad(f)(ws), v)))(ws)
    close(run(lambda: hvp(ours)), run(lambda: hvp(plain)))
    close(hvp(ours), run(lambda: rr(ours)))                         # eager, too
    out = jax.jvp(lambda x: L.max_pool(x, 2), (x,), (jnp.ones_like(x),))[1]
    np.testing.assert_allclose(out, jnp.ones_like(out))           # ties share a tangent of 1


def test_same_padding_keeps_size_at_stride_one():
    x = jnp.ones((1, 7, 7, 1))
    w = jnp.ones((5, 5, 1, 2))
    assert L.conv2d(x, w, padding="SAME").shape == (1, 7, 7, 2)


def test_conv_impls_agree_in_value_and_gradient():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(3, 12, 12, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(5, 5, 4, 6)), jnp.float32)
    f = lambda impl: lambda w, x: jnp.sum(jnp.tanh(L.conv2d(x, w, stride=1, impl=impl)))
    for argnum in (0, 1):
        gp = jax.grad(f("patches"), argnums=argnum)(w, x)
        gx = jax.grad(f("xla"), argnums=argnum)(w, x)
        np.testing.assert_allclose(gp, gx, rtol=1e-4, atol=1e-4)


def test_conv_rejects_bad_shapes():
    with pytest.raises(ValueError, match="channels"):
        L.conv2d(jnp.ones((1, 8, 8, 2)), jnp.ones((3, 3, 1, 4)))
    with pytest.raises(ValueError, match="does not fit"):
        L.conv2d(jnp.ones((1, 4, 4, 1)), jnp.ones((5, 5, 1, 1)), impl="patches")
    with pytest.raises(ValueError, match="impl"):
        L.conv2d(jnp.ones((1, 8, 8, 1)), jnp.ones((3, 3, 1, 1)), impl="fft")


def l2_reduce(v, axis=None):
    return np.sqrt(np.sum(v * v, axis=axis))


POOL_CASES = [  # (shape, window, stride)
    ((2, 8, 8, 3), 2, None),
    ((1, 9, 9, 2), 2, None),        # ragged edge dropped, as Theano's ignore_border
    ((1, 9, 9, 2), 3, 2),           # overlapping windows
    ((2, 7, 10, 1), (2, 3), (1, 2)),
    ((1, 6, 6, 2), 3, None),
]


@pytest.mark.parametrize("shape,window,stride", POOL_CASES)
@pytest.mark.parametrize("name,fn,reduce", [
    ("max", L.max_pool, np.max), ("avg", L.avg_pool, np.mean), ("l2", L.l2_pool, l2_reduce)])
def test_pooling_matches_numpy_loops(shape, window, stride, name, fn, reduce, np_layers):
    x = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    pair = lambda v: (v, v) if isinstance(v, int) else v
    win = pair(window)
    st = win if stride is None else pair(stride)
    np.testing.assert_allclose(fn(jnp.asarray(x), window, stride),
                               np_layers.pool(x, win, st, reduce), rtol=1e-5, atol=1e-6)


def test_l2_pool_gradient_is_finite_on_blank_windows():
    x = jnp.zeros((1, 4, 4, 1)).at[0, 0, 0, 0].set(3.0)
    g = jax.grad(lambda x: jnp.sum(L.l2_pool(x)))(x)
    assert np.all(np.isfinite(g))
    assert g[0, 0, 0, 0] == pytest.approx(1.0)   # d/dx sqrt(x^2) at x=3
    assert np.all(np.asarray(g)[0, 2:, 2:, 0] == 0.0)


def finite_difference_grad(f, x, eps=1e-5):
    """Central differences in float64 numpy."""
    x = np.asarray(x, np.float64)
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[idx] = eps
        g[idx] = (f(x + d) - f(x - d)) / (2 * eps)
    return g


@pytest.mark.parametrize("fn", [
    lambda x: L.conv2d(x, jnp.linspace(-1, 1, 18, dtype=x.dtype).reshape(3, 3, 1, 2),
                       stride=2, impl="patches"),
    lambda x: L.max_pool(x, 2),
    lambda x: L.avg_pool(x, 3, 2),
    lambda x: L.l2_pool(x, 2),
    lambda x: L.activation("sigmoid")(x),
    lambda x: L.activation("tanh")(x),
])
def test_gradients_match_finite_differences(fn):
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        x = rng.normal(size=(1, 6, 6, 1))
        weights = rng.normal(size=np.asarray(fn(jnp.asarray(x))).shape)
        loss = lambda x: float(jnp.sum(fn(jnp.asarray(x)) * weights))
        auto = jax.grad(lambda x: jnp.sum(fn(x) * weights))(jnp.asarray(x))
        np.testing.assert_allclose(auto, finite_difference_grad(loss, x), rtol=1e-5, atol=1e-7)


def test_layers_compose_with_jit_and_vmap():
    rng = np.random.default_rng(4)
    xs = jnp.asarray(rng.normal(size=(4, 2, 10, 10, 1)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 1, 2)), jnp.float32)
    f = lambda x: L.max_pool(L.conv2d(x, w)) + L.l2_pool(L.conv2d(x, w))
    batched = jax.jit(jax.vmap(f))(xs)
    for i in range(4):
        np.testing.assert_allclose(batched[i], f(xs[i]), rtol=1e-5, atol=1e-5)


def test_dense_and_activations():
    x = jnp.array([[1.0, -2.0]])
    w = jnp.array([[1.0, 2.0, 0.0], [0.5, 0.0, -1.0]])
    np.testing.assert_allclose(L.dense(x, w, jnp.array([0.0, 1.0, 2.0])), [[0.0, 3.0, 4.0]])
    np.testing.assert_allclose(L.activation("relu")(jnp.array([-1.0, 2.0])), [0.0, 2.0])
    np.testing.assert_allclose(L.activation("sigmoid")(jnp.array([0.0])), [0.5])
    with pytest.raises(ValueError, match="activation"):
        L.activation("swish")


def test_dropout_network3_form():
    x = jnp.ones((1000, 50))
    key = jax.random.PRNGKey(0)
    y = L.dropout(x, 0.3, key, train=True, mode="network3")
    kept = np.asarray(y != 0)
    assert set(np.unique(np.asarray(y))) <= {0.0, 1.0}   # no rescale while training
    assert abs(kept.mean() - 0.7) < 0.01
    np.testing.assert_allclose(L.dropout(x, 0.3, None, train=False, mode="network3"), 0.7)


def test_dropout_inverted_form():
    x = jnp.ones((1000, 50))
    y = np.asarray(L.dropout(x, 0.25, jax.random.PRNGKey(1), train=True, mode="inverted"))
    np.testing.assert_allclose(np.unique(y), [0.0, 1 / 0.75], rtol=1e-6)
    assert abs(y.mean() - 1.0) < 0.02   # expectation preserved
    np.testing.assert_array_equal(L.dropout(x, 0.25, None, train=False, mode="inverted"), x)


def test_default_conv_impl_per_backend():
    assert L.default_conv_impl("cpu") == "patches"
    assert L.default_conv_impl("cpu", batch=4096) == "patches"
    assert L.default_conv_impl("gpu") == "xla"
    assert L.default_conv_impl("gpu", batch=10) == "patches"
    assert L.default_conv_impl("gpu", batch=128) == "patches"
    assert L.default_conv_impl("gpu", batch=1024) == "xla"
    assert L.default_conv_impl("gpu", batch=1024, dtype=jnp.float32) == "xla"
    assert L.default_conv_impl("gpu", batch=1024, dtype=jnp.bfloat16) == "patches"
    assert L.default_conv_impl("gpu", batch=1024, dtype="bfloat16") == "patches"
    assert L.default_conv_impl("cpu", batch=10, dtype=jnp.bfloat16) == "patches"
    assert L.default_conv_impl("tpu", batch=10, dtype=jnp.bfloat16) == "xla"
    assert L.default_conv_impl("tpu", batch=10) == "xla"


@pytest.mark.parametrize("window", [2, 3, (2, 3)])
def test_max_pool_gradient_is_jax_max_reduction_rule(window):
    """max_pool's hand-fused gradient equals autodiff of a plain jnp.max over the
    window blocks (JAX's rule: ties share the error equally), with many exact ties,
    jitted and vmapped, and its own gradient (second order) too."""
    kh, kw = window if isinstance(window, tuple) else (window, window)
    rng = np.random.default_rng(7)
    x = jnp.asarray(np.round(rng.normal(size=(3, 2, 7, 8, 3))), jnp.float32)
    x = x.at[0, 0, :4, :4, 0].set(2.0)                          # a block of exact ties
    weights = jnp.asarray(rng.normal(size=(2, 7 // kh, 8 // kw, 3)), jnp.float32)

    def reference(x):
        n, h, w, c = x.shape
        ho, wo = h // kh, w // kw
        blocks = x[:, :ho * kh, :wo * kw].reshape(n, ho, kh, wo, kw, c)
        return jnp.max(blocks, axis=(2, 4))

    loss = lambda pool, x: jnp.sum(pool(x) * weights)
    ours = jax.jit(jax.vmap(jax.grad(lambda x: loss(lambda v: L.max_pool(v, window), x))))(x)
    ref = jax.vmap(jax.grad(lambda x: loss(reference, x)))(x)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
    assert float(jnp.abs(ref[0, 0, :4, :4, 0]).max()) > 0        # the ties got a share
    np.testing.assert_allclose(L.max_pool(x[0], window), reference(x[0]))
    hvp = lambda pool: jax.grad(lambda x: jnp.sum(jax.grad(lambda v: loss(pool, v))(x) * x))
    np.testing.assert_allclose(hvp(lambda v: L.max_pool(v, window))(x[1]), hvp(reference)(x[1]),
                               atol=1e-6)


FUSED_CASES = [  # (x shape, kernel (kh, kw), padding): conv outputs even, odd, padded
    ((2, 28, 28, 1), (5, 5), "VALID"),
    ((2, 13, 11, 3), (5, 5), "SAME"),
    ((1, 9, 10, 2), (7, 5), ((1, 0), (2, 1))),
    ((2, 6, 6, 1), (5, 5), 0),
]


@pytest.mark.parametrize("shape,kernel,padding", FUSED_CASES)
def test_fused_conv_max_pool_matches_numpy_loops(shape, kernel, padding, np_layers):
    """conv_pool's one-matmul form for max-pooling 2x2 windows after a narrow first-layer
    convolution: numpy conv loops then numpy max over each window, ragged edge cropped."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=shape).astype(np.float32)
    w = rng.normal(size=(*kernel, shape[-1], 6)).astype(np.float32)
    assert L.fuses_max_pool(x.shape, w.shape, 1, padding, "auto", "max", 2, None, "cpu")
    pads = np_layers.pads(padding, kernel, (1, 1), shape[1:3])
    want = np_layers.pool(np_layers.conv(x, w, (1, 1), pads), (2, 2), (2, 2), np.max)
    got = jax.jit(lambda x, w: L.conv_pool(x, w, 1, padding))(x, w)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_fused_conv_max_pool_gradients_match_the_unfused_layers_with_ties():
    """Gradients for the input and the kernel equal autodiff of max_pool(conv2d(...))
    through XLA's own convolution, with many exact ties in the max (integer inputs and
    weights; a blank corner), jitted and vmapped, and second order for the kernel."""
    rng = np.random.default_rng(11)
    x = jnp.asarray(rng.integers(0, 2, size=(3, 2, 12, 12, 1)), jnp.float32)
    x = x.at[:, :, :6, :6].set(0.0)
    w = jnp.asarray(rng.integers(-1, 2, size=(5, 5, 1, 4)), jnp.float32)
    ct = jnp.asarray(rng.normal(size=(2, 4, 4, 4)), jnp.float32)
    fused = lambda x, w: jnp.sum(L.conv_pool(x, w) * ct)
    plain = lambda x, w: jnp.sum(L.max_pool(L.conv2d(x, w, impl="xla"), 2) * ct)
    assert L.fuses_max_pool(x.shape[1:], w.shape, 1, "VALID", "auto", "max", 2, None, "cpu")
    grads = lambda f: jax.vmap(jax.grad(f, argnums=(0, 1)), in_axes=(0, None))(x, w)
    ours, ref = jax.jit(lambda: grads(fused))(), grads(plain)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(ref[0][:, :, :6, :6]).max()) > 0      # tied zeros got a share
    second = lambda f: jax.grad(lambda w: jnp.sum(jax.grad(f, argnums=1)(x[0], w) ** 2))(w)
    np.testing.assert_allclose(second(fused), second(plain), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("change,fuses", [
    ({}, True),
    (dict(backend="gpu"), False), (dict(impl="xla"), False),
    (dict(pool_kind="l2"), False), (dict(window=3), False), (dict(pool_stride=1), False),
    (dict(stride=2), False), (dict(w_shape=(3, 3, 1, 20)), False),      # 3x3: 1.78x work
    (dict(x_shape=(8, 12, 12, 20), w_shape=(5, 5, 20, 20)), False),    # long contraction
    (dict(w_shape=(5, 5, 1, 40)), False),                               # many maps
    (dict(x_shape=(8, 5, 5, 1)), False),                                # no window fits
])
def test_fused_conv_max_pool_is_used_where_it_pays(change, fuses):
    args = dict(x_shape=(8, 28, 28, 1), w_shape=(5, 5, 1, 20), stride=1, padding="VALID",
                impl="auto", pool_kind="max", window=2, pool_stride=None, backend="cpu")
    args.update(change)
    assert L.fuses_max_pool(**args) is fuses
