"""Compile a run for a Cloud TPU slice on this machine, before renting it:

    pip install -e ".[tpu]"        # libtpu, the TPU compiler (no TPU needed)
    python -m ssl_jax.compile --config=configs/byol.py:imagenet --topology=v4:4x4x4

builds the run exactly as training would (ssl_jax.train.loop.build: the same config, method,
optimizer and schedules; the mesh of `config.mesh` laid out over the topology's devices; the
state's and the global batch's shardings of ssl_jax.parallel; the train step of
ssl_jax.train.step and the evaluation feature pass of ssl_jax.train.features), compiles the train
step and the feature pass for that TPU topology from abstract shapes (jax.eval_shape: nothing of
ImageNet size is allocated on the host), and prints per device: HBM used against the chip's
capacity, FLOPs per image against an analytic count, collective bytes against the ideal for the
mesh, and a step-time ESTIMATE turned into images/s per chip and the preset's wall-clock. A
program that does not fit is refused by the TPU compiler itself (RESOURCE_EXHAUSTED): the report
then gives the memory it asked for and the state's largest leaves per device.

The estimate is a roofline bound, not a measurement: max(FLOPs / peak FLOP/s, bytes accessed /
HBM bandwidth) per device, with the chips' published peaks (CHIPS). It ignores collective time,
input pipeline stalls and kernel inefficiency, so real steps are slower; XLA's own cost-model
time (`cost_analysis()['optimal_seconds']`) is shown beside it and used only where it is
positive and not below the bound (it came back negative for v3).

A staged run (configs/fussl.py) is several trainings, each its own program: --phase names the one
to compile (`phase_config`: 1, 2a or 2b; 1 or 2 for the progressive presets).

A dataset that is not prepared on this machine (ImageNet usually is not) is described to TFDS
from its published split sizes (PUBLISHED_SPLITS) in a metadata-only data_dir, so the run's steps
per epoch, per-example state and schedules are those of the real dataset.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import re
import sys
import tempfile
from typing import Any

# Chip generation -> (device_kind prefix, peak bf16 FLOP/s per chip, HBM bytes per chip, HBM
# bytes/s per chip, JAX devices per chip, source). v3 shows each of a chip's 2 TensorCores as
# a device; v4 and v5p run megacore (one device per chip), v5e and v6e have one core per chip.
# Capacities as the pages give them: GiB for v3, v4, v5e; GB (10^9) for v5p and v6e.
GiB = 2 ** 30
CHIPS = {
    "v3": ("TPU v3", 123e12, 32 * GiB, 900e9, 2, "cloud.google.com/tpu/docs/v3 (123 TFLOPs, 32 GiB, 900 GB/s per chip)"),
    "v4": ("TPU v4", 275e12, 32 * GiB, 1200e9, 1, "cloud.google.com/tpu/docs/v4 (275 TFLOPs, 32 GiB, 1200 GB/s per chip)"),
    "v5e": ("TPU v5 lite", 197e12, 16 * GiB, 819e9, 1, "cloud.google.com/tpu/docs/v5e (197 TFLOPs, 16 GiB, 819 GB/s per chip)"),
    "v5p": ("TPU v5", 459e12, 95 * 10 ** 9, 2765e9, 1, "cloud.google.com/tpu/docs/v5p (459 TFLOPs, 95 GB, 2765 GB/s per chip)"),
    "v6e": ("TPU v6 lite", 918e12, 32 * 10 ** 9, 1640e9, 1, "cloud.google.com/tpu/docs/v6e (918 TFLOPs, 32 GB, 1640 GB/s per chip)"),
}
# Split sizes of datasets a preset names, for compiling where the data is not prepared
# (TFDS catalog: imagenet2012 5.1.0).
PUBLISHED_SPLITS = {"imagenet2012": {"train": 1_281_167, "validation": 50_000}}
# Custom calls that only the CPU backend has (oneDNN convolutions, LAPACK, ...): none may
# appear in a TPU program.
CPU_ONLY_CALL = re.compile(r'custom_call_target="(ssl_jax_onednn[^"]*|lapack[^"]*|__onednn[^"]*|mkl[^"]*)"')


@dataclasses.dataclass(frozen=True)
class Chip:
    generation: str
    peak_flops: float      # per chip, bf16
    hbm_bytes: int         # per chip
    hbm_bandwidth: float   # bytes/s per chip
    devices_per_chip: int
    source: str

    @property
    def device_hbm(self) -> int:
        return self.hbm_bytes // self.devices_per_chip


def chip(generation: str) -> Chip:
    if generation not in CHIPS:
        raise ValueError(f"unknown TPU generation {generation!r}; one of {sorted(CHIPS)}.")
    _, flops, hbm, bw, per_chip, source = CHIPS[generation]
    return Chip(generation, flops, hbm, bw, per_chip, source)


def topology_devices(topology: str) -> tuple[list, Chip]:
    """The compile-only devices of a TPU topology 'GEN:AxB[xC]' (e.g. v4:2x2x4) and its chip.

    Needs libtpu (pip install -e ".[tpu]"); no TPU is attached or contacted."""
    generation, _, shape = topology.partition(":")
    if not shape or not re.fullmatch(r"\d+(x\d+){1,2}", shape):
        raise ValueError(f"--topology={topology!r} is not GEN:AxB or GEN:AxBxC (e.g. v5e:4x4, v4:2x2x4).")
    spec = chip(generation)
    try:
        import libtpu  # noqa: F401  (the TPU compiler; jax finds it through this package)
    except ImportError:
        raise ValueError("compiling for a TPU needs libtpu: pip install -e \".[tpu]\" "
                         "(the jax[tpu] extra of the pinned jax).") from None
    # libtpu takes a host-wide lock (/tmp/libtpu_lockfile) for the TPU it would drive; a
    # compile-only client drives none, and a second compile (or a test run beside another)
    # would otherwise fail to load it.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies
    # v4 runs megacore on Cloud TPU VMs (one JAX device per chip); without the option the
    # topology would list its two TensorCores as two devices.
    kwargs = {"chip_config_name": "megacore"} if generation == "v4" else {}
    devices = topologies.get_topology_desc(platform="tpu", topology_name=f"{generation}:{shape}", **kwargs).devices
    kind = devices[0].device_kind
    if not kind.startswith(CHIPS[generation][0]) or (generation == "v5p" and "lite" in kind):
        raise ValueError(f"topology {topology} gave devices of kind {kind!r}, not {CHIPS[generation][0]!r}.")
    return list(devices), spec


# ------------------------------------------------------------------------------ the run's program

def _with_data(config):
    """config with its train split described to TFDS: itself if the dataset is prepared here,
    else a metadata-only data_dir from PUBLISHED_SPLITS (and a note saying so)."""
    from ssl_jax.data import sources
    data = config.data
    try:
        sources.dataset_info(data.dataset, data.train_split, data.data_dir)
        return config, None
    except (FileNotFoundError, ValueError) as e:
        if data.dataset not in PUBLISHED_SPLITS:
            raise ValueError(f"{data.dataset} is not prepared on this machine and its split sizes are not "
                             f"in ssl_jax.compile.PUBLISHED_SPLITS: prepare it or add them ({e}).") from None
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import naming, splits as splits_lib
    root = tempfile.mkdtemp(prefix="ssl_jax_compile_tfds_")
    builder = tfds.builder(data.dataset, data_dir=root)
    builder.info.set_splits(splits_lib.SplitDict([
        splits_lib.SplitInfo(name=name, shard_lengths=[n], num_bytes=0, filename_template=naming.ShardedFileTemplate(
            data_dir=builder.data_dir, dataset_name=builder.name, split=name, filetype_suffix="tfrecord"))
        for name, n in PUBLISHED_SPLITS[data.dataset].items()]))
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)
    config.data.data_dir = root
    sizes = ", ".join(f"{k} {v:,}" for k, v in PUBLISHED_SPLITS[data.dataset].items())
    return config, f"{data.dataset} is not prepared here: its published split sizes ({sizes}) stand in for it"


# A staged run's trainings (ssl_jax.fussl): --phase names one; each is an ordinary run and compiles
# as one. Progressive cycles differ only in their seeds and init files, so cycle 1 stands for all.
PHASES = {"sequential": ("1", "2a", "2b"), "progressive": ("1", "2")}


def phase_config(config, phase: str | None):
    """(the run to compile, notes): `config` itself for a single-stage run, else its training
    `phase` (FUSSL: '1' the ensemble, '2a' / '2b' phase 2 with all layers / stem..stage 3
    frozen, or '1' / '2' of a progressive cycle). Phase 2 reads its pseudo-labels when its
    method is built; the compile needs only their shape, so a labels file of the training set's
    size (every image labelled pseudo-class 0) is written to a temporary directory for it."""
    staged = config.get("method") == "fussl"
    if not staged:
        if phase:
            raise ValueError(f"--phase={phase} is for staged runs (configs/fussl.py); {config.get('method')!r} "
                             "is one run: leave --phase out.")
        return config, []
    from ssl_jax import fussl
    f = config.fussl
    phases = PHASES.get(f.schedule, ())
    if phase not in phases:
        raise ValueError(f"configs/fussl.py is a staged run of separate trainings; compile one at a time with "
                         f"--phase={' | '.join(phases)} (schedule {f.schedule!r}), e.g. "
                         f"--config=configs/fussl.py:imagenet --phase=1." + (f" Got --phase={phase}." if phase else ""))
    what = {"1": f"phase 1 (config.phase1: an ensemble of {f.ensemble_size} {f.baseline} blocks)",
            "2a": f"phase 2a (config.phase2, all layers, {f.e2_full} epochs)",
            "2b": "phase 2b (config.phase2, stem..stage 3 frozen, the remaining epochs)",
            "2": "phase 2 of a cycle (config.phase2, all layers)"}[phase]
    note = f"FUSSL {what}" + (", cycle 1 (the cycles differ in seed and init only)"
                              if f.schedule == "progressive" else "")
    if phase == "1":
        return (fussl.cycle_phase1_config(config, 1, "") if f.schedule == "progressive"
                else config.phase1.copy_and_resolve_references()), [note]
    phase2, data_note = _with_data(config.phase2.copy_and_resolve_references())
    labels = _shape_only_labels(phase2, int(f.ensemble_size))
    if f.schedule == "progressive":
        run = fussl.cycle_phase2_config(config, 1, labels, "")
    else:
        probe = config.copy_and_resolve_references()
        probe.phase2 = phase2
        run = fussl.phase2_configs(probe, labels)[0 if phase == "2a" else 1]
    run.init_weights = ""  # the compile builds abstract shapes: no weights are read
    return run, [note] + ([data_note] if data_note else []) + [
        "pseudo-labels: a labels file of the training set's shape stands in for phase 1's (the program "
        "depends on their shape only)"]


def _shape_only_labels(config, ensemble_size: int) -> str:
    """A FUSSL labels file (ssl_jax.methods.fussl_phase2.write_labels) for config's training set
    with every image labelled pseudo-class 0: its path, in a new temporary directory."""
    import numpy as np
    from ssl_jax.data import pipeline
    from ssl_jax.methods import fussl_phase2
    fingerprint = pipeline.training_fingerprint(config.data)
    shape = (fingerprint["num_examples"], ensemble_size)
    weights = np.zeros(shape, np.float32)
    weights[:, 0] = 1.0
    path = os.path.join(tempfile.mkdtemp(prefix="ssl_jax_compile_labels_"), "fussl_labels.npz")
    fussl_phase2.write_labels(path, np.zeros(shape, np.int32), weights, fingerprint, chosen_block=0,
                              block_errors=np.zeros(ensemble_size), config={"compile": "shape only"})
    return path


def batch_spec(config, method) -> dict:
    """The global batch the input pipeline feeds the step (ssl_jax.data.pipeline.pretrain_iterator),
    as ShapeDtypeStructs: {'views': (float32 [B, S_v, S_v, 3], ...), 'label', 'index': int32 [B]}."""
    import jax
    import jax.numpy as jnp
    from ssl_jax.data import augment
    b, views = int(config.global_batch_size), list(config.data.views)
    sizes = [augment.view_size(dict(views[k % len(views)]), config.data.image_size) for k, _ in method.view_plan]
    return {"views": tuple(jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32) for s in sizes),
            "label": jax.ShapeDtypeStruct((b,), jnp.int32), "index": jax.ShapeDtypeStruct((b,), jnp.int32)}


@dataclasses.dataclass
class Program:
    """What `build_programs` compiled, with what the report needs beside it."""
    config: Any
    mesh: Any
    state: Any                # abstract TrainState (ShapeDtypeStructs)
    batch: Any                # abstract global batch
    train: Any                # jax.stages.Compiled of the train step, or OutOfMemory
    train_fn: Any             # the (uncompiled) train step, for the analytic FLOP count
    features: Any             # jax.stages.Compiled of the evaluation feature pass, or OutOfMemory
    eval_batch: int
    steps_per_epoch: int
    total_steps: int
    notes: list
    blocks: int = 1           # an ensemble's m: its train step maps one block's step m times

    @property
    def looped(self) -> bool:
        """The ensemble's blocks run as one while loop (config.ensemble.execution 'loop', resolved
        for the target devices by build_programs), whose body XLA's cost analysis counts once."""
        return self.blocks > 1 and self.config.ensemble.execution == "loop"


