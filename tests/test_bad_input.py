"""Bad input, tried systematically: every config field, malformed flags, damaged data,
unwritable run directories, and a fuzz test of the IDX reader. Each gives one clear
line, a non-zero exit, no traceback, and leaves earlier run directories untouched."""

import errno
import gzip
import os
import shutil
import struct
import subprocess
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnist_cnn import data

# (override, fragment the error line must contain)
CONFIG_CASES = [
    ("num_epochs=0", "num_epochs"), ("num_epochs=abc", "num_epochs"),
    ("num_epochs=1.5", "num_epochs"),
    ("batch_size=-3", "batch_size"), ("batch_size=x", "batch_size"),
    ("batch_size=200", "batch_size"),            # larger than train_size=100
    ("learning_rate=0", "learning_rate"), ("learning_rate=nan_", "learning_rate"),
    ("l2=-1", "l2"), ("l2=big", "l2"),
    ("momentum=1.0", "momentum"), ("momentum=-0.5", "momentum"),
    ("nesterov=perhaps", "nesterov"),
    ("schedule=linear", "schedule"),
    ("ema_decay=1.0", "ema_decay"), ("ema_decay=-0.1", "ema_decay"),
    ("ema_decay=slow", "ema_decay"),
    ("warmup_epochs=soon", "warmup_epochs"),
    ("eval_every=0", "eval_every must be positive"),
    ("width_norm=29", "width_norm must be in [0, 28]"), ("width_norm=-1", "width_norm"),
    ("width_norm=12.5", "width_norm"), ("deskew=perhaps", "deskew"),
    ("schedule=onecycle --config.warmup_epochs=60", "warmup_epochs"),
    ("seed=1.5", "seed"),
    ("seed=-1", "config.seed must be in [0, 2147483647]"),
    ("seed=9223372036854775808", "config.seed must be in [0, 2147483647]"),
    ("seed=2147483647 --config.num_members=2", "seeds up to 2147483648"),
    ("learning_rate=inf", "config.learning_rate must be a finite number"),
    ("l2=inf", "config.l2 must be a finite number"),
    ("warmup_epochs=nan", "config.warmup_epochs must be a finite number"),
    ("train_size=0", "train_size"), ("train_size=50001", "train_size"),
    ("data_source=s3", "data_source"),
    ("shuffle=sometimes", "shuffle"), ("plots=perhaps", "plots"),
    ("init=xavier", "init"),
    ("dropout_mode=spatial", "dropout_mode"),
    ("conv_impl=winograd", "conv_impl"),
    ("dtype=float8", "dtype"), ("grad=numeric", "grad"),
    ("grad=manual --config.dtype=bfloat16", "float32 only"),
    ("eval_batch_size=0", "eval_batch_size"),
    ("chunk_steps=0", "chunk_steps"),
    ("checkpoint_every_steps=-1", "checkpoint_every_steps"),
    ("keep_checkpoints=-1", "keep_checkpoints"),
    ("layers[0].kind=lstm", "kind"),
    ("layers[0].features=0", "features"),
    ("layers[0].kernel=0", "kernel"),
    ("layers[0].stride=-1", "stride"),
    ("layers[0].pool=median", "pool"),
    ("layers[0].pool_window=0", "pool_window"),
    ("layers[0].pool_stride=-2", "pool_stride"),
    ("layers[0].padding=FULL", "padding"),
    ("layers[0].activation=gelu", "activation"),
    ("layers[2].dropout=1.0", "dropout"),
    ("layers[3].dropout=-0.1", "dropout"),
    ("layers[2].kind=softmax", "softmax"),
    ("layers[1].kernel=13", "do not fit"),
    ("augment_shift=28", "augment_shift"), ("augment_shift=-1", "augment_shift"),
    ("augment_rotate=180", "augment_rotate"), ("augment_rotate=-5", "augment_rotate"),
    ("augment_scale=1.0", "augment_scale"), ("augment_scale=-0.1", "augment_scale"),
    ("augment_elastic=-1", "augment_elastic"), ("augment_elastic=500", "augment_elastic"),
    ("augment_elastic_sigma=0", "augment_elastic_sigma"),
    ("augment_elastic_sigma=abc", "augment_elastic_sigma"),
    ("num_members=0", "num_members"), ("num_runs=0", "num_runs"),
    ("vote=borda", "vote"),
    ("train_on_validation=maybe", "train_on_validation"),
    ("num_runs=2000000", "GiB"),                  # more runs than memory allows
]


