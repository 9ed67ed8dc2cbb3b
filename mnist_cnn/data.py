"""MNIST loading: IDX files (plain or .gz), SHA-256 checks, download, TFDS, splits.

Arrays stay uint8 on the host; the driver moves them to the device once and the jitted
steps scale them to [0, 1] floats per mini-batch.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import os
import shutil
import struct
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass

import numpy as np

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# SHA-256 of the decompressed files (the same as LeCun's originals).
KNOWN_SHA256 = {
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
}
# The mirror the JAX examples (examples/datasets.py) download from.
DEFAULT_MIRROR = "https://storage.googleapis.com/cvdf-datasets/mnist/"
SOURCES = ("auto", "idx", "tfds")
NUM_TRAIN, NUM_VALIDATION = 50_000, 10_000
_IDX_DTYPES = {0x08: np.uint8}
_EXPECTED = {  # name -> (ndim, trailing dims)
    "train_images": (3, (28, 28)), "test_images": (3, (28, 28)),
    "train_labels": (1, ()), "test_labels": (1, ()),
}


class DataError(ValueError):
    """A dataset problem the user can fix; the message says what and how."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) int32

    def __len__(self):
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    train: Split
    validation: Split
    test: Split
    source: str  # where it came from, for the run's record


def parse_idx(raw: bytes, what: str = "IDX data") -> np.ndarray:
    """Parses the bytes of one IDX file, validating its header against its length."""
    if len(raw) < 4:
        raise DataError(f"{what}: file is {len(raw)} bytes, too short for an IDX header")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code not in _IDX_DTYPES or ndim == 0:
        raise DataError(f"{what}: bad IDX magic number 0x{raw[:4].hex()} "
                        f"(expected 0x00000801 for labels or 0x00000803 for images)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{what}: truncated IDX header ({len(raw)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(f"{what}: {kind}: {len(raw)} bytes but its header {dims} "
                        f"needs {expected}; re-download the file")
    return np.frombuffer(raw, dtype=_IDX_DTYPES[dtype_code], offset=header).reshape(dims)


