"""A vote never touches the runs it reads (mnist_cnn/committee.py, run.py --mode=vote):
read-only restores that leave an in-progress save alone, a shared lock that refuses a
run still training, damaged inputs as one-line errors, a network named twice counted
once, and output paths (--vote_out, --vote_save_outputs, --benchmark_out) checked
before any work."""

import fcntl
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from mnist_cnn import checkpoint, committee, driver, metrics_io
from mnist_cnn import config as config_lib

_TRAINED = {}   # (seed,) -> a finished run directory, trained once per test process
QUIET = lambda *a: None


@pytest.fixture
def finished_run(tmp_path_factory, tmp_path, tiny_config, load_synthetic):
    """finished_run(name, seed=0) -> tmp_path/name: a copy of a finished tiny run (two
    epochs on the synthetic data, which data.load returns for the rest of the test)."""
    load_synthetic()

    def make(name, seed=0):
        if seed not in _TRAINED:
            w = tmp_path_factory.mktemp("trained") / f"seed{seed}"
            driver.run(tiny_config(num_epochs=2, seed=seed, plots=False), str(w),
                       log=QUIET)
            _TRAINED[seed] = w
        shutil.copytree(_TRAINED[seed], tmp_path / name)
        return tmp_path / name
    return make


def one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text and "Traceback" not in text, text
    return text


# ---- read-only, under a shared lock ----

def test_vote_leaves_an_in_progress_save_and_everything_else_in_place(finished_run,
                                                                       snapshot):
    """Orbax writes a checkpoint into STEP.orbax-checkpoint-tmp-T and renames it when
    done; a vote must not clean that up (it may be a save of a run still training),
    nor create anything (not even the lock file) in the run directory."""
    w = finished_run("a")
    saving = w / "checkpoints" / "99.orbax-checkpoint-tmp-1700000000"
    (saving / "state").mkdir(parents=True)
    (saving / "state" / "part").write_bytes(b"half a checkpoint")
    before = snapshot(w)
    result = committee.vote_runs([str(w)], log=QUIET)
    assert result["size"] == 1 and result["members"][0]["epoch"] == 2
    assert snapshot(w) == before
    os.remove(w / ".lock")   # a run directory copied without its lock file
    before = snapshot(w)
    committee.vote_runs([str(w)], log=QUIET)
    assert snapshot(w) == before and not (w / ".lock").exists()


