"""Pure layer functions: convolution, pooling, dense, activations, dropout.

Arrays are NHWC, convolution weights HWIO. Every function here is a pure function of
arrays (and a PRNG key for dropout), so `jit`, `vmap` and `grad` compose with it.
"""

from __future__ import annotations

import itertools
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("auto", "patches", "xla")
POOLS = ("max", "l2", "avg", "none")
ACTIVATIONS = ("sigmoid", "tanh", "relu", "linear")
DROPOUT_MODES = ("network3", "inverted")


def _pair(v, name):
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(e) for e in v)
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return v


def _explicit_padding(padding, kernel, stride, in_hw):
    """Returns ((top, bottom), (left, right)) for "VALID", "SAME", an int or pairs."""
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return ((0, 0), (0, 0))
        if mode == "SAME":
            pads = []
            for size, k, s in zip(in_hw, kernel, stride):
                out = -(-size // s)
                total = max((out - 1) * s + k - size, 0)
                pads.append((total // 2, total - total // 2))
            return tuple(pads)
        raise ValueError(f"padding must be 'VALID', 'SAME', an int or pairs, got {padding!r}")
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    return tuple(_pair(p, "padding") for p in padding)


GPU_PATCHES_BELOW = 512   # images per conv call; see default_conv_impl


def default_conv_impl(backend: str | None = None, batch: int | None = None,
                      dtype=None) -> str:
    """The faster convolution for a backend (and a batch of `batch` images of `dtype`),
    as measured by `run.py --mode=benchmark` (docs/benchmarks.md).

    CPU: the shifted-slices + one matmul form (`patches`) trains ~8x faster than XLA's
    convolution and compiles ~6x sooner. GPU (an H200, dbl_conv_relu): `patches` trains
    2.4x faster than XLA's cuDNN convolution at mini-batch 10 and 1.2x at 128, XLA's is
    1.16x faster at 1024 and in evaluation, so below GPU_PATCHES_BELOW images per call
    (the crossover lies between 128 and 1024) it is `patches`, from there on `xla`.
    In bfloat16 (an H100) `patches` is faster at every measured batch: 2.0x `xla` at 128
    and 1.34x at 1024, so bfloat16 on a GPU is always `patches`.
    Other backends (TPU): `xla`, which maps onto the MXU.
    """
    backend = backend or jax.default_backend()
    if backend == "cpu":
        return "patches"
    if backend in ("gpu", "cuda", "rocm") and (
            (batch is not None and batch < GPU_PATCHES_BELOW)
            or (dtype is not None and jnp.dtype(dtype) == jnp.bfloat16)):
        return "patches"
    return "xla"


def extract_patches(x, kernel, stride=1):
    """(N, H, W, C) -> (N, Ho, Wo, kh*kw*C) by kh*kw strided slices (VALID, no padding).

    The last axis is ordered (i, j, c), matching an HWIO kernel reshaped to (kh*kw*C, O).

    Built as a nested stack, (N, Ho, Wo, kw, C) per kernel row, then the kh rows to
    (N, Ho, Wo, kh, kw, C), reshaped: the same values as concatenating the kh*kw slices on
    the channel axis, but XLA's CPU backend leaves a concatenation of more than 8
    operands, or one along the minor axis, unfused (every slice written out, then copied
    again), while these 5-operand stacks on an outer axis fuse into one loop that writes
    the patch matrix once: dbl_conv_relu trains 1.09x faster at mini-batch 128 on two
    cores and evaluates 1.2x faster; with _patch_matmul, 1.9x on one core (docs/benchmarks.md).
    """
    kh, kw = _pair(kernel, "kernel")
    slices = _window_slices(x, (kh, kw), _pair(stride, "stride"), "kernel")
    if len(slices) == 1:
        return slices[0]
    n, ho, wo, c = slices[0].shape
    rows = [jnp.stack(slices[i * kw:(i + 1) * kw], axis=3) for i in range(kh)]
    return jnp.stack(rows, axis=3).reshape(n, ho, wo, kh * kw * c)


def _patch_matmul(p, w):
    """p @ w for a patch matrix (M, K) and a reshaped kernel (K, O), written so that
    reverse-mode autodiff computes the kernel's gradient in the orientation XLA's CPU
    backend runs faster: (g^T @ p)^T instead of p^T @ g (at dbl_conv_relu's conv 2 in
    micro-batches of 64, M = 4096, K = 500, O = 40: 1.4 ms instead of 2.2 ms). The kernel
    enters the product transposed, (O, K), so the product's transpose rule yields g^T @ p,
    (O, K); the optimization barrier on that operand (its own transpose) keeps XLA from
    folding the transposes back into p^T @ g. Plain JAX operations, no custom rule:
    forward mode (jvp, jacfwd, Hessian-vector products), vmap and higher orders work."""
    return lax.dot_general(p, lax.optimization_barrier(w.T), (((1,), (1,)), ((), ())))


def _pad_spatial(x, pads):
    """NHWC x zero-padded by explicit ((top, bottom), (left, right)); as is when all 0."""
    if all(p == (0, 0) for p in pads):
        return x
    return jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))


def conv2d(x, w, b=None, stride=1, padding="VALID", impl="auto"):
    """2-D convolution (cross-correlation, as Theano's and every framework's conv2d).

    x: (N, H, W, C) NHWC; w: (kh, kw, C, O) HWIO; b: (O,) shared bias or None.
    stride: int or pair; padding: "VALID", "SAME", an int or ((t, b), (l, r)).
    impl: "patches" (kh*kw shifted slices + one matmul), "xla"
    (`lax.conv_general_dilated`) or "auto" (the faster one for the backend).
    """
    if impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv impl {impl!r}; choose one of {CONV_IMPLS}")
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"conv2d wants x NHWC and w HWIO, got shapes {x.shape} and {w.shape}")
    if x.shape[-1] != w.shape[2]:
        raise ValueError(f"input has {x.shape[-1]} channels but the kernel expects {w.shape[2]}")
    kh, kw = w.shape[:2]
    stride = _pair(stride, "stride")
    pads = _explicit_padding(padding, (kh, kw), stride, x.shape[1:3])
    if impl == "auto":
        impl = default_conv_impl(batch=x.shape[0], dtype=x.dtype)
    if impl == "xla":
        y = lax.conv_general_dilated(x, w, stride, pads,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    else:
        x = _pad_spatial(x, pads)
        patches = extract_patches(x, (kh, kw), stride)
        # A 2-D matmul: its autodiff transposes stay plain 2-D matmuls, which XLA's CPU
        # backend runs ~3x faster than the 4-D dot_general the unreshaped form gives;
        # on a CPU with the kernel gradient in the faster orientation (_patch_matmul).
        n, ho, wo, k = patches.shape
        matmul = _patch_matmul if jax.default_backend() == "cpu" else jnp.matmul
        y = matmul(patches.reshape(-1, k), w.reshape(k, -1)).reshape(n, ho, wo, -1)
    return y if b is None else y + b


def _blocked_kernel(w):
    """(kh, kw, C, O) HWIO -> ((kh+1)*(kw+1)*C, 4*O): the kernel placed at the four
    offsets of a 2x2 pooling window inside a (kh+1) x (kw+1) patch, zeros elsewhere;
    columns ordered (window position, output map)."""
    placed = [jnp.pad(w, ((a, 1 - a), (b, 1 - b), (0, 0), (0, 0)))
              for a in range(2) for b in range(2)]
    kh, kw, c, o = w.shape
    return jnp.stack(placed, axis=3).reshape((kh + 1) * (kw + 1) * c, 4 * o)


FUSE_MAX_CONTRACTION = 128   # kh*kw*C_in: fuse only short contractions; see fuses_max_pool
FUSE_MAX_MAPS = 24           # output feature maps: fuse only narrow layers; ditto


def fuses_max_pool(x_shape, w_shape, stride, padding, impl, pool_kind, window, pool_stride,
                   backend: str | None = None) -> bool:
    """Whether conv_pool computes max_pool(conv2d(x, w), 2) in one matmul: a stride-1
    `patches` convolution on a CPU followed by max-pooling of non-overlapping 2x2
    windows, with a kernel of at least 5x5 (the patch grows from kh*kw to (kh+1)*(kw+1):
    1.44x the multiply-adds at 5x5, 1.78x at 3x3), a short contraction and few maps
    (kh*kw*C_in at most FUSE_MAX_CONTRACTION, O at most FUSE_MAX_MAPS: a first layer,
    whose cost is moving its patch matrix rather than multiplying) and room for one
    window. Measured on a 2-core CPU at mini-batch 128 (docs/benchmarks.md): the book's conv 1
    (25 x 20) alone trains 30% faster fused and dbl_conv_relu 5-8% faster; fusing its
    conv 2 (500 x 40) gains nothing; modern (conv 1: 25 x 32) is 2-5% slower fused, and
    slower still with its conv 2 (800 x 64) fused."""
    backend = backend or jax.default_backend()
    if impl == "auto":
        impl = default_conv_impl(backend)
    kh, kw = w_shape[:2]
    if not (backend == "cpu" and impl == "patches" and pool_kind == "max"
            and _pair(window, "window") == (2, 2)
            and _pair(pool_stride or window, "stride") == (2, 2)
            and _pair(stride, "stride") == (1, 1) and min(kh, kw) >= 5
            and kh * kw * x_shape[-1] <= FUSE_MAX_CONTRACTION
            and w_shape[3] <= FUSE_MAX_MAPS):
        return False
    pads = _explicit_padding(padding, (kh, kw), (1, 1), x_shape[1:3])
    out = [x_shape[1 + i] + sum(pads[i]) - (kh, kw)[i] + 1 for i in range(2)]
    return min(out) >= 2


def conv_pool(x, w, stride=1, padding="VALID", impl="auto", pool_kind="max", window=2,
              pool_stride=None):
    """pool(conv2d(x, w), pool_kind, window, pool_stride), no bias.

    Where fuses_max_pool holds, each 2x2 pooling window's four convolution outputs come
    from one row of a (kh+1) x (kw+1) patch matrix taken at stride 2, times the kernel
    placed at the window's four offsets (_blocked_kernel), and the max is taken over
    that axis: the patch matrix is 2.8x smaller than the stride-1 one (at 5x5) and the
    product 4x wider, for 1.44x the multiply-adds (see fuses_max_pool for when it pays).
    Same values up to float rounding, ties in the max split as max_pool splits them.
    """
    if (x.ndim != 4 or w.ndim != 4 or x.shape[-1] != w.shape[2]   # conv2d says why
            or not fuses_max_pool(x.shape, w.shape, stride, padding, impl, pool_kind,
                                  window, pool_stride)):
        return pool(conv2d(x, w, None, stride, padding, impl), pool_kind, window,
                    pool_stride)
    kh, kw = w.shape[:2]
    pads = _explicit_padding(padding, (kh, kw), (1, 1), x.shape[1:3])
    patches = extract_patches(_pad_spatial(x, pads), (kh + 1, kw + 1), 2)
    n, ho, wo, k = patches.shape
    y = _patch_matmul(patches.reshape(-1, k), _blocked_kernel(w))
    return _max_over(y.reshape(n, ho, wo, 4, w.shape[3]), (3,))


def _window_slices(x, window, stride, what="pool window"):
    """The kh*kw strided (N, Ho, Wo, C) views of x, one per window offset (i, j) in
    row-major order: reduced elementwise they pool; concatenated they are conv patches."""
    kh, kw = window
    sh, sw = stride
    n, h, w, c = x.shape
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"{what} {kh}x{kw} does not fit a {h}x{w} input")
    return [
        lax.slice(x, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
                  (1, sh, sw, 1))
        for i in range(kh) for j in range(kw)
    ]


