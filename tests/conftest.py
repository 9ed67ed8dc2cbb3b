"""Fixtures the test files share, and where real MNIST is.

Real MNIST comes from $MNIST_DATA_DIR, else ../shared/data/mnist beside the repository
(as in this project's CI); tests that need it ask for `mnist_dir` and are skipped when
neither exists. The package is installed (pip install -e .), so tests import
mnist_cnn, experiments and benchmarks as any user would.

Every shared helper is a fixture that returns it: a tiny config, synthetic images and
datasets (in memory, or as the four IDX files), run.py in a subprocess, numpy references
for convolution and pooling, scipy's affine map, the TensorBoard reader, and the results
helpers. A test that asks for `run_py` starts run.py and is marked slow
(`pytest -m "not slow"` leaves those out).
"""

import dataclasses
import hashlib
import inspect
import itertools
import os
import shlex
import struct
import subprocess
import sys
import types

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data", "mnist")
if not os.environ.get("MNIST_DATA_DIR") and os.path.isdir(_SHARED):
    os.environ["MNIST_DATA_DIR"] = _SHARED
# Runs the tests start compile without a persistent cache (config.compile_cache "auto"
# reads this first): no test depends on a warm cache or writes into the user's.
os.environ["MNIST_CNN_COMPILE_CACHE"] = ""


def pytest_collection_modifyitems(items):
    """A test that starts run.py (it asks for run_py, itself or through a fixture) is an
    end-to-end test: marked slow."""
    for item in items:
        if "run_py" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def mnist_dir():
    d = os.environ.get("MNIST_DATA_DIR", "")
    if not (d and os.path.isdir(d)):
        pytest.skip("real MNIST not found: set MNIST_DATA_DIR")
    return d


@pytest.fixture(scope="module")
def repo_root():
    return ROOT


# ---- configs and data ----

def make_tiny_config(**overrides):
    """A conv-pool layer of 2 maps, an FC layer of 8 with dropout 0.2, softmax; mini-
    batches of 4: compiles and trains in moments."""
    from mnist_cnn import config as config_lib
    c = config_lib.base_config()
    c.layers = (config_lib.conv_pool(2, kernel=5, activation="relu"),
                config_lib.fc(8, activation="sigmoid", dropout=0.2), config_lib.softmax(10))
    c.batch_size = 4
    c.learning_rate = 0.05
    c.l2 = 0.1
    c.init = "modern"
    for k, v in overrides.items():
        c[k] = v
    return c


def make_fake_data(n=40, seed=0):
    """(uint8 images (n, 28, 28), int32 labels (n,)) of noise, as jax arrays."""
    import jax.numpy as jnp
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.integers(0, 256, (n, 28, 28)), jnp.uint8),
            jnp.asarray(rng.integers(0, 10, n), jnp.int32))


def compiled_init_params(model, key, image_shape=(28, 28, 1)):
    """networks.init_params as one program compiled at XLA CPU's optimisation level 1,
    as train.init_states compiles it: the same bits as the call op by op
    (test_train.py checks), which compiles each of Flax's init ops alone (4-7 s a
    network on 2 cores, against ~0.5 s)."""
    from mnist_cnn import networks, train
    init = lambda k: networks.init_params(model, k, image_shape)
    return train._compile_cheaply(init, key)(key)


@pytest.fixture(scope="module")
def init_params():
    """init_params(model, key, image_shape=(28, 28, 1)) -> compiled_init_params'."""
    return compiled_init_params


@pytest.fixture(scope="module")
def tiny_config():
    """tiny_config(**fields) -> make_tiny_config's config with those fields set."""
    return make_tiny_config


@pytest.fixture(scope="module")
def fake_data():
    """fake_data(n=40, seed=0) -> (images, labels) of noise."""
    return make_fake_data


def make_synthetic_dataset(n_train=64, n_validation=32, n_test=32, seed=0):
    """A data.Dataset of noise images and labels; the defaults are the data of the
    stored checkpoint in tests/data/mid_epoch_checkpoint."""
    from mnist_cnn import data
    rng = np.random.default_rng(seed)

    def split(n):
        return data.Split(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                          rng.integers(0, 10, n).astype(np.int32))
    return data.Dataset(train=split(n_train), validation=split(n_validation),
                        test=split(n_test), source="synthetic")


@pytest.fixture(scope="module")
def synthetic_dataset():
    """synthetic_dataset(n_train=64, n_validation=32, n_test=32, seed=0) -> Dataset."""
    return make_synthetic_dataset


