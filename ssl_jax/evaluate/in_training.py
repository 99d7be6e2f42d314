"""Evaluation during and after pretraining, with the protocols of `python -m ssl_jax.evaluate`.

`pretrain_and_evaluate(config, workdir)` is what the training command runs: the loop
(ssl_jax.train.loop) with this module's hooks, then WORKDIR/results.json and the summary.
The hooks build a `Pretrained` in memory from the live train state and run the protocol
functions of ssl_jax.evaluate.run on it, so a number reported at the end of training is the
number the evaluation command computes from the same checkpoint:

* every config.eval.every_steps (and after the last step): kNN top-1 into metrics.jsonl;
* after training, for the online network: kNN at (eval.knn_k, eval.knn_temperature), the
  online probe trained alongside, and with eval.linear_probe the cached-feature linear probe;
  with eval.compare_random_init the same protocols on the network at its initialisation.

The evaluation data are data.eval_classes (() = data.classes) of data.eval_train_split (kNN
memory, probe training) and data.test_split (queries). With held-out classes (a cross-class run,
FUSSL's Table 4) the online probe, trained on the pretraining classes, is left out.
"""
from __future__ import annotations

import jax
import ml_collections
import numpy as np
import optax

from ssl_jax import parallel, presets
from ssl_jax import pretrained as pretrained_lib
from ssl_jax import results as results_lib
from ssl_jax.data import pipeline
from ssl_jax.evaluate import run as run_lib
from ssl_jax.train import loop, tensorboard
from ssl_jax.train.logging import console
from ssl_jax.train import step as step_lib


def pretrain_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    """Pretrain (resuming from workdir), evaluate; write the records to WORKDIR/results.json,
    print the summary (process 0) and return the records."""
    records = loop.run(config, workdir, evaluator=evaluator())
    if jax.process_index() == 0:
        results_lib.write_records(workdir, records)
        tensorboard.write_records(workdir, records)  # next to the training curves, under eval/
        console(format_results(records))
        console(next_commands(workdir, config.data.dataset))
    return records


# The evaluation presets of configs/eval/*.py for the datasets the training presets use.
_EVAL_PRESETS = {"digits": "demo", "cifar10": "cifar10", "imagenet2012": "imagenet"}


def next_commands(workdir: str, dataset: str) -> str:
    """Where the run's results are and the commands a user runs next on it."""
    preset = _EVAL_PRESETS.get(dataset, "PRESET")
    return "\n".join([
        f"Results in {workdir}/results.json; training curves in metrics.jsonl (or: tensorboard --logdir {workdir}).",
        "Next:",
        f"  python -m ssl_jax.evaluate --config=configs/eval/linear.py:{preset} --workdir={workdir}"
        "   # linear evaluation (also knn, finetune, clustering, ...)",
        f"  python -m ssl_jax.export --workdir={workdir} --format=torchvision --output=encoder.safetensors"
        "   # or --format=flax / safetensors",
        f"  python -m ssl_jax.report {workdir} --output_dir={workdir}/report   # tables and plots"])


def eval_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The evaluation command's config for the in-training protocols: its defaults, with the
    kNN setting and the feature batch of config.eval."""
    ev = config.eval
    c = presets.eval_base_config("knn")
    c.batch_size = ev.batch_size
    c.knn.ks, c.knn.temperatures = (ev.knn_k,), (ev.knn_temperature,)
    c.linear_cached = presets.eval_base_config("linear_cached").linear_cached
    return c


def eval_data(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The data config of the in-training evaluation: config.data with the eval_train_split as its
    train split and the eval_classes (() = data.classes) as its classes."""
    data = ml_collections.ConfigDict(config.data.to_dict())
    data.train_split = config.data.eval_train_split
    data.classes = tuple(config.data.get("eval_classes") or ()) or pipeline.classes(config.data)
    return data


def held_out_classes(config: ml_collections.ConfigDict) -> bool:
    """Whether the evaluation's classes are not the pretraining ones (data.eval_classes set to others)."""
    return pipeline.classes(eval_data(config)) != pipeline.classes(config.data)


