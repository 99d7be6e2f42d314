"""Ensembles: m identically initialised copies ("blocks") of any method trained as one program
(FUSSL's phase 1, Mohamadi et al.; seed 000, Sec. 3.1 and 4.1).

config.ensemble (defaults: ssl_jax.presets.base_config):
  size        m, the number of blocks. 1 (the default) is the method as its paper has it:
              `wrap` returns the method itself, so the programs and checkpoints are exactly
              those of a run without this section.
  eval_block  the block that in-training evaluation, `python -m ssl_jax.evaluate` and
              `python -m ssl_jax.export` of the workdir read (0). One block, not an average of
              blocks: each block is trained exactly as the baseline is (its own views, its own
              BatchNorm statistics and optimizer state, no cross-block term), so a phase-1
              block is a baseline run, which is also how FUSSL's "Base" control reads (seed 000,
              Sec. 1.7); results.json then reports a baseline model, marked '+ensemble<m>'.
  execution   how the one program runs the blocks (`resolve_execution`): 'loop' (jax.lax.map,
              a while loop over one compiled block step: one block's activations live at a
              time), 'unrolled' (m copies of the block step in the program) or 'auto' (the
              default: 'unrolled' where every device is a CPU, 'loop' elsewhere). The same
              numbers either way (tested); only speed and memory differ.

What an ensemble of m > 1 is:
  * state: the 1-block TrainState with a leading block axis [m, ...] on every leaf of params
    (the online probe included), batch_stats, opt_state and method_state (EMA target, queue,
    centre, prototypes); step and rng are shared. `EnsembleState` is that TrainState; its
    `stacked_fields` tell ssl_jax.parallel to keep the block axis whole on every device (data
    parallelism replicates it, FSDP splits a real parameter axis of the rest of the leaf).
  * init: ONE initialisation copied m times (FUSSL: "we need to initialize all blocks with
    exactly identical initialization weights": output unit j then means the same pseudo-class
    in every block, which makes their votes comparable).
  * views: the input pipeline makes m times the method's views, each block its own draws
    (`view_plan`: block k's views are standard views k·S .. k·S + S − 1 of the method's S, so
    every one has its own augmentation seed). Two-view methods get 2m views per image;
    multi-crop methods m copies of their crop plan; W-MSE's d views m·d (the paper is silent
    on how its 4 views fit "2m"; a block keeps its method's own view count).
  * step: the 1-block train step (ssl_jax.train.step) mapped over the blocks in the one jitted
    program (`map_blocks`, not m jitted calls; why not jax.vmap: `Ensemble.map_step`): loss,
    BatchNorm (over the global batch, within the block), optimizer (LARS's trust ratio and
    the weight-decay masks per block, per parameter), EMA and method-state updates. The
    schedules read the shared step. Each block draws its own step randomness (W-MSE's
    sub-batches, stochastic depth) from fold_in(rng, k): the blocks differ by their data and
    their "stochastic dynamics", nothing else (FUSSL Sec. 3.1).
  * metrics: every metric is the mean over blocks, plus loss_block<k> for each block.

Methods with dataset-level refresh passes (DeepCluster, SeLa, DeepCluster-v2, DeeperCluster) are
not wrapped (one clear error): their refresh runs outside the step on one network.

For FUSSL's pseudo-labelling (part 2) this module gives:
  select_block(tree, k)   the 1-block tree of block k of a stacked tree (an EnsembleState gives a
                          TrainState; a params / batch_stats dict or a raw checkpoint dict
                          gives the same dict with the block axis indexed away).
  project(method, params, batch_stats, images) -> [m, N, D]
                          every block's online encoder + projector in inference mode (running
                          BatchNorm statistics) on images [N, H, W, C]; a pure function of the
                          stacked params / batch_stats, jit-able.
  block_method(method)    the 1-block method of an ensemble (the method itself otherwise).
  stack(tree, m)          m copies of a 1-block tree on a new leading axis.
"""

import jax
import jax.numpy as jnp

from ssl_jax.methods import common
# The stacked-state helpers live with TrainState (ssl_jax.train.state: checkpoint readers use them
# without importing the methods); re-exported here as the ensemble's API.
from ssl_jax.train.state import STACKED_FIELDS, EnsembleState, TrainState, select_block, stack  # noqa: F401

KEYS = ("size", "eval_block")
OPTIONAL_KEYS = {"execution": "auto"}  # absent from configs written before it existed
EXECUTIONS = ("auto", "unrolled", "loop")


