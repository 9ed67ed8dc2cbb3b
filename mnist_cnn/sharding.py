"""Training across devices with `jax.jit` over a device mesh (config.parallel=sharding):
the global view, where XLA partitions the program and inserts the collectives itself.

A 1-D mesh names its devices `data` (every process's, in a jax.distributed run). Two
layouts, as parallel.setup chooses:
- data parallel (one network): parameters, optimizer state and the training images
  replicated; each step builds the global mini-batch and constrains it to be split along
  `data` (BatchSplit), so XLA runs each device's share of the forward and backward pass
  and all-reduces the gradient of the global-batch mean. The program is the one-device
  program: the same dropout masks (jax's partitionable threefry draws the same bits
  however an array is split) and batch-norm moments over the whole mini-batch.
- spread members (an ensemble, num_runs > 1, a vmapped sweep): the stacked member axis
  of the state, the epoch orders and a sweep's hyperparameters split along `data`; no
  communication.

The host layout (one device, what checkpoints hold) goes in with `place` and comes back
with `host`, as for pmap (mnist_cnn/parallel.py, which calls into this module).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mnist_cnn import train

AXIS = "data"


def mesh_devices(local: int) -> list:
    """The first `local` devices of every process, process by process."""
    by_process = {}
    for d in jax.devices():
        by_process.setdefault(d.process_index, []).append(d)
    return [d for p in sorted(by_process) for d in by_process[p][:local]]


def mesh(s) -> Mesh:
    """The mesh of a parallel.Setup: its devices on every process, one axis `data`."""
    return Mesh(np.array(mesh_devices(s.local)), (AXIS,))


def _shardings(s):
    """(replicated, split along the leading axis) on the Setup's mesh."""
    m = mesh(s)
    return NamedSharding(m, PartitionSpec()), NamedSharding(m, PartitionSpec(AXIS))


@dataclasses.dataclass(frozen=True)
class BatchSplit:
    """How a step splits its mini-batch over the mesh (train.make_grads takes it)."""
    mesh: Mesh

    @property
    def count(self) -> int:
        return self.mesh.size

    def constrain(self, x, dim: int = 0):
        """x split along `data` on axis `dim`, the other axes whole."""
        spec = PartitionSpec(*([None] * dim), AXIS)
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))


def _put(sharding, tree):
    """Every leaf (the same full value on every process) as a global array laid out as
    `sharding`; each process fills its own devices."""
    def one(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
    return jax.tree.map(one, tree)


def place(s, state):
    """A host-layout state (or an epoch's permutation, laid out like it): replicated,
    or its members split over the devices."""
    replicated, split = _shardings(s)
    return _put(split if s.spread_members else replicated, state)


def place_data(s, x):
    """Training images or labels: the whole set on every device."""
    return _put(_shardings(s)[0], x)


def place_hp(s, hp):
    """A vmapped sweep's per-run values (train.traced_hp), split like the members."""
    return None if hp is None else _put(_shardings(s)[1], hp)


def _local(x):
    """A replicated global array's value, from this process's first copy."""
    return np.asarray(x.addressable_shards[0].data)


@functools.lru_cache(maxsize=8)
def _gather(replicated):
    """A jitted identity whose outputs are `replicated`: XLA all-gathers split arrays."""
    return jax.jit(lambda tree: tree, out_shardings=replicated)


def host(s, state):
    """The device layout back to the host layout: whole arrays on this process's first
    device (members gathered from every device, in a jax.distributed run too)."""
    if s.spread_members:
        state = _gather(_shardings(s)[0])(state)
    return jax.tree.map(lambda x: jax.device_put(_local(x), jax.local_devices()[0]), state)


def losses_to_host(s, losses):
    """Per-step losses (replicated by make_chunk) as numpy."""
    return _local(losses)


def make_chunk(s, model, tx, config, num_batches: int, num_steps: int, stacked: bool,
               with_order: bool, with_hp: bool = False):
    """The jitted training chunk: (state, images, labels, order, start[, hp]) placed as
    above -> (state, losses, nlls), the state in its placed layout, the losses
    replicated ((steps,), or (members, steps))."""
    replicated, split = _shardings(s)
    lead = split if s.spread_members else replicated
    fn = train.chunk_fn(model, tx, config, num_batches, stacked,
                        split=None if s.spread_members else BatchSplit(mesh(s)))

    def chunk(state, images, labels, order, start, hp=None):
        return fn(state, images, labels, order, start, num_steps, hp)

    in_shardings = (lead, replicated, replicated, lead if with_order else None,
                    replicated) + ((split,) if with_hp else ())
    return jax.jit(chunk, in_shardings=in_shardings,
                   out_shardings=(lead, replicated, replicated), donate_argnums=(0,))
