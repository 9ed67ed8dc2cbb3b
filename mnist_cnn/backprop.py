"""The chapter's problem (end of section 6.1): backpropagation through convolutional and
pooling layers, written by hand as pure, jittable functions.

Each `*_backward` takes what its layer's forward pass saw (inputs, and outputs where
that is cheaper) and the error at the layer's output, dC/d(output), and returns the
error at its input, dC/d(input), and the gradients of its parameters. They are checked
against `jax.vjp` / `jax.grad` and float64 finite differences in tests/test_backprop.py.

Layer forms are the ones mnist_cnn.layers computes (NHWC, HWIO kernels):
- conv: y[n,i,j,o] = sum_{a,b,c} xp[n, i*s+a, j*s+b, c] w[a,b,c,o], xp = x padded;
- pooling over windows (max / L2 / average), non-overlapping or overlapping;
- dense: y = x @ w + b; activations sigmoid / tanh / ReLU / linear;
- softmax output with the mean log-likelihood cost; network3's L2 term; dropout masks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mnist_cnn import layers as L

# ---- activations (BP1/BP2's sigma'(z) factor) ----


def activation_backward(name: str, z, da):
    """dC/dz from dC/da for a = act(z): da * act'(z). ReLU'(0) is taken as 0, as JAX's."""
    if name == "sigmoid":
        s = jax.nn.sigmoid(z)
        return da * s * (1 - s)
    if name == "tanh":
        t = jnp.tanh(z)
        return da * (1 - t * t)
    if name == "relu":
        return jnp.where(z > 0, da, 0.0)
    if name == "linear":
        return da
    raise ValueError(f"unknown activation {name!r}")


# ---- fully connected and softmax (BP1-BP4 as in chapter 2) ----


def dense_backward(x, w, dy):
    """y = x @ w + b: (dC/dx, dC/dw, dC/db). x: (B, n_in), dy: (B, n_out)."""
    return dy @ w.T, x.T @ dy, dy.sum(axis=0)


def softmax_log_likelihood_backward(logits, labels):
    """dC/dz for C = mean_n -log softmax(z_n)[y_n]: (softmax(z) - onehot(y)) / B (BP1)."""
    b = logits.shape[0]
    return (jax.nn.softmax(logits) - jax.nn.one_hot(labels, logits.shape[-1])) / b


def l2_backward(w, lmbda, num_batches):
    """d/dw of network3's 0.5 * lmbda * sum(w**2) / num_batches."""
    return lmbda * w / num_batches


def dropout_backward(mask, d_out, rate, mode="network3"):
    """out = x * mask (network3) or x * mask / (1 - rate) (inverted): dC/dx."""
    d = jnp.where(mask, d_out, 0.0)
    return d if mode == "network3" else d / (1.0 - rate)


# ---- convolution (the shared weights: BP3/BP4 become sums over positions) ----


def conv_backward(x, w, dy, stride=1, padding="VALID"):
    """(dC/dx, dC/dw) for y = conv(x, w) (no bias; the conv-pool layer adds its shared
    bias after pooling). x: (N,H,W,C), w: (kh,kw,C,O), dy: (N,Ho,Wo,O).

    dC/dw[a,b,c,o] = sum_{n,i,j} xp[n, i*s+a, j*s+b, c] dy[n,i,j,o]: the weight is
    shared, so its gradient sums the contributions of every position (BP4 for conv).
    dC/dxp[n,p,q,c] = sum over (i,j,a,b) with i*s+a = p, j*s+b = q of w[a,b,c,o] dy[n,i,j,o]:
    each input pixel collects the error of every output whose receptive field covers it,
    weighted by the kernel entry that joined them (BP2 for conv: a 'full' correlation
    with the flipped kernel when s = 1)."""
    kh, kw, c, o = w.shape
    sh, sw = L._pair(stride, "stride")
    pads = L._explicit_padding(padding, (kh, kw), (sh, sw), x.shape[1:3])
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    patches = L.extract_patches(xp, (kh, kw), (sh, sw))          # (N,Ho,Wo,kh*kw*C)
    n, ho, wo, k = patches.shape
    dy2 = dy.reshape(-1, o)
    dw = (patches.reshape(-1, k).T @ dy2).reshape(kh, kw, c, o)
    dpatches = (dy2 @ w.reshape(k, o).T).reshape(n, ho, wo, kh * kw, c)
    dxp = jnp.zeros_like(xp)
    for a in range(kh):
        for b in range(kw):
            dxp = dxp.at[:, a:a + (ho - 1) * sh + 1:sh, b:b + (wo - 1) * sw + 1:sw, :].add(
                dpatches[:, :, :, a * kw + b, :])
    (t, bt), (lft, r) = pads
    dx = dxp[:, t:xp.shape[1] - bt, lft:xp.shape[2] - r, :]
    return dx, dw