@dataclasses.dataclass(frozen=True)
class OutOfMemory:
    """The TPU compiler's refusal of a program that does not fit in HBM (it does not produce an
    executable): its message, and the bytes it said were required and available (None where
    the message does not give them)."""
    message: str
    required_bytes: int | None
    available_bytes: int | None


# The compiler words its refusal two ways: "... required for HLO temporaries (32.80G) exceeds
# available HBM (15.75G)" and "... Used 15.76G of 15.75G hbm. Exceeded hbm capacity by 16.38M."
_OOM_SIZES = (re.compile(r"\(([\d.]+)([KMGT])\)"), re.compile(r"Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT]) hbm"))


def out_of_memory(message: str) -> OutOfMemory | None:
    """An OutOfMemory for a compile error that is XLA's 'Ran out of memory' (RESOURCE_EXHAUSTED),
    else None. Sizes like '(32.80G)' are read as binary units (XLA prints GiB)."""
    if "RESOURCE_EXHAUSTED" not in message or "memory" not in message:
        return None
    line = next((l for l in message.splitlines() if "RESOURCE_EXHAUSTED" in l), message).strip()
    found = _OOM_SIZES[0].findall(line) or [pair for match in _OOM_SIZES[1].findall(line)
                                            for pair in (match[:2], match[2:])]
    sizes = [int(float(v) * 2 ** (10 * "KMGT".index(u) + 10)) for v, u in found]
    return OutOfMemory(line[line.index("RESOURCE_EXHAUSTED"):], *(sizes + [None, None])[:2])


