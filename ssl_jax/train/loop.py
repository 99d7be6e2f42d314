"""The training loop: build everything from the config, resume, train, evaluate, report."""
import math
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ssl_jax import parallel
from ssl_jax import results as results_lib
from ssl_jax import storage
from ssl_jax.data import pipeline, sources
from ssl_jax.evaluate import features as features_lib
from ssl_jax.evaluate import knn as knn_lib
from ssl_jax import monitors
from ssl_jax.evaluate.linear import linear_probe_accuracy
from ssl_jax.methods import build_method
from ssl_jax.train import checkpoint, preemption
from ssl_jax.train import step as step_lib
from ssl_jax.train.logging import MetricWriter, Progress
from ssl_jax.train.optim import build_optimizer


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite."""


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """config.num_steps if set (> 0), else num_epochs full epochs."""
    return config.num_steps if config.get("num_steps", -1) > 0 else int(math.ceil(config.num_epochs * steps_per_epoch))


def _check_finite(step: int, metrics: dict) -> None:
    loss = float(metrics["loss"])
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"The loss is {loss} at step {step}. Checkpoints already in the workdir are intact "
            "(a non-finite state is never saved). Lower --config.optimizer.base_lr, lengthen "
            "--config.optimizer.warmup_epochs, or use float32 (--config.model.dtype=float32).")


def build(config: ml_collections.ConfigDict, mesh):
    """Everything a run needs that is a function of the config alone."""
    data_cfg = config.data
    parallel.check_batch_divisible(config.global_batch_size, mesh)
    info = sources.dataset_info(data_cfg.dataset, data_cfg.train_split, data_cfg.data_dir)
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
    """The initial TrainState, created directly with its shardings (jit out_shardings)."""
    s = config.data.image_size
    sample = jnp.zeros((2, s, s, 3), jnp.float32)
    make = lambda rng: step_lib.create_state(method, optimizer, rng, sample, info["num_classes"])
    abstract = jax.eval_shape(make, jax.random.PRNGKey(config.seed))
    sharding = parallel.state_sharding(abstract, mesh)
    state = jax.jit(make, out_shardings=sharding)(jax.random.PRNGKey(config.seed))
    return state, sharding


def evaluate(config, method, state, mesh, num_classes: int, spe: int) -> list[dict]:
    """End-of-training records (ssl_jax.results schema): kNN and online-probe accuracy on the
    test split; optionally the cached-feature linear probe and the random-init baseline."""
    data_cfg, ev = config.data, config.eval
    run = results_lib.run_fields(config, int(parallel.to_host(state.step)), spe)

    def records(network, params, stats, probe_params=None):
        t0 = time.perf_counter()
        (tr_x, tr_y), (te_x, te_y) = _train_test_features(config, method, params, stats, mesh)
        out = [("knn", f"k={ev.knn_k},T={ev.knn_temperature:g}",
                _knn(config, (tr_x, tr_y), (te_x, te_y), mesh, num_classes))]
        if probe_params is not None:
            logits = step_lib.PROBE(num_classes).apply({"params": probe_params}, te_x)
            out.append(("online_probe", "", {"top1": float(np.mean(np.argmax(logits, -1) == te_y))}))
        if ev.linear_probe:
            lin = linear_probe_accuracy(tr_x, tr_y, te_x, te_y, num_classes=num_classes)
            out.append(("linear_cached", "", {"top1": lin["top1"], "top5": lin["top5"], "l2": lin["l2"]}))
        seconds = time.perf_counter() - t0
        return [r for protocol, setting, metrics in out for r in results_lib.make_records(
            run, protocol=protocol, eval_dataset=data_cfg.dataset, network=network, metrics=metrics,
            setting=setting, wall_seconds=seconds)]

    params = parallel.to_host(state.params)
    stats = parallel.to_host(state.batch_stats)
    out = records("online", params["encoder"], stats["encoder"], params["probe"])
    if ev.compare_random_init:
        # The same network at its initialisation (same seed): what pretraining bought.
        fresh, _ = init_state(config, method, optax.identity(), {"num_classes": num_classes}, mesh)
        out += records("random_init", parallel.to_host(fresh.params["encoder"]),
                       parallel.to_host(fresh.batch_stats["encoder"]))
    return out


def periodic_knn(config, method, state, mesh, num_classes: int) -> dict:
    """kNN top-1 of the online encoder during training (config.eval.every_steps), for the
    accuracy-against-step curve in metrics.jsonl."""
    train, test = _train_test_features(config, method, parallel.to_host(state.params["encoder"]),
                                       parallel.to_host(state.batch_stats["encoder"]), mesh)
    return {"knn_top1": _knn(config, train, test, mesh, num_classes)["top1"]}


def _train_test_features(config, method, params, stats, mesh):
    """((features, labels) of data.eval_train_split, same of data.test_split), encoder in
    inference mode."""
    encode = features_lib.make_encode_fn(method.encoder, mesh)
    return tuple(features_lib.extract_features(encode, params, stats, pipeline.eval_iterator(
        config.data, split, global_batch_size=config.eval.batch_size), mesh)
        for split in (config.data.eval_train_split, config.data.test_split))


def _knn(config, train, test, mesh, num_classes: int) -> dict:
    """Weighted kNN top-1/top-5 at (eval.knn_k, eval.knn_temperature), memory sharded over `data`."""
    memory, labels, valid = knn_lib.shard_memory(*train, mesh)
    return knn_lib.knn_accuracy(memory, labels, *test, num_classes=num_classes, k=config.eval.knn_k,
                                temperature=config.eval.knn_temperature, train_valid=valid)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Pretrain with config.method, resuming from workdir if it holds a checkpoint; evaluate."""
    storage.makedirs(workdir)
    mesh = parallel.mesh_from_config(config.mesh)
    info, spe, n_steps, method, optimizer, lr_schedule = build(config, mesh)
    is_main = jax.process_index() == 0
    if is_main:
        storage.write_file(storage.join(workdir, "config.json"), config.to_json_best_effort(indent=2))

    state, state_sh = init_state(config, method, optimizer, info, mesh)
    ckpt = config.checkpoint
    manager = checkpoint.make_manager(workdir, ckpt.keep, ckpt.async_save)
    restored = checkpoint.restore_latest(manager, jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_sh))
    log = print if is_main else (lambda *a, **k: None)  # process 0 speaks for the run
    if restored is not None:
        state, meta = restored
        log(f"Resumed from {manager.directory} (input position: {meta}).", flush=True)
    start = int(parallel.to_host(state.step))
    log(f"{config.method}: {n_steps} steps ({spe} per epoch), global batch {config.global_batch_size} "
        f"on {mesh.devices.size} device(s) in {jax.process_count()} process(es), mesh "
        f"{dict(mesh.shape)}; starting at step {start}.", flush=True)

    writer = MetricWriter(workdir, resume_step=start, enabled=is_main)
    batches = pipeline.pretrain_iterator(config.data, global_batch_size=config.global_batch_size,
                                         seed=config.seed, start_step=start, num_views=method.num_views,
                                         view_plan=method.view_plan)
    train_step = step_lib.make_train_step(method, optimizer, lr_schedule, info["num_classes"])
    compiled, progress = None, None
    last_logged, collapse_reported = {}, False
    watcher = preemption.PreemptionWatcher()
    try:
        t0 = time.perf_counter()
        for step in range(start, n_steps):
            batch = parallel.shard_batch(next(batches), mesh)
            if compiled is None:
                compiled = step_lib.compile_step(train_step, state, batch, mesh)
            state, metrics = compiled(state, batch)
            done = step + 1
            if progress is None:  # start timing after the first (compiling) step
                jax.block_until_ready(metrics)
                progress = Progress(n_steps, config.global_batch_size, done)
            preempted = watcher.should_stop(done)
            will_save = done % ckpt.every_steps == 0 or done == n_steps or preempted
            if done % config.log_every_steps == 0 or will_save:
                metrics = parallel.to_host(metrics)
                _check_finite(done, metrics)
                every = config.eval.get("every_steps", 0)
                if every > 0 and (done % every == 0 or done == n_steps):
                    metrics = dict(metrics, **periodic_knn(config, method, state, mesh, info["num_classes"]))
                if done % config.log_every_steps == 0 or done == n_steps:
                    writer.write(done, metrics)
                    log(progress.line(done, metrics), flush=True)
                    last_logged = metrics
                    reason = monitors.collapse_reason(metrics)
                    if reason and not collapse_reported:
                        log(f"COLLAPSE detected at step {done}: {reason}.", flush=True)
                    collapse_reported = collapse_reported or bool(reason)
            if will_save:
                checkpoint.save(manager, state, {"step": done, "examples_seen": done * config.global_batch_size,
                                                 "epoch": done / spe})
            if preempted:
                manager.wait_until_finished()
                raise preemption.Preempted(done)
        watcher.close()  # a SIGTERM during the evaluation below stops the process as usual
        manager.wait_until_finished()
        train_seconds = time.perf_counter() - t0

        records = results_lib.make_records(
            results_lib.run_fields(config, int(parallel.to_host(state.step)), spe), protocol="pretrain",
            eval_dataset=config.data.dataset, network="online", wall_seconds=train_seconds,
            metrics=dict(train_seconds=train_seconds, **_final_monitors(last_logged)))
        records += evaluate(config, method, state, mesh, info["num_classes"], spe)
        if is_main:
            results_lib.write_records(workdir, records)
            print(format_results(records), flush=True)
    finally:  # also on a preemption or an error: files flushed, checkpoint writes finished
        watcher.close()
        writer.close()
        manager.close()
    return records