def _find_file(directory: str, stem: str) -> str | None:
    for name in (stem, stem + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def _read_bytes(path: str) -> bytes:
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({e}); re-download the file") from None


def read_sha256sums(path: str) -> dict[str, str]:
    """Parses a `sha256sum` style file: '<hex>  <name>' per line."""
    sums = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2:
                sums[os.path.basename(parts[1].lstrip("*"))] = parts[0].lower()
    return sums


def _check_sha(raw: bytes, stem: str, path: str, sums: dict[str, str]):
    # A line for the bare name holds the hash of the decompressed content; a line for
    # the .gz name (what `sha256sum *.gz` writes) holds the hash of the .gz file itself.
    if stem in sums:
        want = sums[stem]
    elif stem + ".gz" in sums and path.endswith(".gz"):
        want = sums[stem + ".gz"]
        with open(path, "rb") as f:
            raw = f.read()
    else:
        return
    got = hashlib.sha256(raw).hexdigest()
    if got != want:
        raise DataError(f"{path}: SHA-256 mismatch (got {got[:12]}..., SHA256SUMS says "
                        f"{want[:12]}...); the file is corrupt, re-download it")


def has_idx_files(directory: str | None) -> bool:
    return bool(directory) and os.path.isdir(directory) and all(
        _find_file(directory, stem) for stem in FILES.values())


def load_idx_dir(directory: str) -> dict[str, np.ndarray]:
    """Reads the four standard IDX files from `directory` (.gz or not), validated.

    Checks magic numbers, dtypes, dimensions, image/label counts, label range, and the
    SHA-256 of each decompressed file when the directory holds a SHA256SUMS file.
    """
    if not os.path.isdir(directory):
        raise DataError(f"MNIST directory {directory!r} does not exist")
    sums_path = os.path.join(directory, "SHA256SUMS")
    sums = read_sha256sums(sums_path) if os.path.isfile(sums_path) else {}
    arrays = {}
    for key, stem in FILES.items():
        path = _find_file(directory, stem)
        if path is None:
            raise DataError(f"{directory}: missing {stem}[.gz]; a dataset directory holds the "
                            f"four standard MNIST files {', '.join(FILES.values())}")
        raw = _read_bytes(path)
        _check_sha(raw, stem, path, sums)
        arr = parse_idx(raw, path)
        ndim, trailing = _EXPECTED[key]
        if arr.ndim != ndim or arr.shape[1:] != trailing:
            raise DataError(f"{path}: shape {arr.shape}, expected (N{', ' if trailing else ''}"
                            f"{', '.join(map(str, trailing))}) for {key.replace('_', ' ')}")
        arrays[key] = arr
    for part in ("train", "test"):
        ni, nl = len(arrays[f"{part}_images"]), len(arrays[f"{part}_labels"])
        if ni != nl:
            raise DataError(f"{directory}: {part} has {ni} images but {nl} labels")
        if arrays[f"{part}_labels"].max(initial=0) > 9:
            raise DataError(f"{directory}: {part} labels hold values above 9 "
                            f"(max {arrays[f'{part}_labels'].max()}); not MNIST labels")
    return arrays


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mnist_cnn", "mnist")


def download_idx(directory: str, mirror: str = DEFAULT_MIRROR, timeout: float = 30.0) -> None:
    """Downloads the four .gz files into `directory`, SHA-256 verified, atomically.

    Each file goes to a temporary name in the same directory and is renamed into place
    only after its decompressed content matches KNOWN_SHA256, so an interrupted or
    corrupted download never leaves a file under a standard name.
    """
    os.makedirs(directory, exist_ok=True)
    for stem in FILES.values():
        if _find_file(directory, stem):
            continue
        url = mirror.rstrip("/") + "/" + stem + ".gz"
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".download-", suffix=".gz")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as r:
                shutil.copyfileobj(r, out)
            try:
                raw = _read_bytes(tmp)
            except DataError:
                raise DataError(f"downloaded {url} is not a valid gzip file; the mirror "
                                f"served a bad file") from None
            got = hashlib.sha256(raw).hexdigest()
            if got != KNOWN_SHA256[stem]:
                raise DataError(f"downloaded {url} has SHA-256 {got[:12]}..., expected "
                                f"{KNOWN_SHA256[stem][:12]}...; the mirror served a bad file")
            os.replace(tmp, os.path.join(directory, stem + ".gz"))
        except DataError:
            raise
        except (OSError, ValueError, http.client.HTTPException) as e:
            raise DataError(f"cannot download {url}: {e}") from None
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def load_tfds(data_dir: str | None = None) -> dict[str, np.ndarray]:
    """MNIST through tensorflow-datasets' TensorFlow-free `tfds.data_source` path."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError("source 'tfds' needs tensorflow-datasets: pip install "
                        "tensorflow-datasets") from None
    arrays = {}
    for part in ("train", "test"):
        try:
            src = tfds.data_source("mnist", split=part, data_dir=data_dir, download=False)
        except Exception as e:  # tfds raises assorted errors when nothing is prepared
            raise DataError(f"tfds has no prepared 'mnist' ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}); run "
                            f"`tfds build mnist` or use source 'idx'") from None
        records = [src[i] for i in range(len(src))]
        images = np.stack([np.asarray(r["image"], np.uint8).reshape(28, 28) for r in records])
        labels = np.asarray([int(r["label"]) for r in records], np.uint8)
        arrays[f"{part}_images"], arrays[f"{part}_labels"] = images, labels
    return arrays


def candidate_dirs(data_dir: str | None) -> list[str]:
    """Where source 'idx' looks, in order: data_dir, $MNIST_DATA_DIR, the cache."""
    dirs = [data_dir, os.environ.get("MNIST_DATA_DIR"), default_cache_dir()]
    return [d for d in dirs if d]


def load_arrays(source: str = "auto", data_dir: str | None = None,
                download: bool = True, mirror: str | None = None) -> tuple[dict, str]:
    """Returns (the four arrays, a description of where they came from)."""
    if source not in SOURCES:
        raise DataError(f"unknown data source {source!r}; choose one of {SOURCES}")
    if source == "tfds":
        return load_tfds(data_dir), f"tfds:{data_dir or 'default'}"
    if data_dir:
        # An explicit directory is a promise: read it, or say what is wrong with it.
        if has_idx_files(data_dir) or source == "idx":
            return load_idx_dir(data_dir), f"idx:{os.path.abspath(data_dir)}"
    for d in candidate_dirs(None):
        if has_idx_files(d):
            return load_idx_dir(d), f"idx:{os.path.abspath(d)}"
    if source == "auto":
        try:
            return load_tfds(None), "tfds:default"
        except DataError:
            pass
    looked = ", ".join(candidate_dirs(data_dir))
    if download:
        cache = default_cache_dir()
        try:
            download_idx(cache, mirror or os.environ.get("MNIST_MIRROR", DEFAULT_MIRROR))
            return load_idx_dir(cache), f"idx:{cache} (downloaded)"
        except DataError as e:
            raise DataError(f"MNIST not found (looked in {looked}) and download failed ({e}); "
                            f"put the four IDX files in a directory and pass "
                            f"--config.data_dir=DIR or set MNIST_DATA_DIR") from None
    raise DataError(f"MNIST not found (looked in {looked}); put the four IDX files in a "
                    f"directory and pass --config.data_dir=DIR or set MNIST_DATA_DIR")


def split(arrays: dict, train_size: int | None = None, source: str = "",
          with_validation: bool = False) -> Dataset:
    """The book's split: first 50,000 training images, last 10,000 for validation, test.
    with_validation: the training split is the first train_size images followed by the
    10,000 validation images (which stay the validation split too)."""
    ti, tl = arrays["train_images"], arrays["train_labels"]
    if len(tl) < NUM_TRAIN + NUM_VALIDATION:
        raise DataError(f"the training file holds {len(tl)} images; the book's split needs "
                        f"{NUM_TRAIN + NUM_VALIDATION}")
    n = NUM_TRAIN if train_size in (None, 0) else train_size
    if not 0 < n <= NUM_TRAIN:
        raise DataError(f"train_size must be in [1, {NUM_TRAIN}], got {train_size}")
    as_split = lambda i, l: Split(np.ascontiguousarray(i), l.astype(np.int32))
    train = np.arange(n)
    if with_validation:
        train = np.concatenate([train, np.arange(NUM_TRAIN, NUM_TRAIN + NUM_VALIDATION)])
    return Dataset(
        train=as_split(ti[train], tl[train]),
        validation=as_split(ti[NUM_TRAIN:NUM_TRAIN + NUM_VALIDATION],
                            tl[NUM_TRAIN:NUM_TRAIN + NUM_VALIDATION]),
        test=as_split(arrays["test_images"], arrays["test_labels"]),
        source=source,
    )


def load(source="auto", data_dir=None, train_size=None, download=True,
         with_validation=False) -> Dataset:
    arrays, where = load_arrays(source, data_dir, download)
    return split(arrays, train_size, where, with_validation)


def to_float(images):
    """uint8 images (N, 28, 28) -> float32 NHWC (N, 28, 28, 1) in [0, 1]. Works on jax arrays."""
    return (images.astype("float32") / 255.0)[..., None]


def shift_image(images, dy: int, dx: int):
    """Shifts (N, H, W) images by (dy, dx) pixels, filling the vacated rows/columns with
    zeros (network3's expand_mnist.py: np.roll, then the wrapped row or column zeroed).
    Works on numpy and jax arrays."""
    import jax.numpy as jnp
    n, h, w = images.shape
    padded = jnp.pad(images, ((0, 0), (abs(dy), abs(dy)), (abs(dx), abs(dx))))
    top, left = abs(dy) - dy, abs(dx) - dx
    return padded[:, top:top + h, left:left + w]


# The book's four shifts, in expand_mnist.py's order: down, up, right, left.
BOOK_SHIFTS = ((1, 0), (-1, 0), (0, 1), (0, -1))


def expand(images, labels, key=None):
    """The book's expanded training set: each image followed by its four 1-pixel shifts
    (5N images), then shuffled once with `key` as expand_mnist.py does (None: unshuffled).
    One jitted computation on the device; no Python loop over images."""
    import jax
    import jax.numpy as jnp

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


def width_normalize(images, width: int):
    """Ciresan, Meier & Schmidhuber (2012)'s preprocessing for their committees: each
    (N, H, W) uint8 image stretched or squeezed horizontally so that its digit's bounding
    box (the columns holding a non-zero pixel) is `width` pixels wide, centred on the
    image's centre column; rows are untouched. Linear resampling, antialiased when
    squeezing (jax.image.scale_and_translate); a blank image stays blank. Returns uint8.
    One jitted computation on the device; no Python loop over images."""
    import jax.numpy as jnp
    return _width_normalize_jit()(jnp.asarray(images), int(width))


def _width_normalize_impl(images, width):
    import jax
    import jax.numpy as jnp
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


@functools.cache
def _width_normalize_jit():
    import jax
    return jax.jit(_width_normalize_impl, static_argnums=1)


def deskew(images):
    """The classic MNIST deskewing (LeCun et al. 1998's 'deslanted' inputs; Meier et al.
    2011 train committee members on it): each (N, H, W) uint8 image sheared horizontally,
    row by row, so that its ink's second moment mu11 becomes zero, that is the digit's
    principal axis stands upright. With (cy, cx) the intensity centroid and
    alpha = mu11 / mu02, output pixel (y, x) is the input sampled at (y, x + alpha (y - cy))
    by linear interpolation, zero outside the image: the centroid stays where it is. A
    blank image, or one whose ink lies in one row, stays unchanged. Returns uint8. One
    jitted computation on the device; no Python loop over images."""
    import jax.numpy as jnp
    return _deskew_jit()(jnp.asarray(images))


def skew(images):
    """(N,) the slant alpha = mu11 / mu02 of each (N, H, W) image's ink (0 for a blank
    image or ink in one row): how many pixels the ink moves right per row down (a digit
    leaning right, its top right of its foot, has alpha < 0)."""
    import jax.numpy as jnp
    return _centroid_row_and_slant(jnp.asarray(images).astype(jnp.float32))[1]


def _centroid_row_and_slant(x):
    """(cy, alpha) of float (N, H, W) images: the ink's centroid row and mu11 / mu02."""
    import jax.numpy as jnp
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


