"""The one place where the device mesh is built and where arrays get their shardings.

The mesh has two axes, `data` and `fsdp` (config.mesh: data=-1, fsdp=1 by default). The
global batch is split over both (every device gets global_batch / #devices examples).
The train state is replicated over `data` (except per-example arrays, split over every device
like the batch); over `fsdp` every large leaf (params, optimizer
state, EMA target) is split along one of its dimensions (ZeRO-3 / FSDP): XLA all-gathers
a weight where a layer needs it and reduce-scatters its gradient. fsdp=1 is pure data
parallelism; data=1 is pure FSDP. Method code never names a mesh axis: it gets its sharding
from jax.jit's in/out shardings, set here.
"""
import itertools
import math
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)  # the batch is split over every device
# Leaves smaller than this many elements (biases, BatchNorm scales, the step counter) stay
# replicated under FSDP: gathering them would cost more in collective latency than the
# memory they would save.
FSDP_MIN_SIZE = 2 ** 12
# A method's per-example state (pseudo-labels, a memory bank: one row per training example)
# lives under this key of its method state; those arrays are split over the devices along
# their first (example) axis instead of being replicated.
PER_EXAMPLE_KEY = "per_example"


def make_mesh(num_devices: int | None = None, data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
    """A (data, fsdp) mesh over all (or the first `num_devices`) devices.

    `devices`: the devices to lay out (default jax.devices()); python -m ssl_jax.compile passes
    a TPU topology's compile-only devices here, so its mesh is the one training would build.

    `data=-1` takes the devices `fsdp` leaves. Devices are laid out by
    mesh_utils.create_device_mesh (the physical topology on TPU), with `fsdp` the inner axis,
    so that the heavier FSDP collectives run between the closest devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    if num_devices is not None and num_devices > 0:
        if num_devices > len(devices):
            raise ValueError(
                f"config.mesh.num_devices={num_devices} but only {len(devices)} devices are "
                "visible; lower it or set it to -1 to use every device.")
        devices = devices[:num_devices]
    n = len(devices)
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"config.mesh.fsdp={fsdp} does not divide the {n} devices; set it to a "
                         f"divisor of {n} (1 = pure data parallelism).")
    if data == -1:
        data = n // fsdp
    if data * fsdp != n:
        raise ValueError(f"config.mesh.data={data} x config.mesh.fsdp={fsdp} != {n} devices; set "
                         "--config.mesh.data=-1 to use the devices fsdp leaves.")
    # allow_split_physical_axes only acts where no set of the torus axes multiplies to an axis
    # size (fsdp=8 on v4:4x4x4 or v5e:4x4): it then splits a physical axis between data and
    # fsdp rather than refuse the run; elsewhere the layout is the whole-axis one.
    layout = mesh_utils.create_device_mesh((data, fsdp), devices=devices, allow_split_physical_axes=True)
    mesh = Mesh(layout, BATCH_AXES)
    open_cpu_collectives(mesh)
    return mesh


def mesh_from_config(mesh_cfg, devices=None) -> Mesh:
    """make_mesh from a complete config.mesh section (num_devices, data, fsdp), over `devices`
    (default: jax.devices())."""
    return make_mesh(mesh_cfg.num_devices, mesh_cfg.data, mesh_cfg.fsdp, devices=devices)


def batch_shards(mesh: Mesh) -> int:
    """Into how many pieces the batch axis is split (every device holds one)."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch_divisible(global_batch_size: int, mesh: Mesh) -> None:
    """Fail with one clear message if the global batch cannot be split over the mesh."""
    n = batch_shards(mesh)
    if global_batch_size % n or global_batch_size % jax.process_count():
        raise ValueError(
            f"global_batch_size={global_batch_size} is not divisible by the {n} devices of "
            f"the mesh ({jax.process_count()} processes). Set "
            f"--config.global_batch_size to a multiple of {n}.")


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device (`data` x `fsdp`), the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


REPLICATED, BATCH_ROWS = P(), P(BATCH_AXES)  # specs for constrain_in_step


def constrain_in_step(x: jax.Array, spec: P) -> jax.Array:
    """x constrained to `spec` (REPLICATED: whole on every device; BATCH_ROWS: its leading axis
    split like the batch) when traced under a mesh (the train step is:
    ssl_jax.train.step.compile_step); unchanged otherwise. For arrays whose layout XLA would
    otherwise derive badly from their neighbours: small arrays a step keeps replicated (a
    queue's new rows, the rank monitor's sample), which it may split like the batch and then
    move with all-to-alls and permutes, and rows of replicated state processed like batch rows
    (SwAV's queue), which every device would otherwise compute in full."""
    if jax.sharding.get_abstract_mesh().empty:
        return x
    return jax.lax.with_sharding_constraint(x, spec)


def fsdp_spec(shape: tuple, fsdp: int) -> P:
    """The PartitionSpec of one state leaf under FSDP of size `fsdp`.

    Split along the largest dimension that `fsdp` divides (the last one on ties: the output
    channels of a conv or dense kernel); replicated if the leaf is small or no dimension is
    divisible.
    """
    if fsdp == 1 or math.prod(shape) < FSDP_MIN_SIZE:
        return P()
    dims = [i for i, d in enumerate(shape) if d % fsdp == 0]
    if not dims:
        return P()
    axis = max(dims, key=lambda i: (shape[i], i))
    return P(*[FSDP_AXIS if i == axis else None for i in range(len(shape))])


def _is_per_example(path) -> bool:
    return any(getattr(k, "key", None) == PER_EXAMPLE_KEY for k in path)


def state_sharding(state: Any, mesh: Mesh) -> Any:
    """Sharding for every leaf of the train state (arrays or ShapeDtypeStructs): replicated
    over `data`, split by `fsdp_spec` over `fsdp`; per-example arrays (under a
    PER_EXAMPLE_KEY dict: example axis first) split along that axis like the batch, when it
    divides.

    An ensemble's state (ssl_jax.methods.ensemble.EnsembleState) names in `stacked_fields` the
    fields whose leaves carry a leading block axis: that axis is never split (every device holds
    every block, each block's step is the 1-block step), and the rules above apply to the rest
    of the leaf's shape, so FSDP splits a real parameter axis."""
    fsdp, shards = mesh.shape[FSDP_AXIS], batch_shards(mesh)
    stacked = tuple(getattr(state, "stacked_fields", ()))

    def sharding(path, x):
        shape, lead = tuple(np.shape(x)), ()
        if stacked and path and getattr(path[0], "name", None) in stacked:
            shape, lead = shape[1:], (None,)
        if _is_per_example(path) and shape and shape[0] % shards == 0:
            return NamedSharding(mesh, P(*lead, BATCH_AXES))
        return NamedSharding(mesh, P(*lead, *fsdp_spec(shape, fsdp)))

    return jax.tree_util.tree_map_with_path(sharding, state)


def shard_batch(host_batch: Any, mesh: Mesh) -> Any:
    """This process's slice of the global batch (NumPy) -> global jax.Arrays on the mesh."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), host_batch)


def from_host(tree: Any, shardings: Any) -> Any:
    """Global jax.Arrays with `shardings` (a matching pytree) from a pytree of host arrays that
    every process holds in full (e.g. `to_host`'s output): each device takes its block."""
    def put(x, sharding):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
    return jax.tree.map(put, tree, shardings)


def to_host(tree: Any) -> Any:
    """NumPy copies of a pytree of jax.Arrays, whatever their sharding, on every process
    (an FSDP-sharded or multi-host array is gathered first)."""
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return np.asarray(jax.device_get(x))
    return jax.tree.map(get, tree)


# Longer than any skew between processes that a barrier waits out (one compiling a large
# network minutes before another on a loaded machine), shorter than forever.
BARRIER_TIMEOUT_S = 30 * 60
_barrier_uses: dict[str, int] = {}
_opened_meshes: set = set()


def barrier(name: str) -> None:
    """Wait until every process has reached the barrier `name` (nothing for one process).

    A barrier of the coordination service (jax.distributed), not a collective: no program to
    compile, and no gloo time limit (below). Every process passes the same names in the same
    order; a name may be reused (each use is numbered)."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed  # the client jax.distributed.initialize made (no public accessor)
    use = _barrier_uses[name] = _barrier_uses.get(name, 0) + 1
    distributed.global_state.client.wait_at_barrier(f"ssl_jax:{name}:{use}", timeout_in_ms=BARRIER_TIMEOUT_S * 1000)


def open_cpu_collectives(mesh: Mesh) -> None:
    """Open gloo's connections for every group of `mesh`'s axes while the processes are in step,
    where the mesh spans the CPU devices of every process (nothing elsewhere).

    Gloo allows 30 s for the first collective over a set of devices to find every process (its
    context set-up, a fixed time); one process compiling a step a minute after another (a
    loaded machine) then fails with "Gloo context initialization failed: DEADLINE_EXCEEDED".
    A later collective over an opened set waits as long as it takes (measured). So: a barrier,
    then one tiny sum over each group of axes the programs on this mesh can reduce over.
    Once per mesh layout."""
    devices = list(mesh.devices.flat)
    key = (tuple(d.id for d in devices), mesh.axis_names, mesh.devices.shape)
    if (jax.process_count() == 1 or key in _opened_meshes or any(d.platform != "cpu" for d in devices)
            or {d.process_index for d in devices} != set(range(jax.process_count()))):
        return
    _opened_meshes.add(key)
    barrier("open_cpu_collectives")
    split = tuple(a for a in mesh.axis_names if mesh.shape[a] > 1)  # size-1 axes reduce nothing
    groups = [axes for r in range(1, len(split) + 1) for axes in itertools.combinations(split, r)]
    one_per_device = batch_sharding(mesh)
    ones = jax.make_array_from_callback((mesh.devices.size,), one_per_device, lambda index: np.ones((1,), np.float32))
    sums = jax.jit(jax.shard_map(lambda x: [jax.lax.psum(x, axes) for axes in groups], mesh=mesh,
                                 in_specs=one_per_device.spec, out_specs=one_per_device.spec))(ones)
    jax.block_until_ready(sums)  # one program, a sum over each group


def initialize_distributed(auto: bool = False, coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None) -> None:
    """jax.distributed.initialize() for a multi-process run; nothing for a single process.

    `auto`: the coordinator, process count and id come from the cluster (Cloud TPU metadata,
    SLURM, Open MPI). Otherwise all three are given explicitly (a local multi-process run,
    launch/local_multiprocess.sh). CPU devices of different processes talk over gloo.
    """
    explicit = (coordinator_address, num_processes, process_id)
    if not auto and all(v is None for v in explicit):
        return
    if not auto and any(v is None for v in explicit):
        raise ValueError("--coordinator_address, --num_processes and --process_id go together: "
                         "give all three, or --multihost to read them from the cluster.")
    if not auto and not 0 <= process_id < num_processes:
        raise ValueError(f"--process_id={process_id} must be in [0, --num_processes={num_processes}).")
    # Only the CPU client uses it; GPU and TPU have their own collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if auto:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator_address, num_processes=num_processes, process_id=process_id)