def test_vote_refuses_a_run_that_holds_its_lock(finished_run, snapshot):
    """A training process holds DIR/.lock exclusively: the vote is one line naming the
    run and the lock, and the run's directory is untouched; once released, it votes."""
    w = finished_run("a")
    before = snapshot(w)
    fd = os.open(w / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(committee.CommitteeError) as e:
            committee.vote_runs([str(w)], log=QUIET)
        assert f"{w} is training (it holds {w / '.lock'})" in one_line(e.value)
        assert "vote its saved outputs" in str(e.value)
        with pytest.raises(committee.CommitteeError, match="is training"):
            committee.load_run(str(w))
    finally:
        os.close(fd)
    assert snapshot(w) == before
    assert committee.vote_runs([str(w)], log=QUIET)["size"] == 1


def test_a_run_cannot_start_training_while_it_is_read(finished_run):
    """The reader's shared lock keeps the training lock out, and is gone after."""
    w = str(finished_run("a"))
    with driver.read_locked(w):
        with driver.read_locked(w):   # two readers at once are fine
            with pytest.raises(driver.RunError, match="another process is running"):
                with driver.locked(w):
                    pass
    with driver.locked(w):
        with pytest.raises(driver.RunBusy, match="is training"):
            with driver.read_locked(w):
                pass


def wait_stopped(proc, timeout=60):
    """Returns once every thread of `proc` has stopped (state T in /proc/PID/stat)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        with open(f"/proc/{proc.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] in "tT":
                return
        assert proc.poll() is None, "the run ended before it could be stopped"
        time.sleep(0.01)
    pytest.fail("the run did not stop")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc/PID/stat")
def test_vote_on_a_run_that_is_training_leaves_it_byte_identical(
        tmp_path, mnist_dir, run_py, assert_user_error, snapshot):
    """run.py trains; stopped after its first checkpoint (SIGTSTP, as Ctrl-Z stops a
    job), it is voted: one line, and its directory is byte-identical; continued, it
    finishes; then the vote of the finished run succeeds and changes nothing there."""
    w = tmp_path / "live"
    proc = subprocess.Popen(
        [sys.executable, "run.py", "--config=experiments/shallow.py", f"--workdir={w}",
         "--config.train_size=2000", "--config.num_epochs=3", "--config.plots=False",
         "--config.checkpoint_every_steps=20", "--config.chunk_steps=20"],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A process group of its own under this one: the kernel discards SIGTSTP sent
        # into an orphaned process group, as the test runner's may be.
        process_group=0)
    try:
        t0 = time.time()
        while not checkpoint.exists(str(w)):
            assert proc.poll() is None, proc.communicate()
            assert time.time() - t0 < 300, "no checkpoint appeared"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTSTP)
        wait_stopped(proc)
        before = snapshot(w)
        vote = run_py("--mode=vote", f"--vote_runs={w}", f"--vote_out={tmp_path / 'v.json'}")
        assert_user_error(vote, f"{w} is training (it holds {w / '.lock'})")
        assert snapshot(w) == before and not (tmp_path / "v.json").exists()
    finally:
        proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert (w / "summary.json").exists()
    before = snapshot(w)
    vote = run_py("--mode=vote", f"--vote_runs={w}", f"--vote_out={tmp_path / 'v.json'}")
    assert vote.returncode == 0, vote.stderr
    assert snapshot(w) == before
    assert json.loads((tmp_path / "v.json").read_text())["members"][0]["epoch"] == 3


# ---- damaged inputs ----

def _outputs(m=2, n=32, seed=0):
    """Outputs of m networks on the synthetic validation and test sets (32 images)."""
    rng = np.random.default_rng(seed)
    p = lambda: rng.dirichlet(np.ones(10), size=(m, n)).astype(np.float32)
    return dict(names=[f"net{i}" for i in range(m)], epochs=[1] * m, eval_shifts=[0] * m,
                eval_rotate=[0.0] * m, eval_zoom=[0.0] * m,
                trained_on_validation=[False] * m, validation_probabilities=p(),
                test_probabilities=p(), validation_sha256="0" * 64, test_sha256="1" * 64)


def _truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _corrupt(path):
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 3, 2 * len(data) // 3):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def _npy(path):
    with open(path, "wb") as f:
        np.save(f, np.zeros(3))


def _strings(path):
    bad = dict(_outputs(), validation_probabilities=np.array([["a", "b"]]))
    with open(path, "wb") as f:
        np.savez(f, format=np.int64(1), **{k: np.asarray(v) for k, v in bad.items()})


@pytest.mark.parametrize("damage", [_truncated, _corrupt, _npy, _strings])
def test_damaged_outputs_file_is_one_line(tmp_path, damage):
    path = tmp_path / "o.npz"
    committee.save_outputs(str(path), _outputs())
    damage(path)
    with pytest.raises(committee.CommitteeError) as e:
        committee.load_outputs(str(path))
    assert str(path) in one_line(e.value)
    with pytest.raises(committee.CommitteeError):
        committee.vote_runs([str(path)], log=QUIET, rule="plurality")


@pytest.mark.parametrize("text", ["{not json", "", "[]", '{"layers": 5}',
                                  '{"learning_rate": "fast"}'])
def test_damaged_config_json_is_one_line(finished_run, text):
    w = finished_run("a")
    (w / "config.json").write_text(text)
    with pytest.raises(committee.CommitteeError) as e:
        committee.vote_runs([str(w)], log=QUIET)
    assert f"{w / 'config.json'} cannot be read as a run's config" in one_line(e.value)


def _flip_bytes(step_dir):
    for root, _, files in os.walk(step_dir / "state"):
        for name in files:
            if os.path.basename(root) == "d":
                _corrupt(pathlib.Path(root) / name)


def _empty_files(step_dir):
    for root, _, files in os.walk(step_dir):
        for name in files:
            open(os.path.join(root, name), "w").close()


@pytest.mark.parametrize("damage", [_flip_bytes, _empty_files,
                                    lambda d: shutil.rmtree(d / "meta"),
                                    lambda d: (d / "meta" / "metadata").write_text("{}")])
def test_checkpoint_that_cannot_be_restored_is_one_line(finished_run, damage, capfd,
                                                         snapshot):
    """A vote reads the newest checkpoint only (falling back would vote another network
    than the run's): one that cannot be restored is one line naming the run and step."""
    w = finished_run("a")
    newest = max(int(n) for n in os.listdir(w / "checkpoints") if n.isdigit())
    damage(w / "checkpoints" / str(newest))
    before = snapshot(w)
    with pytest.raises(committee.CommitteeError) as e:
        committee.vote_runs([str(w)], log=QUIET)
    assert f"{w}: the newest checkpoint (step {newest}) cannot be restored" in one_line(
        e.value)
    assert snapshot(w) == before
    assert "Traceback" not in capfd.readouterr().err


def test_truncated_outputs_file_is_one_line_from_run_py(tmp_path, run_py,
                                                        assert_user_error):
    path = tmp_path / "o.npz"
    committee.save_outputs(str(path), _outputs())
    _truncated(path)
    proc = run_py("--mode=vote", f"--vote_runs={path}", "--vote_rule=plurality",
                  f"--vote_out={tmp_path / 'v.json'}")
    assert_user_error(proc, f"{path} is not a committee outputs file")
    assert proc.returncode == 2 and not (tmp_path / "v.json").exists()


# ---- one network counted once ----

def test_duplicate_of_matches_outputs_within_float16_rounding():
    rng = np.random.default_rng(0)
    pv = rng.dirichlet(np.ones(10), size=(3, 50)).astype(np.float32)
    pt = rng.dirichlet(np.ones(10), size=(3, 40)).astype(np.float32)
    half = lambda a: a.astype(np.float16).astype(np.float32)
    nudged = pv[1].copy()
    nudged[7, 3] += 1e-3                  # one probability off by more than rounding
    val = np.stack([pv[0], pv[1], half(pv[0]), pv[2], nudged, pv[1]])
    test = np.stack([pt[0], pt[1], half(pt[0]), pt[2], pt[1], pt[1]])
    assert committee.duplicate_of(val, test) == [None, None, 0, None, None, 1]
    assert committee.duplicate_of(val[:1], test[:1]) == [None]


def test_a_network_given_twice_votes_once_with_a_warning(finished_run, tmp_path):
    """The same run directory twice, with a trailing slash, through a symlink, or beside
    its own saved outputs (float32 or float16): the vote is the run's alone."""
    a, b = str(finished_run("a")), str(finished_run("b", seed=1))
    alone = committee.vote_runs([a], log=QUIET)
    os.symlink(a, tmp_path / "link")
    saved, half = str(tmp_path / "a.npz"), str(tmp_path / "a16.npz")
    committee.vote_runs([a], log=QUIET, outputs_path=saved)
    committee.vote_runs([a], log=QUIET, outputs_path=half, outputs_precision="float16")
    for twice, warning in (([a, a], f"warning: {a} is {a}, named twice"),
                           ([a, a + "/"], f"warning: {a}/ is {a}, named twice"),
                           ([a, str(tmp_path / "link")], f"{tmp_path / 'link'} is {a}"),
                           ([a, saved], f"warning: {a} has the outputs of {a}"),
                           ([a, half], f"warning: {a} has the outputs of {a}")):
        lines = []
        got = committee.vote_runs(twice, log=lines.append)
        assert got["size"] == 1, twice
        assert got["votes"] == alone["votes"] and got["members"][0]["name"] == a
        assert any(warning in line for line in lines), (twice, lines)
    lines = []
    both = committee.vote_runs([a, b], log=lines.append)   # two networks: no warning
    assert both["size"] == 2 and not any("warning" in line for line in lines)
    got = committee.vote_runs([a, b, saved], log=QUIET, outputs_path=str(tmp_path / "x.npz"))
    assert got["size"] == 2
    assert list(committee.load_outputs(str(tmp_path / "x.npz"))["names"]) == [a, b]


# ---- output paths, before any work ----

def _vote_flags(tmp_path, **over):
    flags = dict(config=None, vote_runs=[str(tmp_path / "run")], vote_eval_shifts=-1,
                 vote_eval_rotate=-1.0, vote_eval_zoom=-1.0, vote_select="all",
                 vote_rule="auto", vote_save_outputs=None, vote_save_precision="float32",
                 vote_out=str(tmp_path / "vote.json"))
    flags.update(over)
    return types.SimpleNamespace(**flags)


def _no_work(monkeypatch):
    """Fails the test if a run is read or a network evaluated or timed."""
    def work(*a, **k):
        raise AssertionError("work started before the output path was checked")
    from mnist_cnn import bench
    for module, name in ((committee, "_load_entries"), (committee, "_evaluate"),
                         (bench, "sweep")):
        monkeypatch.setattr(module, name, work)


@pytest.mark.parametrize("flag, where, message", [
    ("vote_out", "missing/vote.json", "no directory"),
    ("vote_out", ".", "is a directory; give a file name"),
    ("vote_save_outputs", "missing/o.npz", "no directory"),
    ("vote_save_outputs", "d.npz", "is a directory; give a file name"),
])
def test_vote_output_paths_are_checked_before_any_network_is_read(tmp_path, monkeypatch,
                                                                  flag, where, message):
    from mnist_cnn.cli import vote
    (tmp_path / "d.npz").mkdir()
    _no_work(monkeypatch)
    path = str(tmp_path / where)
    with pytest.raises((config_lib.ConfigError, committee.CommitteeError)) as e:
        vote.vote(_vote_flags(tmp_path, **{flag: path}))
    assert f"--{flag}={path}: " in one_line(e.value) and message in str(e.value)


def test_unwritable_output_directory_is_refused(tmp_path, monkeypatch):
    """os.access says whether the directory can be written (root passes any mode, so
    the answer is stubbed: a read-only mount answers the same)."""
    from mnist_cnn.cli import vote
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if os.path.abspath(p) == str(
        tmp_path / "ro") else real(p, mode))
    (tmp_path / "ro").mkdir()
    assert "is not writable" in metrics_io.output_path_problem(str(tmp_path / "ro/v.json"))
    _no_work(monkeypatch)
    for flag, name in (("vote_out", "v.json"), ("vote_save_outputs", "o.npz")):
        with pytest.raises((config_lib.ConfigError, committee.CommitteeError),
                           match=f"--{flag}=.*is not writable"):
            vote.vote(_vote_flags(tmp_path, **{flag: str(tmp_path / "ro" / name)}))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes whatever the mode says")
def test_read_only_directory_is_refused(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o555)
    assert "is not writable" in metrics_io.output_path_problem(str(tmp_path / "ro/v.json"))


def test_benchmark_output_path_is_checked_before_anything_is_timed(tmp_path, monkeypatch,
                                                                   capsys):
    from mnist_cnn.cli import benchmark
    from experiments import shallow
    _no_work(monkeypatch)
    out = str(tmp_path / "missing" / "b.json")
    flags = types.SimpleNamespace(
        config=shallow.get_config(), batch_sizes=["10"], conv_impls=["xla"],
        dtypes=["float32"], device_counts=["1"], micro_batches=["0"], bench_images=100,
        repeats=1, peak_tflops=None, benchmark_out=out)
    assert benchmark.benchmark(flags) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: --benchmark_out={out}: no directory "
                                f"{tmp_path / 'missing'}; create it first"]


def test_output_paths_are_one_line_from_run_py(tmp_path, run_py, assert_user_error):
    out = tmp_path / "missing" / "v.json"
    proc = run_py("--mode=vote", f"--vote_runs={tmp_path}", f"--vote_out={out}")
    assert_user_error(proc, f"--vote_out={out}: no directory")
    out = tmp_path / "missing" / "b.json"
    proc = run_py("--mode=benchmark", "--config=experiments/shallow.py",
                  "--batch_sizes=10", "--conv_impls=xla", "--bench_images=20",
                  "--repeats=1", f"--benchmark_out={out}")
    assert_user_error(proc, f"--benchmark_out={out}: no directory")
    assert "images/s" not in proc.stdout + proc.stderr   # nothing was timed