def _deskew_impl(images):
    import jax.numpy as jnp
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


@functools.cache
def _deskew_jit():
    import jax
    return jax.jit(_deskew_impl)


def preprocess(images, width: int = 0, deskewed: bool = False):
    """(N, H, W) uint8 images as a network with config.width_norm = width and
    config.deskew = deskewed sees them: deskewed first, then width-normalised (0 and
    False: unchanged). Returns a device array."""
    import jax
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


def preprocessed(ds: Dataset, width: int = 0, deskewed: bool = False) -> Dataset:
    """The dataset with every split's images preprocess'ed (0 and False: unchanged, the
    same object). Labels and sizes are kept, the source says what was done; the images
    come back as numpy uint8."""
    if not width and not deskewed:
        return ds
    norm = lambda s: Split(np.asarray(preprocess(s.images, width, deskewed)), s.labels)
    return Dataset(norm(ds.train), norm(ds.validation), norm(ds.test),
                   f"{ds.source}, {preprocessing_text(width, deskewed)}")


def random_shift(key, images, max_shift: int):
    """Each image of a (B, H, W) batch shifted by its own random (dy, dx), each in
    [-max_shift, max_shift], zero-filled. Pure and jittable: on-the-fly augmentation."""
    import jax
    import jax.numpy as jnp
    from jax import lax
    b, h, w = images.shape
    k = max_shift
    padded = jnp.pad(images, ((0, 0), (k, k), (k, k)))
    offsets = jax.random.randint(key, (b, 2), 0, 2 * k + 1)
    crop = lambda img, off: lax.dynamic_slice(img, (off[0], off[1]), (h, w))
    return jax.vmap(crop)(padded, offsets)


