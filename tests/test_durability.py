"""Races and durability: the fresh-or-resume decision taken under the run's lock,
temporary files of unique names, folders synced after each rename, sweep.json created
by exactly one of several shards; the memory check covering evaluation (with
MemAvailable on a CPU); numbers that would pass a range check but are not usable."""

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from mnist_cnn import checkpoint, data, driver, metrics_io, sweep
from mnist_cnn import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _synced_paths(monkeypatch):
    """The paths os.fsync is called on from now on, in order."""
    synced, real = [], os.fsync

    def fsync(fd):
        synced.append(os.path.realpath(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    return synced


# ---- temporary names and fsync ----

def test_a_file_at_the_old_fixed_temporary_name_does_not_get_in_the_way(tmp_path):
    """The temporary file is not PATH.tmp, which anything (a folder, another writer's
    file) may hold: its name is unique and created exclusively."""
    path = tmp_path / "summary.json"
    (tmp_path / "summary.json.tmp").mkdir()
    metrics_io.write_json_atomic(str(path), {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["summary.json", "summary.json.tmp"]


def test_two_writers_of_one_path_at_once_leave_one_complete_file(tmp_path):
    path = str(tmp_path / "config.json")
    texts = [str(i) * (1 << 20) for i in range(4)]
    errors, start = [], threading.Barrier(len(texts))

    def write(text):
        start.wait()
        try:
            for _ in range(15):
                metrics_io.write_text_atomic(path, text)
        except Exception as e:   # noqa: BLE001 - any failure is the finding
            errors.append(repr(e))
    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with open(path) as f:
        assert f.read() in texts
    assert os.listdir(tmp_path) == ["config.json"]   # no temporary file left


def test_an_atomic_write_syncs_the_folder_after_the_rename(tmp_path, monkeypatch):
    synced = _synced_paths(monkeypatch)
    seen = []
    real_fsync = os.fsync

    def fsync(fd):   # what the folder holds when it is synced
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            seen.append(sorted(os.listdir(tmp_path)))
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    metrics_io.write_json_atomic(str(tmp_path / "summary.json"), {"a": 1})
    assert os.path.realpath(tmp_path) in synced
    assert seen and seen[-1] == ["summary.json"]


def test_a_checkpoint_is_synced_with_its_step_folder_and_the_run_folder(tmp_path,
                                                                         monkeypatch):
    workdir = tmp_path / "run"
    mngr = checkpoint.manager(str(workdir), keep=2)
    synced = _synced_paths(monkeypatch)
    checkpoint.save(mngr, 7, {"w": np.arange(3.0)}, {"epoch": 1})
    step = workdir / "checkpoints" / "7"
    for folder in (step, workdir / "checkpoints", workdir):
        assert os.path.realpath(folder) in synced, folder
    files = [os.path.join(d, f) for d, _, fs in os.walk(step) for f in fs]
    assert files and all(os.path.realpath(f) in synced for f in files)


# ---- sweep.json ----

@pytest.mark.parametrize("attempt", range(3))
def test_sweep_json_is_created_by_exactly_one_of_two_shards_starting_together(
        tmp_path, monkeypatch, tiny_config, attempt):
    """Two shards asking for different grids at the same moment: one records its grid,
    the other is refused against it. (A slow fsync widens the window between looking
    for the file and writing it.)"""
    real_fsync = os.fsync

    def slow_fsync(fd):
        threading.Event().wait(0.05)
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", slow_fsync)
    c = tiny_config()
    records = [sweep.grid_record(c, sweep.parse([spec], c))
               for spec in ("learning_rate=0.1,0.2", "l2=0,1")]
    workdir = str(tmp_path / "sweep")
    outcomes, start = [None, None], threading.Barrier(2)

    def shard(i):
        start.wait()
        try:
            sweep.check_grid(workdir, records[i])
            outcomes[i] = "recorded"
        except sweep.SweepError as e:
            outcomes[i] = f"refused: {e}"
        except Exception as e:   # noqa: BLE001
            outcomes[i] = f"failed: {e!r}"
    threads = [threading.Thread(target=shard, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(o.split(":")[0] for o in outcomes) == ["recorded", "refused"], outcomes
    winner = outcomes.index("recorded")
    with open(os.path.join(workdir, sweep.GRID_FILE)) as f:
        assert json.load(f)["axes"] == records[winner]["axes"]
    assert "different grid" in outcomes[1 - winner]
    assert sorted(os.listdir(workdir)) == [sweep.GRID_FILE]


def test_a_damaged_sweep_json_is_one_line(tmp_path, tiny_config):
    c = tiny_config()
    (tmp_path / sweep.GRID_FILE).write_text('{"axes": [["learning_rate", [0.1')
    with pytest.raises(sweep.SweepError, match="unreadable or damaged"):
        sweep.check_grid(str(tmp_path), sweep.grid_record(
            c, sweep.parse(["learning_rate=0.1,0.2"], c)))


# ---- the fresh-or-resume decision, under the lock ----

@pytest.mark.parametrize("other", ["same config", "other config"])
def test_the_run_another_process_finished_meanwhile_is_neither_cleared_nor_retrained(
        tmp_path, monkeypatch, tiny_config, synthetic_dataset, other):
    """Process B looks at an empty folder, then loads and compiles; meanwhile process A
    trains a whole run there. B must decide under the lock, seeing A's run: the same
    config is a finished run, another config a refusal; A's files stay as they were."""
    ds = synthetic_dataset()
    workdir = str(tmp_path / "w")
    a = tiny_config(num_epochs=1, plots=False)
    b = tiny_config(num_epochs=1, plots=False,
                    learning_rate=0.05 if other == "same config" else 0.07)
    ran = []

    def load(*args, **kwargs):
        if not ran:   # B's load: A runs to the end in the meantime
            ran.append(None)
            ran[0] = driver.run(a, workdir, log=lambda *x: None)
        return ds
    monkeypatch.setattr(data, "load", load)
    lines = []
    if other == "same config":
        summary = driver.run(b, workdir, log=lines.append)
        assert summary == ran[0]
        assert any("holds a finished run" in line for line in lines), lines
    else:
        with pytest.raises(driver.RunError, match="belongs to a different config"):
            driver.run(b, workdir, log=lines.append)
    run = tmp_path / "w"
    assert json.loads((run / "summary.json").read_text()) == ran[0]
    assert json.loads((run / "config.json").read_text())["learning_rate"] == 0.05
    assert checkpoint.exists(str(run))
    assert not any(line.startswith("epoch") for line in lines), lines


@pytest.mark.slow
def test_two_processes_racing_on_an_empty_folder_train_it_once(tmp_path, mnist_dir):
    """Two run.py started together on one new folder: one trains; the other refuses
    with one line (the lock is held) or, when it comes after the end, finds the run
    finished. Never two trainings, never a run cleared by the other."""
    workdir = tmp_path / "w"
    cmd = [sys.executable, os.path.join(ROOT, "run.py"), "--config=experiments/shallow.py",
           f"--workdir={workdir}", "--config.num_epochs=1", "--config.train_size=500",
           "--config.plots=False"]
    env = dict(os.environ, MNIST_DATA_DIR=mnist_dir)
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    trained = [i for i, (out, _) in enumerate(outs) if "epoch 1:" in out]
    assert len(trained) == 1, outs
    other = 1 - trained[0]
    out, err = outs[other]
    assert "Traceback" not in err, err
    if procs[other].returncode == 0:
        assert "holds a finished run" in out, (out, err)
    else:
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "another process is running" in errors[0], err
    assert procs[trained[0]].returncode == 0, outs[trained[0]][1]
    assert json.loads((workdir / "summary.json").read_text())["epochs_run"] == 1


# ---- memory ----

def _training_bytes(plan):
    m = plan.compiled.memory_analysis()
    return m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes


def test_an_evaluation_that_cannot_fit_is_refused_before_anything_is_written(
        tmp_path, monkeypatch, tiny_config, load_synthetic):
    """Training fits; evaluating 2,000 images at a time through 9 test-time views does
    not: refused up front in one line, not after the first epoch (and again on every
    resume)."""
    ds = load_synthetic(n_train=64, n_validation=2000, n_test=2000)
    c = tiny_config(eval_batch_size=2000, eval_shifts=2, num_epochs=1, plots=False)
    monkeypatch.setattr(driver, "available_memory", lambda: None)   # measure, unchecked
    trains = _training_bytes(driver.Plan(c, driver.build(c), ds))
    monkeypatch.setattr(driver, "available_memory", lambda: trains + 1024)
    workdir = tmp_path / "w"
    with pytest.raises(driver.RunError) as e:
        driver.run(c, str(workdir))
    message = str(e.value)
    assert "evaluating needs about" in message and "eval_batch_size" in message
    assert "test-time views" in message and "\n" not in message
    assert not workdir.exists()
    monkeypatch.setattr(driver, "available_memory", lambda: 1 << 40)
    driver.Plan(c, driver.build(c), ds)   # with room, the same plan is fine


def test_on_a_cpu_the_memory_check_reads_memavailable(tmp_path, monkeypatch):
    """Not free pages (SC_AVPHYS_PAGES), which leave out the page cache the kernel
    hands back on demand."""
    import jax
    if jax.devices()[0].platform != "cpu":
        pytest.skip("the CPU's figure")
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:          100000 kB\n"
                       "MemAvailable:    1234567 kB\nBuffers:           1000 kB\n")
    monkeypatch.setattr(driver, "MEMINFO", str(meminfo))
    assert driver.available_memory() == 1234567 * 1024
    monkeypatch.setattr(driver, "MEMINFO", str(tmp_path / "absent"))
    assert driver.available_memory() > 0   # no /proc/meminfo: free pages, as before


# ---- numbers a range check would let through ----

@pytest.mark.parametrize("field,value,fragment", [
    ("learning_rate", float("inf"), "config.learning_rate must be a finite number"),
    ("l2", float("inf"), "config.l2 must be a finite number"),
    ("warmup_epochs", float("nan"), "config.warmup_epochs must be a finite number"),
    ("augment_rotate", float("nan"), "config.augment_rotate must be a finite number"),
    ("seed", -1, "config.seed must be in [0, 2147483647]"),
    ("seed", 2**32, "config.seed must be in [0, 2147483647]"),
    ("seed", 2**63, "config.seed must be in [0, 2147483647]"),
])
def test_infinite_numbers_and_seeds_jax_cannot_take_are_refused(tiny_config, field,
                                                                 value, fragment):
    c = tiny_config()
    c[field] = value
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(c)
    assert str(e.value).startswith(fragment), str(e.value)


def test_stacked_seeds_past_the_largest_are_refused(tiny_config):
    c = tiny_config(seed=config_lib.MAX_SEED, num_runs=2)
    with pytest.raises(config_lib.ConfigError, match="seeds up to 2147483648"):
        config_lib.validate(c)
    config_lib.validate(tiny_config(seed=config_lib.MAX_SEED - 1, num_runs=2))
