"""MNIST loading: IDX files (plain or .gz), SHA-256 checks, download, TFDS, splits.

Arrays stay uint8 on the host; the driver moves them to the device once and the jitted
steps scale them to [0, 1] floats per mini-batch (to_float). The transforms of the
images (shifts, warps, deskewing, width normalisation) are in augment.py.
"""

from __future__ import annotations

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
    """MNIST from `source` (load_arrays), split as the book splits it (split)."""
    arrays, where = load_arrays(source, data_dir, download)
    return split(arrays, train_size, where, with_validation)


def to_float(images):
    """uint8 images (N, 28, 28) -> float32 NHWC (N, 28, 28, 1) in [0, 1]. Works on jax arrays."""
    return (images.astype("float32") / 255.0)[..., None]
