"""Training across devices: every use of jax.pmap and of device placement lives here,
and of jit over a device mesh (config.parallel=sharding, the default on several
devices) in mnist_cnn/sharding.py, which the functions below hand a sharding Setup.

Two layouts, chosen by `setup`, under either kind (described here for pmap):
- data parallel (one network): the state replicated on D devices (a leading axis of
  size D), each device training on its slice of every global mini-batch, gradients and
  losses averaged with lax.pmean. Same numbers as one device, up to float32 summation
  order (dropout masks are drawn per device, so with dropout they differ in the draw,
  not in distribution).
- spread members (an ensemble or num_runs > 1): the M stacked networks split into D
  groups of M/D, one group per device, each group vmapped; no communication.

The driver keeps the single-device ("host") layout for checkpoints and evaluation:
`place` moves a state onto the devices, `host` brings it back, so a checkpoint written
with 8 devices resumes on 1 and the other way round.

Multi-process (jax.distributed): each process owns its local devices; pmap's axis, and
the sharding mesh, span the devices of every process, so the same code runs unchanged.
A process that fails or is killed would leave the others blocked in a collective:
`PeerWatch` (beats in jax.distributed's key-value store) ends them with one line naming
it, and `relay_stderr` turns jax's own abort, when process 0 vanishes, into one line.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import sys
import threading
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from mnist_cnn import sharding, train

AXIS = "devices"
MODES = ("auto", "none", "pmap", "sharding")
AUTO = "sharding"   # what auto uses on several devices (docs/devices.md: measured)


class ParallelError(ValueError):
    """A device request this machine cannot meet; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class Setup:
    devices: tuple            # the local devices used
    spread_members: bool      # True: stacked members split over devices; False: data parallel
    kind: str = "pmap"        # pmap | sharding (jit over a device mesh)

    @property
    def count(self) -> int:
        return len(self.devices) * jax.process_count()

    @property
    def local(self) -> int:
        return len(self.devices)


def setup(config, members: int, sweep: bool = False) -> Setup | None:
    """None (one device, plain jit), or how to spread the run over devices. sweep: the
    members are a vmapped sweep's points, spread under sharding only (else one device).
    Raises ParallelError for a request the machine cannot meet."""
    available = jax.local_devices()
    wanted = config.num_devices or len(available)
    if config.parallel == "none":
        if config.num_devices > 1:
            raise ParallelError(f"config.num_devices={config.num_devices} needs "
                                f"config.parallel=sharding, pmap or auto, not none")
        return None
    if wanted > len(available):
        kind = available[0].platform
        raise ParallelError(
            f"config.num_devices={wanted} but this process sees {len(available)} {kind} "
            f"device(s); ask for at most {len(available)} (on a CPU, "
            f"XLA_FLAGS=--xla_force_host_platform_device_count=N makes N)")
    kind = _kind(config.parallel, members)
    if sweep and (kind != "sharding" or members == 1):
        return None
    if members > 1:
        return _spread(config, members, available[:wanted], kind, sweep)
    if wanted * jax.process_count() == 1 and config.parallel == "auto":
        return None
    total = wanted * jax.process_count()
    if config.batch_size % total:
        raise ParallelError(
            f"config.batch_size={config.batch_size} does not split over {total} devices; "
            f"use a multiple of {total} or set config.num_devices")
    return Setup(tuple(available[:wanted]), spread_members=False, kind=kind)


def _kind(parallel: str, members: int) -> str:
    """pmap or sharding; auto is AUTO, except for members the processes cannot share
    out under sharding (pmap computes them on every process)."""
    if parallel != "auto":
        return parallel
    if AUTO == "sharding" and members > 1 and members % jax.process_count():
        return "pmap"
    return AUTO


def _spread(config, members: int, devices, kind: str, sweep: bool) -> Setup | None:
    """M stacked members over the largest device count that splits them evenly: 5
    members on 8 devices use 5 of them. Under sharding the count spans the processes;
    under pmap each process holds every member."""
    procs = jax.process_count() if kind == "sharding" else 1
    fits = [d for d in range(1, len(devices) + 1) if members % (d * procs) == 0]
    if not fits:
        if sweep:
            return None
        raise ParallelError(
            f"{members} stacked networks (config.num_members / num_runs) do not split "
            f"over {jax.process_count()} processes under config.parallel=sharding; use a "
            f"multiple of {jax.process_count()}, or config.parallel=pmap")
    use = max(fits)
    if use * jax.process_count() == 1 and (config.parallel == "auto" or sweep):
        return None
    return Setup(tuple(devices[:use]), spread_members=True, kind=kind)


