"""Datasets of 28x28 ten-class images as IDX files: which one a run reads (MNIST,
Fashion-MNIST, KMNIST or a custom directory), checked by content; loading (plain or
.gz), SHA256SUMS checks, download, TFDS, splits.

A known dataset is recognised by the SHA-256 of its files (DATASETS): a directory is
dataset D when all four files match D's, and a run asked for D refuses a directory of
another known dataset, or of unknown files (those are `custom`, read only when asked
for). Every loaded Dataset carries its name and the SHA-256 of the four decompressed
files (identity), which runs record and check on resume.

Arrays stay uint8 on the host; the driver moves them to the device once and the jitted
steps scale them to [0, 1] floats per mini-batch (to_float). The transforms of the
images (shifts, warps, deskewing, width normalisation) are in augment.py.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import math
import os
import re
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
CUSTOM = "custom"   # config.dataset for any directory of the four IDX files
NUM_TRAIN, NUM_VALIDATION = 50_000, 10_000
_IDX_DTYPES = {0x08: np.uint8}
_EXPECTED = {  # name -> (ndim, trailing dims)
    "train_images": (3, (28, 28)), "test_images": (3, (28, 28)),
    "train_labels": (1, ()), "test_labels": (1, ()),
}
# Sanity bounds on an IDX header: items per axis (MNIST's largest is 60,000), and the
# product of the non-zero axes (numpy cannot index more, even for an empty array).
MAX_IDX_DIM = 1 << 24
MAX_IDX_ITEMS = 1 << 40


@dataclass(frozen=True)
class Known:
    """A dataset recognised by content. gz_sha256: the SHA-256 of each official .gz
    file, as tensorflow-datasets records it for `mirror` (its url_checksums/<name>.txt);
    idx_sha256: the SHA-256 of each decompressed file where known ({}: not recorded)."""
    title: str
    tfds_name: str
    mirror: str
    gz_sha256: dict
    idx_sha256: dict


DATASETS = {
    "mnist": Known("MNIST", "mnist", DEFAULT_MIRROR, {
        "t10k-images-idx3-ubyte": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        "train-images-idx3-ubyte": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    }, KNOWN_SHA256),
    "fashion_mnist": Known(
        "Fashion-MNIST", "fashion_mnist",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", {
            "t10k-images-idx3-ubyte": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            "train-images-idx3-ubyte": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        }, {
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        }),
    "kmnist": Known("KMNIST", "kmnist", "http://codh.rois.ac.jp/kmnist/dataset/kmnist/", {
        "t10k-images-idx3-ubyte": "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
        "t10k-labels-idx1-ubyte": "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c",
        "train-images-idx3-ubyte": "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",
        "train-labels-idx1-ubyte": "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",
    }, {}),
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
    dataset: str = ""   # config.dataset it was loaded as; "": not known (built in memory)
    data_sha256: dict | None = None   # file stem -> SHA-256 of the decompressed file


def identity(ds: Dataset) -> dict:
    """What a run records of its data (summary.json, checkpoints): `dataset` and
    `data_sha256`; {} for a Dataset built in memory, which has no files."""
    if not ds.dataset:
        return {}
    return dict(dataset=ds.dataset, data_sha256=dict(ds.data_sha256 or {}))


def describe(ds: Dataset) -> str:
    """The dataset's name and where it came from, for the start-up line."""
    return f"{ds.dataset} from {ds.source}" if ds.dataset else ds.source


def _title(dataset: str) -> str:
    return DATASETS[dataset].title if dataset in DATASETS else dataset


def idx_size(dims: tuple, what: str = "IDX data") -> int:
    """The items an IDX header's dims promise, as an exact integer; a DataError when an
    axis exceeds MAX_IDX_DIM or the non-zero axes MAX_IDX_ITEMS (a damaged header)."""
    if max(dims) > MAX_IDX_DIM or math.prod(d or 1 for d in dims) > MAX_IDX_ITEMS:
        raise DataError(f"{what}: its header claims dimensions {dims}, beyond any IDX "
                        f"file of images (at most {MAX_IDX_DIM} per axis); the file is "
                        f"damaged or not an IDX file, re-download it")
    return math.prod(dims)


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
    expected = header + idx_size(dims, what)
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


