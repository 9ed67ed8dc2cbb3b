"""Loss, the network3 L2 term, accuracy: pure functions of arrays."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def log_likelihood(logits, labels):
    """Mean negative log-likelihood of the labels under softmax(logits)."""
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


def weights(params):
    """Every layer's weight matrix or kernel (leaves named 'w'), not biases."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return [leaf for path, leaf in flat if getattr(path[-1], "key", None) == "w"]


def l2_penalty(params, lmbda, num_training_batches):
    """network3's term: 0.5 * lmbda * sum(w**2) / num_training_batches, weights only."""
    total = sum(jnp.sum(jnp.square(w)) for w in weights(params))
    return 0.5 * lmbda * total / num_training_batches


def correct(logits, labels):
    """Number of correct argmax predictions."""
    return jnp.sum(jnp.argmax(logits, axis=-1) == labels)


def accuracy(logits, labels):
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)
