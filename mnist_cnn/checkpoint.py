"""Orbax checkpoints of a run: the training state plus a JSON record of where it stands.

Orbax writes each checkpoint into a temporary directory and renames it into place when
complete, so a process killed mid-save leaves the previous checkpoints intact and no
half-written one under a step name.
"""

from __future__ import annotations

import errno
import os
import shutil

import flax
import jax

# orbax is imported on first use: it takes a second to load, which every quick command
# (--list, a rejected config) would otherwise pay.

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


def restore_latest(mngr, like):
    """(state shaped as `like`, meta) from the newest checkpoint, or None if there is none."""
    import orbax.checkpoint as ocp
    step = mngr.latest_step()
    if step is None:
        return None
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