def _read_file(path: str) -> tuple[bytes, str | None]:
    """(the decompressed bytes, the SHA-256 of the .gz file itself or None)."""
    try:
        with open(path, "rb") as f:
            content = f.read()
        if not path.endswith(".gz"):
            return content, None
        return gzip.decompress(content), hashlib.sha256(content).hexdigest()
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({e}); re-download the file") from None


def _read_bytes(path: str) -> bytes:
    return _read_file(path)[0]


_GNU_LINE = re.compile(r"([0-9A-Fa-f]{64}) [ *](.+)")          # sha256sum
_BSD_LINE = re.compile(r"SHA256 \((.+)\) = ([0-9A-Fa-f]{64})")  # sha256sum --tag, BSD


def read_sha256sums(path: str) -> dict[str, str]:
    """Parses a SHA256SUMS file: 'HASH  NAME' or 'HASH *NAME' lines (sha256sum) or
    'SHA256 (NAME) = HASH' lines (BSD, sha256sum --tag); blank lines are skipped,
    anything else is a DataError."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e}); fix or remove the file") from None
    sums = {}
    for n, line in enumerate(lines, 1):
        gnu, bsd = _GNU_LINE.fullmatch(line), _BSD_LINE.fullmatch(line)
        if gnu or bsd:
            digest, name = gnu.groups() if gnu else bsd.groups()[::-1]
            sums[os.path.basename(name)] = digest.lower()
        elif line.strip():
            raise DataError(f"{path}: line {n} is not a SHA-256 line ({line[:40]!r}); "
                            f"write 'HASH  NAME' (sha256sum) or 'SHA256 (NAME) = HASH' "
                            f"(sha256sum --tag) lines, or remove the file")
    return sums


def _sums_for(directory: str, paths: dict) -> dict[str, str]:
    """The directory's SHA256SUMS ({} without one), which must list every file in
    `paths` (stem -> path): under its bare name (the decompressed content's hash) or,
    for a .gz, under its .gz name (the compressed file's)."""
    sums_path = os.path.join(directory, "SHA256SUMS")
    if not os.path.isfile(sums_path):
        return {}
    sums = read_sha256sums(sums_path)
    unlisted = [os.path.basename(p) for stem, p in paths.items()
                if stem not in sums and not (p.endswith(".gz") and stem + ".gz" in sums)]
    if unlisted:
        raise DataError(f"{sums_path} lists no SHA-256 for {', '.join(unlisted)}: add "
                        f"their lines (sha256sum NAME >> SHA256SUMS), or remove the file")
    return sums


def _check_sha(raw: bytes, gz_sha: str | None, stem: str, path: str, sums: dict) -> str:
    """Checks the file against every SHA256SUMS line for it; returns the SHA-256 of
    its decompressed content."""
    got = hashlib.sha256(raw).hexdigest()
    checks = [(sums.get(stem), got)]
    if gz_sha is not None:
        checks.append((sums.get(stem + ".gz"), gz_sha))
    for want, have in checks:
        if want is not None and have != want:
            raise DataError(f"{path}: SHA-256 mismatch (got {have[:12]}..., SHA256SUMS "
                            f"says {want[:12]}...); the file is corrupt, re-download it")
    return got


def has_idx_files(directory: str | None) -> bool:
    return bool(directory) and os.path.isdir(directory) and all(
        _find_file(directory, stem) for stem in FILES.values())


def _idx_paths(directory: str) -> dict[str, str]:
    """stem -> path of each of the four files; a DataError naming every missing one."""
    if not os.path.isdir(directory):
        raise DataError(f"data directory {directory!r} does not exist (or is not a "
                        f"directory); it must hold the four IDX files "
                        f"{', '.join(FILES.values())} (or their .gz)")
    paths = {stem: _find_file(directory, stem) for stem in FILES.values()}
    missing = [stem for stem, path in paths.items() if path is None]
    if missing:
        raise DataError(f"{directory}: missing {', '.join(s + '[.gz]' for s in missing)}; "
                        f"a dataset directory holds the four standard IDX files "
                        f"{', '.join(FILES.values())}")
    return paths


def _check_arrays(directory: str, arrays: dict) -> None:
    for key, arr in arrays.items():
        ndim, trailing = _EXPECTED[key]
        if arr.ndim != ndim or arr.shape[1:] != trailing:
            raise DataError(f"{_find_file(directory, FILES[key])}: shape {arr.shape}, "
                            f"expected (N{', ' if trailing else ''}"
                            f"{', '.join(map(str, trailing))}) for {key.replace('_', ' ')}")
    for part in ("train", "test"):
        ni, nl = len(arrays[f"{part}_images"]), len(arrays[f"{part}_labels"])
        if ni != nl:
            raise DataError(f"{directory}: {part} has {ni} images but {nl} labels")
        if arrays[f"{part}_labels"].max(initial=0) > 9:
            raise DataError(f"{directory}: {part} labels hold values above 9 "
                            f"(max {arrays[f'{part}_labels'].max()}); not a ten-class "
                            f"dataset's labels")


def read_idx_dir(directory: str) -> tuple[dict, dict]:
    """(the four arrays, {stem: (SHA-256 of the decompressed file, SHA-256 of the .gz
    or None)}) of `directory`, validated: magic numbers, dtypes, dimensions, image and
    label counts, label range, and SHA256SUMS when the directory holds one."""
    paths = _idx_paths(directory)
    sums = _sums_for(directory, paths)
    arrays, hashes = {}, {}
    for key, stem in FILES.items():
        raw, gz_sha = _read_file(paths[stem])
        sha = _check_sha(raw, gz_sha, stem, paths[stem], sums)
        arrays[key], hashes[stem] = parse_idx(raw, paths[stem]), (sha, gz_sha)
    _check_arrays(directory, arrays)
    return arrays, hashes


def load_idx_dir(directory: str) -> dict[str, np.ndarray]:
    """The four arrays of `directory` (read_idx_dir), validated."""
    return read_idx_dir(directory)[0]


def _matches(known: Known, stem: str, sha: str, gz_sha: str | None) -> bool:
    return sha == known.idx_sha256.get(stem) or (
        gz_sha is not None and gz_sha == known.gz_sha256.get(stem))


def recognise(hashes: dict) -> str | None:
    """The known dataset whose files all four are (hashes: read_idx_dir's), or None."""
    for name, known in DATASETS.items():
        if all(_matches(known, stem, *hashes[stem]) for stem in FILES.values()):
            return name
    return None


def check_identity(directory: str, dataset: str, hashes: dict) -> None:
    """A DataError unless the files are the known `dataset`'s (any files for custom):
    naming the known dataset they are instead, or the files that differ."""
    if dataset == CUSTOM:
        return
    holds = recognise(hashes)
    if holds == dataset:
        return
    title = _title(dataset)
    if holds is not None:
        raise DataError(f"{directory} holds {_title(holds)}'s files, not {title}'s: pass "
                        f"--config.dataset={holds}")
    known = DATASETS[dataset]
    differ = [s for s in FILES.values() if not _matches(known, s, *hashes[s])]
    why = ("" if all(s in known.idx_sha256 for s in differ) else
           f" ({title} is recognised by the SHA-256 of its original .gz files only: "
           f"keep them as downloaded)")
    raise DataError(f"{directory}: {', '.join(differ)} {'is' if len(differ) == 1 else 'are'}"
                    f" not {title}'s (no known SHA-256 matches){why}; for other 28x28 "
                    f"ten-class IDX files pass --config.dataset=custom")


def arrays_sha256(arrays: dict) -> dict[str, str]:
    """{stem: SHA-256 of the array written as an IDX file}: the SHA-256 of the
    decompressed file it was read from (parse_idx reads exactly header and data)."""
    out = {}
    for key, stem in FILES.items():
        a = np.ascontiguousarray(arrays[key], dtype=np.uint8)
        h = hashlib.sha256(struct.pack(">HBB", 0, 0x08, a.ndim))
        h.update(struct.pack(f">{a.ndim}I", *a.shape))
        h.update(memoryview(a).cast("B"))
        out[stem] = h.hexdigest()
    return out


def default_cache_dir(dataset: str = "mnist") -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mnist_cnn", dataset)


def _verify_download(tmp: str, stem: str, url: str, known: Known) -> None:
    """A DataError unless the downloaded .gz is the official file (its SHA-256) or
    decompresses to the known file (where its SHA-256 is recorded)."""
    with open(tmp, "rb") as f:
        gz_sha = hashlib.sha256(f.read()).hexdigest()
    if gz_sha == known.gz_sha256.get(stem):
        return
    try:
        raw = _read_bytes(tmp)
    except DataError:
        raise DataError(f"downloaded {url} is not a valid gzip file; the mirror "
                        f"served a bad file") from None
    got, want = hashlib.sha256(raw).hexdigest(), known.idx_sha256.get(stem)
    if want is None:
        got, want = gz_sha, known.gz_sha256.get(stem, "?" * 12)
    if got != want:
        raise DataError(f"downloaded {url} has SHA-256 {got[:12]}..., expected "
                        f"{want[:12]}...; the mirror served a bad file")


def download_idx(directory: str, mirror: str | None = None, timeout: float = 30.0,
                 dataset: str = "mnist") -> None:
    """Downloads the dataset's four .gz files into `directory`, verified, atomically.

    Each file goes to a temporary name in the same directory and is renamed into place
    only after it is verified (_verify_download), so an interrupted or corrupted
    download never leaves a file under a standard name. mirror None: the dataset's.
    """
    known = DATASETS[dataset]
    mirror = mirror or known.mirror
    os.makedirs(directory, exist_ok=True)
    for stem in FILES.values():
        if _find_file(directory, stem):
            continue
        url = mirror.rstrip("/") + "/" + stem + ".gz"
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".download-", suffix=".gz")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as r:
                shutil.copyfileobj(r, out)
            _verify_download(tmp, stem, url, known)
            os.replace(tmp, os.path.join(directory, stem + ".gz"))
        except DataError:
            raise
        except (OSError, ValueError, http.client.HTTPException) as e:
            raise DataError(f"cannot download {url}: {e}") from None
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def load_tfds(data_dir: str | None = None, name: str = "mnist") -> dict[str, np.ndarray]:
    """TFDS dataset `name` through tensorflow-datasets' TensorFlow-free
    `tfds.data_source` path."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError("source 'tfds' needs tensorflow-datasets: pip install "
                        "tensorflow-datasets") from None
    arrays = {}
    for part in ("train", "test"):
        try:
            src = tfds.data_source(name, split=part, data_dir=data_dir, download=False)
        except Exception as e:  # tfds raises assorted errors when nothing is prepared
            raise DataError(f"tfds has no prepared '{name}' ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}); run "
                            f"`tfds build {name}` or use source 'idx'") from None
        records = [src[i] for i in range(len(src))]
        images = np.stack([np.asarray(r["image"], np.uint8).reshape(28, 28) for r in records])
        labels = np.asarray([int(r["label"]) for r in records], np.uint8)
        arrays[f"{part}_images"], arrays[f"{part}_labels"] = images, labels
    return arrays


def candidate_dirs(data_dir: str | None, dataset: str = "mnist") -> list[str]:
    """Where source 'idx' looks, in order: data_dir, $MNIST_DATA_DIR (for mnist only),
    the dataset's cache."""
    env = os.environ.get("MNIST_DATA_DIR") if dataset == "mnist" else None
    return [d for d in (data_dir, env, default_cache_dir(dataset)) if d]


def _check_request(source: str, dataset: str, data_dir: str | None) -> None:
    if source not in SOURCES:
        raise DataError(f"unknown data source {source!r}; choose one of {SOURCES}")
    if dataset not in DATASETS and dataset != CUSTOM:
        raise DataError(f"unknown dataset {dataset!r}; choose one of "
                        f"{(*DATASETS, CUSTOM)}")
    if dataset == CUSTOM and (not data_dir or source == "tfds"):
        raise DataError("dataset custom reads the four IDX files of --config.data_dir: "
                        "set it to their directory (with data_source auto or idx)")


def _from_dir(directory: str, dataset: str, note: str = "") -> tuple[dict, str, dict]:
    arrays, hashes = read_idx_dir(directory)
    check_identity(directory, dataset, hashes)
    return (arrays, f"idx:{os.path.abspath(directory)}{note}",
            {stem: sha for stem, (sha, _) in hashes.items()})


def _from_tfds(data_dir: str | None, dataset: str) -> tuple[dict, str, dict]:
    arrays = load_tfds(data_dir, DATASETS[dataset].tfds_name)
    return arrays, f"tfds:{data_dir or 'default'}", arrays_sha256(arrays)


def _downloaded(dataset: str, download: bool, mirror: str | None) -> tuple[dict, str, dict]:
    """The dataset downloaded into its cache; a DataError saying where it looked when
    download is off or fails."""
    title = _title(dataset)
    looked = ", ".join(candidate_dirs(None, dataset))
    how = ("put the four IDX files in a directory and pass --config.data_dir=DIR"
           + (" or set MNIST_DATA_DIR" if dataset == "mnist" else ""))
    if not download:
        raise DataError(f"{title} not found (looked in {looked}); {how}")
    if mirror is None and dataset == "mnist":
        mirror = os.environ.get("MNIST_MIRROR")
    cache = default_cache_dir(dataset)
    try:
        download_idx(cache, mirror, dataset=dataset)
        return _from_dir(cache, dataset, " (downloaded)")
    except DataError as e:
        raise DataError(f"{title} not found (looked in {looked}) and download failed "
                        f"({e}); {how}") from None


def find_arrays(source: str = "auto", data_dir: str | None = None, download: bool = True,
                mirror: str | None = None, dataset: str = "mnist") -> tuple[dict, str, dict]:
    """(the four arrays, where they came from, {file stem: SHA-256 of the decompressed
    file}) of `dataset`. An explicit data_dir binds (read or refused, whatever the
    source; for tfds it is the TFDS data dir); without one: $MNIST_DATA_DIR (mnist),
    the dataset's cache, a prepared TFDS dataset (auto), then a download (auto, idx).
    Files are checked to be the dataset asked for (check_identity)."""
    _check_request(source, dataset, data_dir)
    if source == "tfds":
        return _from_tfds(data_dir, dataset)
    if data_dir:
        return _from_dir(data_dir, dataset)
    for d in candidate_dirs(None, dataset):
        if has_idx_files(d):
            return _from_dir(d, dataset)
    if source == "auto":
        try:
            return _from_tfds(None, dataset)
        except DataError:
            pass
    return _downloaded(dataset, download, mirror)


def load_arrays(source: str = "auto", data_dir: str | None = None, download: bool = True,
                mirror: str | None = None, dataset: str = "mnist") -> tuple[dict, str]:
    """Returns (the four arrays, a description of where they came from): find_arrays."""
    return find_arrays(source, data_dir, download, mirror, dataset)[:2]


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
         with_validation=False, dataset="mnist") -> Dataset:
    """`dataset` from `source` (find_arrays), split as the book splits MNIST (split),
    with its name and the SHA-256 of its four files."""
    arrays, where, sha256 = find_arrays(source, data_dir, download, None, dataset)
    return dataclasses.replace(split(arrays, train_size, where, with_validation),
                               dataset=dataset, data_sha256=sha256)


def to_float(images):
    """uint8 images (N, 28, 28) -> float32 NHWC (N, 28, 28, 1) in [0, 1]. Works on jax arrays."""
    return (images.astype("float32") / 255.0)[..., None]
