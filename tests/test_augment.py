"""Tests for mnist_cnn/augment.py: shifts, the book's expansion, rotations, zooms and
elastic distortions, width normalisation, deskewing, preprocessing a dataset.

Each transform is checked against an independent reference: network3's expand_mnist.py
transcribed with numpy, scipy.ndimage's affine_transform, gaussian_filter and
map_coordinates, and numpy resamplers written here.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy import ndimage

from mnist_cnn import augment, data


# ---------------------------------------------------------------------------------------
# The book's expansion: every image plus its four 1-pixel shifts.

def _book_expand(images):
    """network3's expand_mnist.py, transcribed with numpy: roll, zero the wrapped line."""
    out = []
    for image in images:
        out.append(image)
        for d, axis, index_position, index in [(1, 0, "first", 0), (-1, 0, "first", 27),
                                               (1, 1, "last", 0), (-1, 1, "last", 27)]:
            new = np.roll(image, d, axis)
            if index_position == "first":
                new[index, :] = 0
            else:
                new[:, index] = 0
            out.append(new)
    return np.stack(out)


def test_expand_matches_expand_mnist_py():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (6, 28, 28), dtype=np.uint8)
    labels = np.arange(6, dtype=np.int32)
    got, got_labels = augment.expand(images, labels)
    np.testing.assert_array_equal(np.asarray(got), _book_expand(images))
    np.testing.assert_array_equal(np.asarray(got_labels), np.repeat(labels, 5))
    assert got.dtype == np.uint8


def test_expand_shuffled_is_a_permutation_of_the_pairs():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 7).astype(np.int32)
    a, la = augment.expand(images, labels)
    b, lb = augment.expand(images, labels, key=jax.random.PRNGKey(3))
    a, la, b, lb = map(np.asarray, (a, la, b, lb))
    key = lambda x, y: sorted(zip(map(bytes, x), y.tolist()))
    assert key(a, la) == key(b, lb) and not np.array_equal(a, b)


@pytest.mark.parametrize("dy,dx", [(2, 0), (0, -3), (1, 1), (-2, 2), (0, 0)])
def test_shift_image_fills_with_zeros(dy, dx):
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 251 + 1
    got = np.asarray(augment.shift_image(images, dy, dx))
    want = np.zeros_like(images)
    ys, xs = slice(max(dy, 0), 28 + min(dy, 0)), slice(max(dx, 0), 28 + min(dx, 0))
    src_y, src_x = slice(max(-dy, 0), 28 - max(dy, 0)), slice(max(-dx, 0), 28 - max(dx, 0))
    want[:, ys, xs] = images[:, src_y, src_x]
    np.testing.assert_array_equal(got, want)


def test_random_shift_applies_one_shift_per_image_within_range():
    rng = np.random.default_rng(2)
    images = rng.integers(1, 256, (16, 28, 28), dtype=np.uint8)
    out = np.asarray(augment.random_shift(jax.random.PRNGKey(0), images, 2))
    seen = set()
    for img, got in zip(images, out):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if np.array_equal(np.asarray(augment.shift_image(img[None], dy, dx))[0], got)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 3   # not the same shift for every image
    again = np.asarray(augment.random_shift(jax.random.PRNGKey(0), images, 2))
    np.testing.assert_array_equal(out, again)


def test_affine_matches_scipy_bilinear_rotation_and_zoom(scipy_affine):
    rng = np.random.default_rng(3)
    images = rng.random((6, 28, 28)).astype(np.float32)
    theta = np.array([0.0, 0.3, -0.5, 1.2, np.pi / 2, -2.0], np.float32)
    scale = np.array([1.0, 0.9, 1.15, 1.0, 0.8, 1.3], np.float32)
    got = np.asarray(augment.affine(images, theta, scale))
    for img, t, s, g in zip(images, theta, scale, got):
        np.testing.assert_allclose(g, scipy_affine(img.astype(np.float64), float(t), float(s)),
                                   atol=2e-5)


