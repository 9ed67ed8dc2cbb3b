"""Which dataset a run reads, and that it is the one asked for: config.dataset, the
table of known datasets (TFDS names, mirrors, SHA-256s), identity by content, an
explicit data_dir that binds, SHA256SUMS in both formats, bounded IDX headers, and the
dataset and SHA-256s every run records (summary.json, checkpoints) and checks on
resume and in a committee.

Synthetic IDX files stand in for the known datasets by registering their hashes in the
table (monkeypatched); the real MNIST and Fashion-MNIST files are used where present
($MNIST_DATA_DIR or ../shared/data/mnist; /usr/share/datasets/fashion-mnist) and the
tests that need them skip otherwise. Expected hashes are computed here with hashlib,
the known ones written out literally.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import json
import os
import shutil
import struct
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest

from mnist_cnn import config as config_lib
from mnist_cnn import data

STEMS = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte"]
KEYS = dict(zip(STEMS, ["train_images", "train_labels", "test_images", "test_labels"]))
MNIST_SHA256 = {
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
}
FASHION_SHA256 = {
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
}
MIRRORS = {"mnist": "https://storage.googleapis.com/cvdf-datasets/mnist/",
           "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
           "kmnist": "http://codh.rois.ac.jp/kmnist/dataset/kmnist/"}

REAL_MNIST = Path(os.environ.get("MNIST_DATA_DIR") or "/work/shared/data/mnist")
FASHION = Path("/usr/share/datasets/fashion-mnist")


def _has_four(d: Path) -> bool:
    return all((d / s).is_file() or (d / (s + ".gz")).is_file() for s in STEMS)


requires_mnist = pytest.mark.skipif(not _has_four(REAL_MNIST),
                                    reason=f"real MNIST not in {REAL_MNIST}")
requires_fashion = pytest.mark.skipif(not _has_four(FASHION),
                                      reason=f"Fashion-MNIST not in {FASHION}")


# ---- helpers: synthetic IDX files, hashes, a fake known dataset ----

def idx(arr) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return (struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
            + arr.tobytes())


def sha(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def write_four(d: Path, seed=0, gz=False, n_train=20, n_test=5) -> dict:
    """The four IDX files of noise in d; returns {stem: SHA-256 of the decompressed file}."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test)}
    out = {}
    for stem, arr in arrays.items():
        raw = idx(arr)
        out[stem] = sha(raw)
        if gz:
            (d / (stem + ".gz")).write_bytes(gzip.compress(raw, mtime=0))
        else:
            (d / stem).write_bytes(raw)
    return out


def gz_hashes(d: Path) -> dict:
    return {s: sha((d / (s + ".gz")).read_bytes()) for s in STEMS}


def register(monkeypatch, name, idx_sha256=None, gz_sha256=None, mirror=None):
    """Makes the known dataset `name` the one with these hashes (and mirror)."""
    known = data.DATASETS[name]
    monkeypatch.setitem(data.DATASETS, name, dataclasses.replace(
        known, idx_sha256=dict(idx_sha256 or {}), gz_sha256=dict(gz_sha256 or {}),
        mirror=mirror or known.mirror))


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No test sees the user's MNIST_DATA_DIR, mirror or cache."""
    monkeypatch.delenv("MNIST_DATA_DIR", raising=False)
    monkeypatch.delenv("MNIST_MIRROR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path / "xdg-cache"


def no_fallback(monkeypatch):
    """Fails the test if the loader reaches TFDS or a download."""
    def fail(*a, **k):
        raise AssertionError("reached a fallback (TFDS or download)")
    monkeypatch.setattr(data, "load_tfds", fail)
    monkeypatch.setattr(data, "download_idx", fail)


@pytest.fixture
def serve():
    """serve(directory) -> (url, requests): an HTTP server on 127.0.0.1."""
    running = []

    def start(directory: Path):
        requests = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(directory)))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        running.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/", requests
    yield start
    for server in running:
        server.shutdown()
        server.server_close()


# ---- the table of known datasets and the config field ----