def compile_lowered(lowered):
    """lowered.compile() for the TPU (without the persistent cache), or an OutOfMemory where the
    program does not fit."""
    import jax
    with _no_persistent_cache():
        try:
            return lowered.compile()
        except jax.errors.JaxRuntimeError as e:
            oom = out_of_memory(str(e))
            if oom is None:
                raise
            return oom


@contextlib.contextmanager
def _no_persistent_cache():
    """JAX's persistent compilation cache off for the block: a compile-only TPU executable
    cannot be read back without a TPU client (each read was a warning and a recompile)."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache
    before = jax.config.jax_enable_compilation_cache
    # JAX decides once per process whether the cache is used: reset, so the setting is read again.
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", before)
        compilation_cache.reset_cache()


def build_programs(config, devices) -> Program:
    """Build the run of `config` as ssl_jax.train.loop does, over `devices` (a TPU topology's),
    and compile its train step and evaluation feature pass from abstract shapes."""
    import jax
    import jax.numpy as jnp
    from ssl_jax import parallel
    from ssl_jax.models.conv import resolve_conv_backend
    from ssl_jax.methods import ensemble
    from ssl_jax.train import loop
    from ssl_jax.train import step as step_lib

    config = copy.deepcopy(config)
    notes = []
    # 'auto' resolved for the target devices, not for this host (which would pick oneDNN's
    # CPU custom calls on one CPU device).
    backend = resolve_conv_backend(config.model.conv_backend, devices=devices)
    config.model.conv_backend = backend
    if "ensemble" in config:  # the same for how an ensemble runs its blocks
        config.ensemble.execution = ensemble.execution_of(config.ensemble, devices)
    config, note = _with_data(config)
    if note:
        notes.append(note)
    mesh = parallel.mesh_from_config(config.mesh, devices=devices)
    # Each host of the slice feeds global_batch / hosts examples (parallel.shard_batch).
    hosts = len({d.process_index for d in mesh.devices.flat})
    if config.global_batch_size % hosts:
        raise ValueError(f"global_batch_size={config.global_batch_size} does not split over the {hosts} hosts of "
                         f"the slice; set --config.global_batch_size to a multiple of {hosts}.")
    info, spe, n_steps, method, optimizer, lr_schedule = loop.build(config, mesh)
    s = config.data.image_size
    sample = jnp.zeros((2, s, s, 3), jnp.float32)
    make = lambda rng: step_lib.create_state(method, optimizer, rng, sample, info["num_classes"])
    state = jax.eval_shape(make, jax.random.PRNGKey(config.seed))
    batch = batch_spec(config, method)
    train_fn = step_lib.make_train_step(method, optimizer, lr_schedule, info["num_classes"])
    train = compile_lowered(step_lib.compile_step(train_fn, state, mesh).lower(state, batch))

    # The evaluation feature pass (kNN, linear probe, clustering): the encoder in inference
    # mode on eval.batch_size centre crops, params replicated (ssl_jax.train.features).
    eval_batch = int(config.eval.batch_size)
    shards = parallel.batch_shards(mesh)
    if eval_batch % shards:
        eval_batch = -(-eval_batch // shards) * shards
        notes.append(f"eval.batch_size {config.eval.batch_size} rounded up to {eval_batch}, a multiple of "
                     f"the {shards} devices (the evaluation needs it too: set --config.eval.batch_size)")
    feats = compile_lowered(lower_features(method, state, mesh, eval_batch, s))
    blocks = ensemble.num_blocks(method)
    program = Program(config, mesh, state, batch, train, train_fn, feats, eval_batch, spe, n_steps, notes, blocks)
    if program.looped:
        notes.append(f"an ensemble of {blocks} blocks: the step maps one block's step over them (jax.lax.map, a "
                     f"while loop XLA's cost analysis counts once), so the train step's FLOPs and bytes "
                     f"accessed are the counted ones x {blocks}; its collectives per step are read with the "
                     f"loop's trip count")
    return program


def lower_features(method, state, mesh, eval_batch: int, image_size: int):
    """The evaluation feature pass lowered for abstract `state`: the encoder the evaluation reads
    (an ensemble's config.ensemble.eval_block, as ssl_jax.train.loop evaluates it) on eval_batch
    centre crops."""
    import jax
    import jax.numpy as jnp
    from ssl_jax.methods import ensemble
    from ssl_jax.train import features as features_lib
    evaluated = jax.eval_shape(lambda st: ensemble.evaluated_state(method, st), state)
    encode = features_lib.make_encode_fn(ensemble.block_method(method).encoder, mesh)
    return encode.lower(evaluated.params["encoder"], evaluated.batch_stats.get("encoder", {}),
                        jax.ShapeDtypeStruct((eval_batch, image_size, image_size, 3), jnp.float32))


# ------------------------------------------------------------------------------ analytic FLOPs

def _dot_flops(eqn) -> int:
    (lc, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lc)


def _valid_taps(size_in: int, size_out: int, kernel: int, stride: int, pad_lo: int, lhs_dilation: int,
                rhs_dilation: int) -> int:
    """(output position, kernel tap) pairs of one spatial dimension that read a real input
    element: not the zero padding, not a hole of a dilated (transposed) input."""
    last = (size_in - 1) * lhs_dilation
    return sum(1 for o in range(size_out) for k in range(kernel)
               if 0 <= (p := o * stride - pad_lo + k * rhs_dilation) <= last and p % lhs_dilation == 0)


def _conv_flops(eqn) -> int:
    """2 x the multiply-adds of a convolution that touch real input (the zero-padding taps left
    out, as XLA's count does: a 3x3 'SAME' convolution on a 2x2 map does 4/9 of the full count)."""
    lhs, rhs, out = (eqn.invars[0].aval.shape, eqn.invars[1].aval.shape, eqn.outvars[0].aval.shape)
    dn, p = eqn.params["dimension_numbers"], eqn.params
    spatial = len(dn.rhs_spec) - 2
    taps = 1
    for i in range(spatial):
        taps *= _valid_taps(lhs[dn.lhs_spec[2 + i]], out[dn.out_spec[2 + i]], rhs[dn.rhs_spec[2 + i]],
                            p["window_strides"][i], p["padding"][i][0], (p["lhs_dilation"] or (1,) * spatial)[i],
                            (p["rhs_dilation"] or (1,) * spatial)[i])
    # Output batch x output features x input features per group x valid taps.
    return 2 * out[dn.out_spec[0]] * out[dn.out_spec[1]] * rhs[dn.rhs_spec[1]] * taps


def matmul_flops(jaxpr) -> int:
    """2 x multiply-adds of every dot_general and convolution (zero-padding taps excluded) in a
    (closed) jaxpr, nested
    jaxprs included (a scan's body times its length; a cond's costliest branch; a while
    loop's body once, its trip count being unknown)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        subs = [v for v in eqn.params.values() if hasattr(v, "eqns") or hasattr(getattr(v, "jaxpr", None), "eqns")]
        branches = eqn.params.get("branches")
        if name == "cond" and branches:
            total += max(matmul_flops(b) for b in branches)
            continue
        inner = sum(matmul_flops(v) for v in subs)
        total += inner * int(eqn.params.get("length", 1)) if name == "scan" else inner
    return total


def analytic_flops(train_fn, state, batch) -> int:
    """Matmul and convolution FLOPs of one train step over the global batch, counted from the
    step's jaxpr (the program as written: forward, gradients, forward-only target networks)
    before XLA sees it. Elementwise work (BatchNorm, activations, the optimizer) is left out."""
    import jax
    return matmul_flops(jax.make_jaxpr(train_fn)(state, batch))


# ------------------------------------------------------------------------------ the report

def cpu_only_calls(hlo_text: str) -> list[str]:
    """CPU-only custom-call targets in an HLO text (none may be in a TPU program)."""
    return sorted(set(CPU_ONLY_CALL.findall(hlo_text)))


def custom_call_targets(hlo_text: str) -> list[str]:
    return sorted(set(re.findall(r'custom_call_target="([^"]+)"', hlo_text)))


def used_bytes(memory) -> int:
    """Per-device bytes a compiled program needs: XLA's peak where it reports one, else its
    arguments + outputs + temporaries - aliased (donated) buffers + code."""
    peak = int(getattr(memory, "peak_memory_in_bytes", 0) or 0)
    if peak > 0:
        return peak
    return int(memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
               - memory.alias_size_in_bytes + memory.generated_code_size_in_bytes)


def largest_state_leaves(state, mesh, n: int = 5) -> list[tuple[str, int]]:
    """The n largest leaves of the state per device (path, bytes on one device after sharding)."""
    import jax
    import numpy as np
    from ssl_jax import parallel
    sharding = parallel.state_sharding(state, mesh)
    rows = []
    for (path, x), sh in zip(jax.tree_util.tree_flatten_with_path(state)[0], jax.tree.leaves(sharding)):
        shard = sh.shard_shape(tuple(x.shape))
        rows.append((jax.tree_util.keystr(path), int(np.dtype(x.dtype).itemsize * math.prod(shard))))
    return sorted(rows, key=lambda r: -r[1])[:n]


def largest_values(hlo_text: str, n: int = 5) -> list[tuple[str, int]]:
    """The n largest array values of the per-device HLO (shape, bytes): the activations or
    gathered weights that dominate the temporaries."""
    from ssl_jax.hlo_collectives import shape_bytes
    seen = {}
    for m in re.finditer(r"=\s*([a-z0-9]+\[[0-9,]*\])(?:\{[^}]*\})?\s+[a-z\-]+\(", hlo_text):
        seen[m.group(1)] = shape_bytes(m.group(1))
    return sorted(seen.items(), key=lambda r: -r[1])[:n]


def roofline_seconds(flops: float, bytes_accessed: float, spec: Chip) -> float:
    """Per-device lower bound of a step's time: compute- or HBM-bound, at the published peaks."""
    per_device_flops = spec.peak_flops / spec.devices_per_chip
    per_device_bw = spec.hbm_bandwidth / spec.devices_per_chip
    return max(flops / per_device_flops, bytes_accessed / per_device_bw)


def per_step_cost(cost: dict, blocks: int) -> dict:
    """XLA's cost analysis of a train step whose work is `blocks` iterations of one while loop
    (an ensemble's lax.map; XLA counts a loop body once): FLOPs and bytes accessed x blocks.
    The few ops outside the loop (stacking the views, averaging the metrics) are counted x
    blocks too: a negligible excess next to `blocks` ResNet steps."""
    if blocks == 1:
        return cost
    return dict(cost, **{k: float(cost[k]) * blocks for k in ("flops", "bytes accessed") if k in cost})


def step_estimate(cost: dict, spec: Chip) -> dict:
    """{'roofline_s', 'xla_optimal_s', 'used': 'roofline' | 'xla', 'step_s'}: XLA's cost-model
    time where positive and not below the roofline bound (it cannot beat the peaks), else the
    bound."""
    bound = roofline_seconds(float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0)), spec)
    xla = cost.get("optimal_seconds")
    xla = float(xla) if xla is not None else None
    use_xla = xla is not None and xla > 0 and xla >= 0.99 * bound
    return {"roofline_s": bound, "xla_optimal_s": xla, "used": "xla" if use_xla else "roofline",
            "step_s": xla if use_xla else bound}


def report(program: Program, spec: Chip, topology: str) -> dict:
    """Everything the command prints, as data (see `format_report`)."""
    from ssl_jax.hlo_collectives import collective_report
    config, mesh = program.config, program.mesh
    devices = int(mesh.devices.size)
    chips = devices // spec.devices_per_chip
    batch = int(config.global_batch_size)
    hosts = len({d.process_index for d in mesh.devices.flat})
    out = {"topology": topology, "chip": spec.generation, "devices": devices, "chips": chips, "hosts": hosts,
           "mesh": dict(mesh.shape), "method": config.method, "model": config.model.name,
           "dtype": config.model.dtype, "remat": bool(config.model.remat), "global_batch_size": batch,
           "steps_per_epoch": program.steps_per_epoch, "total_steps": program.total_steps,
           "chip_source": spec.source, "notes": list(program.notes)}
    if program.blocks > 1:
        out["ensemble_blocks"] = program.blocks
    for name, compiled, images in (("train", program.train, batch), ("features", program.features, program.eval_batch)):
        if isinstance(compiled, OutOfMemory):  # no executable: what the compiler said, and the state
            out[name] = {"fits": False, "hbm_used_bytes": compiled.required_bytes,
                         "hbm_capacity_bytes": spec.device_hbm, "compiler_available_bytes": compiled.available_bytes,
                         "compile_error": compiled.message,
                         "largest_state_leaves": largest_state_leaves(program.state, mesh)}
            continue
        text = compiled.as_text()
        memory = compiled.memory_analysis()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        if name == "train":
            cost = per_step_cost(cost, program.blocks if program.looped else 1)
        used = used_bytes(memory)
        rec = {"hbm_used_bytes": used, "hbm_capacity_bytes": spec.device_hbm, "fits": used <= spec.device_hbm,
               "argument_bytes": int(memory.argument_size_in_bytes), "temp_bytes": int(memory.temp_size_in_bytes),
               "flops_per_device": float(cost.get("flops", 0.0)),
               "bytes_accessed_per_device": float(cost.get("bytes accessed", 0.0)),
               "flops_per_image": float(cost.get("flops", 0.0)) * devices / images,
               "cpu_only_calls": cpu_only_calls(text), "custom_calls": custom_call_targets(text),
               "estimate": step_estimate(cost, spec)}
        rec["images_per_s_per_chip"] = images / rec["estimate"]["step_s"] / chips if rec["estimate"]["step_s"] > 0 else None
        if not rec["fits"]:
            rec["largest_values"] = largest_values(text)
        out[name] = rec
        if name == "train":
            # An ensemble's blocks are one while loop: its collectives per step (each op times
            # the loop's trip count) are read from the HLO, not scaled here.
            out["collectives"] = collective_report(text, program.state, mesh)
            if not rec["fits"]:
                rec["largest_state_leaves"] = largest_state_leaves(program.state, mesh)
    analytic = analytic_flops(program.train_fn, program.state, program.batch)
    t = out["train"]
    t["analytic_flops_per_image"] = analytic / batch
    if "estimate" in t:
        t["flops_over_analytic"] = t["flops_per_image"] / (analytic / batch) if analytic else None
        t["estimated_hours"] = program.total_steps * t["estimate"]["step_s"] / 3600
    return out


def _gib(n) -> str:
    return f"{n / GiB:.2f} GiB"


def format_report(r: dict) -> str:
    """The report as the command prints it."""
    t, f, c = r["train"], r["features"], r.get("collectives")
    lines = [f"{r['method']} ({r['model']}, {r['dtype']}{', remat' if r['remat'] else ''}) on {r['topology']}: "
             f"{r['devices']} devices ({r['chips']} chips, {r['hosts']} host{'s' if r['hosts'] != 1 else ''}), mesh "
             f"{r['mesh']}, global batch "
             f"{r['global_batch_size']}, "
             f"{r['total_steps']} steps ({r['steps_per_epoch']} per epoch)."]
    lines += [f"note: {n}." for n in r["notes"]]
    for name, rec in (("train step", t), ("eval features", f)):
        if "compile_error" in rec:
            need = _gib(rec["hbm_used_bytes"]) if rec["hbm_used_bytes"] else "more"
            lines.append(f"{name}: DOES NOT FIT: needs {need} of {_gib(rec['hbm_capacity_bytes'])} per device; the "
                         f"TPU compiler refused it: {rec['compile_error']}")
            lines += [f"  largest state leaf per device: {p} {_gib(b)}" for p, b in rec["largest_state_leaves"]]
            lines.append("  (more devices, --config.mesh.fsdp > 1, --config.model.remat=True or a smaller "
                         "--config.global_batch_size lower it)")
            continue
        lines.append(f"{name}: HBM {_gib(rec['hbm_used_bytes'])} of {_gib(rec['hbm_capacity_bytes'])} per device: "
                     f"{'fits' if rec['fits'] else 'DOES NOT FIT'} (arguments {_gib(rec['argument_bytes'])}, "
                     f"temporaries {_gib(rec['temp_bytes'])}).")
        if not rec["fits"]:
            lines += [f"  largest state leaf per device: {p} {_gib(b)}" for p, b in rec.get("largest_state_leaves", [])]
            lines += [f"  largest value in the program: {s} {_gib(b)}" for s, b in rec["largest_values"]]
        lines.append(f"{name}: CPU-only custom calls: {rec['cpu_only_calls'] or 'none'}; custom calls: "
                     f"{rec['custom_calls'] or 'none'}.")
    if c is None:  # the train step did not compile: no program to count or time
        lines.append(f"train step: {t['analytic_flops_per_image'] / 1e9:.2f} GFLOP per image analytic (matmuls and "
                     "convolutions of the step's jaxpr); no compiled program to compare, time or read collectives from.")
        return "\n".join(lines)
    lines.append(f"train step: {t['flops_per_image'] / 1e9:.2f} GFLOP per image compiled, "
                 f"{t['analytic_flops_per_image'] / 1e9:.2f} analytic (matmuls and convolutions of the step's "
                 f"jaxpr): ratio {t['flops_over_analytic']:.3f}.")
    def kinds(counts):
        return ", ".join(f"{k} {v['count']} ops {v['bytes'] / 2**20:.1f} MiB" for k, v in counts.items()
                         if k != "total") or "none"

    # The headline is what a step moves: each op times the while-loop iterations that run it
    # (FSDP's looped collective matmuls, an ensemble's blocks); reports written before that
    # count existed carry only the static one.
    static, per_step = c["collectives"], c.get("collectives_per_step") or c["collectives"]
    ratio = c.get("per_step_over_ideal", c["collective_over_ideal"])
    ideal = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in c["ideal_collective_bytes"].items() if k != "total")
    lines.append(f"collectives per device per step ({c['strategy']}): {kinds(per_step)}; ideal {ideal}; "
                 f"ratio {ratio if ratio is not None else 'n/a'}"
                 + (f" ({c['unknown_trip_loops']} loops of unknown trip count counted once)"
                    if c.get("unknown_trip_loops") else "") + ".")
    if per_step["total"]["bytes"] != static["total"]["bytes"]:
        lines.append(f"  counting each op once (a while-loop body once): {kinds(static)}; "
                     f"ratio {c['collective_over_ideal']}.")
    e = t["estimate"]
    xla = f"{e['xla_optimal_s'] * 1e3:.1f} ms" if e["xla_optimal_s"] is not None else "none"
    lines.append(f"step time ESTIMATE: roofline {e['roofline_s'] * 1e3:.1f} ms, XLA cost model {xla}; "
                 f"using the {e['used']}: {t['images_per_s_per_chip']:.0f} images/s per chip, "
                 f"{t['estimated_hours']:.1f} h for the preset's {r['total_steps']} steps.")
    lines.append("(An estimate from published peak FLOP/s and HBM bandwidth, not a measurement: it leaves out "
                 "collectives, the input pipeline and kernel inefficiency, so real steps are slower. "
                 f"Chip numbers: {r['chip_source']}.)")
    return "\n".join(lines)