def test_affine_identity_and_quarter_turn_are_exact():
    rng = np.random.default_rng(4)
    images = rng.random((3, 28, 28)).astype(np.float32)
    same = np.asarray(augment.affine(images, np.zeros(3, np.float32), np.ones(3, np.float32)))
    np.testing.assert_allclose(same, images, atol=1e-6)
    turned = np.asarray(augment.affine(images, np.full(3, np.pi / 2, np.float32),
                                    np.ones(3, np.float32)))
    # Output (i, j) samples input (c + (j - c), c - (i - c)): np.rot90 one way or the other.
    assert any(np.allclose(turned, np.rot90(images, k, axes=(1, 2)), atol=1e-5) for k in (1, 3))


def test_random_affine_draws_per_image_within_range_and_is_seeded(scipy_affine):
    rng = np.random.default_rng(5)
    images = rng.random((64, 28, 28)).astype(np.float32)
    key = jax.random.PRNGKey(7)
    out = np.asarray(augment.random_affine(key, images, 10.0, 0.1))
    np.testing.assert_array_equal(out, np.asarray(augment.random_affine(key, images, 10.0, 0.1)))
    # Recover each image's draw from the same key: the ranges hold and the draws differ.
    k_rot, k_scale = jax.random.split(key)
    theta = np.asarray(jax.random.uniform(k_rot, (64,), minval=-10.0, maxval=10.0))
    scale = 1 + np.asarray(jax.random.uniform(k_scale, (64,), minval=-0.1, maxval=0.1))
    assert np.abs(theta).max() <= 10 and np.abs(scale - 1).max() <= 0.1
    assert theta.std() > 3 and scale.std() > 0.03
    for i in (0, 17, 63):
        np.testing.assert_allclose(out[i], scipy_affine(images[i].astype(np.float64),
                                                         np.deg2rad(theta[i]), scale[i]),
                                   atol=2e-5)
    # Zero ranges leave the images as they are.
    np.testing.assert_allclose(np.asarray(augment.random_affine(key, images, 0.0, 0.0)), images,
                               atol=1e-6)


def test_gaussian_smoother_matches_scipy_gaussian_filter():
    rng = np.random.default_rng(6)
    field = rng.uniform(-1, 1, (28, 28))
    for sigma in (0.8, 4.0, 6.0):
        g = augment.gaussian_smoother(28, sigma).astype(np.float64)
        want = ndimage.gaussian_filter(field, sigma, mode="constant", cval=0.0, truncate=4.0)
        np.testing.assert_allclose(g @ field @ g.T, want, atol=1e-6)


def test_warp_matches_scipy_map_coordinates_with_affine_and_elastic_field():
    """The combined map samples at R(-theta)(o - c)/s + c + d(o): scipy's bilinear
    map_coordinates at those points is the independent reference."""
    rng = np.random.default_rng(8)
    images = rng.random((4, 28, 28)).astype(np.float32)
    theta = np.array([0.0, 0.2, -0.4, 1.0], np.float32)
    scale = np.array([1.0, 0.9, 1.1, 1.2], np.float32)
    dy = rng.normal(0, 1.5, (4, 28, 28)).astype(np.float32)
    dx = rng.normal(0, 1.5, (4, 28, 28)).astype(np.float32)
    dy[0, 0, 0], dx[0, 0, 0] = -40.0, 3.0      # far outside: zero
    got = np.asarray(augment.warp(images, theta, scale, dy, dx))
    c = 13.5
    ii, jj = np.meshgrid(np.arange(28) - c, np.arange(28) - c, indexing="ij")
    for b in range(4):
        cos, sin = np.cos(theta[b]) / scale[b], np.sin(theta[b]) / scale[b]
        si = cos * ii + sin * jj + c + dy[b]
        sj = -sin * ii + cos * jj + c + dx[b]
        want = ndimage.map_coordinates(images[b].astype(np.float64), [si, sj], order=1,
                                       mode="grid-constant", cval=0.0)
        np.testing.assert_allclose(got[b], want, atol=3e-5)
    assert got[0, 0, 0] == 0.0
    # Without a field, warp is affine.
    np.testing.assert_allclose(np.asarray(augment.warp(images, theta, scale)),
                               np.asarray(augment.affine(images, theta, scale)), atol=1e-6)


