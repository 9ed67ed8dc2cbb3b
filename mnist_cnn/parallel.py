"""Training across devices: every use of jax.pmap and of device placement lives here,
so a move to jax.shard_map touches this file only.

Two layouts, chosen by `setup`:
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

Multi-process (jax.distributed): each process owns its local devices; pmap's axis spans
the devices of every process, so the same code runs unchanged.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from mnist_cnn import train

AXIS = "devices"
MODES = ("auto", "none", "pmap")


class ParallelError(ValueError):
    """A device request this machine cannot meet; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class Setup:
    devices: tuple            # the local devices used
    spread_members: bool      # True: stacked members split over devices; False: data parallel

    @property
    def count(self) -> int:
        return len(self.devices) * jax.process_count()

    @property
    def local(self) -> int:
        return len(self.devices)


def setup(config, members: int) -> Setup | None:
    """None (one device, plain jit), or how to spread the run over devices. Raises
    ParallelError for a request the machine cannot meet."""
    available = jax.local_devices()
    wanted = config.num_devices or len(available)
    if config.parallel == "none":
        if config.num_devices > 1:
            raise ParallelError(f"config.num_devices={config.num_devices} needs "
                                f"config.parallel=pmap (or auto), not none")
        return None
    if wanted > len(available):
        kind = available[0].platform
        raise ParallelError(
            f"config.num_devices={wanted} but this process sees {len(available)} {kind} "
            f"device(s); ask for at most {len(available)} (on a CPU, "
            f"XLA_FLAGS=--xla_force_host_platform_device_count=N makes N)")
    if members > 1:
        # The largest device count that splits the members evenly: 5 members on 8
        # devices use 5 of them.
        use = max(d for d in range(1, wanted + 1) if members % d == 0)
        if use * jax.process_count() == 1 and config.parallel == "auto":
            return None
        return Setup(tuple(available[:use]), spread_members=True)
    if wanted * jax.process_count() == 1 and config.parallel == "auto":
        return None
    total = wanted * jax.process_count()
    if config.batch_size % total:
        raise ParallelError(
            f"config.batch_size={config.batch_size} does not split over {total} devices; "
            f"use a multiple of {total} or set config.num_devices")
    return Setup(tuple(available[:wanted]), spread_members=False)


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
    return split(s, state) if s.spread_members else replicate(s, state)


def host(s: Setup | None, state):
    """The device layout back to the host layout (replica 0, or the groups merged)."""
    if s is None:
        return state
    if s.spread_members:
        return jax.tree.map(lambda x: jax.device_put(
            jnp.reshape(np.asarray(x), (-1, *x.shape[2:])), s.devices[0]), state)
    return jax.tree.map(lambda x: jax.device_put(np.asarray(x[0]), s.devices[0]), state)


def place_data(s: Setup | None, x):
    """Training images or labels: one copy per device (each slices its own share)."""
    return x if s is None else replicate(s, x)


def place_order(s: Setup | None, order):
    """An epoch's permutation, (N,) or stacked (M, N), laid out like the state."""
    if s is None or order is None:
        return order
    return split(s, order) if s.spread_members else replicate(s, order)


def losses_to_host(s: Setup | None, losses):
    """Per-step losses as the single-device run reports them."""
    if s is None:
        return losses
    losses = np.asarray(losses)
    if s.spread_members:
        return losses.reshape(-1, losses.shape[-1])
    return losses[0]


def make_chunk(s: Setup, model, tx, config, num_batches: int, num_steps: int,
               stacked: bool, with_order: bool):
    """The pmapped training chunk: (state, images, labels, order, start) in device layout
    -> (state, losses, nlls) in device layout."""
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
    import os
    import sys
    import threading

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


def from_process_0(choice, choices):
    """Process 0's pick among `choices` (other processes pass anything, e.g. None)."""
    if jax.process_count() == 1:
        return choice
    index = choices.index(choice) if jax.process_index() == 0 else 0
    return choices[int(tree_from_process_0(np.int32(index)))]
