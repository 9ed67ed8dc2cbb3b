"""Tests for mnist_cnn/data.py: IDX parsing, directory loading, download, TFDS, splits.

Expectations are built independently of the code under test: IDX bytes are packed with
`struct` (conftest.py's idx_bytes), hashes computed here with `hashlib`, the standard
file names and MNIST's label counts are written out literally. Downloads go to a
throwaway HTTP server on 127.0.0.1; an autouse guard fails any test that tries to reach
another host.

Tests that need the real MNIST files read them from $MNIST_DATA_DIR or
/work/shared/data/mnist and are skipped when neither holds them.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import socket
import struct
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from mnist_cnn import data

DataError = data.DataError

# The standard MNIST file names, written out rather than taken from data.FILES.
NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
STEMS = list(NAMES.values())
GZ_NAMES = sorted(stem + ".gz" for stem in STEMS)

# Captured at import, before the autouse fixture below clears MNIST_DATA_DIR.
REAL_DIR = Path(os.environ.get("MNIST_DATA_DIR") or "/work/shared/data/mnist")
REAL_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
REAL_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

requires_real_gz = pytest.mark.skipif(
    not all((REAL_DIR / name).is_file() for name in GZ_NAMES),
    reason=f"real MNIST .gz files not in {REAL_DIR} (set MNIST_DATA_DIR)")
requires_real = pytest.mark.skipif(
    not all((REAL_DIR / s).is_file() or (REAL_DIR / (s + ".gz")).is_file() for s in STEMS),
    reason=f"real MNIST files not in {REAL_DIR} (set MNIST_DATA_DIR)")


# ---------------------------------------------------------------------------------------
# Helpers: synthetic IDX files and datasets.

def fake_arrays(n_train: int = 20, n_test: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": ((np.arange(n_train) + seed) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": ((np.arange(n_test) + seed + 3) % 10).astype(np.uint8),
    }


@pytest.fixture
def write_dataset(idx_bytes):
    """write_dataset(directory, arrays=None, gz=True, raw=None) writes the four IDX files
    (`raw` replaces a file's decompressed bytes) and returns the arrays."""
    def write(directory: Path, arrays=None, *, gz: bool = True,
              raw: dict[str, bytes] | None = None) -> dict[str, np.ndarray]:
        directory.mkdir(parents=True, exist_ok=True)
        arrays = fake_arrays() if arrays is None else arrays
        for key, stem in NAMES.items():
            content = (raw or {}).get(key)
            content = idx_bytes(arrays[key]) if content is None else content
            if gz:
                (directory / (stem + ".gz")).write_bytes(gzip.compress(content))
            else:
                (directory / stem).write_bytes(content)
        return arrays
    return write


def write_sums(directory: Path, sums: dict[str, str], marker: str = " "):
    lines = [f"{digest}  {name}\n" if marker == " " else f"{digest} {marker}{name}\n"
             for name, digest in sums.items()]
    (directory / "SHA256SUMS").write_text("".join(lines))


def sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def corrupt_deflate(raw: bytes) -> bytes:
    """A gzip stream with an intact header but a mangled deflate body."""
    gz = bytearray(gzip.compress(raw))
    for i in range(20, min(60, len(gz) - 8)):
        gz[i] ^= 0xFF
    return bytes(gz)


def assert_arrays_equal(got: dict, want: dict):
    assert set(got) == set(NAMES)
    for key in NAMES:
        assert got[key].dtype == np.uint8, key
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# ---------------------------------------------------------------------------------------
# Fixtures: environment isolation, network guard, local HTTP server.

@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """No test sees the user's MNIST_DATA_DIR, mirror, cache or proxies."""
    monkeypatch.delenv("MNIST_DATA_DIR", raising=False)
    monkeypatch.delenv("MNIST_MIRROR", raising=False)
    cache_home = tmp_path / "xdg-cache"
    cache_home.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return cache_home


_LOCAL = {"127.0.0.1", "::1", "localhost", None}


@pytest.fixture(autouse=True)
def no_external_network(monkeypatch):
    """Refuses connections and lookups beyond loopback; a test that tried one fails."""
    attempts = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def host_of(address):
        return address[0] if isinstance(address, tuple) else None

    def connect(self, address):
        if host_of(address) not in _LOCAL:
            attempts.append(address)
            raise OSError(f"test blocked a connection to {address!r}")
        return real_connect(self, address)

    def connect_ex(self, address):
        if host_of(address) not in _LOCAL:
            attempts.append(address)
            raise OSError(f"test blocked a connection to {address!r}")
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if name not in _LOCAL:
            attempts.append(name)
            raise socket.gaierror(f"test blocked a lookup of {name!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield
    assert not attempts, f"test tried to reach the network: {attempts}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: list  # set per server

    def do_GET(self):
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@dataclass
class Server:
    url: str
    requests: list = field(default_factory=list)


@pytest.fixture
def serve():
    """serve(directory) -> Server: an HTTP server on 127.0.0.1 for `directory`."""
    running = []

    def start(directory: Path) -> Server:
        requests = []
        handler = type("Handler", (_QuietHandler,), {"requests": requests})
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
        thread = threading.Thread(target=server.serve_forever,
                                  kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        running.append((server, thread))
        return Server(f"http://127.0.0.1:{server.server_address[1]}/", requests)

    yield start
    for server, thread in running:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def closed_port_url():
    """A loopback URL nothing listens on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def tfds_isolated(monkeypatch, tmp_path):
    """Points tensorflow-datasets (if installed) at an empty data directory."""
    try:
        from tensorflow_datasets.core import constants
    except ImportError:
        return None
    empty = tmp_path / "tfds-empty"
    empty.mkdir()
    monkeypatch.setenv("TFDS_DATA_DIR", str(empty))
    monkeypatch.setattr(constants, "DATA_DIR", str(empty))  # read at import otherwise
    return empty


@pytest.fixture
def dataset_dir(tmp_path, write_dataset):
    """A small synthetic dataset (.gz): 20 training and 5 test images."""
    directory = tmp_path / "mnist"
    return directory, write_dataset(directory)


# ---------------------------------------------------------------------------------------
# Constants.

def test_standard_file_names():
    assert data.FILES == NAMES
    assert set(data.KNOWN_SHA256) == set(STEMS)
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in data.KNOWN_SHA256.values())


@requires_real
def test_known_sha256_matches_real_files():
    for stem in STEMS:
        path = REAL_DIR / stem
        raw = path.read_bytes() if path.is_file() else gzip.decompress(
            (REAL_DIR / (stem + ".gz")).read_bytes())
        assert sha256(raw) == data.KNOWN_SHA256[stem], stem


# ---------------------------------------------------------------------------------------
# parse_idx.

@pytest.mark.parametrize("shape", [(5, 28, 28), (7,), (2, 3, 4), (0, 28, 28), (3, 1, 1, 2)])
def test_parse_idx_roundtrip(shape, idx_bytes):
    arr = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    got = data.parse_idx(idx_bytes(arr))
    assert got.dtype == np.uint8
    assert got.shape == shape
    np.testing.assert_array_equal(got, arr)


def test_parse_idx_reads_big_endian_dims():
    arr = np.arange(300 * 2, dtype=np.uint64).astype(np.uint8).reshape(300, 2)  # dim > 255
    raw = b"\x00\x00\x08\x02" + b"\x00\x00\x01\x2c" + b"\x00\x00\x00\x02" + arr.tobytes()
    got = data.parse_idx(raw)
    assert got.shape == (300, 2)
    np.testing.assert_array_equal(got, arr)


@pytest.mark.parametrize("raw", [b"", b"\x00", b"\x00\x00\x08"], ids=["empty", "1-byte", "3-bytes"])
def test_parse_idx_too_short(raw):
    with pytest.raises(DataError, match="too short"):
        data.parse_idx(raw, "myfile")


@pytest.mark.parametrize("magic", [
    b"\x00\x00\x09\x03",  # dtype code 0x09 (int8), not uint8
    b"\x00\x00\x0d\x03",  # dtype code 0x0D (float32)
    b"\x00\x00\x00\x03",  # dtype code 0
    b"\x01\x00\x08\x03",  # nonzero first byte
    b"\x00\x01\x08\x01",  # nonzero second byte
    b"\x00\x00\x08\x00",  # zero dimensions
    b"\x1f\x8b\x08\x00",  # a gzip header: a .gz read as a plain file
], ids=["int8", "float", "dtype0", "byte0", "byte1", "ndim0", "gzip"])
def test_parse_idx_bad_magic(magic):
    raw = magic + struct.pack(">3I", 1, 1, 1) + b"\x00"
    with pytest.raises(DataError, match="magic") as e:
        data.parse_idx(raw, "myfile")
    assert "myfile" in str(e.value)
    assert magic.hex() in str(e.value)


def test_parse_idx_truncated_header():
    raw = b"\x00\x00\x08\x03" + struct.pack(">2I", 2, 28)  # promises 3 dims, holds 2
    with pytest.raises(DataError, match="truncated IDX header"):
        data.parse_idx(raw, "myfile")


def test_parse_idx_truncated_body(idx_bytes):
    raw = idx_bytes(np.zeros((3, 28, 28), np.uint8))[:-1]
    with pytest.raises(DataError, match="truncated") as e:
        data.parse_idx(raw, "myfile")
    assert "myfile" in str(e.value) and "IDX header" not in str(e.value)


def test_parse_idx_header_only_with_nonzero_dims_is_truncated():
    raw = b"\x00\x00\x08\x01" + struct.pack(">I", 10)
    with pytest.raises(DataError, match="truncated"):
        data.parse_idx(raw)


def test_parse_idx_trailing_bytes(idx_bytes):
    raw = idx_bytes(np.zeros((4,), np.uint8)) + b"\x00"
    with pytest.raises(DataError, match="trailing bytes"):
        data.parse_idx(raw, "myfile")


# ---------------------------------------------------------------------------------------
# read_sha256sums, has_idx_files, candidate_dirs, default_cache_dir.

def test_read_sha256sums_formats(tmp_path):
    a, b = "A" * 64, "b" * 64
    (tmp_path / "SHA256SUMS").write_text(
        f"{a}  train-images-idx3-ubyte\n\n{b} *sub/dir/t10k-labels-idx1-ubyte.gz\n"
        f"SHA256 (t10k-images-idx3-ubyte) = {a}\n")
    sums = data.read_sha256sums(str(tmp_path / "SHA256SUMS"))
    assert sums == {"train-images-idx3-ubyte": "a" * 64, "t10k-labels-idx1-ubyte.gz": b,
                    "t10k-images-idx3-ubyte": "a" * 64}
    (tmp_path / "SHA256SUMS").write_text(f"{b}  x\nnot a hash line with many words\n")
    with pytest.raises(DataError, match="line 2 is not a SHA-256 line"):
        data.read_sha256sums(str(tmp_path / "SHA256SUMS"))


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_has_idx_files(tmp_path, gz, write_dataset):
    assert not data.has_idx_files(None)
    assert not data.has_idx_files("")
    assert not data.has_idx_files(str(tmp_path / "nope"))
    assert not data.has_idx_files(str(tmp_path))
    write_dataset(tmp_path, gz=gz)
    assert data.has_idx_files(str(tmp_path))
    (tmp_path / (STEMS[2] + (".gz" if gz else ""))).unlink()
    assert not data.has_idx_files(str(tmp_path))


def test_default_cache_dir(monkeypatch, tmp_path, isolated_env):
    assert data.default_cache_dir() == str(isolated_env / "mnist_cnn" / "mnist")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_cache_dir() == str(tmp_path / "home" / ".cache" / "mnist_cnn" / "mnist")


def test_candidate_dirs_order(monkeypatch, isolated_env):
    cache = str(isolated_env / "mnist_cnn" / "mnist")
    assert data.candidate_dirs(None) == [cache]
    monkeypatch.setenv("MNIST_DATA_DIR", "/env/dir")
    assert data.candidate_dirs("/explicit") == ["/explicit", "/env/dir", cache]
    assert data.candidate_dirs(None) == ["/env/dir", cache]


# ---------------------------------------------------------------------------------------
# load_idx_dir.

@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_load_idx_dir_reads_dataset(tmp_path, gz, write_dataset):
    want = write_dataset(tmp_path, gz=gz)
    got = data.load_idx_dir(str(tmp_path))
    assert got["train_images"].shape == (20, 28, 28)
    assert got["test_images"].shape == (5, 28, 28)
    assert got["train_labels"].shape == (20,) and got["test_labels"].shape == (5,)
    assert_arrays_equal(got, want)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("marker", [" ", "*"], ids=["text", "binary"])
def test_load_idx_dir_sha256sums_correct(tmp_path, gz, marker, idx_bytes, write_dataset):
    want = write_dataset(tmp_path, gz=gz)
    write_sums(tmp_path, {stem: sha256(idx_bytes(want[key])).upper() if key == "test_labels"
                          else sha256(idx_bytes(want[key])) for key, stem in NAMES.items()},
               marker)
    assert_arrays_equal(data.load_idx_dir(str(tmp_path)), want)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("bad", STEMS)
def test_load_idx_dir_sha256sums_mismatch(tmp_path, gz, bad, idx_bytes, write_dataset):
    want = write_dataset(tmp_path, gz=gz)
    sums = {stem: sha256(idx_bytes(want[key])) for key, stem in NAMES.items()}
    sums[bad] = sha256(b"something else")
    write_sums(tmp_path, sums)
    with pytest.raises(DataError, match="SHA-256") as e:
        data.load_idx_dir(str(tmp_path))
    assert bad in str(e.value)


def test_load_idx_dir_sha256sums_partial_list(tmp_path, idx_bytes, write_dataset):
    """A SHA256SUMS that leaves files out is refused, naming them."""
    want = write_dataset(tmp_path)
    write_sums(tmp_path, {NAMES["test_images"]: sha256(idx_bytes(want["test_images"]))})
    with pytest.raises(DataError, match="lists no SHA-256") as e:
        data.load_idx_dir(str(tmp_path))
    assert NAMES["train_images"] in str(e.value) and NAMES["test_images"] not in str(e.value)


def test_load_idx_dir_sha256sums_of_gz_files(tmp_path, idx_bytes, write_dataset):
    """`sha256sum *.gz > SHA256SUMS` lists hashes of the compressed files under .gz names."""
    want = write_dataset(tmp_path, gz=True)
    write_sums(tmp_path, {stem + ".gz": sha256((tmp_path / (stem + ".gz")).read_bytes())
                          for stem in STEMS})
    assert_arrays_equal(data.load_idx_dir(str(tmp_path)), want)
    (tmp_path / (STEMS[1] + ".gz")).write_bytes(gzip.compress(idx_bytes(
        (want["train_labels"] + 1) % 10)))  # a different, still valid file
    with pytest.raises(DataError, match="SHA-256") as e:
        data.load_idx_dir(str(tmp_path))
    assert STEMS[1] in str(e.value)


def test_load_idx_dir_nonexistent(tmp_path):
    with pytest.raises(DataError, match="does not exist") as e:
        data.load_idx_dir(str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in str(e.value)


@pytest.mark.parametrize("missing", STEMS)
def test_load_idx_dir_missing_file(tmp_path, missing, write_dataset):
    write_dataset(tmp_path)
    (tmp_path / (missing + ".gz")).unlink()
    with pytest.raises(DataError, match="missing") as e:
        data.load_idx_dir(str(tmp_path))
    assert missing in str(e.value)


@pytest.mark.parametrize("part", ["train", "test"])
def test_load_idx_dir_count_mismatch(tmp_path, part, write_dataset):
    arrays = fake_arrays()
    arrays[f"{part}_labels"] = arrays[f"{part}_labels"][:-1]
    write_dataset(tmp_path, arrays)
    n = len(arrays[f"{part}_images"])
    with pytest.raises(DataError, match=f"{part} has {n} images but {n - 1} labels"):
        data.load_idx_dir(str(tmp_path))


@pytest.mark.parametrize("part", ["train", "test"])
def test_load_idx_dir_label_above_9(tmp_path, part, write_dataset):
    arrays = fake_arrays()
    arrays[f"{part}_labels"] = arrays[f"{part}_labels"].copy()
    arrays[f"{part}_labels"][2] = 10
    write_dataset(tmp_path, arrays)
    with pytest.raises(DataError, match="above 9"):
        data.load_idx_dir(str(tmp_path))


def test_load_idx_dir_label_9_is_fine(tmp_path, write_dataset):
    arrays = fake_arrays()
    arrays["train_labels"] = np.full(20, 9, np.uint8)
    write_dataset(tmp_path, arrays)
    assert_arrays_equal(data.load_idx_dir(str(tmp_path)), arrays)


@pytest.mark.parametrize("key,bad", [
    ("train_images", np.zeros((20, 27, 28), np.uint8)),
    ("test_images", np.zeros((5, 28, 27), np.uint8)),
    ("train_images", np.zeros((20, 784), np.uint8)),
    ("test_images", np.zeros((5, 28, 28, 1), np.uint8)),
    ("train_labels", np.zeros((20, 1), np.uint8)),
    ("test_labels", np.zeros((5, 28, 28), np.uint8)),
], ids=["27x28", "28x27", "flat", "4d", "labels-2d", "labels-are-images"])
def test_load_idx_dir_wrong_dims(tmp_path, key, bad, write_dataset):
    arrays = fake_arrays()
    arrays[key] = bad
    write_dataset(tmp_path, arrays)
    with pytest.raises(DataError, match="shape") as e:
        data.load_idx_dir(str(tmp_path))
    assert NAMES[key] in str(e.value)


def test_load_idx_dir_bad_idx_inside_gz(tmp_path, idx_bytes, write_dataset):
    want = fake_arrays()
    write_dataset(tmp_path, want, raw={"test_images": idx_bytes(want["test_images"])[:-5]})
    with pytest.raises(DataError, match="truncated") as e:
        data.load_idx_dir(str(tmp_path))
    assert NAMES["test_images"] in str(e.value)


@pytest.mark.parametrize("content", [
    b"this is not gzip at all" * 10,
    b"",
    gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05" + bytes(5))[:15],  # truncated stream
    corrupt_deflate(bytes(range(256)) * 64),  # valid header, mangled deflate data
], ids=["garbage", "empty", "truncated", "bad-deflate"])
def test_load_idx_dir_corrupt_gz(tmp_path, content, write_dataset):
    write_dataset(tmp_path)
    (tmp_path / (NAMES["train_labels"] + ".gz")).write_bytes(content)
    with pytest.raises(DataError) as e:
        data.load_idx_dir(str(tmp_path))
    assert NAMES["train_labels"] in str(e.value)


# ---------------------------------------------------------------------------------------
# split.

def encode_index(n: int, offset: int = 0) -> np.ndarray:
    """(n, 28, 28) zeros with each image's index (plus offset) in its first three pixels."""
    images = np.zeros((n, 28, 28), np.uint8)
    i = np.arange(n) + offset
    images[:, 0, 0], images[:, 0, 1], images[:, 0, 2] = i % 256, i // 256 % 256, i // 65536
    return images


def decode_index(images: np.ndarray) -> np.ndarray:
    px = images[:, 0, :3].astype(np.int64)
    return px[:, 0] + 256 * px[:, 1] + 65536 * px[:, 2]


@pytest.fixture(scope="module")
def full_arrays():
    return {
        "train_images": encode_index(60_000),
        "train_labels": (np.arange(60_000) * 7 % 10).astype(np.uint8),
        "test_images": encode_index(7, offset=100_000),
        "test_labels": np.arange(7, dtype=np.uint8),
    }


@pytest.mark.parametrize("train_size,n", [(None, 50_000), (0, 50_000), (1, 1), (1000, 1000),
                                          (50_000, 50_000)])
def test_split_book_partition(full_arrays, train_size, n):
    ds = data.split(full_arrays, train_size, source="somewhere")
    assert ds.source == "somewhere"
    np.testing.assert_array_equal(decode_index(ds.train.images), np.arange(n))
    np.testing.assert_array_equal(decode_index(ds.validation.images), np.arange(50_000, 60_000))
    np.testing.assert_array_equal(decode_index(ds.test.images), np.arange(100_000, 100_007))
    np.testing.assert_array_equal(ds.train.labels, np.arange(n) * 7 % 10)
    np.testing.assert_array_equal(ds.validation.labels, np.arange(50_000, 60_000) * 7 % 10)
    np.testing.assert_array_equal(ds.test.labels, np.arange(7))
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (n, 10_000, 7)
    for s in (ds.train, ds.validation, ds.test):
        assert s.labels.dtype == np.int32
        assert s.images.dtype == np.uint8 and s.images.shape[1:] == (28, 28)
        assert s.images.flags.c_contiguous


@pytest.mark.parametrize("train_size,n", [(None, 50_000), (1000, 1000)])
def test_split_with_validation_trains_on_the_validation_images_too(full_arrays, train_size,
                                                                   n):
    """train_on_validation: the first n training images, then the 10,000 validation
    images; the validation and test splits are the book's as before."""
    ds = data.split(full_arrays, train_size, with_validation=True)
    want = np.concatenate([np.arange(n), np.arange(50_000, 60_000)])
    np.testing.assert_array_equal(decode_index(ds.train.images), want)
    np.testing.assert_array_equal(ds.train.labels, want * 7 % 10)
    np.testing.assert_array_equal(decode_index(ds.validation.images), np.arange(50_000, 60_000))
    np.testing.assert_array_equal(decode_index(ds.test.images), np.arange(100_000, 100_007))
    assert ds.train.images.flags.c_contiguous and ds.train.labels.dtype == np.int32


def test_split_ignores_training_images_past_60000(full_arrays):
    arrays = dict(full_arrays, train_images=encode_index(60_010),
                  train_labels=np.zeros(60_010, np.uint8))
    ds = data.split(arrays)
    np.testing.assert_array_equal(decode_index(ds.validation.images), np.arange(50_000, 60_000))


@pytest.mark.parametrize("train_size", [-1, 50_001, 60_000])
def test_split_train_size_out_of_range(full_arrays, train_size):
    with pytest.raises(DataError, match="train_size") as e:
        data.split(full_arrays, train_size)
    assert str(train_size) in str(e.value)


@pytest.mark.parametrize("n", [0, 20, 59_999])
def test_split_too_few_training_images(full_arrays, n):
    arrays = dict(full_arrays, train_images=full_arrays["train_images"][:n],
                  train_labels=full_arrays["train_labels"][:n])
    with pytest.raises(DataError, match="60000"):
        data.split(arrays)


# ---------------------------------------------------------------------------------------
# to_float.

def test_to_float_numpy():
    images = np.zeros((3, 28, 28), np.uint8)
    images[0], images[1, 5, 6], images[2, 27, 27] = 255, 128, 1
    out = data.to_float(images)
    assert out.shape == (3, 28, 28, 1) and out.dtype == np.float32
    assert out[0].min() == 1.0 and out[0].max() == 1.0
    assert out[1, 5, 6, 0] == np.float32(128 / 255) and out[1, 0, 0, 0] == 0.0
    assert out[2, 27, 27, 0] == np.float32(1 / 255)
    assert out.min() == 0.0 and out.max() == 1.0


def test_to_float_jax():
    jnp = pytest.importorskip("jax.numpy")
    out = data.to_float(jnp.asarray(np.array([[[0, 255]]], np.uint8)))
    assert out.shape == (1, 1, 2, 1) and out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out)[..., 0], [[[0.0, 1.0]]])


# ---------------------------------------------------------------------------------------
# download_idx against a local HTTP server serving the real .gz files.

def mirror_dir(tmp_path: Path, replace: dict[str, bytes] | None = None,
               omit: tuple = ()) -> Path:
    """A directory to serve: links to the real .gz files, some replaced or left out."""
    www = tmp_path / "www"
    www.mkdir()
    for name in GZ_NAMES:
        if name in omit:
            continue
        if replace and name in replace:
            (www / name).write_bytes(replace[name])
        else:
            (www / name).symlink_to(REAL_DIR / name)
    return www


def assert_verified(directory: Path):
    """Every file under a standard name is a complete, verified MNIST file; no temp files."""
    for name in leftovers(directory):
        assert name in GZ_NAMES, f"unexpected file {name} left in {directory}"
        raw = gzip.decompress((directory / name).read_bytes())
        assert sha256(raw) == data.KNOWN_SHA256[name[:-3]], name


@requires_real_gz
def test_download_idx_fetches_all_four(tmp_path, serve):
    server = serve(mirror_dir(tmp_path))
    target = tmp_path / "cache" / "nested"  # does not exist yet
    data.download_idx(str(target), server.url, timeout=10)
    assert leftovers(target) == GZ_NAMES
    assert sorted(server.requests) == sorted("/" + n for n in GZ_NAMES)
    assert_verified(target)
    arrays = data.load_idx_dir(str(target))
    assert arrays["train_images"].shape == (60_000, 28, 28)
    assert arrays["test_images"].shape == (10_000, 28, 28)
    assert arrays["train_labels"].shape == (60_000,) and arrays["test_labels"].shape == (10_000,)


@requires_real_gz
def test_download_idx_skips_files_present(tmp_path, serve):
    present = NAMES["train_images"] + ".gz"
    server = serve(mirror_dir(tmp_path, omit=(present,)))  # would 404 if asked for it
    target = tmp_path / "target"
    target.mkdir()
    (target / present).symlink_to(REAL_DIR / present)
    data.download_idx(str(target), server.url.rstrip("/"), timeout=10)  # no trailing slash
    assert sorted(server.requests) == sorted("/" + n for n in GZ_NAMES if n != present)
    assert leftovers(target) == GZ_NAMES


def _random_gzip():
    return gzip.compress(np.random.default_rng(3).integers(0, 256, 5000, np.uint8).tobytes())


@requires_real_gz
@pytest.mark.parametrize("bad", STEMS)
def test_download_idx_rejects_wrong_content(tmp_path, serve, bad):
    server = serve(mirror_dir(tmp_path, replace={bad + ".gz": _random_gzip()}))
    target = tmp_path / "target"
    with pytest.raises(DataError, match="SHA-256") as e:
        data.download_idx(str(target), server.url, timeout=10)
    assert server.url + bad + ".gz" in str(e.value)
    assert bad + ".gz" not in leftovers(target)
    assert not any(n.startswith(".download-") for n in leftovers(target))
    assert_verified(target)


@requires_real_gz
@pytest.mark.parametrize("content", [
    b"<html>not a gzip file</html>",
    b"",
    corrupt_deflate(bytes(range(256)) * 64),
    gzip.compress(bytes(range(256)) * 64)[:100],
], ids=["not-gzip", "empty", "bad-deflate", "truncated"])
def test_download_idx_rejects_unreadable_content(tmp_path, serve, content):
    bad = NAMES["train_labels"]
    server = serve(mirror_dir(tmp_path, replace={bad + ".gz": content}))
    target = tmp_path / "target"
    with pytest.raises(DataError):
        data.download_idx(str(target), server.url, timeout=10)
    assert bad + ".gz" not in leftovers(target)
    assert not any(n.startswith(".download-") for n in leftovers(target))
    assert_verified(target)


def test_download_idx_404(tmp_path, serve):
    www = tmp_path / "www"
    www.mkdir()
    server = serve(www)
    target = tmp_path / "target"
    with pytest.raises(DataError) as e:
        data.download_idx(str(target), server.url, timeout=10)
    assert server.url + NAMES["train_images"] + ".gz" in str(e.value)
    assert "404" in str(e.value)
    assert leftovers(target) == []


def test_download_idx_connection_refused(tmp_path, closed_port_url):
    target = tmp_path / "target"
    with pytest.raises(DataError, match="cannot download") as e:
        data.download_idx(str(target), closed_port_url, timeout=5)
    assert closed_port_url in str(e.value)
    assert leftovers(target) == []


# ---------------------------------------------------------------------------------------
# load_arrays: where the data comes from.

@pytest.mark.parametrize("source", ["idx", "auto"])
def test_load_arrays_uses_mnist_data_dir(monkeypatch, dataset_dir, source):
    directory, want = dataset_dir
    monkeypatch.setattr(data, "check_identity", lambda *a: None)   # noise, not MNIST
    monkeypatch.setenv("MNIST_DATA_DIR", str(directory))
    arrays, where = data.load_arrays(source, download=False)
    assert_arrays_equal(arrays, want)
    assert where == f"idx:{os.path.abspath(directory)}"


def test_load_arrays_precedence(monkeypatch, tmp_path, isolated_env, write_dataset):
    monkeypatch.setattr(data, "check_identity", lambda *a: None)   # noise, not MNIST
    explicit = write_dataset(tmp_path / "explicit", fake_arrays(seed=1))
    env = write_dataset(tmp_path / "env", fake_arrays(seed=2))
    cache_dir = isolated_env / "mnist_cnn" / "mnist"
    cache = write_dataset(cache_dir, fake_arrays(seed=3), gz=False)

    arrays, where = data.load_arrays("idx", download=False)
    assert_arrays_equal(arrays, cache)
    assert where == f"idx:{cache_dir}"

    monkeypatch.setenv("MNIST_DATA_DIR", str(tmp_path / "env"))
    arrays, where = data.load_arrays("idx", download=False)
    assert_arrays_equal(arrays, env)

    for source in ("idx", "auto"):
        arrays, where = data.load_arrays(source, str(tmp_path / "explicit"), download=False)
        assert_arrays_equal(arrays, explicit)
        assert where == f"idx:{tmp_path / 'explicit'}"


def test_load_arrays_explicit_dir_missing(monkeypatch, dataset_dir, tmp_path):
    monkeypatch.setenv("MNIST_DATA_DIR", str(dataset_dir[0]))  # must not be used instead
    with pytest.raises(DataError, match="does not exist") as e:
        data.load_arrays("idx", str(tmp_path / "nope"), download=False)
    assert str(tmp_path / "nope") in str(e.value)


def test_load_arrays_explicit_dir_incomplete(tmp_path, write_dataset):
    write_dataset(tmp_path / "partial")
    (tmp_path / "partial" / (NAMES["test_labels"] + ".gz")).unlink()
    with pytest.raises(DataError, match="missing") as e:
        data.load_arrays("idx", str(tmp_path / "partial"), download=False)
    assert NAMES["test_labels"] in str(e.value)


def test_load_arrays_explicit_dir_invalid_not_skipped(tmp_path, write_dataset):
    arrays = fake_arrays()
    arrays["test_labels"] = arrays["test_labels"] + 10
    write_dataset(tmp_path / "bad", arrays)
    with pytest.raises(DataError, match="above 9"):
        data.load_arrays("auto", str(tmp_path / "bad"), download=False)


@pytest.mark.parametrize("source", ["idx", "auto"])
def test_load_arrays_nothing_found(monkeypatch, tmp_path, isolated_env, tfds_isolated, source):
    empty_env = tmp_path / "env-empty"
    empty_env.mkdir()
    monkeypatch.setenv("MNIST_DATA_DIR", str(empty_env))
    with pytest.raises(DataError, match="not found") as e:
        data.load_arrays(source, download=False)
    msg = str(e.value)
    assert str(empty_env) in msg
    assert str(isolated_env / "mnist_cnn" / "mnist") in msg
    assert "MNIST_DATA_DIR" in msg and "--config.data_dir" in msg


def test_load_arrays_auto_explicit_empty_dir_listed(tmp_path, tfds_isolated):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="missing") as e:
        data.load_arrays("auto", str(empty), download=False)
    assert str(empty) in str(e.value) and all(s in str(e.value) for s in STEMS)


