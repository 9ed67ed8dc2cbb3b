"""Image transforms: shifts, the book's expansion, random rotations, zooms and elastic
distortions, deskewing and width normalisation.

Every transform takes a batch of (N, H, W) images and is pure jax: the random ones take a
PRNG key and run inside the jitted training epoch, the others are one jitted call over a
whole split. No Python loop over images.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mnist_cnn import data

# The book's four shifts, in expand_mnist.py's order: down, up, right, left.
BOOK_SHIFTS = ((1, 0), (-1, 0), (0, 1), (0, -1))


# --- Shifts and the book's expansion ------------------------------------------------------

def shift_image(images, dy: int, dx: int):
    """Shifts (N, H, W) images by (dy, dx) pixels, filling the vacated rows/columns with
    zeros (network3's expand_mnist.py: np.roll, then the wrapped row or column zeroed).
    Works on numpy and jax arrays."""
    n, h, w = images.shape
    padded = jnp.pad(images, ((0, 0), (abs(dy), abs(dy)), (abs(dx), abs(dx))))
    top, left = abs(dy) - dy, abs(dx) - dx
    return padded[:, top:top + h, left:left + w]


def expand(images, labels, key=None):
    """The book's expanded training set: each image followed by its four 1-pixel shifts
    (5N images), then shuffled once with `key` as expand_mnist.py does (None: unshuffled).
    One jitted computation on the device; no Python loop over images."""

    @jax.jit
    def build(images, labels):
        views = [images] + [shift_image(images, dy, dx) for dy, dx in BOOK_SHIFTS]
        out = jnp.stack(views, axis=1).reshape(-1, *images.shape[1:])
        out_labels = jnp.repeat(labels, len(views))
        if key is not None:
            perm = jax.random.permutation(key, out.shape[0])
            out, out_labels = out[perm], out_labels[perm]
        return out, out_labels

    return build(jnp.asarray(images), jnp.asarray(labels))


def random_shift(key, images, max_shift: int):
    """Each image of a (B, H, W) batch shifted by its own random (dy, dx), each in
    [-max_shift, max_shift], zero-filled. Pure and jittable: on-the-fly augmentation."""
    b, h, w = images.shape
    k = max_shift
    padded = jnp.pad(images, ((0, 0), (k, k), (k, k)))
    offsets = jax.random.randint(key, (b, 2), 0, 2 * k + 1)
    crop = lambda img, off: lax.dynamic_slice(img, (off[0], off[1]), (h, w))
    return jax.vmap(crop)(padded, offsets)


# --- Rotations, zooms and elastic distortions ---------------------------------------------

def affine_coords(theta, scale, h: int, w: int):
    """Where each output pixel of an (h, w) image samples its input under a rotation by
    theta[b] (radians) and a zoom by scale[b] about the image centre: two (B, h, w) maps
    (row, column), R(-theta) (o - c) / scale + c."""
    ci, cj = (h - 1) / 2, (w - 1) / 2
    ii, jj = jnp.meshgrid(jnp.arange(h) - ci, jnp.arange(w) - cj, indexing="ij")
    cos = (jnp.cos(theta) / scale)[:, None, None]
    sin = (jnp.sin(theta) / scale)[:, None, None]
    return cos * ii + sin * jj + ci, -sin * ii + cos * jj + cj


def sample_bilinear(images, si, sj):
    """A (B, H, W) float batch sampled at the (B, H, W) coordinate maps si (rows) and sj
    (columns) by bilinear interpolation, zeros outside the image (scipy.ndimage's
    mode='grid-constant'). Pure and jittable: one flat gather per corner."""
    b, h, w = images.shape
    i0, j0 = jnp.floor(si), jnp.floor(sj)
    di, dj = si - i0, sj - j0
    padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1))).reshape(b, -1)

    def at(i, j):   # clipped into the zero border
        i = jnp.clip(i, -1, h).astype(jnp.int32) + 1
        j = jnp.clip(j, -1, w).astype(jnp.int32) + 1
        flat = (i * (w + 2) + j).reshape(b, -1)
        return jnp.take_along_axis(padded, flat, axis=1).reshape(b, h, w)

    return ((1 - di) * (1 - dj) * at(i0, j0) + (1 - di) * dj * at(i0, j0 + 1)
            + di * (1 - dj) * at(i0 + 1, j0) + di * dj * at(i0 + 1, j0 + 1))


def warp(images, theta, scale, dy=None, dx=None):
    """An affine map (as `affine`) and, when dy/dx are given, an elastic displacement
    added to the sampling coordinates: output pixel o samples the input at
    R(-theta) (o - c) / scale + c + (dy[o], dx[o]). One bilinear pass, zeros outside."""
    _, h, w = images.shape
    si, sj = affine_coords(theta, scale, h, w)
    if dy is not None:
        si, sj = si + dy, sj + dx
    return sample_bilinear(images, si, sj)


def affine(images, theta, scale):
    """Each image of a (B, H, W) float batch rotated by its own angle theta[b] (radians)
    and zoomed by scale[b] about the image centre, by bilinear interpolation with zeros
    outside the image (scipy.ndimage's mode='grid-constant'). Output pixel o samples the
    input at R(-theta) (o - c) / scale + c. Pure and jittable."""
    return warp(images, theta, scale)


def gaussian_smoother(n: int, sigma: float):
    """The (n, n) matrix G with G @ f = a 1-D Gaussian filter (std sigma pixels) of f along
    its first axis, zeros beyond the ends, the kernel truncated at 4 sigma and normalised
    over its support: scipy.ndimage.gaussian_filter1d(mode='constant'). numpy, built once
    per trace."""
    radius = int(4.0 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    d = np.arange(n)[:, None] - np.arange(n)[None, :]
    return np.where(np.abs(d) <= radius, taps[np.clip(d + radius, 0, 2 * radius)],
                    0.0).astype(np.float32)


def elastic_displacement(key, b: int, h: int, w: int, alpha: float, sigma: float):
    """Simard, Steinkraus & Platt (2003)'s elastic distortion field, one per image: a
    uniform [-1, 1] displacement per pixel and direction, smoothed by a Gaussian of std
    sigma pixels and scaled by alpha. Returns (dy, dx), each (B, h, w)."""
    raw = jax.random.uniform(key, (2, b, h, w), minval=-1.0, maxval=1.0)
    g_h, g_w = jnp.asarray(gaussian_smoother(h, sigma)), jnp.asarray(gaussian_smoother(w, sigma))
    smooth = jnp.einsum("ik,zbkl,jl->zbij", g_h, raw, g_w) * alpha
    return smooth[0], smooth[1]


def _affine_draws(key, b: int, max_degrees: float, max_scale: float):
    """Per image: an angle in radians, uniform in [-max_degrees, max_degrees] degrees, and
    a zoom factor uniform in [1 - max_scale, 1 + max_scale]."""
    k_rot, k_scale = jax.random.split(key)
    theta = jax.random.uniform(k_rot, (b,), minval=-max_degrees, maxval=max_degrees)
    scale = 1 + jax.random.uniform(k_scale, (b,), minval=-max_scale, maxval=max_scale)
    return theta * (jnp.pi / 180), scale


def random_warp(key, images, max_degrees: float, max_scale: float, alpha: float = 0.0,
                sigma: float = 4.0):
    """random_affine's rotations and zooms (the same draws from the same key), plus, when
    alpha > 0, an elastic distortion of each image (elastic_displacement with alpha and
    sigma, from a key of its own), all in one bilinear pass. Jittable."""
    b, h, w = images.shape
    theta, scale = _affine_draws(key, b, max_degrees, max_scale)
    dy = dx = None
    if alpha:
        dy, dx = elastic_displacement(jax.random.fold_in(key, 7), b, h, w, alpha, sigma)
    return warp(images, theta, scale, dy, dx)


def random_affine(key, images, max_degrees: float, max_scale: float):
    """Each image of a (B, H, W) float batch rotated by a uniform angle in
    [-max_degrees, max_degrees] and zoomed by a uniform factor in [1 - max_scale,
    1 + max_scale], its own draw per image: on-the-fly augmentation inside the jitted epoch."""
    return random_warp(key, images, max_degrees, max_scale)


# --- Deskewing ----------------------------------------------------------------------------

def _centroid_row_and_slant(x):
    """(cy, alpha) of float (N, H, W) images: the ink's centroid row and mu11 / mu02."""
    _, h, w = x.shape
    ys = jnp.arange(h, dtype=jnp.float32)[None, :, None]
    xs = jnp.arange(w, dtype=jnp.float32)[None, None, :]
    mass = x.sum(axis=(1, 2))
    safe = jnp.where(mass > 0, mass, 1.0)
    mean = lambda f: (x * f).sum(axis=(1, 2)) / safe
    cy = mean(ys)
    dy = ys - cy[:, None, None]
    dx = xs - mean(xs)[:, None, None]
    mu11, mu02 = mean(dy * dx), mean(dy * dy)
    flat = mu02 <= 1e-6                     # blank, or ink in one row: no slant
    return cy, jnp.where(flat, 0.0, mu11 / jnp.where(flat, 1.0, mu02))


def skew(images):
    """(N,) the slant alpha = mu11 / mu02 of each (N, H, W) image's ink (0 for a blank
    image or ink in one row): how many pixels the ink moves right per row down (a digit
    leaning right, its top right of its foot, has alpha < 0)."""
    return _centroid_row_and_slant(jnp.asarray(images).astype(jnp.float32))[1]


@jax.jit
def _deskew(images):
    x = images.astype(jnp.float32)
    _, h, w = x.shape
    cy, alpha = _centroid_row_and_slant(x)
    ys = jnp.arange(h, dtype=jnp.float32)[None, :, None]
    xs = jnp.arange(w, dtype=jnp.float32)[None, None, :]
    src = xs + alpha[:, None, None] * (ys - cy[:, None, None])   # (N, H, W)
    left = jnp.floor(src)
    frac = src - left
    left = left.astype(jnp.int32)

    def pick(i):   # x[n, y, i] where 0 <= i < w, else 0
        inside = (i >= 0) & (i < w)
        return jnp.where(inside, jnp.take_along_axis(x, jnp.clip(i, 0, w - 1), axis=2), 0.0)

    out = (1 - frac) * pick(left) + frac * pick(left + 1)
    return jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8)


def deskew(images):
    """The classic MNIST deskewing (LeCun et al. 1998's 'deslanted' inputs; Meier et al.
    2011 train committee members on it): each (N, H, W) uint8 image sheared horizontally,
    row by row, so that its ink's second moment mu11 becomes zero, that is the digit's
    principal axis stands upright. With (cy, cx) the intensity centroid and
    alpha = mu11 / mu02, output pixel (y, x) is the input sampled at (y, x + alpha (y - cy))
    by linear interpolation, zero outside the image: the centroid stays where it is. A
    blank image, or one whose ink lies in one row, stays unchanged. Returns uint8. One
    jitted computation on the device; no Python loop over images."""
    return _deskew(jnp.asarray(images))


# --- Width normalisation ------------------------------------------------------------------

@functools.partial(jax.jit, static_argnums=1)
def _width_normalize(images, width):
    _, h, w = images.shape
    cols = jnp.any(images > 0, axis=1)                      # (N, W): digit columns
    x0 = jnp.argmax(cols, axis=1)
    x1 = w - 1 - jnp.argmax(cols[:, ::-1], axis=1)
    blank = ~cols.any(axis=1)
    scale = jnp.where(blank, 1.0, width / (x1 - x0 + 1).astype(jnp.float32))
    centre = (x0 + x1 + 1).astype(jnp.float32) / 2          # pixel i spans [i, i + 1)
    shift = jnp.where(blank, 0.0, w / 2 - centre * scale)   # out = in * scale + shift

    def one(image, s, t):
        return jax.image.scale_and_translate(image.astype(jnp.float32), (h, w), (1,),
                                             s[None], t[None], "linear", antialias=True)

    out = jax.vmap(one)(images, scale, shift)
    return jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8)