# ---- pooling (no parameters: BP2 only) ----


def _windows(x, window, stride):
    window = L._pair(window, "window")
    stride = window if stride is None else L._pair(stride, "stride")
    return window, stride


def _non_overlapping(x, window, stride):
    return stride == window and x.shape[1] >= window[0] and x.shape[2] >= window[1]


def _blocks(x, window):
    """Non-overlapping windows as (N, Ho, kh, Wo, kw, C), the ragged edge cropped."""
    n, h, w, c = x.shape
    kh, kw = window
    ho, wo = h // kh, w // kw
    return x[:, :ho * kh, :wo * kw, :].reshape(n, ho, kh, wo, kw, c), (ho, wo)


def _unblocks(d_blocks, x_shape, window, hw):
    """Inverse of _blocks: scatter (N,Ho,kh,Wo,kw,C) back to x's shape, zeros in the crop."""
    n, h, w, c = x_shape
    ho, wo = hw
    d = d_blocks.reshape(n, ho * window[0], wo * window[1], c)
    return jnp.pad(d, ((0, 0), (0, h - ho * window[0]), (0, w - wo * window[1]), (0, 0)))


def _window_scatter(per_offset, x_shape, window, stride):
    """Adds per-offset errors (one (N,Ho,Wo,C) array per window offset (a, b), row-major)
    back onto the input positions they came from."""
    kw, (sh, sw) = window[1], stride
    ho, wo = per_offset[0].shape[1:3]
    d = jnp.zeros(x_shape, per_offset[0].dtype)
    for k, g in enumerate(per_offset):
        a, b = divmod(k, kw)
        d = d.at[:, a:a + (ho - 1) * sh + 1:sh, b:b + (wo - 1) * sw + 1:sw, :].add(g)
    return d


def max_pool_backward(x, dy, window=2, stride=None):
    """dC/dx for y = max_pool(x): each window's error goes to the position of its
    maximum. Ties: with non-overlapping windows (the chapter's 2x2) the error is split
    equally among the tied maxima, as JAX's gradient of a max reduction does; with
    overlapping windows the forward pass is a chain of pairwise maxima over the window
    offsets and each pairwise tie splits its error in half (JAX's rule for lax.max)."""
    window, stride = _windows(x, window, stride)
    if _non_overlapping(x, window, stride):
        blocks, hw = _blocks(x, window)
        m = blocks.max(axis=(2, 4), keepdims=True)
        hit = (blocks == m).astype(dy.dtype)
        share = hit / hit.sum(axis=(2, 4), keepdims=True)
        d = share * dy[:, :, None, :, None, :]
        return _unblocks(d, x.shape, window, hw)
    slices = L._window_slices(x, window, stride)
    running = [slices[0]]
    for s in slices[1:]:
        running.append(jnp.maximum(running[-1], s))
    per_offset = [None] * len(slices)
    g = dy
    for k in range(len(slices) - 1, 0, -1):
        prev, s = running[k - 1], slices[k]
        to_prev = jnp.where(prev > s, 1.0, jnp.where(prev == s, 0.5, 0.0))
        per_offset[k] = g * (1.0 - to_prev)
        g = g * to_prev
    per_offset[0] = g
    return _window_scatter(per_offset, x.shape, window, stride)