def compile_report(config, topology: str, phase: str | None = None) -> dict:
    """`report` of `config` (its training `phase` for a staged run: `phase_config`) compiled for
    `topology` (the command's body)."""
    devices, spec = topology_devices(topology)
    config, notes = phase_config(config, phase)
    program = build_programs(config, devices)
    program.notes[:0] = notes
    out = report(program, spec, topology)
    if phase:
        out["phase"] = phase
    return out


def main():
    from absl import app, flags
    from ml_collections import config_flags

    from ssl_jax import cli
    config_flag = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/byol.py:imagenet.",
                                                  lock_config=False)
    topology_flag = flags.DEFINE_string("topology", None, "TPU topology GEN:AxB[xC], e.g. v4:2x2x4, v5e:4x4, "
                                        "v3:16x16 (512 v3 cores).")
    json_flag = flags.DEFINE_string("json", None, "Also write the report as JSON to this file.")
    phase_flag = flags.DEFINE_string("phase", None, "A staged run's training to compile (configs/fussl.py: 1, 2a "
                                     "or 2b; 1 or 2 for its progressive presets).")
    flags.mark_flags_as_required(["config", "topology"])

    def body(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        cli.quiet_library_logs()
        with cli.user_errors("ssl_jax.compile"):
            print(f"Compiling for {topology_flag.value} (minutes for a ResNet-50 on a small CPU)...", flush=True)
            r = compile_report(config_flag.value, topology_flag.value, phase_flag.value)
            print(format_report(r), flush=True)
            if json_flag.value:
                import json
                with open(json_flag.value, "w") as fh:
                    json.dump(r, fh, indent=2, default=str)

    # Only this process's CPU client: the TPU is a compile target, never a device here (and
    # libtpu would look for one on the host otherwise).
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(body, flags_parser=cli.parse_flags)


if __name__ == "__main__":
    sys.exit(main())