@pytest.fixture
def load_synthetic(monkeypatch):
    """load_synthetic(**sizes) -> a synthetic Dataset that data.load returns for the
    rest of the test (the driver and the committee load through it)."""
    from mnist_cnn import data

    def use(**sizes):
        ds = make_synthetic_dataset(**sizes)
        monkeypatch.setattr(data, "load", lambda *a, **k: ds)
        return ds
    return use


@pytest.fixture
def small_mnist(monkeypatch, mnist_dir):
    """small_mnist(n=1000): from now on in the test, data.load gives real MNIST with its
    validation and test splits cut to their first n images (evaluating a run costs a
    tenth as much)."""
    from mnist_cnn import data
    real_load = data.load

    def use(n=1000):
        def load(*args, **kwargs):
            ds = real_load(*args, **kwargs)
            cut = lambda split: data.Split(split.images[:n], split.labels[:n])
            return dataclasses.replace(ds, validation=cut(ds.validation), test=cut(ds.test))
        monkeypatch.setattr(data, "load", load)
    return use


@pytest.fixture(scope="module")
def fixture_config():
    """fixture_config(**fields) -> the config of the stored checkpoint: two stacked
    members with dropout, shuffling and a weight average, 16 mini-batches an epoch,
    checkpointed every 4."""
    def make(**overrides):
        from mnist_cnn import config as config_lib
        c = config_lib.base_config()
        c.name = "checkpoint_fixture"
        c.layers = (config_lib.conv_pool(2, kernel=5, activation="relu"),
                    config_lib.fc(8, activation="sigmoid", dropout=0.2),
                    config_lib.softmax(10))
        c.update(batch_size=4, learning_rate=0.05, l2=0.1, init="modern", train_size=64,
                 num_epochs=3, shuffle=True, num_members=2, ema_decay=0.9,
                 checkpoint_every_steps=4, chunk_steps=4, keep_checkpoints=1, plots=False)
        c.update(overrides)
        return c
    return make


def encode_idx(arr, dtype_code: int = 0x08) -> bytes:
    """The IDX encoding of `arr`: 0x0000, dtype code, ndim, big-endian uint32 dims, data."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return (struct.pack(">HBB", 0, dtype_code, arr.ndim)
            + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes())


@pytest.fixture(scope="module")
def idx_bytes():
    """idx_bytes(arr, dtype_code=0x08) -> the IDX file of `arr`, packed with struct."""
    return encode_idx


@pytest.fixture(scope="module")
def idx_dataset_dir():
    """idx_dataset_dir(directory, n_train=60000, n_test=100, train_labels=None,
    image_hw=(28, 28)) writes the four (uncompressed) IDX files of a blank MNIST there
    and returns the directory."""
    def write(directory, n_train=60000, n_test=100, train_labels=None, image_hw=(28, 28)):
        directory.mkdir(exist_ok=True)
        images = lambda n: np.zeros((n, *image_hw), np.uint8)
        labels = train_labels if train_labels is not None else np.zeros(n_train, np.uint8)
        for name, arr in [("train-images-idx3-ubyte", images(n_train)),
                          ("train-labels-idx1-ubyte", labels),
                          ("t10k-images-idx3-ubyte", images(n_test)),
                          ("t10k-labels-idx1-ubyte", np.zeros(n_test, np.uint8))]:
            (directory / name).write_bytes(encode_idx(arr))
        return directory
    return write


# ---- run.py in a subprocess ----

_FORK_SERVER = []   # this process's forkserver.ForkServer, once started


def _fork_server():
    """The fork server of this test process (started at its first use), or None where
    MNIST_CNN_TEST_FORK=0 asks for a real process at every run.py."""
    if os.environ.get("MNIST_CNN_TEST_FORK", "1") == "0":
        return None
    if not _FORK_SERVER:
        import atexit
        import forkserver
        _FORK_SERVER.append(forkserver.ForkServer())
        atexit.register(_FORK_SERVER[0].close)
    return _FORK_SERVER[0]


def _run_py(*args, env=None, timeout=600):
    e = dict(os.environ)
    e.update(env or {})
    server = _fork_server()
    done = server and server.run(args, e, timeout)
    if done:
        return done
    return subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), *args], cwd=ROOT,
                          env=e, capture_output=True, text=True, timeout=timeout)


def _assert_user_error(proc, *fragments):
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for f in fragments:
        assert f in errors[0], errors[0]


@pytest.fixture(scope="module")
def run_py():
    """run_py(*args, env=None, timeout=600) -> CompletedProcess of `python run.py args`
    from the repository root (text stdout and stderr)."""
    return _run_py


@pytest.fixture(scope="module")
def assert_user_error():
    """assert_user_error(proc, *fragments): a failed exit without a traceback, with
    exactly one `error:` line on stderr, holding every fragment."""
    return _assert_user_error


@pytest.fixture
def quick():
    """The flags of a one-epoch run on 100 images."""
    return ["--config.num_epochs=1", "--config.train_size=100"]


# ---- numpy and scipy references ----

def _conv_ref(x, w, stride, pads):
    """Cross-correlation as a loop over output positions, NHWC x HWIO -> NHWC, after
    zero padding pads = ((top, bottom), (left, right)): each output pixel is the sum of
    its input window times the kernel."""
    x = np.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
    n, h, wd, c = x.shape
    kh, kw, _, o = w.shape
    sh, sw = stride
    ho, wo = (h - kh) // sh + 1, (wd - kw) // sw + 1
    out = np.zeros((n, ho, wo, o))
    for i, j in itertools.product(range(ho), range(wo)):
        window = x[:, i * sh:i * sh + kh, j * sw:j * sw + kw, :]
        out[:, i, j, :] = np.tensordot(window, w, axes=3)
    return out


def _pool_ref(x, window, stride, reduce):
    """reduce(window, axis=(1, 2)) over each window (ragged edges dropped), NHWC."""
    n, h, w, c = x.shape
    kh, kw = window
    sh, sw = stride
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    out = np.zeros((n, ho, wo, c))
    for i, j in itertools.product(range(ho), range(wo)):
        out[:, i, j, :] = reduce(x[:, i * sh:i * sh + kh, j * sw:j * sw + kw, :], axis=(1, 2))
    return out


def _pads_ref(padding, kernel, stride, size):
    """((top, bottom), (left, right)) zeros for `padding` as TensorFlow defines it:
    VALID none; SAME an output of ceil(size / stride), the extra zero below and right;
    an int p on every side; explicit pairs as given."""
    if padding == "VALID":
        return ((0, 0), (0, 0))
    if padding == "SAME":
        pads = []
        for n, k, s in zip(size, kernel, stride):
            total = max((-(-n // s) - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    return tuple(tuple(p) for p in padding)


@pytest.fixture(scope="module")
def np_layers():
    """numpy loop references: conv(x, w, stride, pads), pool(x, window, stride,
    reduce) (reduce as np.max, with an axis argument), and pads(padding, kernel, stride,
    (h, w)) for the conv's zero padding."""
    return types.SimpleNamespace(conv=_conv_ref, pool=_pool_ref, pads=_pads_ref)


