"""The pretraining loop: build everything from the config, resume, train, and hand the trained
state to the evaluation hooks its caller supplies (ssl_jax.evaluate.in_training).

Evaluation sits above training: this module never imports it; `run` takes an `Evaluator`.
"""
import contextlib
import dataclasses
import json
import math
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssl_jax import monitors, parallel
from ssl_jax import results as results_lib
from ssl_jax import storage
from ssl_jax.data import pipeline
from ssl_jax.methods import build_method, ensemble
from ssl_jax.train import checkpoint, init_weights, preemption, refresh, resumable
from ssl_jax.train import workdir as workdir_lib
from ssl_jax.train import step as step_lib
from ssl_jax.train.logging import MetricWriter, Progress, console
from ssl_jax.train.optim import build_optimizer


@dataclasses.dataclass(frozen=True)
class Run:
    """What a pretraining run is built from, as the evaluation hooks see it."""

    config: ml_collections.ConfigDict
    mesh: Any
    method: Any
    num_classes: int
    steps_per_epoch: int
    total_steps: int


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """Evaluation hooks of `run`, supplied from above (ssl_jax.evaluate.in_training).

    during(run, state, step) -> extra metrics for that log step's line of metrics.jsonl ({} if
      none is due); called at every log step.
    after(run, state) -> results records of the trained state; called once training finished.
    """

    during: Callable[[Run, Any, int], dict]
    after: Callable[[Run, Any], list]


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """config.num_steps if set (> 0), else num_epochs full epochs."""
    return config.num_steps if config.num_steps > 0 else int(math.ceil(config.num_epochs * steps_per_epoch))


def _nonfinite_message(what: str, step: int) -> str:
    return (f"At step {step}, {what}: the run diverged. Lower "
            "--config.optimizer.base_lr, lengthen --config.optimizer.warmup_epochs, or use float32 "
            "(--config.model.dtype=float32).")


@contextlib.contextmanager
def workdir_lock(workdir: str):
    """Hold WORKDIR's run lock (ssl_jax.workdir) for the block: process 0 takes it, and every
    process stops (WorkdirInUse) when it could not, so no process trains alone into a workdir
    another run owns."""
    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = workdir_lib.acquire(workdir)
        except workdir_lib.WorkdirInUse as e:
            error = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        held = bool(multihost_utils.broadcast_one_to_all(np.int32(lock is not None)))
        if not held and error is None:
            error = workdir_lib.WorkdirInUse(f"{workdir} is in use by another training run (process 0 "
                                             "names it); pass another --workdir or stop that run.")
    if error is not None:
        raise error
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()


def run_record(config: ml_collections.ConfigDict, method) -> str:
    """DIR/config.json: the config, and what readers of the run need from its method without
    importing ssl_jax.methods (ssl_jax.pretrained): `evaluated_network`, the network the
    method's paper evaluates ('target' for DINO's teacher, else 'online')."""
    record = json.loads(config.to_json_best_effort())
    record["evaluated_network"] = method.evaluated_network
    return json.dumps(record, indent=2)


def build(config: ml_collections.ConfigDict, mesh):
    """Everything a run needs that is a function of the config alone."""
    data_cfg = config.data
    parallel.check_batch_divisible(config.global_batch_size, mesh)
    info = pipeline.split_info(data_cfg)  # of the class subset, with data.classes
    spe = pipeline.steps_per_epoch(data_cfg, config.global_batch_size, jax.process_count())
    if spe < 1:
        raise ValueError(
            f"global_batch_size={config.global_batch_size} is larger than the "
            f"{info['num_examples_total']} examples of {data_cfg.dataset}:{data_cfg.train_split}; "
            "lower --config.global_batch_size.")
    n_steps = total_steps(config, spe)
    method = build_method(config, n_steps, spe)
    optimizer, lr_schedule = build_optimizer(config.optimizer, global_batch_size=config.global_batch_size,
                                             steps_per_epoch=spe, num_epochs=n_steps / spe)
    return info, spe, n_steps, method, optimizer, lr_schedule