def test_elastic_displacement_is_smooth_seeded_and_scaled_by_alpha():
    key = jax.random.PRNGKey(3)
    dy, dx = (np.asarray(a) for a in augment.elastic_displacement(key, 16, 28, 28, 34.0, 4.0))
    raw = np.asarray(jax.random.uniform(key, (2, 16, 28, 28), minval=-1.0, maxval=1.0))
    want = ndimage.gaussian_filter(raw[0, 5].astype(np.float64), 4.0, mode="constant") * 34
    np.testing.assert_allclose(dy[5], want, atol=1e-4)
    # Smooth: neighbouring displacements differ far less than the raw noise does.
    assert np.abs(np.diff(dx, axis=2)).mean() < 0.25 * np.abs(dx).mean()
    assert 0.5 < dy.std() < 3.0 and not np.allclose(dy, dx)
    dy2, _ = augment.elastic_displacement(key, 16, 28, 28, 17.0, 4.0)
    np.testing.assert_allclose(np.asarray(dy2) * 2, dy, rtol=1e-5, atol=1e-6)


def test_random_warp_keeps_affine_draws_and_adds_an_elastic_field():
    rng = np.random.default_rng(9)
    images = rng.random((8, 28, 28)).astype(np.float32)
    key = jax.random.PRNGKey(11)
    # alpha 0: exactly random_affine (old runs reproduce).
    np.testing.assert_array_equal(np.asarray(augment.random_warp(key, images, 10.0, 0.1)),
                                  np.asarray(augment.random_affine(key, images, 10.0, 0.1)))
    out = np.asarray(augment.random_warp(key, images, 10.0, 0.1, 34.0, 4.0))
    k_rot, k_scale = jax.random.split(key)
    theta = np.asarray(jax.random.uniform(k_rot, (8,), minval=-10.0, maxval=10.0))
    scale = 1 + np.asarray(jax.random.uniform(k_scale, (8,), minval=-0.1, maxval=0.1))
    dy, dx = augment.elastic_displacement(jax.random.fold_in(key, 7), 8, 28, 28, 34.0, 4.0)
    want = np.asarray(augment.warp(images, np.deg2rad(theta), scale, dy, dx))
    np.testing.assert_allclose(out, want, atol=1e-5)
    assert not np.allclose(out, np.asarray(augment.random_affine(key, images, 10.0, 0.1)),
                           atol=1e-2)


# --- Ciresan et al. (2012)'s width normalisation -----------------------------------------

def _resample_row_reference(row, scale, shift):
    """numpy: a row resampled as out(x) = in(x * scale + shift) inverted (pixel i spans
    [i, i + 1)), with a tent kernel widened by 1 / scale when squeezing (area-like
    antialiasing), its weights normalised."""
    out = np.zeros(len(row))
    k = np.arange(len(row))
    widen = min(scale, 1.0)
    for j in range(len(row)):
        p = (j + 0.5 - shift) / scale - 0.5          # output centre in input pixels
        w = np.maximum(0.0, 1.0 - widen * np.abs(k - p))
        out[j] = (w * row).sum() / w.sum() if w.sum() > 0 else 0.0
    return out


def _width_normalize_reference(image, width):
    cols = np.flatnonzero((image > 0).any(axis=0))
    if not len(cols):
        return image.copy()
    x0, x1 = cols[0], cols[-1]
    scale = width / (x1 - x0 + 1)
    shift = image.shape[1] / 2 - (x0 + x1 + 1) / 2 * scale
    rows = [_resample_row_reference(r.astype(float), scale, shift) for r in image]
    return np.clip(np.round(np.array(rows)), 0, 255).astype(np.uint8)