def _final_monitors(metrics: dict) -> dict:
    """The collapse monitors at the last logged step, and the verdict (collapsed: 1 or 0)."""
    keys = ("collapse_std", "collapse_std_reference", "z_std", "z_std_reference", "z_effective_rank")
    out = {k: float(metrics[k]) for k in keys if k in metrics}
    if metrics:
        out["collapsed"] = float(monitors.collapse_reason(metrics) is not None)
    return out


def format_results(records: list[dict]) -> str:
    """The end-of-run summary: pretrained vs random-init top-1 side by side."""
    rows = [("kNN top-1", "knn"), ("linear probe top-1", "linear_cached"), ("online probe top-1", "online_probe")]
    first = records[0]
    lines = [f"Results after {first['step']} steps of {first['method']} on {first['dataset']}:",
             f"  {'':22s} {'pretrained':>10s} {'random init':>12s}"]
    for name, protocol in rows:
        value = {r["network"]: r["value"] for r in results_lib.select(records, protocol=protocol, metric="top1")}
        if "online" in value:
            rand = f"{value['random_init']:12.4f}" if "random_init" in value else f"{'':>12s}"
            lines.append(f"  {name:22s} {value['online']:10.4f} {rand}")
    collapsed = results_lib.select(records, protocol="pretrain", metric="collapsed")
    if collapsed and collapsed[0]["value"]:
        lines.append("  The representation COLLAPSED during training (see the log and metrics.jsonl).")
    return "\n".join(lines)
