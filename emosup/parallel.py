"""Device mesh, shardings and host→global batches (jit + NamedSharding, data parallel).

One 1-D mesh over every device of every process, axis 'data'. Parameters are replicated,
batches are sharded on their leading axis. Each process loads only its own rows of the
global batch (`local_batch_size`) and `to_global` assembles the global jax.Array.
"""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None):
    """Mesh over `devices` (default: every device of every process)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh):
    return NamedSharding(mesh, P())


def batch_sharded(mesh):
    return NamedSharding(mesh, P(DATA_AXIS))


def local_batch_size(global_batch_size, mesh):
    """Rows this process feeds; the global batch must split evenly over devices and hosts."""
    n_dev, hosts = mesh.devices.size, jax.process_count()
    if global_batch_size % hosts:
        raise ValueError(
            f"batch_size={global_batch_size} is not divisible by the {hosts} hosts (processes) of the "
            f"job: every host feeds the same number of rows; choose a multiple of {hosts * jax.local_device_count()}")
    if global_batch_size % n_dev:
        raise ValueError(
            f"batch_size={global_batch_size} is not divisible by the {n_dev} devices of the "
            f"mesh; choose a multiple of {n_dev}")
    return global_batch_size // jax.process_count()


def to_global(tree, mesh):
    """Host-local numpy batch (leading axis = this process's rows) → global sharded arrays."""
    sharding = batch_sharded(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), tree)


def local_mesh():
    """Mesh over this process's devices only: work that each host does on its own (no
    cross-host collective), e.g. embedding its share of the utterances."""
    return make_mesh(jax.local_devices())


def replicate(tree, mesh):
    return jax.device_put(tree, replicated(mesh))