def width_normalize(images, width: int):
    """Ciresan, Meier & Schmidhuber (2012)'s preprocessing for their committees: each
    (N, H, W) uint8 image stretched or squeezed horizontally so that its digit's bounding
    box (the columns holding a non-zero pixel) is `width` pixels wide, centred on the
    image's centre column; rows are untouched. Linear resampling, antialiased when
    squeezing (jax.image.scale_and_translate); a blank image stays blank. Returns uint8.
    One jitted computation on the device; no Python loop over images."""
    return _width_normalize(jnp.asarray(images), int(width))


# --- Preprocessing every split ------------------------------------------------------------

def preprocess(images, width: int = 0, deskewed: bool = False):
    """(N, H, W) uint8 images as a network with config.width_norm = width and
    config.deskew = deskewed sees them: deskewed first, then width-normalised (0 and
    False: unchanged). Returns a device array."""
    out = jax.device_put(images)
    if deskewed:
        out = deskew(out)
    if width:
        out = width_normalize(out, width)
    return out


def preprocessing_text(width: int = 0, deskewed: bool = False) -> str:
    """How preprocess changes the images, in words ('' when it does not)."""
    steps = (["deskewed"] if deskewed else []) + (
        [f"width-normalised to {width} pixels"] if width else [])
    return ", ".join(steps)


def preprocessed(ds: data.Dataset, width: int = 0, deskewed: bool = False) -> data.Dataset:
    """The dataset with every split's images preprocess'ed (0 and False: unchanged, the
    same object). Labels and sizes are kept, the source says what was done; the images
    come back as numpy uint8."""
    if not width and not deskewed:
        return ds
    norm = lambda s: data.Split(np.asarray(preprocess(s.images, width, deskewed)), s.labels)
    return dataclasses.replace(   # the dataset's name and files' SHA-256s stay
        ds, train=norm(ds.train), validation=norm(ds.validation), test=norm(ds.test),
        source=f"{ds.source}, {preprocessing_text(width, deskewed)}")