def affine_coords(theta, scale, h: int, w: int):
    """Where each output pixel of an (h, w) image samples its input under a rotation by
    theta[b] (radians) and a zoom by scale[b] about the image centre: two (B, h, w) maps
    (row, column), R(-theta) (o - c) / scale + c."""
    import jax.numpy as jnp
    ci, cj = (h - 1) / 2, (w - 1) / 2
    ii, jj = jnp.meshgrid(jnp.arange(h) - ci, jnp.arange(w) - cj, indexing="ij")
    cos = (jnp.cos(theta) / scale)[:, None, None]
    sin = (jnp.sin(theta) / scale)[:, None, None]
    return cos * ii + sin * jj + ci, -sin * ii + cos * jj + cj


def sample_bilinear(images, si, sj):
    """A (B, H, W) float batch sampled at the (B, H, W) coordinate maps si (rows) and sj
    (columns) by bilinear interpolation, zeros outside the image (scipy.ndimage's
    mode='grid-constant'). Pure and jittable: one flat gather per corner."""
    import jax.numpy as jnp
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
    import numpy as np
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
    import jax
    import jax.numpy as jnp
    raw = jax.random.uniform(key, (2, b, h, w), minval=-1.0, maxval=1.0)
    g_h, g_w = jnp.asarray(gaussian_smoother(h, sigma)), jnp.asarray(gaussian_smoother(w, sigma))
    smooth = jnp.einsum("ik,zbkl,jl->zbij", g_h, raw, g_w) * alpha
    return smooth[0], smooth[1]