def avg_pool_backward(x, dy, window=2, stride=None):
    """dC/dx for y = mean over each window: dy / (kh*kw) to every position it averaged."""
    window, stride = _windows(x, window, stride)
    area = window[0] * window[1]
    if _non_overlapping(x, window, stride):
        _, hw = _blocks(x, window)
        d = jnp.broadcast_to((dy / area)[:, :, None, :, None, :],
                             (dy.shape[0], hw[0], window[0], hw[1], window[1], dy.shape[-1]))
        return _unblocks(d, x.shape, window, hw)
    return _window_scatter([dy / area] * area, x.shape, window, stride)


def l2_pool_backward(x, y, dy, window=2, stride=None):
    """dC/dx for y = sqrt(sum of x**2 over each window): dy * x / y at each position
    (0 where the window is all zeros, the subgradient layers.l2_pool's forward uses)."""
    window, stride = _windows(x, window, stride)
    safe = jnp.where(y > 0, y, 1.0)
    scale = jnp.where(y > 0, dy / safe, 0.0)
    if _non_overlapping(x, window, stride):
        blocks, hw = _blocks(x, window)
        return _unblocks(blocks * scale[:, :, None, :, None, :], x.shape, window, hw)
    slices = L._window_slices(x, window, stride)
    return _window_scatter([s * scale for s in slices], x.shape, window, stride)


def pool_backward(kind, x, y, dy, window=2, stride=None):
    """Dispatch on the pool kind; x: the pool's input, y: its output."""
    if kind == "max":
        return max_pool_backward(x, dy, window, stride)
    if kind == "avg":
        return avg_pool_backward(x, dy, window, stride)
    if kind == "l2":
        return l2_pool_backward(x, y, dy, window, stride)
    if kind == "none":
        return dy
    raise ValueError(f"unknown pool {kind!r}")


# ---- a whole network (the chapter's problem, generalised to any stack of layers) ----


def _name(i, kind):
    return f"layer{i}_" + {"conv_pool": "conv", "fc": "fc", "softmax": "softmax"}[kind]


def dropout_masks(layer_specs, key):
    """A function (layer index, layer name, input shape) -> the layer's dropout mask:
    the manual path's own stream, bernoulli(fold_in(key, i)), not Flax's."""
    def mask(i, spec, shape):
        return jax.random.bernoulli(jax.random.fold_in(key, i), 1.0 - spec["dropout"], shape)
    return mask


def network_grads(params, layer_specs, images, labels, lmbda=0.0, num_batches=1,
                  masks=None, dropout_mode="network3", conv_impl="auto", dropout_key=None,
                  with_nll=False):
    """(cost, gradients) of network3's cost for a network of config.layers, by a forward
    pass that keeps what each layer saw and a hand-written backward pass.

    images: (B, 28, 28, 1) floats. masks: {layer name: boolean mask over that layer's
    (flattened) inputs} for layers with dropout in training; None evaluates without
    dropout. dropout_key: draw the masks instead (dropout_masks). Returns the mean
    log-likelihood + L2 term and a gradient tree shaped like `params`; with_nll: (cost,
    mean log-likelihood, gradients)."""
    draw = dropout_masks(layer_specs, dropout_key) if dropout_key is not None else None
    logits, saved = _forward(params, layer_specs, images, dict(masks or {}), draw,
                             dropout_mode, conv_impl)
    nll = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))
    cost = nll + 0.5 * lmbda * sum(jnp.sum(params[n]["w"] ** 2) for n in params) / num_batches
    grads = _backward(params, layer_specs, saved, logits, labels, lmbda, num_batches,
                      dropout_mode)
    return (cost, nll, grads) if with_nll else (cost, grads)


def _forward(params, layer_specs, images, masks, draw, dropout_mode, conv_impl):
    """The logits, and what each layer saw for _backward. masks: {layer name: mask},
    to which the masks `draw` makes are added."""
    a, saved = images, []
    for i, spec in enumerate(layer_specs):
        name = _name(i, spec["kind"])
        if spec["kind"] == "conv_pool":
            a, seen = _conv_pool_forward(spec, params[name], a, conv_impl)
        else:
            flat = a.reshape(a.shape[0], -1)
            if draw is not None and spec["dropout"] > 0:
                masks[name] = draw(i, spec, flat.shape)
            mask = masks.get(name) if spec["dropout"] > 0 else None
            a, seen = _dense_forward(spec, params[name], a.shape, flat, mask, dropout_mode)
        saved.append(seen)
    return a, saved


