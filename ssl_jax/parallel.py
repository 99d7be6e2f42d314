"""The one place where the device mesh is built and where arrays get their shardings.

The global batch is sharded over the mesh axis `data`; the train state is replicated.
Every sharding decision of the library goes through the functions here, so adding an
`fsdp` or `model` axis means changing `state_sharding` (and the mesh shape), not the step.
"""
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over all (or the first `num_devices`) devices, axis name `data`."""
    devices = jax.devices()
    if num_devices is not None and num_devices > 0:
        if num_devices > len(devices):
            raise ValueError(
                f"config.mesh.num_devices={num_devices} but only {len(devices)} devices are "
                "visible; lower it or set it to -1 to use every device.")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def check_batch_divisible(global_batch_size: int, mesh: Mesh) -> None:
    """Fail with one clear message if the global batch cannot be split over the mesh."""
    n = mesh.shape[DATA_AXIS]
    if global_batch_size % n or global_batch_size % jax.process_count():
        raise ValueError(
            f"global_batch_size={global_batch_size} is not divisible by the {n} devices of "
            f"the `data` axis ({jax.process_count()} processes). Set "
            f"--config.global_batch_size to a multiple of {n}.")


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`, the rest replicated."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def state_sharding(state: Any, mesh: Mesh) -> Any:
    """Sharding for every leaf of the train state: replicated (pure data parallelism)."""
    return jax.tree.map(lambda _: replicated(mesh), state)


def shard_batch(host_batch: Any, mesh: Mesh) -> Any:
    """This process's slice of the global batch (NumPy) -> global jax.Arrays on the mesh."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), host_batch)
