"""Bad input, tried systematically: every config field, malformed flags, damaged data,
unwritable run directories, and a fuzz test of the IDX reader. Each gives one clear
line, a non-zero exit, no traceback, and leaves earlier run directories untouched."""

import errno
import gzip
import os
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnist_cnn import data
from tests.test_data import idx_bytes as _idx
from tests.test_run import QUICK, assert_user_error, run

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
    ("keep_checkpoints=0", "keep_checkpoints"),
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
def test_every_config_field_rejects_bad_values(tmp_path, override, fragment):
    w = tmp_path / "w"
    proc = run("--config=experiments/dbl_conv_relu.py", f"--workdir={w}",
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
def test_malformed_flags(tmp_path, args, fragment):
    extra = [] if args == ["--workdir"] else [f"--workdir={tmp_path}/w"]
    proc = run("--config=experiments/dbl_conv_relu.py", *extra, *args)
    assert_user_error(proc, fragment)


def test_ensemble_and_runs_together_refused(tmp_path):
    assert_user_error(run("--config=experiments/dbl_conv_relu.py", f"--workdir={tmp_path}/w",
                          "--config.num_members=2", "--config.num_runs=2"), "cannot both")


def test_best_of_runs_with_validation_trained_on_refused(tmp_path):
    """num_runs keeps the best-validation run: meaningless on trained-on validation."""
    assert_user_error(run("--config=experiments/dbl_conv_relu.py", f"--workdir={tmp_path}/w",
                          "--config.num_runs=2", "--config.train_on_validation=True"),
                      "train_on_validation", "num_runs")
    assert not (tmp_path / "w").exists()


def test_bad_config_variant_argument(tmp_path):
    assert_user_error(run("--config=experiments/dbl_conv.py:softplus",
                          f"--workdir={tmp_path}/w"), "activation")
    assert_user_error(run("--config=experiments/modern.py:deep=1,rot=10",
                          f"--workdir={tmp_path}/w"),
                      "variant rot= only sets config fields: write "
                      "--config.augment_rotate=10 instead")
    assert not (tmp_path / "w").exists()


def test_override_of_a_field_the_config_lacks_names_it(tmp_path):
    for flag, field in (("--config.layers[1].kernel=3", "kernel"),
                        ("--config.no_such_field=1", "no_such_field")):
        assert_user_error(run("--config=experiments/shallow.py", f"--workdir={tmp_path}/w",
                              "--config.seed=2", flag),
                          f"{flag.split('=')[0]}: the config has no field '{field}'")
    assert not (tmp_path / "w").exists()


# ---- damaged data through the command line ----

def _dataset(d, n_train=60000, n_test=100, train_labels=None, image_hw=(28, 28)):
    d.mkdir(exist_ok=True)
    imgs = lambda n: np.zeros((n, *image_hw), np.uint8)
    labels = train_labels if train_labels is not None else np.zeros(n_train, np.uint8)
    for name, arr in [("train-images-idx3-ubyte", imgs(n_train)),
                      ("train-labels-idx1-ubyte", labels),
                      ("t10k-images-idx3-ubyte", imgs(n_test)),
                      ("t10k-labels-idx1-ubyte", np.zeros(n_test, np.uint8))]:
        (d / name).write_bytes(_idx(arr))
    return d


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
def test_damaged_dataset_via_cli(tmp_path, damage, fragment):
    d = tmp_path / "mnist"
    if damage == "dims":
        _dataset(d, image_hw=(28, 27))
    elif damage == "labels":
        _dataset(d, train_labels=np.full(60000, 12, np.uint8))
    elif damage == "count":
        _dataset(d, train_labels=np.zeros(59999, np.uint8))
    else:
        _dataset(d)
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
    proc = run("--config=experiments/shallow.py", f"--workdir={tmp_path}/w",
               f"--config.data_dir={d}", *QUICK)
    assert_user_error(proc, fragment)
    assert not (tmp_path / "w").exists()


def test_data_dir_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert_user_error(run("--config=experiments/shallow.py", f"--workdir={tmp_path}/w",
                          "--config.data_source=idx", f"--config.data_dir={f}", *QUICK),
                      "does not exist")


def test_unreadable_file_is_a_data_error(tmp_path, monkeypatch):
    d = _dataset(tmp_path / "mnist", n_train=10, n_test=5)
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


def test_read_only_run_directory(tmpfs, mnist_dir):
    ro = tmpfs("ro", "ro,size=1m")
    proc = run("--config=experiments/shallow.py", f"--workdir={ro}/run", *QUICK)
    assert_user_error(proc, "not a writable directory")


def test_full_file_system(tmpfs, mnist_dir):
    full = tmpfs("full", "size=48k")
    proc = run("--config=experiments/shallow.py", f"--workdir={full}/run", *QUICK)
    assert_user_error(proc, "cannot write", "No space left")


# ---- fuzzing the IDX reader ----

@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=64))
def test_fuzz_parse_idx_arbitrary_bytes(raw):
    try:
        arr = data.parse_idx(raw)
    except data.DataError:
        return
    assert arr.dtype == np.uint8 and arr.size == len(raw) - 4 - 4 * arr.ndim


@settings(max_examples=400, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=3), st.integers(0, 255),
       st.integers(-8, 8), st.integers(0, 3), st.binary(max_size=8))
def test_fuzz_parse_idx_mutated_headers(dims, code, size_delta, flip, noise):
    arr = np.zeros(dims, np.uint8)
    raw = bytearray(_idx(arr, dtype_code=code))
    if flip:
        raw[flip] ^= 0xFF
    raw = bytes(raw)
    raw = raw[:max(0, len(raw) + size_delta)] if size_delta < 0 else raw + noise[:size_delta]
    try:
        out = data.parse_idx(raw)
    except data.DataError:
        return
    header = 4 + 4 * out.ndim
    assert out.size == len(raw) - header


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_gzip_reader(tmp_path_factory, payload):
    p = tmp_path_factory.mktemp("fz") / "x-idx1-ubyte.gz"
    p.write_bytes(payload if payload[:1] != b"!" else gzip.compress(payload))
    try:
        data.parse_idx(data._read_bytes(str(p)), str(p))
    except data.DataError:
        pass