def warp(images, theta, scale, dy=None, dx=None):
    """An affine map (as `affine`) and, when dy/dx are given, an elastic displacement
    added to the sampling coordinates: output pixel o samples the input at
    R(-theta) (o - c) / scale + c + (dy[o], dx[o]). One bilinear pass, zeros outside."""
    _, h, w = images.shape
    si, sj = affine_coords(theta, scale, h, w)
    if dy is not None:
        si, sj = si + dy, sj + dx
    return sample_bilinear(images, si, sj)


def _affine_draws(key, b: int, max_degrees: float, max_scale: float):
    """Per image: an angle in radians, uniform in [-max_degrees, max_degrees] degrees, and
    a zoom factor uniform in [1 - max_scale, 1 + max_scale]."""
    import jax
    import jax.numpy as jnp
    k_rot, k_scale = jax.random.split(key)
    theta = jax.random.uniform(k_rot, (b,), minval=-max_degrees, maxval=max_degrees)
    scale = 1 + jax.random.uniform(k_scale, (b,), minval=-max_scale, maxval=max_scale)
    return theta * (jnp.pi / 180), scale


def random_affine(key, images, max_degrees: float, max_scale: float):
    """Each image of a (B, H, W) float batch rotated by a uniform angle in
    [-max_degrees, max_degrees] and zoomed by a uniform factor in [1 - max_scale,
    1 + max_scale], its own draw per image: on-the-fly augmentation inside the jitted epoch."""
    return random_warp(key, images, max_degrees, max_scale)


def random_warp(key, images, max_degrees: float, max_scale: float, alpha: float = 0.0,
                sigma: float = 4.0):
    """random_affine's rotations and zooms (the same draws from the same key), plus, when
    alpha > 0, an elastic distortion of each image (elastic_displacement with alpha and
    sigma, from a key of its own), all in one bilinear pass. Jittable."""
    import jax
    b, h, w = images.shape
    theta, scale = _affine_draws(key, b, max_degrees, max_scale)
    dy = dx = None
    if alpha:
        dy, dx = elastic_displacement(jax.random.fold_in(key, 7), b, h, w, alpha, sigma)
    return warp(images, theta, scale, dy, dx)
