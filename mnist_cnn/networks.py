"""Flax Linen modules assembled from a config's layer list, in network3's layer forms.

Parameters are named `w` (weights, HWIO for convolutions) and `b` (biases) in every
layer, so the L2 term can pick out the weights by name.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from mnist_cnn import layers as L


def _normal(std):
    # The barrier stops XLA folding `std` into random.normal's own last multiply, so the
    # jitted init gives the same bits as the eager one (which the measured runs used).
    return lambda key, shape, dtype=jnp.float32: std * jax.lax.optimization_barrier(
        jax.random.normal(key, shape, dtype))


def _weight_init(init, activation, n_out_for_network3):
    if init == "network3":
        # network3: w ~ N(0, 1/n_out), with n_out the fan-out (after pooling for conv).
        return _normal(math.sqrt(1.0 / n_out_for_network3))
    if activation == "relu":
        return nn.initializers.he_normal()
    return nn.initializers.lecun_normal()


def _bias_init(init):
    # network3 draws biases from N(0, 1); the modern choice is zero.
    return _normal(1.0) if init == "network3" else nn.initializers.zeros


BN_EPS = 1e-5


class ConvPool(nn.Module):
    """act(pool(conv(x)) + b): network3's ConvPoolLayer, bias shared per feature map.

    batch_norm: act(g * (pool(conv(x)) - mean) / sqrt(var + eps) + b), per feature map
    (beyond the book; Ioffe & Szegedy 2015, applied after pooling, where it costs a
    quarter as much). Training normalises by the mini-batch's own moments and sows them
    ("intermediates"/"bn_moments": mean and mean square); evaluation uses `bn_mean` and
    `bn_var`, which live among the parameters but never reach the cost while training
    (zero gradients, and no L2: that picks `w` only). train.make_calibrate sets them
    from the training images' population moments ("precise BN", Wu & Johnson 2021)."""
    features: int
    kernel: int = 5
    stride: int = 1
    padding: str = "VALID"
    pool: str = "max"
    pool_window: int = 2
    pool_stride: int = 0
    activation: str = "sigmoid"
    init_scheme: str = "network3"
    conv_impl: str = "auto"
    dtype: Any = jnp.float32
    batch_norm: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        area = self.pool_window ** 2 if self.pool != "none" else 1
        fan_out = self.features * self.kernel ** 2 / area
        w = self.param("w", _weight_init(self.init_scheme, self.activation, fan_out),
                       (self.kernel, self.kernel, x.shape[-1], self.features))
        b = self.param("b", _bias_init(self.init_scheme), (self.features,))
        y = L.conv_pool(x, w.astype(self.dtype), self.stride, self.padding, self.conv_impl,
                        self.pool, self.pool_window, self.pool_stride or None)
        if self.batch_norm:
            y = self._normalise(y, train)
        return L.activation(self.activation)(y + b.astype(self.dtype))

    def _normalise(self, y, train):
        n = self.features
        g = self.param("g", nn.initializers.ones, (n,))
        mean = self.param("bn_mean", nn.initializers.zeros, (n,))
        var = self.param("bn_var", nn.initializers.ones, (n,))
        if train:
            y32 = y.astype(jnp.float32)
            mean = jnp.mean(y32, axis=(0, 1, 2))
            mean_sq = jnp.mean(jnp.square(y32), axis=(0, 1, 2))
            self.sow("intermediates", "bn_moments", (mean, mean_sq))
            var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
        scale = g * lax.rsqrt(var + BN_EPS)
        return (y - mean.astype(self.dtype)) * scale.astype(self.dtype)


class Dense(nn.Module):
    """act(dropout(x) @ w + b): network3's FullyConnectedLayer (activation 'linear' and
    zero init give its SoftmaxLayer's logits)."""
    features: int
    activation: str = "sigmoid"
    dropout: float = 0.0
    dropout_mode: str = "network3"
    init_scheme: str = "network3"
    zero_init: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool, keep=None):
        """keep: this layer's dropout keep probability (1 - rate), possibly traced,
        overriding `dropout` (see layers.dropout)."""
        x = x.reshape(x.shape[0], -1)
        if self.zero_init:
            w_init, b_init = nn.initializers.zeros, nn.initializers.zeros
        else:
            w_init = _weight_init(self.init_scheme, self.activation, self.features)
            b_init = _bias_init(self.init_scheme)
        w = self.param("w", w_init, (x.shape[-1], self.features))
        b = self.param("b", b_init, (self.features,))
        if self.dropout > 0 or keep is not None:
            key = self.make_rng("dropout") if train else None
            x = L.dropout(x, self.dropout, key, train, self.dropout_mode, keep)
        y = L.dense(x, w.astype(self.dtype), b.astype(self.dtype))
        return L.activation(self.activation)(y)


