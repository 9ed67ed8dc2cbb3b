"""Loss, L2 term and accuracy against numpy and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np

from mnist_cnn import losses


def test_log_likelihood_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 10))
    labels = rng.integers(0, 10, size=7)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    want = -np.mean(np.log(p[np.arange(7), labels]))
    got = losses.log_likelihood(jnp.asarray(logits, jnp.float32), jnp.asarray(labels))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_log_likelihood_gradient_is_softmax_minus_onehot():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 10)).astype(np.float32)
    labels = np.array([0, 3, 9, 3])
    g = jax.grad(losses.log_likelihood)(jnp.asarray(logits), jnp.asarray(labels))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(g, (p - np.eye(10)[labels]) / 4, rtol=1e-5, atol=1e-7)


def test_l2_penalty_counts_weights_not_biases():
    params = {"a": {"w": jnp.ones((2, 3)), "b": jnp.full((3,), 100.0)},
              "c": {"w": jnp.full((4,), 2.0), "b": jnp.ones(1)}}
    # 0.5 * lmbda * (6*1 + 4*4) / num_batches
    np.testing.assert_allclose(losses.l2_penalty(params, 0.1, 5000), 0.5 * 0.1 * 22 / 5000)
    g = jax.grad(losses.l2_penalty)(params, 0.1, 5000)
    np.testing.assert_allclose(g["c"]["w"], 0.1 * 2.0 / 5000)
    np.testing.assert_array_equal(g["a"]["b"], 0.0)


def test_accuracy_and_correct():
    logits = jnp.array([[0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    labels = jnp.array([1, 1, 1])
    assert int(losses.correct(logits, labels)) == 2
    np.testing.assert_allclose(losses.accuracy(logits, labels), 2 / 3)