def _pool(x, window, stride, reduce_blocks, combine):
    window = _pair(window, "window")
    stride = window if stride is None else _pair(stride, "stride")
    if x.ndim != 4:
        raise ValueError(f"pooling wants NHWC input, got shape {x.shape}")
    n, h, w, c = x.shape
    kh, kw = window
    if stride == window and h >= kh and w >= kw:
        # Non-overlapping windows (the chapter's case): crop the ragged edge, as
        # Theano's ignore_border=True, and reduce a reshaped view.
        ho, wo = h // kh, w // kw
        x = x[:, : ho * kh, : wo * kw, :].reshape(n, ho, kh, wo, kw, c)
        return reduce_blocks(x, (2, 4))
    slices = _window_slices(x, window, stride)
    out = slices[0]
    for s in slices[1:]:
        out = combine(out, s)
    return out


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def _max_over(blocks, axes):
    """Max over `axes` of non-overlapping pooling blocks: (N, Ho, kh, Wo, kw, C) over
    (2, 4) for max_pool, (N, Ho, Wo, 4, C) over (3,) for conv_pool's fused 2x2 windows.

    The derivative is JAX's own rule for a max reduction (each window's tangent or error
    split equally among its tied maxima), written so that XLA computes it in one fused
    pass: autodiff of jnp.max builds a 0/1 mask, a separate reduction counting it and a
    division, which on the CPU cost 12% of dbl_conv_relu's training step at mini-batch
    128 (docs/benchmarks.md). A forward-mode rule, so jvp works and reverse mode transposes it.
    """
    return jnp.max(blocks, axis=axes)


