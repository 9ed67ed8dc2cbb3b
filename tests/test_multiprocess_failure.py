"""A multi-process run that loses a process: a failure or a signal on any process stops
all of them within a bounded time, with one line naming the process and the cause, and
the last checkpoint intact (mnist_cnn/parallel.py's PeerWatch, mnist_cnn/stderr_relay.py,
driver.StopFlag.agreed).

The end-to-end tests run two run.py processes on this machine (2 virtual CPU devices
each, gloo collectives over loopback) and kill or signal one of them mid-training."""

import atexit
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from mnist_cnn import parallel, stderr_relay

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- the decision, pure ----

def test_a_silent_process_stops_the_others_after_the_silence_limit():
    seen = {}
    keys = {"beat/0": "5", "beat/1": "7"}
    assert parallel.peer_problem(0, 2, keys, seen, now=0.0, silent_s=15) is None
    assert parallel.peer_problem(0, 2, keys, seen, now=14.0, silent_s=15) is None
    cause, silent = parallel.peer_problem(0, 2, keys, seen, now=15.5, silent_s=15)
    assert silent == 1 and cause.startswith("process 1 of 2 stopped answering for 15 s")
    keys["beat/1"] = "8"   # it beat again: the silence starts over
    assert parallel.peer_problem(0, 2, keys, seen, now=16.0, silent_s=15) is None


def test_finished_and_departed_processes_are_not_silent_ones():
    seen = {}
    keys = {"beat/1": "3", "done/1": "1", "beat/2": "4", "gone/2": "1"}
    for now in (0.0, 100.0):
        assert parallel.peer_problem(0, 3, keys, seen, now=now, silent_s=15) is None


def test_another_process_failure_is_the_cause_and_ones_own_is_not():
    keys = {"abort": "process 1 of 3 failed: cannot write to --workdir x"}
    assert parallel.peer_problem(2, 3, keys, {}, 0.0) == (keys["abort"], None)
    assert parallel.peer_problem(1, 3, keys, {}, 0.0) is None


# ---- the watch thread, with an in-memory store ----

class _Store:
    """The two calls of jax.distributed's key-value store that PeerWatch makes."""

    def __init__(self):
        self.kv, self.lock = {}, threading.Lock()

    def key_value_set(self, key, value, allow_overwrite=False):
        with self.lock:
            if key in self.kv and not allow_overwrite:
                raise RuntimeError(f"ALREADY_EXISTS: {key}")
            self.kv[key] = value

    def key_value_dir_get(self, prefix):
        with self.lock:
            return [(k, v) for k, v in self.kv.items() if k.startswith(prefix)]


@pytest.fixture
def exits(monkeypatch):
    """The statuses os._exit is called with (it returns instead); `.called` is set on
    the first."""
    class Statuses(list):
        called = threading.Event()
    statuses = Statuses()

    def fake_exit(status):
        statuses.append(status)
        statuses.called.set()
    monkeypatch.setattr(os, "_exit", fake_exit)
    monkeypatch.setattr(parallel, "BEAT_S", 0.02)
    return statuses


def test_a_killed_process_ends_the_blocked_one_with_one_line_after_its_save(exits,
                                                                           capsys):
    """Process 1 beats, then is killed while process 0 (blocked in a collective) writes
    a checkpoint: process 0 says so in one line and ends, after the save."""
    store = _Store()
    store.key_value_set(parallel.WATCH_KEYS + "beat/1", "1")
    parallel.SAVING.acquire()   # a checkpoint is being written
    try:
        parallel.PeerWatch(store, 0, 2, silent_s=0.3).start()
        time.sleep(0.8)
        assert not exits.called.is_set()   # waits for the save
    finally:
        parallel.SAVING.release()
    assert exits.called.wait(5)
    assert exits == [2]
    errors = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]
    assert errors == ["error: process 1 of 2 stopped answering for 0.3 s (killed, or its "
                      "host went down); process 0 stops too; the last checkpoint is kept: "
                      "start every process again with the same command to resume"]
    assert store.kv[parallel.WATCH_KEYS + "abort"].startswith("process 1 of 2 stopped")
    assert not parallel.SAVING.locked()