@pytest.mark.parametrize("override,fragment", CONFIG_CASES)
def test_every_config_field_rejects_bad_values(tmp_path, override, fragment, run_py,
                                                assert_user_error):
    w = tmp_path / "w"
    proc = run_py("--config=experiments/dbl_conv_relu.py", f"--workdir={w}",
                  "--config.train_size=100", *f"--config.{override}".split(" "))
    assert_user_error(proc, fragment)
    assert not w.exists()


@pytest.mark.parametrize("args,fragment", [
    (["--config.learning_rate"], "learning_rate"),
    (["--config.=3"], "config"),
    (["--config.layers[9].features=3"], "layers"),
    (["--config.layers[0.features=3"], "layers"),
    (["--config.no_such=1"], "no_such"),
    (["--workdir"], "workdir"),
    (["--overwrite=maybe"], "overwrite"),
])
def test_malformed_flags(tmp_path, args, fragment, run_py, assert_user_error):
    extra = [] if args == ["--workdir"] else [f"--workdir={tmp_path}/w"]
    proc = run_py("--config=experiments/dbl_conv_relu.py", *extra, *args)
    assert_user_error(proc, fragment)


def test_ensemble_and_runs_together_refused(tmp_path, run_py, assert_user_error):
    assert_user_error(run_py("--config=experiments/dbl_conv_relu.py", f"--workdir={tmp_path}/w",
                             "--config.num_members=2", "--config.num_runs=2"), "cannot both")


def test_best_of_runs_with_validation_trained_on_refused(tmp_path, run_py, assert_user_error):
    """num_runs keeps the best-validation run: meaningless on trained-on validation."""
    assert_user_error(run_py("--config=experiments/dbl_conv_relu.py", f"--workdir={tmp_path}/w",
                             "--config.num_runs=2", "--config.train_on_validation=True"),
                      "train_on_validation", "num_runs")
    assert not (tmp_path / "w").exists()


def test_bad_config_variant_argument(tmp_path, run_py, assert_user_error):
    assert_user_error(run_py("--config=experiments/dbl_conv.py:softplus",
                             f"--workdir={tmp_path}/w"), "activation")
    assert_user_error(run_py("--config=experiments/modern.py:deep=1,rot=10",
                             f"--workdir={tmp_path}/w"),
                      "variant rot= only sets config fields: write "
                      "--config.augment_rotate=10 instead")
    assert not (tmp_path / "w").exists()


def test_override_of_a_field_the_config_lacks_names_it(tmp_path, run_py, assert_user_error):
    for flag, field in (("--config.layers[1].kernel=3", "kernel"),
                        ("--config.no_such_field=1", "no_such_field")):
        assert_user_error(run_py("--config=experiments/shallow.py", f"--workdir={tmp_path}/w",
                                 "--config.seed=2", flag),
                          f"{flag.split('=')[0]}: the config has no field '{field}'")
    assert not (tmp_path / "w").exists()


# ---- damaged data through the command line ----

@pytest.mark.parametrize("damage,fragment", [
    ("empty", "too short"),
    ("truncated", "truncated"),
    ("magic", "magic"),
    ("dims", "shape"),
    ("labels", "above 9"),
    ("count", "labels"),
    ("checksum", "SHA-256"),
    ("not_gzip", "cannot read"),
])
def test_damaged_dataset_via_cli(tmp_path, damage, fragment, run_py, assert_user_error, quick,
                                 idx_dataset_dir):
    d = tmp_path / "mnist"
    if damage == "dims":
        idx_dataset_dir(d, image_hw=(28, 27))
    elif damage == "labels":
        idx_dataset_dir(d, train_labels=np.full(60000, 12, np.uint8))
    elif damage == "count":
        idx_dataset_dir(d, train_labels=np.zeros(59999, np.uint8))
    else:
        idx_dataset_dir(d)
    target = d / "t10k-labels-idx1-ubyte"
    if damage == "empty":
        target.write_bytes(b"")
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[:-7])
    elif damage == "magic":
        target.write_bytes(b"\x00\x00\x0b\x01" + target.read_bytes()[4:])  # int16 type
    elif damage == "checksum":
        (d / "SHA256SUMS").write_text("0" * 64 + "  t10k-labels-idx1-ubyte\n")
    elif damage == "not_gzip":
        target.unlink()
        (d / "t10k-labels-idx1-ubyte.gz").write_bytes(b"this is not gzip data")
    proc = run_py("--config=experiments/shallow.py", f"--workdir={tmp_path}/w",
                  f"--config.data_dir={d}", *quick)
    assert_user_error(proc, fragment)
    assert not (tmp_path / "w").exists()