def context(run: loop.Run, state, network: str = "online", step: int | None = None) -> run_lib.Context:
    """A protocol context on the encoder of the train state `state` (kNN memory: the
    data.eval_train_split; queries: data.test_split; both of data.eval_classes); `network` and
    `step` (default state.step) name its records."""
    config = run.config
    step = int(parallel.to_host(state.step)) if step is None else step
    variables = {"params": parallel.to_host(state.params["encoder"]),
                 "batch_stats": parallel.to_host(state.batch_stats.get("encoder", {}))}
    pre = pretrained_lib.of_run(config, run.method.encoder, variables, network=network, step=step,
                                epochs=step / run.steps_per_epoch)
    data = eval_data(config)
    num_classes = int(pipeline.split_info(data)["num_classes"]) if held_out_classes(config) else run.num_classes
    # Process 0 reports the feature passes (minutes on a large split); the periodic kNN's too.
    log = console if jax.process_index() == 0 else (lambda *_, **__: None)
    return run_lib.Context(eval_config(config), pre, data, run.mesh, num_classes, workdir=None, log=log)


def evaluator() -> loop.Evaluator:
    """The hooks of one run. The periodic kNN also runs after the last step, on the state the
    final records then evaluate: that context (and the features it extracted) is kept for them,
    so the trained network's splits are encoded once, not twice. Only the last step's: a
    context kept between periodic evaluations would hold a whole split's features in memory
    during training."""
    kept = {}  # {run.total_steps: the online context of the trained state}

    def online_context(run: loop.Run, state) -> run_lib.Context:
        step = int(parallel.to_host(state.step))
        if step != run.total_steps:
            return context(run, state)
        if step not in kept:
            kept[step] = context(run, state)
        return kept[step]

    return loop.Evaluator(during=lambda run, state, step: periodic_knn(run, state, step, online_context),
                          after=lambda run, state: final_records(run, state, online_context))


def periodic_knn(run: loop.Run, state, step: int, online_context=context) -> dict:
    """{'knn_top1'} of the online encoder every config.eval.every_steps and after the last
    step, for the accuracy-against-step curve in metrics.jsonl; {} at other steps."""
    every = run.config.eval.every_steps
    if every <= 0 or (step % every and step != run.total_steps):
        return {}
    ((_, _, metrics),) = run_lib.protocol_knn(online_context(run, state))
    return {"knn_top1": metrics["top1"]}


def final_records(run: loop.Run, state, online_context=context) -> list[dict]:
    """Records of the trained online network and, with eval.compare_random_init, of the same
    network at its initialisation (same seed): what pretraining bought."""
    ev = run.config.eval
    linear = [run_lib.protocol_linear_cached] if ev.linear_probe else []
    # The online probe classifies the pretraining classes: no use on held-out ones.
    probe = [] if held_out_classes(run.config) else [online_probe(parallel.to_host(state.params["probe"]))]
    ctx = online_context(run, state)
    baseline = "; then kNN" + (" and linear probe" if linear else "") + " at random init"
    where = f"classes {pipeline.classes(ctx.data)} of " if held_out_classes(run.config) else ""
    ctx.log(f"Evaluating the trained network on {where}{ctx.data.dataset} (kNN{', online probe' if probe else ''}"
            f"{', linear probe' if linear else ''}{baseline if ev.compare_random_init else ''}).")
    records = run_lib.timed_records(ctx, [run_lib.protocol_knn, *probe, *linear])
    if ev.compare_random_init:
        fresh, _ = loop.init_state(run.config, run.method, optax.identity(), {"num_classes": run.num_classes},
                                   run.mesh)
        # Stamped with the trained run's step: the run it is the baseline of.
        step = int(parallel.to_host(state.step))
        records += run_lib.timed_records(context(run, fresh, "random_init", step), [run_lib.protocol_knn, *linear])
    return records


def online_probe(probe_params):
    """The protocol of the linear probe trained alongside the encoder (train/step.py): its
    top-1 on the test split's features."""
    def protocol(ctx):
        test_x, test_y = ctx.features(ctx.data.test_split)
        logits = step_lib.PROBE(ctx.num_classes).apply({"params": probe_params}, test_x)
        return [("online_probe", "", {"top1": float(np.mean(np.argmax(logits, -1) == test_y))})]
    return protocol


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