def _sharding(s: Setup):
    mesh = jax.sharding.Mesh(np.array(s.devices), (AXIS,))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))


def _stack_onto(s: Setup, parts):
    """A global array with leading axis `s.local`, part i on device i."""
    parts = [jnp.asarray(p) for p in parts]
    shape = (len(parts),) + parts[0].shape
    arrays = [jax.device_put(p[None], d) for p, d in zip(parts, s.devices)]
    return jax.make_array_from_single_device_arrays(shape, _sharding(s), arrays)


def replicate(s: Setup, tree):
    """Every leaf copied to each device, as a leading axis of size s.local."""
    return jax.tree.map(lambda x: _stack_onto(s, [x] * s.local), tree)


def split(s: Setup, tree):
    """Leading axis M -> (devices, M / devices), group i on device i."""
    def one(x):
        x = jnp.asarray(x)
        groups = x.reshape(s.local, x.shape[0] // s.local, *x.shape[1:])
        return _stack_onto(s, list(groups))
    return jax.tree.map(one, tree)


def place(s: Setup | None, state):
    """The host-layout state, laid out for the devices."""
    if s is None:
        return state
    if s.kind == "sharding":
        return sharding.place(s, state)
    return split(s, state) if s.spread_members else replicate(s, state)


def host(s: Setup | None, state):
    """The device layout back to the host layout (replica 0, or the groups merged)."""
    if s is None:
        return state
    if s.kind == "sharding":
        return sharding.host(s, state)
    if s.spread_members:
        return jax.tree.map(lambda x: jax.device_put(
            jnp.reshape(np.asarray(x), (-1, *x.shape[2:])), s.devices[0]), state)
    return jax.tree.map(lambda x: jax.device_put(np.asarray(x[0]), s.devices[0]), state)


def place_data(s: Setup | None, x):
    """Training images or labels: one copy per device (each slices its own share)."""
    if s is not None and s.kind == "sharding":
        return sharding.place_data(s, x)
    return x if s is None else replicate(s, x)


def place_order(s: Setup | None, order):
    """An epoch's permutation, (N,) or stacked (M, N), laid out like the state."""
    return None if order is None else place(s, order)


def losses_to_host(s: Setup | None, losses):
    """Per-step losses as the single-device run reports them."""
    if s is None:
        return losses
    if s.kind == "sharding":
        return sharding.losses_to_host(s, losses)
    losses = np.asarray(losses)
    if s.spread_members:
        return losses.reshape(-1, losses.shape[-1])
    return losses[0]


def place_hp(s: Setup | None, hp):
    """A vmapped sweep's per-run values (train.traced_hp), laid out like its members
    (only sharding spreads a sweep: setup)."""
    if s is None or hp is None:
        return hp
    return sharding.place_hp(s, hp)


def make_chunk(s: Setup, model, tx, config, num_batches: int, num_steps: int,
               stacked: bool, with_order: bool, with_hp: bool = False):
    """The training chunk, pmapped or jitted over a mesh: (state, images, labels, order,
    start[, hp]) in device layout -> (state, losses, nlls) in device layout. hp: a
    vmapped sweep's values (sharding only)."""
    if s.kind == "sharding":
        return sharding.make_chunk(s, model, tx, config, num_batches, num_steps, stacked,
                                   with_order, with_hp)
    fn = train.chunk_fn(model, tx, config, num_batches, stacked,
                        axis_name=None if s.spread_members else AXIS)
    order_axis = 0 if with_order else None
    # With several processes pmap spans every device of every process (devices=None).
    devices = s.devices if jax.process_count() == 1 else None
    return jax.pmap(partial(fn, num_steps=num_steps), axis_name=AXIS,
                    in_axes=(0, 0, 0, order_axis, None), devices=devices,
                    donate_argnums=(0,))


def initialize_distributed(address: str, num_processes: int, process_id: int,
                           timeout_s: float) -> None:
    """jax.distributed.initialize, bounded in time. When the coordinator (or another
    process) never answers, jax aborts the process from C++ after its own timeout with
    a stack dump; a watchdog thread fires first with one line and exit code 2."""
    def give_up():
        sys.stderr.write(
            f"error: the jax.distributed coordinator at {address} did not gather all "
            f"{num_processes} processes within {timeout_s:g} s (this is process "
            f"{process_id}); start every process with the same --coordinator_address "
            f"and --num_processes, or raise --distributed_timeout\n")
        sys.stderr.flush()
        os._exit(2)

    watchdog = threading.Timer(timeout_s, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(address, num_processes, process_id,
                                   initialization_timeout=int(timeout_s) + 60)
        jax.devices()   # every process has registered once this returns
    finally:
        watchdog.cancel()


def tree_from_process_0(tree):
    """Process 0's value of `tree` (same structure everywhere) on every process."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils
    out = multihost_utils.broadcast_one_to_all(tree)
    return jax.tree.map(lambda new, old: type(old)(new) if isinstance(old, int) else new,
                        out, tree)


def max_over_processes(value: int) -> int:
    """The largest of every process's `value` (a collective: every process calls it)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils
    return int(np.max(multihost_utils.process_allgather(np.int32(value))))


def from_process_0(choice, choices):
    """Process 0's pick among `choices` (other processes pass anything, e.g. None)."""
    if jax.process_count() == 1:
        return choice
    index = choices.index(choice) if jax.process_index() == 0 else 0
    return choices[int(tree_from_process_0(np.int32(index)))]


# ---- a multi-process run that loses one of its processes ----

WATCH_KEYS = "mnist_cnn/watch/"   # in jax.distributed's key-value store
BEAT_S = 1.0          # every process says it is alive this often
SILENT_S = 15.0       # a process silent this long has stopped (killed; its host down)
LEAVE_WAIT_S = 10.0   # process 0 waits this long for the others to leave first
SAVE_WAIT_S = 60.0    # a stop waits this long for a checkpoint being written
RESUME = ("the last checkpoint is kept: start every process again with the same "
          "command to resume")
# Held by process 0 while it writes a checkpoint: a stop waits for the save to finish.
SAVING = threading.Lock()


def peer_problem(me: int, n: int, keys: dict, seen: dict, now: float,
                 silent_s: float = SILENT_S) -> tuple[str, int | None] | None:
    """What stops process `me` of `n`, from the watch keys of the store (name -> value:
    `beat/P` a counter each process P raises, `done/P` P finished, `gone/P` P left,
    `abort` the first failure's text): (cause, the silent process or None), or None.
    `seen` (P -> (last beat, when it changed)) is updated in place."""
    abort = keys.get("abort")
    if abort is not None and not abort.startswith(f"process {me} "):
        return abort, None
    for p in range(n):
        if p == me or f"done/{p}" in keys or f"gone/{p}" in keys:
            continue
        beat = keys.get(f"beat/{p}")
        if p not in seen or seen[p][0] != beat:
            seen[p] = (beat, now)
        elif now - seen[p][1] > silent_s:
            return (f"process {p} of {n} stopped answering for {silent_s:g} s (killed, "
                    f"or its host went down)"), p
    return None


class PeerWatch:
    """Process `me` of a jax.distributed run of `n`: a daemon thread that raises this
    process's beat in jax.distributed's key-value store every BEAT_S and reads the
    others'. A process that failed publishes why (`fail`); one silent for SILENT_S has
    stopped. Either way every other process, which may be blocked in a collective for
    good, writes one line naming that process and the cause and ends (exit status 2),
    after any checkpoint being written. Process 0 hosts the store, so it leaves last."""

    def __init__(self, client, me: int, n: int, silent_s: float = SILENT_S):
        self.client, self.me, self.n, self.silent_s = client, me, n, silent_s
        self.seen, self.beats, self.silent = {}, 0, set()
        self.contact = time.monotonic()
        self.closed = threading.Event()   # this process is leaving by itself
        self.status = None                # its exit status once it failed

    def start(self) -> PeerWatch:
        threading.Thread(target=self._loop, daemon=True, name="peer-watch").start()
        return self

    def _keys(self) -> dict:
        self.beats += 1
        self.client.key_value_set(f"{WATCH_KEYS}beat/{self.me}", str(self.beats),
                                  allow_overwrite=True)
        return {k[len(WATCH_KEYS):]: v for k, v in self.client.key_value_dir_get(WATCH_KEYS)}

    def _loop(self) -> None:
        while not self.closed.wait(BEAT_S):
            now = time.monotonic()
            try:
                keys = self._keys()
            except Exception:   # the store (process 0) is gone or out of reach
                if now - self.contact > self.silent_s:
                    self._stop(f"process 0 of {self.n}, the jax.distributed coordinator, "
                               f"stopped answering for {self.silent_s:g} s", 0)
                continue
            self.contact = now
            problem = peer_problem(self.me, self.n, keys, self.seen, now, self.silent_s)
            if problem:
                self._stop(*problem)

    def _stop(self, cause: str, silent: int | None) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        if silent is not None:
            self.silent.add(silent)
            self._publish("abort", cause)   # for the processes still running
        sys.stderr.write(f"error: {cause}; process {self.me} stops too; {RESUME}\n")
        saved = SAVING.acquire(timeout=SAVE_WAIT_S)   # a checkpoint being written ends
        try:
            self.leave(2)
        finally:   # reached only where os._exit is replaced (tests)
            if saved:
                SAVING.release()

    def _publish(self, key: str, value: str) -> None:
        try:
            self.client.key_value_set(WATCH_KEYS + key, value, allow_overwrite=key != "abort")
        except Exception:   # already set, or the store is gone: nothing more to tell
            pass

    def fail(self, cause: str, status: int) -> None:
        """This process failed: the others learn `cause` now; it ends with `status`
        when Python exits (its own line written), without jax's shutdown, which would
        wait for processes that have gone."""
        self.closed.set()
        self._publish("abort", f"process {self.me} of {self.n} failed: {cause}")
        self.status = status
        atexit.register(self.leave, status)   # runs before jax's own exit handler

    def finish(self) -> None:
        """This process finished, or stopped on a signal every process agreed on."""
        self.closed.set()
        self._publish(f"done/{self.me}", "1")

    def leave(self, status: int) -> None:
        """Ends this process now (os._exit): process 0 once the others have left (or
        after LEAVE_WAIT_S), the others after saying they leave."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self.me == 0:
            self._wait_for_others()
        else:
            self._publish(f"gone/{self.me}", "1")
        os._exit(status)

    def _wait_for_others(self) -> None:
        deadline = time.monotonic() + LEAVE_WAIT_S
        while time.monotonic() < deadline:
            try:
                keys = {k[len(WATCH_KEYS):] for k, _ in
                        self.client.key_value_dir_get(WATCH_KEYS)}
            except Exception:
                return
            if all(p in self.silent or f"gone/{p}" in keys or f"done/{p}" in keys
                   for p in range(1, self.n)):
                return
            time.sleep(0.1)


def watch_peers(process_id: int, num_processes: int) -> PeerWatch | None:
    """A started PeerWatch of this jax.distributed run, None without one."""
    try:   # the client jax.distributed.initialize made (as multihost_utils reads it)
        from jax._src import distributed
        client = distributed.global_state.client
    except (ImportError, AttributeError):   # a jax that keeps it elsewhere: unwatched
        return None
    if client is None or num_processes < 2:
        return None
    return PeerWatch(client, process_id, num_processes).start()


def relay_stderr(process_id: int, num_processes: int) -> None:
    """Points this process's stderr (file descriptor 2) at a relay process that passes it
    through and turns jax's fatal abort, when process 0 disappears, into one line
    (mnist_cnn/stderr_relay.py). For processes other than 0: process 0 hosts the
    coordination service and ends through PeerWatch before jax would abort it."""
    import subprocess
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    try:
        subprocess.Popen([sys.executable, "-m", "mnist_cnn.stderr_relay", str(process_id),
                          str(num_processes)], stdin=read_end, stdout=original,
                         stderr=original, start_new_session=True)
    except OSError:   # no relay: jax's abort stays as jax writes it
        os.close(write_end)
        return
    finally:
        os.close(read_end)
        os.close(original)
    os.dup2(write_end, 2)
    os.close(write_end)
