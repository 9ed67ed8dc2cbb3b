"""Ensembles: votes against Python references, stacked training against separate runs."""

from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_cnn import ensemble, train
from tests.test_train import fake_data, tiny_config
from mnist_cnn import networks


def book_plurality(votes):
    """conv.py's vote: the most common prediction, first-seen order among ties."""
    return Counter(votes).most_common(1)[0][0]


def test_plurality_vote_matches_counter_including_ties():
    rng = np.random.default_rng(0)
    for members in (1, 2, 3, 4, 5):
        preds = rng.integers(0, 4, (members, 500))   # few classes: many ties
        got = np.asarray(ensemble.plurality_vote(jnp.asarray(preds), 10))
        want = [book_plurality(list(preds[:, j])) for j in range(500)]
        np.testing.assert_array_equal(got, want)


def test_mean_softmax_vote():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(10), size=(3, 50))
    np.testing.assert_array_equal(ensemble.mean_softmax_vote(jnp.asarray(probs)),
                                  probs.mean(0).argmax(-1))
    assert ensemble.vote("mean_softmax", jnp.asarray(probs)).shape == (50,)
    with pytest.raises(ValueError, match="vote"):
        ensemble.vote("median", jnp.asarray(probs))


def test_best_run_prefers_earliest_on_ties():
    assert ensemble.best_run([0.9, 0.95, 0.95, 0.94]) == 1
    assert ensemble.best_run([0.5]) == 0


@pytest.mark.parametrize("shuffle", [False, True])
def test_stacked_members_equal_separate_runs(shuffle):
    """Member i of a vmapped ensemble trains exactly as a lone network with seed+i:
    its own init, dropout and shuffle streams."""
    c = tiny_config(shuffle=shuffle, seed=4)
    x, y = fake_data(40)
    nb = train.steps_per_epoch(40, c.batch_size)
    model = networks.from_config(c)
    tx = train.make_optimizer(c, nb)
    stacked = train.init_states(model, tx, c.seed, 3)
    order = train.epoch_order(stacked.key, 0, 40, True) if shuffle else None
    chunk = train.make_train_chunk(model, tx, c, nb, stacked=True)
    stacked, losses, _ = chunk(stacked, x, y, order, 0, num_steps=nb)
    assert losses.shape == (3, nb)
    single_chunk = train.make_train_chunk(model, tx, c, nb)
    for i in range(3):
        alone = train.init_state(model, tx, c.seed + i)
        o = train.shuffle_order(alone.key, 0, 40) if shuffle else None
        alone, alone_losses, _ = single_chunk(alone, x, y, o, 0, num_steps=nb)
        np.testing.assert_allclose(losses[i], alone_losses, rtol=2e-5, atol=1e-6)
        for a, b in zip(jax.tree.leaves(ensemble.member(stacked.params, i)),
                        jax.tree.leaves(alone.params)):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


def test_stacked_predictions_match_each_member():
    c = tiny_config()
    model = networks.from_config(c)
    tx = train.make_optimizer(c, 1)
    stacked = train.init_states(model, tx, 0, 2)
    x, _ = fake_data(13)
    probs = train.make_predict(model, 5, stacked=True)(stacked.params, x)
    assert probs.shape == (2, 13, 10)
    for i in range(2):
        alone = train.make_predict(model, 5)(ensemble.member(stacked.params, i), x)
        np.testing.assert_allclose(probs[i], alone, rtol=1e-5, atol=1e-6)