def test_known_datasets_table():
    assert set(data.DATASETS) == {"mnist", "fashion_mnist", "kmnist"}
    assert config_lib.DATASETS == ("mnist", "fashion_mnist", "kmnist", "custom")
    for name, known in data.DATASETS.items():
        assert known.tfds_name == name
        assert known.mirror == MIRRORS[name]
        assert set(known.gz_sha256) == set(STEMS)
    assert data.DATASETS["mnist"].idx_sha256 == MNIST_SHA256
    assert data.DATASETS["fashion_mnist"].idx_sha256 == FASHION_SHA256
    assert data.DATASETS["kmnist"].idx_sha256 == {}
    assert data.KNOWN_SHA256 == MNIST_SHA256


def test_official_gz_hashes_are_tensorflow_datasets():
    """The .gz SHA-256s are those tensorflow-datasets records for the same URLs."""
    tfds = pytest.importorskip("tensorflow_datasets")
    folder = os.path.join(os.path.dirname(tfds.__file__), "url_checksums")
    for name, known in data.DATASETS.items():
        with open(os.path.join(folder, f"{name}.txt")) as f:
            rows = [line.split("\t") for line in f if line.strip()]
        want = {url: digest for url, _, digest, _ in rows}
        got = {known.mirror + stem + ".gz": h for stem, h in known.gz_sha256.items()}
        assert got == want, name


def test_config_dataset_field_and_its_rules():
    c = config_lib.base_config()
    assert c.dataset == "mnist"
    good = lambda **f: config_lib.validate(_valid(**f))
    for name in ("mnist", "fashion_mnist", "kmnist"):
        good(dataset=name)
    good(dataset="custom", data_dir="/some/dir")
    with pytest.raises(config_lib.ConfigError, match="config.dataset must be one of"):
        good(dataset="emnist")
    with pytest.raises(config_lib.ConfigError, match="config.dataset=custom"):
        good(dataset="custom")
    with pytest.raises(config_lib.ConfigError, match="config.dataset=custom"):
        good(dataset="custom", data_dir="/d", data_source="tfds")


def _valid(**fields):
    c = config_lib.base_config()
    c.layers = (config_lib.conv_pool(2, activation="relu"), config_lib.softmax(10))
    c.train_size = 100
    c.update(fields)
    return c


# ---- identity by content ----

def test_directory_of_the_dataset_asked_for_loads(monkeypatch, tmp_path):
    d = tmp_path / "a"
    hashes = write_four(d, seed=1)
    register(monkeypatch, "mnist", idx_sha256=hashes)
    arrays, where = data.load_arrays("idx", str(d), download=False)   # the default: mnist
    assert arrays["train_images"].shape == (20, 28, 28) and where == f"idx:{d}"


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_directory_of_another_known_dataset_is_refused_naming_it(monkeypatch, tmp_path, gz):
    d = tmp_path / "fashion"
    hashes = write_four(d, seed=2, gz=gz)
    register(monkeypatch, "mnist", idx_sha256=write_four(tmp_path / "m", seed=1))
    register(monkeypatch, "fashion_mnist", idx_sha256=hashes)
    for source in ("idx", "auto"):
        with pytest.raises(data.DataError) as e:
            data.load_arrays(source, str(d), download=False, dataset="mnist")
        assert str(e.value) == (f"{d} holds Fashion-MNIST's files, not MNIST's: pass "
                                f"--config.dataset=fashion_mnist")
    arrays, _ = data.load_arrays("idx", str(d), download=False, dataset="fashion_mnist")
    assert len(arrays["test_labels"]) == 5


def test_unknown_files_are_refused_naming_them(monkeypatch, tmp_path):
    known = write_four(tmp_path / "m", seed=1)
    register(monkeypatch, "mnist", idx_sha256=known)
    d = tmp_path / "other"
    shutil.copytree(tmp_path / "m", d)
    (d / "t10k-labels-idx1-ubyte").write_bytes(idx(np.arange(5) % 10))   # still valid
    with pytest.raises(data.DataError) as e:
        data.load_arrays("idx", str(d), download=False)
    msg = str(e.value)
    assert "t10k-labels-idx1-ubyte" in msg and "not MNIST's" in msg
    assert "--config.dataset=custom" in msg
    assert not any(s in msg for s in STEMS[:3]), msg
    write_four(d, seed=9)   # every file other
    with pytest.raises(data.DataError) as e:
        data.load_arrays("auto", str(d), download=False)
    assert all(s in str(e.value) for s in STEMS)