def _conv_pool_forward(spec, p, x, conv_impl):
    """act(pool(conv(x)) + b), and (x, conv(x), pool(conv(x)), the pre-activation)."""
    z = L.conv2d(x, p["w"], None, spec["stride"], spec["padding"], conv_impl)
    pooled = L.pool(z, spec["pool"], spec["pool_window"], spec["pool_stride"] or None)
    pre = pooled + p["b"]
    return L.activation(spec["activation"])(pre), (x, z, pooled, pre)


def _dense_forward(spec, p, in_shape, flat, mask, dropout_mode):
    """A fully connected or softmax layer on its flattened inputs, after dropout: masked
    in training, scaled by 1 - rate in network3's evaluation. Returns its output
    (softmax: the logits) and (input shape, inputs after dropout, mask, pre-activation)."""
    rate = spec["dropout"]
    xd = flat
    if mask is not None:
        xd = jnp.where(mask, flat, 0.0)
        xd = xd if dropout_mode == "network3" else xd / (1.0 - rate)
    elif rate > 0 and dropout_mode == "network3":
        xd = flat * (1.0 - rate)
    pre = xd @ p["w"] + p["b"]
    out = pre if spec["kind"] == "softmax" else L.activation(spec["activation"])(pre)
    return out, (in_shape, xd, mask, pre)


def _backward(params, layer_specs, saved, logits, labels, lmbda, num_batches,
              dropout_mode):
    """Every layer's gradients, from the output back (BP1 at the softmax, then BP2 down
    the layers, BP3/BP4 at each), with network3's L2 term on the weights."""
    grads = {}
    d = softmax_log_likelihood_backward(logits, labels)      # dC/dz of the output layer
    for i in range(len(layer_specs) - 1, -1, -1):
        spec = layer_specs[i]
        name = _name(i, spec["kind"])
        w = params[name]["w"]
        if spec["kind"] == "conv_pool":
            d, dw, db = _conv_pool_backward(spec, w, saved[i], d)
        else:
            d, dw, db = _dense_layer_backward(spec, w, saved[i], d, dropout_mode)
        grads[name] = {"w": dw + l2_backward(w, lmbda, num_batches), "b": db}
    return grads


def _conv_pool_backward(spec, w, seen, d):
    """(dC/dx, dC/dw, dC/db) of a conv-pool layer from dC/d(its output)."""
    x, z, pooled, pre = seen
    d_pre = activation_backward(spec["activation"], pre, d)       # BP2's sigma'
    db = d_pre.sum(axis=(0, 1, 2))                                # shared bias
    dz = pool_backward(spec["pool"], z, pooled, d_pre, spec["pool_window"],
                       spec["pool_stride"] or None)
    dx, dw = conv_backward(x, w, dz, spec["stride"], spec["padding"])
    return dx, dw, db


def _dense_layer_backward(spec, w, seen, d, dropout_mode):
    """(dC/dx, dC/dw, dC/db) of a fully connected or softmax layer from dC/d(its
    output); the softmax's is already dC/dz."""
    in_shape, xd, mask, pre = seen
    d_pre = d if spec["kind"] == "softmax" else activation_backward(spec["activation"], pre, d)
    d_xd, dw, db = dense_backward(xd, w, d_pre)
    if mask is not None:
        d_xd = dropout_backward(mask, d_xd, spec["dropout"], dropout_mode)
    return d_xd.reshape(in_shape), dw, db


__all__ = ["activation_backward", "dense_backward", "softmax_log_likelihood_backward",
           "l2_backward", "dropout_backward", "conv_backward", "max_pool_backward",
           "avg_pool_backward", "l2_pool_backward", "pool_backward", "network_grads", "dropout_masks"]