def init_state(config, method, optimizer, info, mesh):
    """The initial TrainState, created directly with its shardings (jit out_shardings); with
    config.init_weights, from that file's weights (ssl_jax.train.init_weights: an argument of the
    jitted init, not a constant baked into its program). A resumed run restores over it."""
    s = config.data.image_size
    sample = jnp.zeros((2, s, s, 3), jnp.float32)
    weights = None
    if config.init_weights:
        loaded = init_weights.read(config.init_weights)
        weights = jax.device_put({k: loaded[k] for k in ("params", "batch_stats")}, parallel.replicated(mesh))
    make = lambda rng, w: step_lib.create_state(method, optimizer, rng, sample, info["num_classes"], w)
    abstract = jax.eval_shape(make, jax.random.PRNGKey(config.seed), weights)
    sharding = parallel.state_sharding(abstract, mesh)
    state = jax.jit(make, out_shardings=sharding)(jax.random.PRNGKey(config.seed), weights)
    return state, sharding


def run(config: ml_collections.ConfigDict, workdir: str, evaluator: Evaluator | None = None) -> list[dict]:
    """Pretrain with config.method, resuming from workdir if it holds a checkpoint; the records
    (ssl_jax.results schema) of the run ('pretrain': train seconds, collapse monitors) and of
    `evaluator.after`. Writes config.json, metrics.jsonl, tensorboard/ and checkpoints/ (not
    results.json: the caller decides what to report)."""
    workdir_lib.check_writable(workdir)
    with workdir_lock(workdir):
        # Before anything is written: another run's workdir keeps its record and checkpoints.
        workdir_lib.check_same_run(workdir, json.loads(config.to_json_best_effort()))
        return _run_locked(config, workdir, evaluator)