def test_custom_takes_any_valid_directory_and_only_when_asked(monkeypatch, tmp_path):
    no_fallback(monkeypatch)
    d = tmp_path / "mine"
    write_four(d, seed=3)
    with pytest.raises(data.DataError, match="--config.dataset=custom"):
        data.load_arrays("auto", str(d), download=False)
    arrays, where = data.load_arrays("auto", str(d), download=True, dataset="custom")
    assert arrays["train_images"].shape == (20, 28, 28) and where == f"idx:{d}"
    with pytest.raises(data.DataError, match="custom"):   # no directory: nothing to read
        data.load_arrays("auto", None, download=True, dataset="custom")
    (d / "t10k-labels-idx1-ubyte").write_bytes(idx(np.full(5, 11)))  # still checked
    with pytest.raises(data.DataError, match="above 9"):
        data.load_arrays("idx", str(d), download=False, dataset="custom")


def test_known_by_its_official_gz_only(monkeypatch, tmp_path):
    """A dataset whose decompressed SHA-256s are not recorded (KMNIST) is recognised
    from its original .gz files; decompressed, it is custom only, and the error says
    why."""
    d = tmp_path / "k"
    write_four(d, seed=4, gz=True)
    register(monkeypatch, "kmnist", gz_sha256=gz_hashes(d))
    data.load_arrays("idx", str(d), download=False, dataset="kmnist")
    with pytest.raises(data.DataError, match="holds KMNIST's files, not MNIST's"):
        data.load_arrays("idx", str(d), download=False, dataset="mnist")
    plain = tmp_path / "plain"
    write_four(plain, seed=4)
    with pytest.raises(data.DataError) as e:
        data.load_arrays("idx", str(plain), download=False, dataset="kmnist")
    assert ".gz" in str(e.value) and "--config.dataset=custom" in str(e.value)
    data.load_arrays("idx", str(plain), download=False, dataset="custom")


def test_tfds_reads_the_dataset_tfds_name(monkeypatch):
    asked = []

    def data_source(name, split, data_dir=None, download=False):
        asked.append(name)
        n = 3
        return [dict(image=np.full((28, 28, 1), i, np.uint8), label=i) for i in range(n)]
    monkeypatch.setitem(sys.modules, "tensorflow_datasets",
                        types.SimpleNamespace(data_source=data_source))
    arrays, where = data.load_arrays("tfds", None, download=False, dataset="fashion_mnist")
    assert asked == ["fashion_mnist", "fashion_mnist"] and where == "tfds:default"
    assert arrays["train_images"].shape == (3, 28, 28)


def test_arrays_hash_as_the_files_they_were_read_from(tmp_path):
    """What a TFDS-loaded run records: its arrays' SHA-256 as IDX files, which for
    arrays read from files is the files' own."""
    hashes = write_four(tmp_path, seed=8, gz=True)
    assert data.arrays_sha256(data.load_idx_dir(str(tmp_path))) == hashes


def test_cache_and_search_path_are_per_dataset(monkeypatch, isolated):
    assert data.default_cache_dir() == str(isolated / "mnist_cnn" / "mnist")
    assert data.default_cache_dir("fashion_mnist") == str(
        isolated / "mnist_cnn" / "fashion_mnist")
    monkeypatch.setenv("MNIST_DATA_DIR", "/env/mnist")
    assert data.candidate_dirs(None) == ["/env/mnist", str(isolated / "mnist_cnn" / "mnist")]
    assert data.candidate_dirs(None, "kmnist") == [str(isolated / "mnist_cnn" / "kmnist")]


