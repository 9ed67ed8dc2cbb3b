"""Test-time augmentation (config.eval_shifts): evaluation as the mean softmax over each
image and its shifted copies, against a numpy reference; wired through the driver and
the committee; bad values."""

import jax
import numpy as np
import pytest

from mnist_cnn import committee, data, driver, ensemble, networks, train
from mnist_cnn import config as config_lib


def np_shift(images, dy, dx):
    """numpy reference: image moved dy rows down and dx columns right, the vacated rows
    and columns zero (expand_mnist.py's roll with the wrapped part cleared)."""
    out = np.zeros_like(images)
    h, w = images.shape[1:]
    src = images[:, max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
    out[:, max(0, dy):max(0, dy) + src.shape[1], max(0, dx):max(0, dx) + src.shape[2]] = src
    return out


def reference_probs(predict_one, params, images, shifts):
    """The mean of the plain network's softmax over the 4 * shifts + 1 views."""
    x = np.asarray(images)
    views = [(0, 0)] + [(s * dy, s * dx) for s in range(1, shifts + 1)
                        for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1))]
    return np.mean([np.asarray(predict_one(params, np_shift(x, dy, dx))) for dy, dx in views],
                   axis=0)


def test_views_are_the_image_and_its_shifts_in_the_books_directions():
    assert train.eval_views(0) == [(0, 0)]
    assert train.eval_views(1) == [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]
    assert set(train.eval_views(2)) == {(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1),
                                        (2, 0), (-2, 0), (0, 2), (0, -2)}
    x = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 251
    np.testing.assert_array_equal(np_shift(x, 1, 0)[:, 1:], x[:, :-1])
    assert not np_shift(x, 1, 0)[:, 0].any() and not np_shift(x, 0, -2)[:, :, -2:].any()


@pytest.mark.parametrize("shifts", [1, 2])
def test_predict_averages_the_softmax_over_shifted_views(shifts, tiny_config, fake_data):
    c = tiny_config()
    model = networks.from_config(c)
    state = train.init_state(model, train.make_optimizer(c, 10), 0)
    images, _ = fake_data(7)   # 7 images in batches of 3: a padded last batch
    plain = train.make_predict(model, 3)
    got = np.asarray(train.make_predict(model, 3, shifts=shifts)(state.params, images))
    want = reference_probs(plain, state.params, images, shifts)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)
    # ... and it is not the plain prediction (the views do change the output).
    assert np.abs(got - np.asarray(plain(state.params, images))).max() > 1e-3


def test_stacked_members_each_average_their_own_views(tiny_config, fake_data):
    c = tiny_config()
    model = networks.from_config(c)
    stacked = train.init_states(model, train.make_optimizer(c, 10), 0, 3)
    images, _ = fake_data(5)
    got = np.asarray(train.make_predict(model, 5, stacked=True, shifts=1)(stacked.params,
                                                                           images))
    for i in range(3):
        alone = train.make_predict(model, 5, shifts=1)(ensemble.member(stacked.params, i),
                                                      images)
        np.testing.assert_allclose(got[i], np.asarray(alone), rtol=1e-5, atol=1e-6)


def small_modern_config(**fields):
    """modern's batch-norm network shrunk (4 and 8 maps, FC 16) for one epoch of 300
    images."""
    from experiments import modern
    c = modern.get_config("fc=16,bn=1")
    c.update(dict(num_epochs=1, warmup_epochs=0.5, train_size=300, batch_size=30,
                  plots=False, bn_calibration_images=200, **fields))
    c.layers[0].features, c.layers[1].features = 4, 8
    return c