@pytest.mark.parametrize("via_env", [False, True], ids=["mirror-arg", "MNIST_MIRROR"])
def test_load_arrays_download_fails(monkeypatch, isolated_env, closed_port_url, via_env):
    if via_env:
        monkeypatch.setenv("MNIST_MIRROR", closed_port_url)
    mirror = None if via_env else closed_port_url
    with pytest.raises(DataError, match="download failed") as e:
        data.load_arrays("idx", download=True, mirror=mirror)
    msg = str(e.value)
    assert closed_port_url in msg and "MNIST_DATA_DIR" in msg
    cache = isolated_env / "mnist_cnn" / "mnist"
    assert leftovers(cache) == []


@requires_real_gz
def test_load_arrays_downloads_into_cache(monkeypatch, tmp_path, isolated_env, serve):
    server = serve(mirror_dir(tmp_path))
    monkeypatch.setenv("MNIST_MIRROR", server.url)
    arrays, where = data.load_arrays("idx", download=True)
    cache = isolated_env / "mnist_cnn" / "mnist"
    assert where == f"idx:{cache} (downloaded)"
    assert leftovers(cache) == GZ_NAMES
    assert arrays["train_images"].shape == (60_000, 28, 28)
    assert len(server.requests) == 4
    # A second call finds the cache and downloads nothing.
    arrays, where = data.load_arrays("idx", download=True)
    assert where == f"idx:{cache}" and len(server.requests) == 4