def test_download_uses_the_dataset_mirror_verifies_and_caches_per_dataset(
        monkeypatch, tmp_path, isolated, serve):
    www = tmp_path / "www"
    write_four(www, seed=5, gz=True)
    url, requests = serve(www)
    register(monkeypatch, "fashion_mnist", gz_sha256=gz_hashes(www), mirror=url)
    monkeypatch.setattr(data, "load_tfds", lambda *a, **k: (_ for _ in ()).throw(
        data.DataError("no tfds")))
    arrays, where = data.load_arrays("auto", None, download=True, dataset="fashion_mnist")
    cache = isolated / "mnist_cnn" / "fashion_mnist"
    assert where == f"idx:{cache} (downloaded)"
    assert sorted(requests) == sorted("/" + s + ".gz" for s in STEMS)
    assert sorted(os.listdir(cache)) == sorted(s + ".gz" for s in STEMS)
    # A mirror serving other bytes (even a valid IDX file) is refused; nothing is kept.
    (www / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx(np.zeros(5))))
    target = tmp_path / "t"
    with pytest.raises(data.DataError, match="SHA-256") as e:
        data.download_idx(str(target), url, timeout=10, dataset="fashion_mnist")
    assert "t10k-labels-idx1-ubyte" in str(e.value)
    assert sorted(os.listdir(target)) == sorted(s + ".gz" for s in STEMS[:3])


# ---- an explicit data_dir binds ----

@pytest.mark.parametrize("source", ["auto", "idx"])
def test_explicit_data_dir_missing_or_incomplete_is_an_error(monkeypatch, tmp_path, source):
    good = tmp_path / "good"
    register(monkeypatch, "mnist", idx_sha256=write_four(good, seed=1))
    monkeypatch.setenv("MNIST_DATA_DIR", str(good))     # must not be used instead
    no_fallback(monkeypatch)
    with pytest.raises(data.DataError, match="does not exist") as e:
        data.load_arrays(source, str(tmp_path / "nope"), download=True)
    assert str(tmp_path / "nope") in str(e.value)
    partial = tmp_path / "partial"
    write_four(partial, seed=1)
    (partial / STEMS[1]).unlink()
    (partial / STEMS[3]).unlink()
    with pytest.raises(data.DataError, match="missing") as e:
        data.load_arrays(source, str(partial), download=True)
    assert STEMS[1] in str(e.value) and STEMS[3] in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(data.DataError, match="missing") as e:
        data.load_arrays(source, str(empty), download=True)
    assert all(s in str(e.value) for s in STEMS)


# ---- SHA256SUMS ----

@pytest.mark.parametrize("style", ["gnu", "gnu-binary", "bsd"])
def test_sha256sums_formats_are_checked(tmp_path, style):
    hashes = write_four(tmp_path, seed=6)
    line = {"gnu": "{h}  {n}", "gnu-binary": "{h} *{n}", "bsd": "SHA256 ({n}) = {h}"}[style]
    write = lambda sums: (tmp_path / "SHA256SUMS").write_text(
        "".join(line.format(h=h, n=n) + "\n" for n, h in sums.items()))
    write(hashes)
    data.load_idx_dir(str(tmp_path))
    write({**hashes, STEMS[2]: "0" * 64})
    with pytest.raises(data.DataError, match="SHA-256 mismatch") as e:
        data.load_idx_dir(str(tmp_path))
    assert STEMS[2] in str(e.value)


def test_sha256sums_unparsable_line_is_an_error(tmp_path):
    hashes = write_four(tmp_path, seed=6)
    text = "".join(f"{h}  {n}\n" for n, h in hashes.items())
    (tmp_path / "SHA256SUMS").write_text(text + "\n" + "md5 of something: 1234\n")
    with pytest.raises(data.DataError) as e:
        data.load_idx_dir(str(tmp_path))
    assert "SHA256SUMS" in str(e.value) and "line 6" in str(e.value)


def test_sha256sums_must_list_every_file(tmp_path):
    hashes = write_four(tmp_path, seed=6)
    (tmp_path / "SHA256SUMS").write_text(
        "".join(f"{h}  {n}\n" for n, h in hashes.items() if n != STEMS[0]))
    with pytest.raises(data.DataError, match="SHA256SUMS") as e:
        data.load_idx_dir(str(tmp_path))
    assert STEMS[0] in str(e.value) and STEMS[1] not in str(e.value)


# ---- IDX headers whose sizes cannot be real ----