@pytest.mark.slow
def test_run_reports_accuracy_with_test_time_shifts(tmp_path, small_mnist):
    """A driver run with eval_shifts=1: its final test accuracy is the numpy reference's
    (mean softmax of the restored network over the five views), and the committee gives
    that with the run's own setting and the plain accuracy with --vote_eval_shifts=0."""
    small_mnist(1000)
    summary = driver.run(small_modern_config(eval_shifts=1), str(tmp_path / "r"),
                         log=lambda *a: None)
    config, model, params, _ = committee.load_run(str(tmp_path / "r"))
    ds = data.load()
    plain = train.make_predict(model, 200)
    want = reference_probs(plain, params, ds.test.images, 1)
    acc = float(np.mean(want.argmax(-1) == ds.test.labels))
    assert summary["final_test_accuracy"] == pytest.approx(acc, abs=1e-4)
    own = committee.vote_runs([str(tmp_path / "r")], log=lambda *a: None)
    assert own["members"][0]["test_accuracy"] == pytest.approx(acc, abs=1e-4)
    none = committee.vote_runs([str(tmp_path / "r")], log=lambda *a: None, eval_shifts=0)
    plain_acc = float(np.mean(np.asarray(plain(params, jax.device_put(ds.test.images)))
                              .argmax(-1) == ds.test.labels))
    assert none["members"][0]["test_accuracy"] == pytest.approx(plain_acc, abs=1e-4)
    assert abs(plain_acc - acc) > 1e-3   # so the checks above tell the two apart


def test_bad_eval_shifts(tmp_path, tiny_config, run_py, assert_user_error):
    for bad in (-1, 28):
        c = tiny_config(eval_shifts=bad)
        with pytest.raises(config_lib.ConfigError, match="eval_shifts"):
            config_lib.validate(c)
    proc = run_py("--config=experiments/modern.py", f"--workdir={tmp_path / 'w'}",
                  "--config.eval_shifts=30")
    assert_user_error(proc, "config.eval_shifts must be in [0, 27]")
    assert not (tmp_path / "w").exists()
    with pytest.raises(committee.CommitteeError, match="--vote_eval_shifts"):
        committee.vote_runs([str(tmp_path)], eval_shifts=40)


# --- rotated and zoomed views (config.eval_rotate, config.eval_zoom) ---

def test_warp_views_are_plus_minus_rotations_then_zooms():
    assert train.eval_warps() == []
    assert train.eval_warps(5.0) == [(5.0, 1.0), (-5.0, 1.0)]
    assert train.eval_warps(0.0, 0.1) == [(0.0, 0.9), (0.0, 1.1)]
    assert train.eval_warps(10.0, 0.05) == [(10.0, 1.0), (-10.0, 1.0), (0.0, 0.95),
                                            (0.0, 1.05)]
    assert train.num_views(1, 5.0, 0.05) == 9 and train.num_views(0) == 1


def reference_warped_probs(affine, model, params, images, shifts, rotate, zoom):
    """numpy/scipy reference: the mean softmax over the shifted views (np_shift) and the
    views rotated by +-rotate degrees and zoomed by 1 -+ zoom (`affine`: scipy's bilinear
    map)."""
    x = np.asarray(images, np.float64) / 255.0
    views = [np_shift(x, dy, dx) for dy, dx in
             [(0, 0)] + [(s * dy, s * dx) for s in range(1, shifts + 1)
                         for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1))]]
    warps = ([(rotate, 1.0), (-rotate, 1.0)] if rotate else []) + (
        [(0.0, 1 - zoom), (0.0, 1 + zoom)] if zoom else [])
    views += [np.stack([affine(img, np.deg2rad(d), s) for img in x])
              for d, s in warps]
    apply = jax.jit(lambda v: jax.nn.softmax(model.apply({"params": params}, v,
                                                         train=False)))
    soft = lambda v: np.asarray(apply(np.asarray(v, np.float32)[..., None]))
    return np.mean([soft(v) for v in views], axis=0), len(views)