def _run_locked(config: ml_collections.ConfigDict, workdir: str, evaluator: Evaluator | None) -> list[dict]:
    """`run` once its workdir is checked and locked."""
    mesh = parallel.mesh_from_config(config.mesh)
    info, spe, n_steps, method, optimizer, lr_schedule = build(config, mesh)
    this_run = Run(config, mesh, method, info["num_classes"], spe, n_steps)
    # What the evaluation sees: an ensemble's config.ensemble.eval_block as a 1-block run.
    eval_run = dataclasses.replace(this_run, method=ensemble.block_method(method))
    is_main = jax.process_index() == 0
    if is_main:
        storage.write_file(storage.join(workdir, "config.json"), run_record(config, method))

    state, state_sh = init_state(config, method, optimizer, info, mesh)
    ckpt = config.checkpoint
    manager = checkpoint.make_manager(workdir, ckpt.keep, ckpt.async_save)
    data_fingerprint = pipeline.training_fingerprint(config.data) if refresh.refreshes(method) else None
    if data_fingerprint is not None:  # before restoring: the per-example shapes depend on it
        refresh.check_fingerprint(checkpoint.latest_meta(manager), data_fingerprint, manager.directory)
    log = console if is_main else (lambda *a, **k: None)  # process 0 speaks for the run, timestamped
    # A checkpoint that does not restore, or holds a diverged state (saved before that was
    # refused), is skipped for the one before it.
    restored = checkpoint.restore_latest(manager, checkpoint.abstract(state, state_sh),
                                         validate=checkpoint.state_problem,
                                         warn=lambda m: log(m, file=sys.stderr, flush=True))
    meta = {}
    if restored is not None:
        state, meta = restored
        log(f"Resumed from {manager.directory} (input position: {meta}).", flush=True)
    start = int(parallel.to_host(state.step))
    if start >= n_steps:
        log(f"Training is complete ({start} of {n_steps} steps in {manager.directory}); evaluating only.",
            flush=True)
    # Training time and images seen over every segment of the run (a resumed run continues the
    # counts its checkpoint carries; steps redone after a kill are counted once).
    seconds_before = float(meta.get("train_seconds", 0.0))
    examples_before = int(meta.get("examples_seen", start * config.global_batch_size))
    examples_seen = lambda done: examples_before + (done - start) * config.global_batch_size
    log(f"{config.method}: {n_steps} steps ({spe} per epoch), global batch {config.global_batch_size} "
        f"on {mesh.devices.size} device(s) in {jax.process_count()} process(es), mesh "
        f"{dict(mesh.shape)}; starting at step {start}.", flush=True)

    writer = MetricWriter(workdir, resume_step=start, enabled=is_main)
    # A rerun of a finished run (stopped during its final evaluation) trains no step: its
    # collapse monitors are those of the last line the training logged.
    last_logged = writer.last() if start >= n_steps else {}

    def make_batches(state, step):
        return pipeline.pretrain_iterator(config.data, global_batch_size=config.global_batch_size,
                                          seed=config.seed, start_step=step, num_views=method.num_views,
                                          view_plan=method.view_plan,
                                          epoch_order=refresh.epoch_order_fn(method, state, config))

    train_step = step_lib.make_train_step(method, optimizer, lr_schedule, info["num_classes"])
    compiled, progress, collapse_reported, batches = None, None, False, None
    refresh_metrics = {}

    def one_step(state, step):
        nonlocal compiled, progress, batches
        if refresh.is_due(method, state, step, spe):
            state, metrics = refresh.run(method, state, step, step // spe, config=config, mesh=mesh,
                                         optimizer=optimizer, state_sharding=state_sh)
            refresh_metrics.update(metrics)  # into the next log line (dropped with it on resume)
            log(f"Refresh at epoch {step // spe}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()),
                flush=True)
            batches = None  # a sampled epoch order follows the new pseudo-labels
        if batches is None:  # built lazily: after the refresh that may open the first epoch
            batches = make_batches(state, step)
        batch = parallel.shard_batch(next(batches), mesh)
        if compiled is None:
            # Minutes for a large network on a CPU: said, so that it does not look like a hang.
            log("Compiling the train step...", flush=True)
            t_first = time.perf_counter()
            compiled = step_lib.compile_step(train_step, state, mesh)
        state, metrics = compiled(state, batch)
        if progress is None:  # start timing after the first (compiling) step
            jax.block_until_ready(metrics)
            log(f"Compiled the train step and ran its first step in {time.perf_counter() - t_first:.1f} s.",
                flush=True)
            progress = Progress(n_steps, config.global_batch_size, step + 1)
        return state, metrics

    eval_seconds = [0.0]  # periodic evaluations: not training time (rates, ETA, train_seconds)

    def on_log(done, state, metrics):
        nonlocal last_logged, collapse_reported
        if evaluator is not None:
            t_eval = time.perf_counter()
            metrics = dict(metrics, **evaluator.during(eval_run, ensemble.evaluated_state(method, state), done))
            progress.exclude(time.perf_counter() - t_eval)
            eval_seconds[0] += time.perf_counter() - t_eval
        metrics = dict(metrics, **refresh_metrics)
        refresh_metrics.clear()
        writer.write(done, metrics)
        log(progress.line(done, metrics), flush=True)
        last_logged = metrics
        reason = monitors.collapse_reason(metrics)
        if reason and not collapse_reported:
            log(f"COLLAPSE detected at step {done}: {reason}.", flush=True)
        collapse_reported = collapse_reported or bool(reason)

    try:
        t0 = time.perf_counter()
        state = resumable.run_steps(
            state, one_step, start=start, total=n_steps, log_every=config.log_every_steps, on_log=on_log,
            nonfinite_message=_nonfinite_message, manager=manager, save_every=ckpt.every_steps,
            meta=lambda done: {"step": done, "examples_seen": examples_seen(done), "epoch": done / spe,
                               "train_seconds": seconds_before + time.perf_counter() - t0 - eval_seconds[0],
                               **({"dataset_fingerprint": data_fingerprint} if data_fingerprint else {})})
        train_seconds = seconds_before + time.perf_counter() - t0 - eval_seconds[0]
        done = int(parallel.to_host(state.step))
        records = results_lib.make_records(
            results_lib.run_fields(config, done, spe), protocol="pretrain",
            eval_dataset=results_lib.dataset_label(config.data), network="online", wall_seconds=train_seconds,
            metrics=dict(train_seconds=train_seconds, examples_seen=examples_seen(done),
                         **_final_monitors(last_logged)))
        if evaluator is not None:
            # Training is over and checkpointed: a SIGTERM now ends with the usual message and
            # exit code 75 (not silently), and the rerun evaluates the final checkpoint.
            with preemption.sigterm_stops_evaluation(done):
                records += evaluator.after(eval_run, ensemble.evaluated_state(method, state))
    finally:  # also on a preemption or an error: metrics files flushed
        writer.close()
    return records


def _final_monitors(metrics: dict) -> dict:
    """The collapse monitors at the last logged step, and the verdict (collapsed: 1 or 0)."""
    keys = ("collapse_std", "collapse_std_reference", "z_std", "z_std_reference", "z_effective_rank")
    out = {k: float(metrics[k]) for k in keys if k in metrics}
    if metrics:
        out["collapsed"] = float(monitors.collapse_reason(metrics) is not None)
    return out