class Network(nn.Module):
    """A stack of layers described by config.layers; returns softmax logits (float32).
    keep_probs: {layer index: keep probability} for fc / softmax layers, overriding the
    layers' dropout rates with (possibly traced) values: a vmapped sweep's per-run rates."""
    layers: Sequence[dict]
    init_scheme: str = "network3"
    dropout_mode: str = "network3"
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, keep_probs=None):
        x = x.astype(self.dtype)
        keep_probs = keep_probs or {}
        for i, spec in enumerate(self.layers):
            kind = spec["kind"]
            if kind == "conv_pool":
                x = ConvPool(spec["features"], spec["kernel"], spec["stride"], spec["padding"],
                             spec["pool"], spec["pool_window"], spec["pool_stride"],
                             spec["activation"], self.init_scheme, self.conv_impl, self.dtype,
                             spec.get("batch_norm", False), name=f"layer{i}_conv")(x, train)
            elif kind == "fc":
                x = Dense(spec["features"], spec["activation"], spec["dropout"],
                          self.dropout_mode, self.init_scheme, dtype=self.dtype,
                          name=f"layer{i}_fc")(x, train, keep_probs.get(i))
            elif kind == "softmax":
                zero = self.init_scheme == "network3"
                x = Dense(spec["features"], "linear", spec["dropout"], self.dropout_mode,
                          self.init_scheme, zero_init=zero, dtype=self.dtype,
                          name=f"layer{i}_softmax")(x, train, keep_probs.get(i))
            else:
                raise ValueError(f"unknown layer kind {kind!r}")
        return x.astype(jnp.float32)


def from_config(config) -> Network:
    layers = tuple(dict(layer) for layer in config.layers)
    return Network(layers=layers, init_scheme=config.init, dropout_mode=config.dropout_mode,
                   conv_impl=config.conv_impl, dtype=jnp.dtype(config.dtype))


def init_params(model: Network, key, image_shape=(28, 28, 1)):
    return model.init({"params": key}, jnp.zeros((1, *image_shape), jnp.float32))["params"]


def model_flops(layers, image_hw=(28, 28), channels=1) -> tuple[float, float]:
    """(forward, training) FLOPs per image of a config's layers, counted from the layer
    shapes alone (independent of the convolution implementation): a conv layer costs
    2*Ho*Wo*kh*kw*Cin*Cout, an FC or softmax layer 2*in*out; pooling, activations and
    biases are not counted. Training = forward + the backward pass's two products per
    layer (input and weight gradients), less the first layer's input gradient, which no
    one needs: 3*forward - first layer. For the book's dbl_conv_relu: 9.22 MFLOP."""
    h, w = image_hw
    c = channels
    costs = []
    for spec in layers:
        if spec["kind"] == "conv_pool":
            kh, kw = L._pair(spec["kernel"], "kernel")
            stride = L._pair(spec["stride"], "stride")
            (pt, pb), (pl, pr) = L._explicit_padding(spec["padding"], (kh, kw), stride, (h, w))
            h = (h + pt + pb - kh) // stride[0] + 1
            w = (w + pl + pr - kw) // stride[1] + 1
            costs.append(2.0 * h * w * kh * kw * c * spec["features"])
            c = spec["features"]
            if spec["pool"] != "none":
                ph, pw = L._pair(spec["pool_window"], "pool_window")
                sh, sw = (ph, pw) if not spec["pool_stride"] else L._pair(spec["pool_stride"],
                                                                          "pool_stride")
                h, w = (h - ph) // sh + 1, (w - pw) // sw + 1
        else:
            costs.append(2.0 * h * w * c * spec["features"])
            h, w, c = 1, 1, spec["features"]
    forward = sum(costs)
    return forward, 3 * forward - (costs[0] if costs else 0.0)
