"""Ensembles and repeated runs: members stacked on a leading axis, votes, selection.

Training stacks the members' TrainStates on axis 0 and vmaps the step (train.py), so
five networks train in one compiled program, each with its own PRNG stream (init,
dropout, shuffle). These functions turn the members' outputs into one answer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

VOTES = ("plurality", "mean_softmax")


def plurality_vote(predictions, num_classes: int = 10):
    """(M, N) member predictions -> (N,) the class most members chose.

    Ties go to the tied class chosen by the earliest member, which is what the book's
    `Counter(votes).most_common(1)` does (Counter keeps first-seen order among equals)."""
    m = predictions.shape[0]
    onehot = predictions[..., None] == jnp.arange(num_classes)          # (M, N, C)
    counts = jnp.sum(onehot, axis=0)                                      # (N, C)
    first = jnp.where(jnp.any(onehot, axis=0), jnp.argmax(onehot, axis=0), m)
    return jnp.argmax(counts * (m + 1) - first, axis=-1)


def mean_softmax_vote(probabilities):
    """(M, N, C) member softmax outputs -> (N,) argmax of their mean."""
    return jnp.argmax(jnp.mean(probabilities, axis=0), axis=-1)


def vote(kind: str, probabilities):
    if kind == "plurality":
        return plurality_vote(jnp.argmax(probabilities, axis=-1), probabilities.shape[-1])
    if kind == "mean_softmax":
        return mean_softmax_vote(probabilities)
    raise ValueError(f"unknown vote {kind!r}; choose one of {VOTES}")


def member(tree, i: int):
    """Member i of a stacked pytree."""
    return jax.tree.map(lambda x: x[i], tree)


def best_run(best_validation_accuracies) -> int:
    """The run the book keeps of several: the highest best-validation accuracy (the
    earliest run on a tie)."""
    best = 0
    for i, acc in enumerate(best_validation_accuracies):
        if acc > best_validation_accuracies[best]:
            best = i
    return best
