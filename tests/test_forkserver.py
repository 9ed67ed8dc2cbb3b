"""The tests' fork server (tests/forkserver.py) answers as a real `python run.py` does:
the same exit code, standard output and error, and files; it refuses what a forked
child could not run as a fresh process would, and kills a child past its timeout."""

import os
import re
import subprocess
import sys

import pytest

import forkserver

pytestmark = pytest.mark.slow   # real run.py processes beside the forked ones


@pytest.fixture(scope="module")
def server():
    s = forkserver.ForkServer()
    assert s.ready
    yield s
    s.close()


def _real(*args, env):
    return subprocess.run([sys.executable, forkserver.RUN_PY, *args], cwd=forkserver.ROOT,
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("args", [
    ("--list",),
    ("--config=experiments/dbl_conv_relu.py", "--workdir={tmp}/w", "--config.num_epochs=0"),
    ("--config=experiments/no_such_file.py", "--workdir={tmp}/w"),
    ("--helpshort",),
])
def test_a_forked_run_answers_as_a_real_process(server, tmp_path, args):
    args = [a.format(tmp=tmp_path) for a in args]
    env = dict(os.environ)
    forked, real = server.run(args, env, 600), _real(*args, env=env)
    assert forked is not None
    assert (forked.returncode, forked.stdout, forked.stderr) == (
        real.returncode, real.stdout, real.stderr)
    assert forked.args == real.args


def test_a_forked_training_run_writes_what_a_real_one_writes(server, tmp_path, mnist_dir):
    args = ["--config=experiments/shallow.py", "--config.num_epochs=1",
            "--config.train_size=20", "--config.batch_size=10", "--config.plots=False",
            "--config.tensorboard=False"]
    env = dict(os.environ)
    forked = server.run([*args, f"--workdir={tmp_path / 'f'}"], env, 600)
    real = _real(*args, f"--workdir={tmp_path / 'r'}", env=env)
    assert forked.returncode == real.returncode == 0, forked.stderr + real.stderr
    # Every file but orbax's data files (named by hashes, as many as its writers made).
    names = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*")
                             if not re.search(r"[0-9a-f]{32}", str(p)))
    assert names(tmp_path / "f") == names(tmp_path / "r")
    for run in ("f", "r"):
        assert (tmp_path / run / "summary.json").is_file()
    final = lambda p: [l for l in p.stdout.splitlines() if l.startswith("best validation")]
    assert [l.split("; wall")[0] for l in final(forked)] == [
        l.split("; wall")[0] for l in final(real)]


def test_environment_read_at_import_sends_the_request_to_a_real_process(server):
    env = dict(os.environ)
    assert forkserver.env_forkable(env, {**env, "MNIST_DATA_DIR": "/elsewhere",
                                         "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert not forkserver.env_forkable(env, {**env, "JAX_ENABLE_X64": "1"})
    assert not forkserver.env_forkable(env, {k: v for k, v in env.items() if k != "PATH"})
    assert server.run(["--list"], {**env, "JAX_PLATFORMS": "cpu,tpu"}, 60) is None


def test_a_child_past_its_timeout_is_killed(server, tmp_path, mnist_dir):
    with pytest.raises(subprocess.TimeoutExpired):
        server.run(["--config=experiments/dbl_conv_relu.py", f"--workdir={tmp_path}/w",
                    "--config.num_epochs=50"], dict(os.environ), 2)
    again = server.run(["--list"], dict(os.environ), 60)   # the server answers again
    assert again.returncode == 0