@pytest.mark.parametrize("dims", [
    (65536, 65536, 65536), (0, 2**32 - 1, 2**32 - 1), (2**21, 2**21, 2**21),
    (0, 65536, 65536, 65536, 65536), (2**32 - 1,) * 4, (1, 2**25, 1)])
def test_idx_header_of_impossible_size_is_a_data_error(dims):
    raw = struct.pack(">HBB", 0, 8, len(dims)) + struct.pack(f">{len(dims)}I", *dims)
    with pytest.raises(data.DataError) as e:
        data.parse_idx(raw + b"\x00" * 16, "f")
    assert "-" not in str(e.value).split(":", 1)[1].replace("re-download", "")


def test_idx_file_of_impossible_size_is_one_line_through_the_loader(tmp_path):
    write_four(tmp_path, seed=7)
    (tmp_path / STEMS[3]).write_bytes(struct.pack(">HBBIII", 0, 8, 3, 0, 2**32 - 1, 2**32 - 1))
    with pytest.raises(data.DataError, match=STEMS[3]):
        data.load_idx_dir(str(tmp_path))


# ---- the record: summary.json, checkpoints, resume, committees ----

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run on a custom dataset of 60,000 blank training images: (workdir, data
    directory, the files' SHA-256s)."""
    from mnist_cnn import driver
    root = tmp_path_factory.mktemp("dataset_run")
    d = root / "data"
    d.mkdir()
    hashes = {}
    for stem, arr in [(STEMS[0], np.zeros((60000, 28, 28))), (STEMS[1], np.zeros(60000)),
                      (STEMS[2], np.zeros((50, 28, 28))), (STEMS[3], np.arange(50) % 10)]:
        raw = idx(arr)
        (d / stem).write_bytes(raw)
        hashes[stem] = sha(raw)
    c = config_lib.base_config()
    c.layers = (config_lib.conv_pool(2, kernel=5, activation="relu"),
                config_lib.fc(8, dropout=0.2), config_lib.softmax(10))
    c.update(batch_size=4, learning_rate=0.05, init="modern", dataset="custom",
             data_dir=str(d), data_source="idx", train_size=100, num_epochs=1, plots=False)
    w = root / "run"
    lines = []
    driver.run(c, str(w), log=lines.append)
    return w, d, hashes, c, lines


def _meta(w: Path) -> dict:
    steps = sorted(int(s) for s in os.listdir(w / "checkpoints") if s.isdigit())
    return json.loads((w / "checkpoints" / str(steps[-1]) / "meta" / "metadata").read_text())


def _snapshot(w: Path) -> dict:
    return {str(p.relative_to(w)): p.read_bytes() for p in sorted(w.rglob("*")) if p.is_file()}


def test_summary_and_checkpoint_record_the_dataset(trained):
    w, d, hashes, _, lines = trained
    summary = json.loads((w / "summary.json").read_text())
    assert summary["dataset"] == "custom" and summary["data_sha256"] == hashes
    meta = _meta(w)
    assert meta["dataset"] == "custom" and meta["data_sha256"] == hashes
    assert any(l.startswith("data: custom") for l in lines), lines


def test_resume_refuses_other_data(trained, tmp_path):
    from mnist_cnn import driver
    w0, d0, hashes, c, _ = trained
    w, d = tmp_path / "run", tmp_path / "data"
    shutil.copytree(w0, w)
    shutil.copytree(d0, d)
    (w / "summary.json").unlink()   # killed after the last checkpoint: resumes
    (d / STEMS[3]).write_bytes(idx((np.arange(50) + 1) % 10))
    before = _snapshot(w)
    with pytest.raises(driver.RunError) as e:
        driver.run(_with(c, data_dir=str(d)), str(w), log=lambda *a: None)
    msg = str(e.value)
    assert STEMS[3] in msg and hashes[STEMS[3]][:12] in msg and "other data" in msg
    assert _snapshot(w) == before
    # With the data it was trained on, it resumes and finishes.
    shutil.copy(d0 / STEMS[3], d / STEMS[3])
    summary = driver.run(_with(c, data_dir=str(d)), str(w), log=lambda *a: None)
    assert summary["data_sha256"] == hashes


def _with(c, **fields):
    c = c.copy_and_resolve_references()
    c.update(fields)
    return c


def test_a_record_without_the_data_fields_resumes_unchecked(synthetic_dataset):
    from mnist_cnn import driver
    ds = dataclasses.replace(synthetic_dataset(), dataset="mnist",
                             data_sha256=dict(MNIST_SHA256))
    assert driver.data_difference({"epoch": 1}, ds) == []
    assert driver.data_difference({"data_sha256": MNIST_SHA256, "dataset": "mnist"},
                                  ds) == []
    other = {**MNIST_SHA256, STEMS[0]: "0" * 64}
    assert driver.data_difference({"data_sha256": other, "dataset": "mnist"}, ds)


def test_committee_refuses_a_member_trained_on_other_data(trained, tmp_path):
    from mnist_cnn import committee
    w, _, _, _, _ = trained
    other = tmp_path / "other"
    shutil.copytree(w, other)
    summary = json.loads((other / "summary.json").read_text())
    summary["data_sha256"][STEMS[0]] = "0" * 64
    (other / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(committee.CommitteeError) as e:
        committee.vote_runs([str(w), str(other)], log=lambda *a: None)
    assert str(other) in str(e.value) and "other data" in str(e.value)
    # A member whose config names another dataset (no SHA-256s recorded): refused too.
    named = tmp_path / "named"
    shutil.copytree(w, named)
    cfg = json.loads((named / "config.json").read_text())
    cfg["dataset"] = "fashion_mnist"
    (named / "config.json").write_text(json.dumps(cfg))
    (named / "summary.json").unlink()
    with pytest.raises(committee.CommitteeError) as e:
        committee.vote_runs([str(w), str(named)], log=lambda *a: None)
    assert str(named) in str(e.value) and "fashion_mnist" in str(e.value)


# ---- the real files ----

@requires_fashion
def test_real_fashion_mnist_is_recognised_and_recorded():
    with pytest.raises(data.DataError) as e:
        data.load_arrays("idx", str(FASHION), download=False)
    assert str(e.value) == (f"{FASHION} holds Fashion-MNIST's files, not MNIST's: pass "
                            f"--config.dataset=fashion_mnist")
    ds = data.load("idx", str(FASHION), train_size=100, download=False,
                   dataset="fashion_mnist")
    assert ds.dataset == "fashion_mnist" and ds.data_sha256 == FASHION_SHA256
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (100, 10_000, 10_000)


@requires_mnist
def test_real_mnist_is_recognised_and_not_taken_for_fashion():
    ds = data.load("idx", str(REAL_MNIST), train_size=100, download=False)
    assert ds.dataset == "mnist" and ds.data_sha256 == MNIST_SHA256
    with pytest.raises(data.DataError, match="holds MNIST's files, not Fashion-MNIST's: "
                                             "pass --config.dataset=mnist"):
        data.load("idx", str(REAL_MNIST), download=False, dataset="fashion_mnist")


@requires_fashion
@pytest.mark.slow
def test_run_py_trains_on_fashion_mnist_and_refuses_it_as_mnist(tmp_path, run_py,
                                                                 assert_user_error):
    quick = ["--config.num_epochs=1", "--config.train_size=2000", "--config.plots=False"]
    proc = run_py("--config=experiments/dbl_conv_relu.py", f"--workdir={tmp_path}/m",
                  f"--config.data_dir={FASHION}", *quick)
    assert_user_error(proc, "holds Fashion-MNIST's files, not MNIST's",
                      "--config.dataset=fashion_mnist")
    assert not (tmp_path / "m").exists()
    proc = run_py("--config=experiments/dbl_conv_relu.py", f"--workdir={tmp_path}/f",
                  "--config.dataset=fashion_mnist", f"--config.data_dir={FASHION}", *quick)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "f" / "summary.json").read_text())
    assert summary["dataset"] == "fashion_mnist"
    assert summary["data_sha256"] == FASHION_SHA256
    assert summary["test_accuracy"] > 0.5   # one epoch on 2,000 images: well above chance