def _scipy_affine(img, theta, scale):
    """scipy.ndimage's bilinear rotation by theta (radians) and zoom by scale about the
    image centre, zeros outside."""
    from scipy import ndimage
    m = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]]) / scale
    c = (np.array(img.shape) - 1) / 2
    return ndimage.affine_transform(img, m, offset=c - m @ c, order=1,
                                    mode="grid-constant", cval=0.0)


@pytest.fixture(scope="module")
def scipy_affine():
    """scipy_affine(image, theta, scale): the independent reference for augment.affine."""
    return _scipy_affine


def _read_scalars(logdir) -> dict:
    """{tag: {step: value}} of every event file in `logdir`, parsed from the TFRecord
    framing (length, its CRC, an Event, its CRC); a (tag, step) found twice fails."""
    from tensorboardX.proto import event_pb2
    out = {}
    for name in sorted(os.listdir(logdir)):
        with open(os.path.join(logdir, name), "rb") as f:
            raw = f.read()
        at = 0
        while at < len(raw):
            (length,) = struct.unpack("<Q", raw[at:at + 8])
            event = event_pb2.Event.FromString(raw[at + 12:at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                steps = out.setdefault(value.tag, {})
                assert event.step not in steps, f"{value.tag} at step {event.step} twice"
                steps[event.step] = value.simple_value
    return out


@pytest.fixture(scope="module")
def read_scalars():
    """read_scalars(logdir) -> {tag: {step: value}} of a TensorBoard directory."""
    return _read_scalars


# ---- results/ and the commands that made them ----

# Fields that do not change what a run trains or reports (how often it evaluates,
# checkpoints, draws figures; where it finds its data and keeps compiled programs).
NOT_TRAINING = {"name", "eval_every", "chunk_steps", "checkpoint_every_steps",
                "keep_checkpoints", "plots", "data_dir", "data_source", "download",
                "eval_batch_size", "compile_cache", "tensorboard"}


def _run_py_config(command: str):
    """The config (or committee config) that `python run.py ...` builds, validated."""
    from mnist_cnn import committee_config
    from mnist_cnn import config as config_lib
    args = [a for a in shlex.split(command)[2:] if a.startswith("--config")]
    if not args:
        return None
    c = committee_config.parse_config_flags(
        [a.replace("--config=", f"--config={ROOT}/", 1) if a.startswith("--config=")
         else a for a in args])
    if committee_config.is_committee(c):
        return committee_config.validate(c)
    return config_lib.validate(c)


def _training_fields(config: dict) -> dict:
    out = {k: v for k, v in config.items() if k not in NOT_TRAINING}
    out["layers"] = [dict(layer) for layer in config["layers"]]
    return out


@pytest.fixture(scope="module")
def run_py_config():
    """run_py_config("python run.py --config=... ...") -> the validated config."""
    return _run_py_config


@pytest.fixture(scope="module")
def training_fields():
    """training_fields(config dict) -> the fields that change what a run trains."""
    return _training_fields


def _snapshot(directory) -> dict:
    """{relative path: (kind, bytes' SHA-256, size, mtime_ns, mode)} of everything under
    `directory`: equal snapshots mean nothing there was created, removed or written."""
    out = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            digest = None
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(path, directory)] = (
                "dir" if name in dirs else "file", digest, st.st_size, st.st_mtime_ns,
                st.st_mode)
    return out


@pytest.fixture(scope="module")
def snapshot():
    """snapshot(directory): a fingerprint of every file and folder under it."""
    return _snapshot


@pytest.fixture(scope="module")
def run_python(repo_root):
    """run_python(code): runs `code` in a fresh python in the repository root (where a
    test needs its own XLA flags or devices); its stdout, failing on a non-zero exit."""
    def run(code, timeout=300):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=timeout, cwd=repo_root)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout
    return run