def resolve_execution(choice: str, devices=None) -> str:
    """'unrolled' or 'loop' for config.ensemble.execution; 'auto' is 'unrolled' where every
    device is a CPU, else 'loop'. `devices`: those the step runs on (default jax.devices(); a
    compile for a TPU topology from a CPU host passes the topology's, as for conv_backend).

    Why not one answer: on XLA's CPU backend convolutions in a while loop's body run far slower
    than the same ones in the entry computation (jax-ml/jax#12868, open; matrix products are not
    affected: measured equal here). Measured (2026-12-07, 2 AMD EPYC cores with two trainings
    running beside it, benchmarks/train_step.py, SimCLR ResNet-18 x0.125, CIFAR stem, batch 256,
    oneDNN convolutions): one block's step 0.76 s; three blocks looped 19.1 s (25x), unrolled
    3.1 s; peak memory 377 MB looped against 958 MB unrolled (XLA keeps every block's
    activations live). On TPU / GPU the loop costs nothing measurable and HBM is what runs out
    (an ImageNet ResNet-50 ensemble), so there the loop is kept."""
    if choice not in EXECUTIONS:
        raise ValueError(f"config.ensemble.execution={choice!r} is not one of {EXECUTIONS}.")
    if choice != "auto":
        return choice
    devices = list(jax.devices() if devices is None else devices)
    return "unrolled" if all(d.platform == "cpu" for d in devices) else "loop"


def map_blocks(f, xs, execution: str):
    """f over the leading block axis of the tree xs, outputs stacked on a new leading axis:
    jax.lax.map (`execution` 'loop') or a fully unrolled scan ('unrolled'); resolve_execution."""
    if execution == "loop":
        return jax.lax.map(f, xs)
    return jax.lax.scan(lambda carry, x: (carry, f(x)), None, xs, unroll=True)[1]


def num_blocks(method) -> int:
    """m for an ensemble, 1 for a plain method."""
    return method.num_blocks if isinstance(method, Ensemble) else 1


def block_method(method):
    """The method one block trains (the method itself when it is not an ensemble)."""
    return method.block if isinstance(method, Ensemble) else method


def evaluated_state(method, state):
    """The 1-block TrainState the evaluation reads: block config.ensemble.eval_block of an
    ensemble's state, a plain method's state as it is."""
    return select_block(state, method.eval_block) if isinstance(method, Ensemble) else state


def project(method, params, batch_stats, images: jax.Array) -> jax.Array:
    """[m, N, D]: every block's online encoder then projector, in inference mode, on images
    [N, H, W, C]; params / batch_stats stacked ([m, ...] leaves, the probe may be there)."""
    block = block_method(method)
    if "projector" not in block.heads:
        raise ValueError(f"{block.name} has no projector head (its heads: {sorted(block.heads)}).")

    def one(p, s):
        h = common.apply_eval(block.encoder, p["encoder"], s.get("encoder", {}), images)
        return common.apply_eval(block.heads["projector"], p["projector"], s.get("projector", {}), h)

    execution = method.execution if isinstance(method, Ensemble) else "unrolled"  # 1 block: no loop needed
    return map_blocks(lambda pair: one(*pair), (params, batch_stats), execution)  # as map_step


def execution_of(section, devices=None) -> str:
    """resolve_execution of a config.ensemble section's execution (its default where an older
    config.json lacks the key), for `devices`."""
    return resolve_execution(section.get("execution", OPTIONAL_KEYS["execution"]), devices)


def _checked(section) -> tuple[int, int, str]:
    known = set(KEYS) | set(OPTIONAL_KEYS)
    unknown, missing = set(section.keys()) - known, set(KEYS) - set(section.keys())
    if unknown or missing:
        raise ValueError(f"config.ensemble: unknown keys {sorted(unknown)}, missing {sorted(missing)}; it has "
                         f"{list(KEYS)} and optionally {list(OPTIONAL_KEYS)} (ssl_jax.presets.base_config "
                         f"sets them).")
    m, k = int(section.size), int(section.eval_block)
    if m < 1:
        raise ValueError(f"config.ensemble.size={m}: the number of blocks is at least 1 (1 = no ensemble).")
    if not 0 <= k < m:
        raise ValueError(f"config.ensemble.eval_block={k} is not a block of the {m}; set it in [0, {m - 1}].")
    return m, k, execution_of(section)


def wrap(method, config):
    """`method` trained as an ensemble of config.ensemble.size blocks; the method itself for 1
    (or a config without the section)."""
    section = config.get("ensemble")
    if section is None:
        return method
    m, k, execution = _checked(section)
    return method if m == 1 else Ensemble(method, m, k, config.data.views, execution)