@pytest.mark.parametrize("shifts,rotate,zoom", [(0, 8.0, 0.0), (1, 5.0, 0.1), (0, 0.0, 0.2)])
def test_predict_averages_over_rotated_and_zoomed_views(shifts, rotate, zoom, tiny_config,
                                                       fake_data, scipy_affine):
    c = tiny_config()
    model = networks.from_config(c)
    state = train.init_state(model, train.make_optimizer(c, 10), 0)
    images, _ = fake_data(7)   # batches of 3: a padded last batch
    got = np.asarray(train.make_predict(model, 3, shifts=shifts, rotate=rotate,
                                        zoom=zoom)(state.params, images))
    want, n = reference_warped_probs(scipy_affine, model, state.params, images, shifts,
                                     rotate, zoom)
    assert n == train.num_views(shifts, rotate, zoom)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    shifted_only = np.asarray(train.make_predict(model, 3, shifts=shifts)(state.params,
                                                                          images))
    assert np.abs(got - shifted_only).max() > 1e-3   # the warped views count


def test_stacked_members_average_their_own_warped_views(tiny_config, fake_data, scipy_affine):
    c = tiny_config()
    model = networks.from_config(c)
    stacked = train.init_states(model, train.make_optimizer(c, 10), 0, 2)
    images, _ = fake_data(4)
    got = np.asarray(train.make_predict(model, 4, stacked=True, shifts=1, rotate=6.0,
                                        zoom=0.1)(stacked.params, images))
    for i in range(2):
        want, _ = reference_warped_probs(scipy_affine, model,
                                         ensemble.member(stacked.params, i), images, 1, 6.0,
                                         0.1)
        np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-5)


def test_bad_eval_rotate_and_zoom(tmp_path, tiny_config, run_py, assert_user_error):
    for field, bad in (("eval_rotate", -1.0), ("eval_rotate", 46.0), ("eval_zoom", -0.1),
                       ("eval_zoom", 0.6)):
        with pytest.raises(config_lib.ConfigError, match=field):
            config_lib.validate(tiny_config(**{field: bad}))
    proc = run_py("--config=experiments/modern.py", f"--workdir={tmp_path / 'w'}",
                  "--config.eval_rotate=90")
    assert_user_error(proc, "config.eval_rotate must be in [0, 45.0] degrees")
    assert not (tmp_path / "w").exists()
    with pytest.raises(committee.CommitteeError, match="--vote_eval_rotate"):
        committee.vote_runs([str(tmp_path)], eval_rotate=50.0)
    with pytest.raises(committee.CommitteeError, match="--vote_eval_zoom"):
        committee.vote_runs([str(tmp_path)], eval_zoom=0.9)


@pytest.mark.slow
def test_run_reports_accuracy_with_rotated_and_zoomed_views(tmp_path, small_mnist,
                                                            scipy_affine):
    """A driver run with eval_rotate/eval_zoom reports the accuracy of the scipy
    reference's mean softmax over its 9 views; the committee repeats it with the run's
    own setting and reports another without the warped views."""
    small_mnist(1000)
    c = small_modern_config(eval_shifts=1, eval_rotate=5.0, eval_zoom=0.1)
    summary = driver.run(c, str(tmp_path / "r"), log=lambda *a: None)
    _, model, params, _ = committee.load_run(str(tmp_path / "r"))
    ds = data.load()
    want, n = reference_warped_probs(scipy_affine, model, params, ds.test.images[:300], 1,
                                     5.0, 0.1)
    got = np.asarray(train.make_predict(model, 200, shifts=1, rotate=5.0, zoom=0.1)(
        params, jax.device_put(ds.test.images)))
    np.testing.assert_allclose(got[:300], want, rtol=1e-3, atol=1e-4)
    acc = float(np.mean(got.argmax(-1) == ds.test.labels))
    assert n == 9 and summary["final_test_accuracy"] == pytest.approx(acc, abs=1e-4)
    own = committee.vote_runs([str(tmp_path / "r")], log=lambda *a: None)
    assert own["members"][0]["test_accuracy"] == pytest.approx(acc, abs=1e-4)
    assert own["members"][0]["eval_rotate"] == 5.0 and own["eval_rotate"] is None
    shifts_only = committee.vote_runs([str(tmp_path / "r")], log=lambda *a: None,
                                      eval_rotate=0.0, eval_zoom=0.0)
    assert shifts_only["members"][0]["validation_nll"] != pytest.approx(
        own["members"][0]["validation_nll"], rel=1e-4)