@pytest.mark.parametrize("source", ["", "IDX", "mnist", None])
def test_load_arrays_unknown_source(source):
    with pytest.raises(DataError, match="unknown data source"):
        data.load_arrays(source, download=False)


# ---------------------------------------------------------------------------------------
# load_tfds.

def test_load_tfds_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import raises
    with pytest.raises(DataError, match="tensorflow-datasets"):
        data.load_tfds()


def test_load_tfds_nothing_prepared(tfds_isolated):
    if tfds_isolated is None:
        pytest.skip("tensorflow-datasets not installed")
    with pytest.raises(DataError, match="tfds build mnist"):
        data.load_tfds(None)
    with pytest.raises(DataError, match="tfds build mnist"):
        data.load_tfds(str(tfds_isolated))


def test_load_tfds_mock(tfds_isolated):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        arrays = data.load_tfds()
        via_load_arrays, where = data.load_arrays("tfds", download=False)
    assert set(arrays) == set(NAMES)
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        assert images.shape == (12, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (12,)
        assert labels.min() >= 0 and labels.max() <= 9
    assert set(via_load_arrays) == set(NAMES) and where == "tfds:default"


# ---------------------------------------------------------------------------------------
# The real MNIST files.

@pytest.fixture(scope="module")
def real_arrays():
    return data.load_idx_dir(str(REAL_DIR))


@requires_real
def test_real_mnist_shapes(real_arrays):
    assert real_arrays["train_images"].shape == (60_000, 28, 28)
    assert real_arrays["test_images"].shape == (10_000, 28, 28)
    assert real_arrays["train_labels"].shape == (60_000,)
    assert real_arrays["test_labels"].shape == (10_000,)
    assert all(a.dtype == np.uint8 for a in real_arrays.values())
    assert real_arrays["train_images"].max() == 255 and real_arrays["train_images"].min() == 0


@requires_real
def test_real_mnist_label_counts(real_arrays):
    assert np.bincount(real_arrays["train_labels"], minlength=10).tolist() == REAL_TRAIN_COUNTS
    assert np.bincount(real_arrays["test_labels"], minlength=10).tolist() == REAL_TEST_COUNTS


@requires_real
def test_real_mnist_split(real_arrays):
    ds = data.split(real_arrays, 1000)
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (1000, 10_000, 10_000)
    np.testing.assert_array_equal(ds.validation.images, real_arrays["train_images"][50_000:])
    np.testing.assert_array_equal(ds.train.labels, real_arrays["train_labels"][:1000])


@requires_real
def test_load_end_to_end(monkeypatch):
    monkeypatch.setenv("MNIST_DATA_DIR", str(REAL_DIR))
    ds = data.load("idx", None, train_size=100, download=False)
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (100, 10_000, 10_000)
    assert ds.source == f"idx:{os.path.abspath(REAL_DIR)}"
    assert ds.train.labels.dtype == np.int32