def _blob_digits(n, seed):
    """Synthetic 28x28 'digits': random strokes inside a box of random width 3-20 and
    height 20, off-centre, at least 3 blank pixels from every edge."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        bw = rng.integers(3, 21)
        left = rng.integers(3, 26 - bw)
        box = (rng.random((20, bw)) < 0.4) * rng.integers(1, 256, (20, bw))
        box[:, 0] = box[:, -1] = 255         # the box's edge columns hold ink
        out[i, 4:24, left:left + bw] = box
    return out


@pytest.mark.parametrize("width", [10, 14, 20])
def test_width_normalize_matches_a_numpy_resampler(width):
    images = _blob_digits(12, seed=width)
    got = np.asarray(augment.width_normalize(images, width))
    want = np.stack([_width_normalize_reference(im, width) for im in images])
    assert got.dtype == np.uint8 and got.shape == images.shape
    assert np.abs(got.astype(int) - want).max() <= 1     # rounding of float sums


def test_width_normalize_puts_the_digit_in_a_box_of_that_width_at_the_centre():
    images = _blob_digits(30, seed=3)
    for width in (8, 12, 16, 20):
        got = np.asarray(augment.width_normalize(images, width))
        ink = got >= 128                                  # interpolation fades the edges
        for im, before in zip(ink, images):
            cols = np.flatnonzero(im.any(axis=0))
            assert width - 2 <= cols[-1] - cols[0] + 1 <= width + 1
            assert abs((cols[0] + cols[-1] + 1) / 2 - 14) <= 1
        # rows are never moved: a blank row stays blank, an inked row stays inked
        np.testing.assert_array_equal(got.any(axis=2), images.any(axis=2))


def test_width_normalize_leaves_a_centred_box_of_that_width_and_blank_images_alone():
    images = _blob_digits(8, seed=5)
    centred = np.zeros_like(images)
    for i, im in enumerate(images):            # move each box to the centre, width kept
        cols = np.flatnonzero(im.any(axis=0))
        w = cols[-1] - cols[0] + 1
        if w % 2:                              # an even width centres on whole pixels
            continue
        centred[i, :, 14 - w // 2:14 + w // 2] = im[:, cols[0]:cols[-1] + 1]
        got = np.asarray(augment.width_normalize(centred[i:i + 1], w))[0]
        np.testing.assert_array_equal(got, centred[i])
    blank = np.zeros((2, 28, 28), np.uint8)
    np.testing.assert_array_equal(np.asarray(augment.width_normalize(blank, 12)), blank)


def test_width_normalize_treats_each_image_alone():
    images = _blob_digits(6, seed=9)
    batch = np.asarray(augment.width_normalize(images, 14))
    one_by_one = np.stack([np.asarray(augment.width_normalize(im[None], 14))[0]
                           for im in images])
    np.testing.assert_array_equal(batch, one_by_one)


@pytest.mark.parametrize("width,deskewed,text", [
    (16, False, "width-normalised to 16 pixels"), (0, True, "deskewed"),
    (12, True, "deskewed, width-normalised to 12 pixels")])
def test_preprocessed_dataset_keeps_labels_and_changes_every_split(width, deskewed, text):
    images = _blob_digits(9, seed=2)
    labels = np.arange(9, dtype=np.int32)
    split = lambda a, b: data.Split(images[a:b], labels[a:b])
    ds = data.Dataset(split(0, 3), split(3, 6), split(6, 9), "somewhere")
    assert augment.preprocessed(ds, 0, False) is ds
    got = augment.preprocessed(ds, width, deskewed)
    assert got.source == f"somewhere, {text}"
    for before, after in zip((ds.train, ds.validation, ds.test),
                             (got.train, got.validation, got.test)):
        np.testing.assert_array_equal(after.labels, before.labels)
        want = augment.deskew(before.images) if deskewed else before.images
        want = augment.width_normalize(want, width) if width else want
        np.testing.assert_array_equal(after.images, np.asarray(want))
        assert isinstance(after.images, np.ndarray) and after.images.dtype == np.uint8


def _deskew_reference(image):
    """Independent numpy deskewing: moments by explicit sums over the pixels, each row
    resampled with np.interp on the row padded by one zero each side."""
    h, w = image.shape
    im = image.astype(float)
    mass = im.sum()
    if mass == 0:
        return image.copy()
    pts = [(y, x, im[y, x]) for y in range(h) for x in range(w) if im[y, x]]
    cy = sum(y * v for y, _, v in pts) / mass
    cx = sum(x * v for _, x, v in pts) / mass
    mu11 = sum((y - cy) * (x - cx) * v for y, x, v in pts) / mass
    mu02 = sum((y - cy) ** 2 * v for y, _, v in pts) / mass
    alpha = mu11 / mu02 if mu02 > 1e-6 else 0.0
    out = np.zeros((h, w))
    for y in range(h):
        src = np.arange(w) + alpha * (y - cy)
        out[y] = np.interp(src + 1, np.arange(w + 2), np.pad(im[y], 1), left=0, right=0)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _slanted_digits(n, seed):
    """_blob_digits sheared by a random slant of up to one pixel per four rows (no ink
    wraps round or leaves the image)."""
    rng = np.random.default_rng(seed)
    blobs = _blob_digits(n, seed)
    out = np.zeros_like(blobs)
    for i, im in enumerate(blobs):
        a = rng.uniform(-0.25, 0.25)
        for y in range(28):
            out[i, y] = np.roll(im[y], int(round(a * (y - 14))))
    return out


def test_deskew_matches_a_numpy_reference():
    images = _slanted_digits(10, seed=4)
    got = np.asarray(augment.deskew(images))
    want = np.stack([_deskew_reference(im) for im in images])
    assert got.dtype == np.uint8 and got.shape == images.shape
    assert np.abs(got.astype(int) - want).max() <= 1     # rounding of float sums


def test_deskew_sets_the_slant_to_zero_and_keeps_the_centroid():
    images = _slanted_digits(40, seed=6)
    before = np.asarray(augment.skew(images))
    assert np.abs(before).max() > 0.15                  # there was a slant to remove
    got = np.asarray(augment.deskew(images))
    after = np.asarray(augment.skew(got))
    assert np.abs(after).max() < 0.05 and np.abs(after).mean() < 0.01   # up to rounding
    centroid = lambda ims: np.stack([
        (ims * np.arange(28)[None, :, None]).sum((1, 2)),
        (ims * np.arange(28)[None, None, :]).sum((1, 2))], 1) / ims.sum((1, 2))[:, None]
    np.testing.assert_allclose(centroid(got.astype(float)),
                               centroid(images.astype(float)), atol=0.3)


def test_deskew_straightens_a_slanted_bar_and_leaves_upright_and_blank_images_alone():
    bar = np.zeros((1, 28, 28), np.uint8)
    for y in range(4, 24):                  # one pixel right every two rows up
        bar[0, y, 14 + (14 - y) // 2] = 255
    assert float(augment.skew(bar)[0]) < -0.4
    got = np.asarray(augment.deskew(bar))[0]
    ink = got >= 128
    cols = [np.flatnonzero(row) for row in ink[4:24]]
    assert all(len(c) for c in cols) and max(c.max() for c in cols) - min(
        c.min() for c in cols) <= 1         # a vertical stroke, at most 2 pixels wide
    upright = np.zeros((2, 28, 28), np.uint8)
    upright[0, 4:24, 12:16] = 200           # symmetric: mu11 = 0 exactly
    upright[0, 10, 8:20] = 255
    np.testing.assert_array_equal(np.asarray(augment.deskew(upright)), upright)   # [1] blank
    row = np.zeros((1, 28, 28), np.uint8)
    row[0, 9, 3:20] = 77                    # ink in one row: no slant to measure
    np.testing.assert_array_equal(np.asarray(augment.deskew(row)), row)


def test_deskew_treats_each_image_alone():
    images = _slanted_digits(6, seed=8)
    batch = np.asarray(augment.deskew(images))
    one_by_one = np.stack([np.asarray(augment.deskew(im[None]))[0] for im in images])
    np.testing.assert_array_equal(batch, one_by_one)