def test_a_failure_elsewhere_ends_this_process_naming_the_process_and_the_cause(
        exits, capsys):
    store = _Store()
    watches = [parallel.PeerWatch(store, i, 3, silent_s=30) for i in range(3)]
    watches[1].fail("cannot write to --workdir x: No space left on device", 2)
    atexit.unregister(watches[1].leave)   # it would end pytest itself
    watches[2].start()
    assert exits.called.wait(5)
    assert exits == [2]
    err = capsys.readouterr().err
    assert ("error: process 1 of 3 failed: cannot write to --workdir x: No space left "
            "on device; process 2 stops too") in err
    assert parallel.WATCH_KEYS + "gone/2" in store.kv   # process 0 may leave after it


def test_a_finished_process_stops_beating_without_alarming_the_others(exits):
    store = _Store()
    one = parallel.PeerWatch(store, 1, 2, silent_s=0.2).start()
    zero = parallel.PeerWatch(store, 0, 2, silent_s=0.2).start()
    time.sleep(0.2)
    one.finish()
    time.sleep(0.6)
    zero.finish()
    assert exits == []


# ---- the stderr relay of processes other than 0 ----

JAX_ABORT = b"""\
W1130 23:45:21.150817   18778 preemption_sync_manager.cc:147] Failed to retrieve preemption notice from coordination service: UNAVAILABLE: Socket closed
Additional GRPC error information from remote target coordination_service while calling /xla.coordination.CoordinationService/GetKeyValue:
:UNKNOWN:Error received from peer  {grpc_status:14, grpc_message:"Socket closed"}. This is only expected if one of the tasks is unhealthy.
E1130 23:45:21.150869   18778 preemption_sync_manager.cc:159] Failed to cancel preemption barrier: FAILED_PRECONDITION: Tried to cancel non-existent barrier PREEMPTION_SYNC_BARRIER.
E1130 23:32:19.076163    4281 coordination_service_agent.cc:289] Polled an error from coordination service (this can be an error from this or another task).
F1130 23:32:19.076232    4281 client.h:80] Terminating process because the JAX distributed service detected fatal errors. This most likely indicates that another task died; see the other task logs for more details. absl::Status: UNAVAILABLE: Failed to send RPC to coordination service.
Additional GRPC error information from remote target coordination_service while calling /xla.coordination.CoordinationService/PollForError:
:UNKNOWN:Error received from peer  {grpc_status:14, grpc_message:"Socket closed"}
*** Check failure stack trace: ***
    @     0x7f9b01820634  absl::lts_20260107::log_internal::LogMessage::SendToLog()
Fatal Python error: Aborted

Thread 0x00007f9a9c6ff6c0 (most recent call first):
  File "/usr/lib/python3.11/threading.py", line 331 in wait
"""


def _relayed(chunks, me=1, n=2):
    out = []
    relay = stderr_relay.Relay(me, n, out.append)
    for chunk in chunks:
        relay.feed(chunk)
    relay.close()
    return b"".join(out).decode()


def _chunks(data: bytes, seed: int):
    rng, at, out = random.Random(seed), 0, []
    while at < len(data):
        step = rng.randint(1, 200)
        out.append(data[at:at + step])
        at += step
    return out


@pytest.mark.parametrize("seed", range(5))
def test_jax_s_abort_when_process_0_vanishes_becomes_one_line(seed):
    before = b"[Gloo] Rank 1 is connected to 1 peer ranks.\nsome warning\n"
    text = _relayed(_chunks(before + JAX_ABORT, seed))
    assert text == before.decode() + (
        "error: process 1 of 2 lost process 0, the jax.distributed coordinator (killed, "
        "or its host went down); process 1 stops too; the last checkpoint is kept: start "
        "every process again with the same command to resume\n")


def test_the_relay_passes_everything_else_through():
    data = (b"plain line\nW1130 23:45:21.1 x.cc:1] a warning on its own\nmore\n"
            b"a progress bar\r 50%")
    assert _relayed(_chunks(data, 3)) == data.decode()


def test_a_held_log_line_is_released_when_no_abort_follows():
    out = []
    relay = stderr_relay.Relay(1, 2, out.append)
    relay.feed(b"E1130 23:45:21.1 x.cc:1] an error that ends nothing\nthen this\n")
    assert out == []
    relay.tick(time.monotonic() + stderr_relay.HOLD_S + 1)
    assert b"".join(out) == b"E1130 23:45:21.1 x.cc:1] an error that ends nothing\nthen this\n"


def test_the_process_own_error_line_is_kept_and_not_doubled():
    text = _relayed([b"E1130 23:45:21.1 x.cc:1] first\nerror: cannot write x\n" + JAX_ABORT])
    assert text == "error: cannot write x\n"


# ---- two run.py processes ----

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