def test_data_dir_that_is_a_file(tmp_path, run_py, assert_user_error, quick):
    f = tmp_path / "file"
    f.write_text("x")
    assert_user_error(run_py("--config=experiments/shallow.py", f"--workdir={tmp_path}/w",
                             "--config.data_source=idx", f"--config.data_dir={f}", *quick),
                      "does not exist")


def test_unreadable_file_is_a_data_error(tmp_path, monkeypatch, idx_dataset_dir):
    d = idx_dataset_dir(tmp_path / "mnist", n_train=10, n_test=5)
    if os.geteuid() != 0:
        os.chmod(d / "train-images-idx3-ubyte", 0)
    else:   # root reads everything: make the read itself fail as for an unreadable file
        real_open = open

        def deny(path, *a, **k):
            if str(path).endswith("train-images-idx3-ubyte"):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, *a, **k)
        monkeypatch.setattr("builtins.open", deny)
    with pytest.raises(data.DataError, match="cannot read.*Permission denied"):
        data.load_idx_dir(str(d))


# ---- run directory on a read-only or full file system ----

def _can_mount():
    return os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.fixture
def tmpfs(tmp_path):
    if not _can_mount():
        pytest.skip("needs root and mount to make a small file system")
    mounts = []

    def make(name, options):
        p = tmp_path / name
        p.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(p)],
                           capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"mount failed: {r.stderr.decode().strip()}")
        mounts.append(p)
        return p
    yield make
    for p in mounts:
        subprocess.run(["umount", str(p)], capture_output=True)


def test_read_only_run_directory(tmpfs, mnist_dir, run_py, assert_user_error, quick):
    ro = tmpfs("ro", "ro,size=1m")
    proc = run_py("--config=experiments/shallow.py", f"--workdir={ro}/run", *quick)
    assert_user_error(proc, "not a writable directory")


def test_full_file_system(tmpfs, mnist_dir, run_py, assert_user_error, quick):
    full = tmpfs("full", "size=48k")
    proc = run_py("--config=experiments/shallow.py", f"--workdir={full}/run", *quick)
    assert_user_error(proc, "cannot write", "No space left")


# ---- fuzzing the IDX reader ----

def idx_or_none(raw):
    """An independent IDX reader: the uint8 array, or None where the bytes are not a
    valid IDX file (magic 0x0000 0x08 ndim>0, big-endian dims, then exactly the data)."""
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or raw[3] == 0:
        return None
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        return None
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    if len(raw) != 4 + 4 * ndim + int(np.prod(dims, dtype=np.int64)):
        return None
    return np.frombuffer(raw[4 + 4 * ndim:], np.uint8).reshape(dims)


def assert_parses_as_reference(raw):
    """data.parse_idx gives idx_or_none's array, or a DataError where that finds none."""
    expected = idx_or_none(raw)
    try:
        arr = data.parse_idx(raw)
    except data.DataError:
        assert expected is None
        return
    assert expected is not None and arr.dtype == np.uint8
    np.testing.assert_array_equal(arr, expected)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=64))
def test_fuzz_parse_idx_arbitrary_bytes(raw):
    assert_parses_as_reference(raw)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=3), st.integers(0, 255),
       st.integers(-8, 8), st.integers(0, 3), st.binary(max_size=8))
def test_fuzz_parse_idx_mutated_headers(idx_bytes, dims, code, size_delta, flip, noise):
    raw = bytearray(idx_bytes(np.zeros(dims, np.uint8), dtype_code=code))
    if flip:
        raw[flip] ^= 0xFF
    raw = bytes(raw)
    raw = raw[:max(0, len(raw) + size_delta)] if size_delta < 0 else raw + noise[:size_delta]
    assert_parses_as_reference(raw)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200), st.sampled_from(["raw", "gzip", "idx", "cut idx"]),
       st.integers(0, 60))
def test_fuzz_gzip_reader(tmp_path, idx_bytes, payload, form, cut):
    """A .gz file of arbitrary bytes, or gzip of them, or of an IDX file of them (whole
    or cut short): the reader returns what gzip decompresses, or a DataError where gzip
    fails; parsed, those bytes give the independent reader's array, or a DataError where
    that finds none."""
    idx = gzip.compress(idx_bytes(np.frombuffer(payload, np.uint8)))
    content = {"raw": payload, "gzip": gzip.compress(payload), "idx": idx,
               "cut idx": idx[:cut]}[form]
    p = tmp_path / "x-idx1-ubyte.gz"
    p.write_bytes(content)
    try:
        want = gzip.decompress(content)
    except (OSError, EOFError, zlib.error):
        want = None
    try:
        got = data._read_bytes(str(p))
    except data.DataError:
        got = None
    assert got == want
    if got is not None:
        assert_parses_as_reference(got)
