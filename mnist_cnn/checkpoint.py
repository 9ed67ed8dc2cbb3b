"""Orbax checkpoints of a run: the training state plus a JSON record of where it stands.

Orbax writes each checkpoint into a temporary directory and renames it into place when
complete, so a process killed mid-save leaves the previous checkpoints intact and no
half-written one under a step name.

A process that only reads a run (a vote) opens its checkpoints with `reader`: read-only,
nothing created, cleaned or deleted. A checkpoint that cannot be restored (damaged files,
a truncated record) is a RestoreError naming its step and why; `restore_fallback` tries
the kept ones from the newest down, and `set_aside` moves a damaged one out of orbax's
sight so a resumed run can save that step anew.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import shutil
import sys
from typing import Callable

import flax
import jax

# orbax is imported on first use: with tensorstore, asyncio and uvloop it takes most of
# a second to load, which every quick command (--list, a rejected config) would
# otherwise pay, and a run before its first checkpoint (Lazy).

CHECKPOINT_DIR = "checkpoints"


def manager(workdir: str, keep: int):
    import orbax.checkpoint as ocp
    extra = {}
    if jax.process_count() > 1:
        # Only process 0 checkpoints (it holds the whole state in the one-device
        # layout); without this orbax waits at barriers for the other processes.
        extra["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
            primary_host=0, active_processes={0})
    root = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    os.makedirs(root, exist_ok=True)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=False, enable_async_checkpointing=False,
        cleanup_tmp_directories=True, **extra)
    return ocp.CheckpointManager(root, options=options)


class Lazy:
    """A run's checkpoint manager (`manager`), made when first used: a run with no
    checkpoint yet loads orbax when it saves its first one, not at start-up (its
    all_steps() is [] without it). `directory` is the checkpoints folder's absolute
    path, created at once as `manager` does; every other attribute is the manager's."""

    def __init__(self, workdir: str, keep: int):
        self.workdir, self.keep, self._manager = workdir, keep, None
        self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
        os.makedirs(self.directory, exist_ok=True)

    def all_steps(self):
        return self._made().all_steps() if exists(self.workdir) else []

    def _made(self):
        if self._manager is None:
            self._manager = manager(self.workdir, self.keep)
        return self._manager

    def __getattr__(self, name):   # only for what __init__ did not set
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._made(), name)


def reader(workdir: str):
    """A read-only manager of workdir's checkpoints, for a process that does not own the
    run (a vote): it creates, cleans and deletes nothing there, so an in-progress save
    of a run still training (orbax's temporary directory) stays."""
    import orbax.checkpoint as ocp
    root = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                           enable_async_checkpointing=False)
    with _quiet():   # orbax warns that the directory is read-only
        return ocp.CheckpointManager(root, options=options)


def exists(workdir: str) -> bool:
    d = os.path.join(workdir, CHECKPOINT_DIR)
    return os.path.isdir(d) and any(name.isdigit() for name in os.listdir(d))


def check_space(directory: str, tree, margin: int = 1 << 20) -> None:
    """Raises OSError(ENOSPC) when `directory` cannot hold a checkpoint of `tree`.

    Checked up front because orbax reports a full disk from its writer threads as a
    stream of logged tracebacks before it raises."""
    need = sum(int(x.nbytes) for x in jax.tree.leaves(tree)) + margin
    free = shutil.disk_usage(directory).free
    if free < need:
        raise OSError(errno.ENOSPC, f"No space left on device (a checkpoint needs "
                      f"{need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free)")


def _host_local(tree):
    """In a multi-process run orbax refuses process-local jax.Arrays (it expects global
    ones); process 0 saves and restores the one-device state as numpy arrays."""
    if jax.process_count() == 1:
        return tree
    import numpy as np
    return jax.tree.map(np.asarray, tree)


def _present(state_dict: dict) -> dict:
    """The state's fields without the absent (None) ones, such as TrainState.ema when
    weight averaging is off: a run without it saves and restores exactly the fields
    it did before the field existed."""
    return {k: v for k, v in state_dict.items() if v is not None}


def save(mngr, step: int, state, meta: dict) -> None:
    """Saves `state` (a pytree) and `meta` (JSON) as checkpoint `step`, synchronously."""
    import orbax.checkpoint as ocp
    tree = _host_local(_present(flax.serialization.to_state_dict(state)))
    check_space(str(mngr.directory), tree)
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                            meta=ocp.args.JsonSave(meta)), force=True)
    mngr.wait_until_finished()
    sync_step(str(mngr.directory), step)