@_max_over.defjvp
def _max_over_jvp(axes, primals, tangents):
    (blocks,), (t,) = primals, tangents
    y = jnp.max(blocks, axis=axes)
    hit = blocks == jnp.expand_dims(y, axes)
    # The tie count as a sum of one slice per window position rather than a
    # reduction, so it fuses.
    count = sum(hit[idx].astype(t.dtype) for idx in _window_positions(blocks.shape, axes))
    picked = jnp.where(hit, t, jnp.zeros((), t.dtype))
    return y, jnp.sum(picked, axis=axes) / jnp.squeeze(count, axes)


def _window_positions(shape, axes):
    """Index tuples, one per position within a window, each keeping its axes of size 1."""
    for combo in itertools.product(*(range(shape[a]) for a in axes)):
        idx = [slice(None)] * len(shape)
        for a, i in zip(axes, combo):
            idx[a] = slice(i, i + 1)
        yield tuple(idx)


def max_pool(x, window=2, stride=None):
    """Max over each window (stride defaults to the window). NHWC."""
    return _pool(x, window, stride, lambda v, ax: _max_over(v, ax), jnp.maximum)


def avg_pool(x, window=2, stride=None):
    """Mean over each window (stride defaults to the window). NHWC."""
    k = _pair(window, "window")
    total = _pool(x, window, stride, lambda v, ax: jnp.sum(v, axis=ax), jnp.add)
    return total / (k[0] * k[1])