# ---- several CPU devices, in a fresh process ----

DEVICE_PRELUDE = """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count={devices} {xla_flags}"
import jax, jax.numpy as jnp, numpy as np
from mnist_cnn import networks, parallel, train

{helpers}
fake_data, synthetic_dataset = {fake_data}, {synthetic_dataset}

def tiny_config(**fields):
    return {tiny_config}(**{{"parallel": "{parallel}", **fields}})

def close(a, b, rtol=2e-5, atol=2e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)

def epoch(c, members, n=64, reference=None, hp=None):
    '''One epoch of `c` under its Setup, and of `reference` (default `c`) on one device
    with plain jit: (setup, one-device state, its losses, the state, its losses). The
    compiled program's text is left in last_program.'''
    reference = reference or c
    x, y = fake_data(n)
    nb = train.steps_per_epoch(n, c.batch_size)
    model = networks.from_config(c)
    tx = train.make_optimizer(c, nb)
    st = train.init_states(model, tx, c.seed, members)
    order = train.epoch_order(st.key, 0, n, members > 1) if c.shuffle else None
    traced = None if hp is None else train.traced_hp(hp)
    one = train.make_train_chunk(model, tx, reference, nb, stacked=members > 1)
    ref, ref_losses, _ = one(jax.tree.map(jnp.copy, st), x, y, order, 0, num_steps=nb,
                             hp=traced)
    s = parallel.setup(c, members, sweep=hp is not None)
    fn = parallel.make_chunk(s, model, tx, c, nb, nb, members > 1, order is not None,
                             with_hp=hp is not None)
    extra = () if hp is None else (parallel.place_hp(s, traced),)
    args = (parallel.place(s, st), parallel.place_data(s, x), parallel.place_data(s, y),
            parallel.place_order(s, order), 0) + extra
    global last_program
    compiled = fn.lower(*args).compile()
    last_program = compiled.as_text()
    out, losses, _ = compiled(*args)
    return s, ref, ref_losses, parallel.host(s, out), parallel.losses_to_host(s, losses)
"""


@pytest.fixture
def device_prelude(tiny_config, fake_data, synthetic_dataset):
    """device_prelude(devices, parallel, xla_flags="") -> the source a fresh Python runs
    first to have that many CPU devices (XLA_FLAGS, set before jax is imported):
    conftest.py's tiny config (with config.parallel = parallel), fake data and synthetic
    dataset (their source copied in), close(a, b) for float32 trees, and epoch(c,
    members, ...), one epoch across the devices beside the same epoch on one device."""
    made = (tiny_config, fake_data, synthetic_dataset)
    helpers = "\n\n".join(inspect.getsource(f) for f in made)
    return lambda devices, parallel, xla_flags="": DEVICE_PRELUDE.format(
        devices=devices, xla_flags=xla_flags, helpers=helpers, parallel=parallel,
        tiny_config=tiny_config.__name__, fake_data=fake_data.__name__,
        synthetic_dataset=synthetic_dataset.__name__)