COMMON = ["--config=experiments/dbl_conv_relu.py", "--config.train_size=2000",
          "--config.batch_size=16", "--config.num_epochs=2", "--config.shuffle=True",
          "--config.plots=False", "--config.chunk_steps=10",
          "--config.checkpoint_every_steps=20"]


def _start_two(tmp_path, mnist_dir, tag):
    """Processes 0 and 1 of a two-process run (workdirs w0, w1), output in files."""
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               MNIST_DATA_DIR=mnist_dir)
    procs = []
    for i in range(2):
        cmd = [sys.executable, os.path.join(ROOT, "run.py"), *COMMON,
               f"--workdir={tmp_path / f'w{i}'}", f"--coordinator_address=127.0.0.1:{port}",
               "--num_processes=2", f"--process_id={i}", "--distributed_timeout=120"]
        procs.append(subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=open(tmp_path / f"{tag}{i}.out", "w"),
            stderr=open(tmp_path / f"{tag}{i}.err", "w")))
    return procs


def _wait_for_a_checkpoint(tmp_path, procs, limit=300):
    where, t0 = tmp_path / "w0" / "checkpoints", time.monotonic()
    while not (where.is_dir() and any(n.isdigit() for n in os.listdir(where))):
        assert all(p.poll() is None for p in procs), "a process ended before training"
        assert time.monotonic() - t0 < limit, "no checkpoint"
        time.sleep(0.2)


def _end(procs, limit):
    """Each process's exit status, or None for one still running after `limit` s
    (then killed)."""
    deadline, out = time.monotonic() + limit, []
    for p in procs:
        try:
            out.append(p.wait(timeout=max(deadline - time.monotonic(), 0.1)))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            out.append(None)
    return out


def _one_error_line(path):
    err = path.read_text()
    for dump in ("Traceback", "Fatal Python error", "Check failure", "Terminating process"):
        assert dump not in err, err[-3000:]
    errors = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(errors) == 1, err[-3000:]
    return errors[0]


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0])
def test_killing_one_of_two_processes_ends_the_other_within_60_s_with_one_line(
        tmp_path, mnist_dir, victim):
    procs = _start_two(tmp_path, mnist_dir, "run")
    try:
        _wait_for_a_checkpoint(tmp_path, procs)
        procs[victim].send_signal(signal.SIGKILL)
        t_kill = time.monotonic()
        other = 1 - victim
        (status,) = _end([procs[other]], 60)
        assert status is not None, f"process {other} still running 60 s after the kill"
        assert status != 0 and time.monotonic() - t_kill < 60
    finally:
        _end(procs, 1)
    line = _one_error_line(tmp_path / f"run{other}.err")
    if victim == 1:
        assert line.startswith("error: process 1 of 2 stopped answering"), line
    else:
        assert line.startswith("error: process 1 of 2 lost process 0"), line
    assert "the last checkpoint is kept" in line
    if victim == 1:   # the checkpoint process 0 kept resumes, here on one process
        env = dict(os.environ, MNIST_DATA_DIR=mnist_dir)
        again = subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), *COMMON,
                                f"--workdir={tmp_path / 'w0'}"], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "resuming from the checkpoint at step" in again.stdout


@pytest.mark.slow
def test_a_signal_to_one_process_stops_both_at_one_checkpoint_and_they_resume(
        tmp_path, mnist_dir):
    """SIGTERM to process 1 alone: both stop at the same chunk boundary, where process 0
    checkpoints, with status 143; the same commands resume and finish."""
    procs = _start_two(tmp_path, mnist_dir, "run")
    try:
        _wait_for_a_checkpoint(tmp_path, procs)
        procs[1].send_signal(signal.SIGTERM)
        assert _end(procs, 60) == [143, 143]
    finally:
        _end(procs, 1)
    lines = [(tmp_path / f"run{i}.err").read_text() for i in range(2)]
    stops = [[l for l in text.splitlines() if l.startswith("stopped by SIGTERM")]
             for text in lines]
    assert all(len(s) == 1 for s in stops), lines
    assert stops[0] == stops[1]   # the same step
    step = stops[0][0].split("after step ")[1].split(";")[0]
    procs = _start_two(tmp_path, mnist_dir, "again")
    assert _end(procs, 600) == [0, 0], (tmp_path / "again0.err").read_text()[-3000:]
    out = (tmp_path / "again0.out").read_text()
    assert f"resuming from the checkpoint at step {step} of" in out