def ensemble_view_plan(plan, m: int) -> tuple:
    """The method's view plan ((standard view, heavy policy), ...) repeated for m blocks, block
    k on standard views k·S .. k·S + S − 1 (S: the method's standard views): its own draws."""
    s = 1 + max(v for v, _ in plan)
    return tuple((k * s + v, spec) for k in range(m) for v, spec in plan)


class Ensemble:
    """m blocks of `method` (module docstring). The train step (ssl_jax.train.step) builds one
    block's state and step from `block` and stacks / maps them here; every other attribute
    (encoder, heads, name, cfg, evaluated_network, ...) is the block's."""

    # One block's loss on stacked trees would be silently wrong: the step maps the block's.
    _BLOCK_ONLY = ("init", "loss", "after_update", "loss_and_outputs")

    def __init__(self, method, m: int, eval_block: int, data_views, execution: str):
        if hasattr(method, "refresh_due"):
            raise ValueError(f"config.ensemble.size={m}: {method.name} refreshes its targets with passes over the "
                             "whole dataset, which run on one network outside the train step; ensembles "
                             "train methods without them (e.g. simclr, byol, simsiam, swav, wmse, "
                             "barlow_twins). Set --config.ensemble.size=1.")
        self.block, self.num_blocks, self.eval_block = method, int(m), int(eval_block)
        self.execution = execution  # 'loop' | 'unrolled' (resolve_execution)
        self.view_plan = ensemble_view_plan(method.view_plan, m)
        self.num_views = len(self.view_plan)
        views = list(data_views)
        s = 1 + max(v for v, _ in method.view_plan)
        for v, _ in self.view_plan:
            # The pipeline cycles config.data.views over the standard views: block k must get
            # the same augmentation settings as block 0, only other draws.
            if dict(views[v % len(views)]) != dict(views[(v % s) % len(views)]):
                raise ValueError(
                    f"config.ensemble.size={m}: config.data.views has {len(views)} view configs, which do not "
                    f"repeat every {s} views (the {method.name} views of one block), so the blocks would "
                    f"train on different augmentations. Give config.data.views {s} configs (or a divisor "
                    f"of {s}).")

    def __getattr__(self, name):
        if name in ("block", "_BLOCK_ONLY"):  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        if name in self._BLOCK_ONLY:
            raise AttributeError(f"An ensemble has no {name!r} of its own: ssl_jax.train.step maps the "
                                 f"block's (ensemble.block_method(method).{name}) over the blocks.")
        return getattr(self.block, name)

    def stack_state(self, state: TrainState) -> EnsembleState:
        """The ensemble's initial state from one block's: the same initialisation in every block."""
        fields = {f: stack(getattr(state, f), self.num_blocks) for f in STACKED_FIELDS}
        return EnsembleState(step=state.step, rng=state.rng, **fields)

    def map_step(self, block_step):
        """The ensemble's step from one block's `block_step(state, batch) -> (state, metrics)`:
        mapped over the blocks (`map_blocks`: a loop over one compiled 1-block step body, or
        that body unrolled m times, as self.execution says), block
        k on views k·V .. k·V + V − 1 of the batch with the step key fold_in(rng, k); metrics
        averaged over blocks, plus loss_block<k>.

        Why mapped and not jax.vmap: vmap turns every convolution with per-block kernels into a
        grouped convolution, whose batch-grouped kernel gradient the SPMD partitioner does not
        keep split over the batch (measured on 2 simulated CPU devices: 47 all-gathers in
        SimCLR's 3-block step against 3 in its 1-block step, and the step hung on 2 and 8
        devices). Mapped, each block's step partitions exactly as the 1-block step (and, looped,
        only one block's activations are live at a time)."""
        m = self.num_blocks

        def step(state: EnsembleState, batch: dict):
            views = batch["views"]
            v = len(views) // m
            block_views = tuple(jnp.stack([views[k * v + i] for k in range(m)]) for i in range(v))
            keys = jax.vmap(lambda k: jax.random.fold_in(state.rng, k))(jnp.arange(m))

            def one(xs):
                fields, key, views_k = xs
                new, metrics = block_step(TrainState(step=state.step, rng=key, **fields), dict(batch, views=views_k))
                return {f: getattr(new, f) for f in STACKED_FIELDS}, metrics

            fields, metrics = map_blocks(one, ({f: getattr(state, f) for f in STACKED_FIELDS}, keys, block_views),
                                         self.execution)
            out = {name: jnp.mean(value, axis=0) for name, value in metrics.items()}
            out.update({f"loss_block{k}": metrics["loss"][k] for k in range(m)})
            return EnsembleState(step=state.step + 1, rng=state.rng, **fields), out

        return step