def sync_step(root: str, step: int) -> None:
    """Makes checkpoint `step` durable: every file and folder orbax wrote for it, then
    the checkpoints folder, whose entry orbax's final rename created, and the run
    folder (a file's fsync does not cover its directory entry; a power cut could
    otherwise leave a step folder of empty files, or none)."""
    from mnist_cnn import metrics_io
    step_dir = os.path.join(root, str(step))
    for where, _, files in os.walk(step_dir, topdown=False):
        for name in files:
            fd = os.open(os.path.join(where, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        metrics_io.fsync_dir(where)
    metrics_io.fsync_dir(root)
    metrics_io.fsync_dir(os.path.dirname(root))   # the run folder's `checkpoints` entry


class RestoreError(Exception):
    """No usable checkpoint: the message names each one tried, its step and why."""


@dataclasses.dataclass(frozen=True)
class Restored:
    """A restored checkpoint: the state (shaped as the template), its JSON record, its
    step, and (step, reason) of each newer checkpoint that could not be restored."""
    state: object
    meta: dict
    step: int
    skipped: tuple = ()


def restore_step(mngr, step: int, like):
    """(state shaped as `like`, meta) of checkpoint `step`; raises what orbax raises."""
    import orbax.checkpoint as ocp
    full = flax.serialization.to_state_dict(like)
    target = _present(full)
    if jax.process_count() > 1:
        abstract = _host_local(target)
    else:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    tree = {**{k: None for k in full}, **restored["state"]}
    return flax.serialization.from_state_dict(like, tree), restored["meta"]


def restore_latest(mngr, like, check: Callable | None = None):
    """(state shaped as `like`, meta) from the newest checkpoint, or None if there is
    none; RestoreError when it cannot be restored (check(meta), when given, raises for a
    record the caller cannot use)."""
    step = mngr.latest_step()
    if step is None:
        return None
    got, why = _attempt(mngr, step, like, check)
    if got is None:
        raise RestoreError(f"the newest checkpoint (step {step}) cannot be restored "
                           f"({why})")
    return got


def restore_fallback(mngr, like, check: Callable | None = None) -> Restored | None:
    """The newest kept checkpoint that restores, trying them from the newest down
    (Restored.skipped: the newer ones that did not, and why); None if there is none;
    RestoreError naming every step when none restores."""
    skipped = []
    for step in sorted(mngr.all_steps(), reverse=True):
        got, why = _attempt(mngr, step, like, check)
        if got is not None:
            return Restored(got[0], got[1], step, tuple(skipped))
        skipped.append((step, why))
    if not skipped:
        return None
    raise RestoreError("no checkpoint can be restored ("
                       + "; ".join(f"step {s}: {why}" for s, why in skipped) + ")")


def _attempt(mngr, step, like, check):
    """((state, meta), None) of checkpoint `step`, or (None, why it cannot be restored).
    Damage surfaces as many kinds of exception (orbax, tensorstore, json, a record
    missing a field): every one counts."""
    _drop_closed_loop_reports()
    try:
        with _quiet():
            state, meta = restore_step(mngr, step, like)
            if check is not None:
                check(meta)
    except Exception as e:   # noqa: BLE001 - any failure means "cannot be restored"
        return None, reason(e)
    return (state, meta), None


def reason(e: BaseException, limit: int = 160) -> str:
    """An exception as one short line: its type and the first line of its message."""
    lines = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def set_aside(mngr, step: int) -> str:
    """Renames checkpoint `step` (one that cannot be restored) to STEP.unrestorable
    (.unrestorable.1, ... if taken) beside the others, where orbax no longer counts it,
    so a resumed run saves that step anew; the damaged files stay for inspection.
    Returns the new name."""
    root = str(mngr.directory)
    name, n = f"{step}.unrestorable", 0
    while os.path.exists(os.path.join(root, name)):
        n += 1
        name = f"{step}.unrestorable.{n}"
    os.rename(os.path.join(root, str(step)), os.path.join(root, name))
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    mngr.reload()
    return name


@contextlib.contextmanager
def _quiet():
    """absl logging (orbax's) silenced: a failed restore is reported as one line."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _drop_closed_loop_reports():
    """After a failed restore, tensorstore may finish reads whose callbacks find orbax's
    asyncio loop already closed; Python would print each as an unraisable
    "RuntimeError: Event loop is closed" traceback. Those, and only those, are dropped
    (installed once, chaining to the hook before it)."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop_reports", False):
        return

    def hook(unraisable):
        e = unraisable.exc_value
        if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
            return
        previous(unraisable)
    hook.drops_closed_loop_reports = True
    sys.unraisablehook = hook