def _safe_sqrt(s):
    # sqrt with gradient 0 (a subgradient) at 0 instead of inf*0 = nan: all-zero
    # windows are common on MNIST's blank borders.
    positive = s > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, s, 1.0)), 0.0)


def l2_pool(x, window=2, stride=None):
    """Square root of the sum of squares over each window, as the chapter defines it."""
    sq = x * x
    return _safe_sqrt(_pool(sq, window, stride, lambda v, ax: jnp.sum(v, axis=ax), jnp.add))


def pool(x, kind, window=2, stride=None):
    """Dispatches to max_pool / l2_pool / avg_pool; kind "none" is the identity."""
    if kind == "max":
        return max_pool(x, window, stride)
    if kind == "l2":
        return l2_pool(x, window, stride)
    if kind == "avg":
        return avg_pool(x, window, stride)
    if kind == "none":
        return x
    raise ValueError(f"unknown pool {kind!r}; choose one of {POOLS}")


def dense(x, w, b=None):
    """x @ w (+ b). x: (..., n_in), w: (n_in, n_out)."""
    y = jnp.dot(x, w)
    return y if b is None else y + b


def activation(name):
    """The activation function called `name` (one of ACTIVATIONS)."""
    fns = {"sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "relu": jax.nn.relu,
           "linear": lambda v: v}
    if name not in fns:
        raise ValueError(f"unknown activation {name!r}; choose one of {ACTIVATIONS}")
    return fns[name]


def dropout(x, rate, key, train, mode="network3", keep=None):
    """Dropout on a layer's inputs.

    network3 (the book's code): in training multiply by a Bernoulli(1-rate) mask with no
    rescaling; at evaluation scale by (1-rate), which equals scaling the weights by (1-rate).
    inverted: in training mask and divide by (1-rate); at evaluation the identity.
    keep: the keep probability 1-rate as a float32 scalar, possibly traced, used instead
    of `rate` (a vmapped sweep gives each run its own); a mask is always drawn, and keep
    1 keeps every input. Given float32(1-rate) it draws the masks and scales exactly as
    the Python float `rate` does.
    """
    if mode not in DROPOUT_MODES:
        raise ValueError(f"unknown dropout mode {mode!r}; choose one of {DROPOUT_MODES}")
    traced = keep is not None
    if not traced:
        if rate == 0.0:
            return x
        keep = scale = 1.0 - rate
    else:
        keep = jnp.asarray(keep, jnp.float32)
        scale = keep.astype(x.dtype)
    if not train:
        return x * scale if mode == "network3" else x
    mask = jax.random.bernoulli(key, keep, x.shape)
    y = jnp.where(mask, x, 0.0)
    if mode == "network3":
        return y
    # XLA turns the division by a constant into a product with its reciprocal; a
    # traced divisor is divided or not as fusion decides: the explicit reciprocal
    # keeps both paths bit for bit the same.
    return y * (1.0 / scale) if traced else y / scale
