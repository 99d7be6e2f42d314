"""Trained classifiers on a pretrained encoder: linear evaluation and fine-tuning.

* Linear evaluation: the encoder is frozen and runs in inference mode (BatchNorm uses its
  running statistics, as in every reference protocol); only a linear layer is trained, on
  augmented images (random resized crop + flip), and tested on centre crops.
* Fine-tuning (semi-supervised 1% / 10%, transfer): encoder + linear layer are trained
  together; BatchNorm runs in training mode and its statistics are updated (SimCLR v2's
  fine-tuning), then inference mode at test time.

One jitted step over the mesh: the batch sharded over `data`, parameters replicated, the
optimizer built by `ssl_jax.train.optim.build_optimizer` from the same keys as pretraining.
"""
from __future__ import annotations

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssl_jax import parallel
from ssl_jax.train import features as features_lib
from ssl_jax.train import checkpoint, resumable
from ssl_jax.train.logging import Progress, console
from ssl_jax.train.optim import build_optimizer


HEAD_BN_EPSILON = 1e-6


class LinearHead(nn.Module):
    """The evaluation classifier: one Dense layer, weights N(0, 0.01²), bias 0 (MoCo, SimCLR),
    optionally after a BatchNorm without affine parameters (MAE's linear probe), which makes
    the learning rate independent of the feature scale; it is still a linear classifier."""

    num_classes: int
    batchnorm: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.batchnorm:
            x = nn.BatchNorm(use_running_average=not train, use_bias=False, use_scale=False,
                             momentum=0.9, epsilon=HEAD_BN_EPSILON)(x)
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01))(x)


def make_classifier_step(encoder, head, optimizer, lr_schedule, finetune: bool, mesh):
    """jit of step(state, encoder_params, images, labels) -> (state, metrics).

    state = {'step', 'trainable' ({'head'} or {'encoder', 'head'}), 'batch_stats' (encoder),
    'head_stats', 'opt_state'}.
    `encoder_params` are the frozen weights (ignored when fine-tuning)."""

    def loss_fn(trainable, batch_stats, head_stats, encoder_params, images, labels):
        if finetune:
            feats, updates = encoder.apply({"params": trainable["encoder"], "batch_stats": batch_stats},
                                           images, train=True, mutable=["batch_stats"])
            batch_stats = updates["batch_stats"]
        else:
            feats = encoder.apply({"params": encoder_params, "batch_stats": batch_stats}, images, train=False)
            feats = jax.lax.stop_gradient(feats)
        logits, head_updates = head.apply({"params": trainable["head"], "batch_stats": head_stats},
                                          feats.astype(jnp.float32), train=True, mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, (batch_stats, head_updates.get("batch_stats", {}), jnp.mean(jnp.argmax(logits, -1) == labels))

    def step(state, encoder_params, images, labels):
        (loss, (batch_stats, head_stats, top1)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["trainable"], state["batch_stats"], state["head_stats"], encoder_params, images, labels)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["trainable"])
        new = {"step": state["step"] + 1, "trainable": optax.apply_updates(state["trainable"], updates),
               "batch_stats": batch_stats, "head_stats": head_stats, "opt_state": opt_state}
        return new, {"loss": loss, "top1": top1, "lr": lr_schedule(state["step"])}

    rep, batch = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return jax.jit(step, in_shardings=(rep, rep, batch, batch), out_shardings=(rep, rep),
                   donate_argnums=(0,))


def train_classifier(pretrained, make_batches, *, steps_per_epoch: int, train_cfg, num_classes: int,
                     mesh, seed: int = 0, log=console, checkpoint_dir: str | None = None) -> dict:
    """Train a linear head (and the encoder if train_cfg.finetune) on augmented batches.

    Args:
      pretrained: ssl_jax.pretrained.Pretrained (its encoder and variables).
      make_batches: start_step -> iterator of {'views': (images,), 'label'} host batches
        (process-local) from that step on (the pipeline's iterators resume exactly).
      steps_per_epoch: batches per epoch.
      train_cfg: {epochs, batch_size, finetune, head_batchnorm, optimizer: build_optimizer keys,
        checkpoint_every_steps (0: every epoch)}: a complete
        config.train of presets.eval_base_config.
      checkpoint_dir: if set, the classifier state is checkpointed there (every
        checkpoint_every_steps, at the end and on SIGTERM, which then raises
        preemption.Preempted: ssl_jax.train.resumable) and a rerun resumes from it; the last
        checkpoint is the trained classifier (`load_classifier`, `python -m ssl_jax.export
        --classifier`).
    Returns:
      {'encoder': {'params', 'batch_stats'} after training, 'head': the LinearHead module,
       'head_variables', 'seconds'}.
    """
    head = LinearHead(num_classes, bool(train_cfg.head_batchnorm))
    epochs = float(train_cfg.epochs)
    optimizer, lr_schedule = build_optimizer(train_cfg.optimizer, global_batch_size=train_cfg.batch_size,
                                             steps_per_epoch=steps_per_epoch, num_epochs=epochs)
    finetune = bool(train_cfg.finetune)
    variables = pretrained.variables
    rep = parallel.replicated(mesh)
    state = jax.device_put(_initial_state(pretrained, head, optimizer, finetune, seed), rep)
    encoder_params = jax.device_put(variables["params"] if not finetune else {}, rep)
    step_fn = make_classifier_step(pretrained.encoder, head, optimizer, lr_schedule, finetune, mesh)
    total = int(round(epochs * steps_per_epoch))
    manager = None
    if checkpoint_dir is not None:
        manager = checkpoint.make_manager(checkpoint_dir, keep=1, async_save=False)
        restored = checkpoint.restore_latest(manager, checkpoint.abstract(state, rep))
        if restored is not None:
            state = restored[0]
            log(f"  resumed the classifier from {checkpoint_dir} at step {int(state['step'])}")
    start = int(jax.device_get(state["step"]))
    t0 = time.perf_counter()
    batches = make_batches(start)

    progress, last_line = None, [start]
    spe = max(int(steps_per_epoch), 1)

    def one_step(state, step):
        nonlocal progress
        batch = parallel.shard_batch(next(batches), mesh)
        state, metrics = step_fn(state, encoder_params, batch["views"][0], batch["label"])
        if progress is None:  # timed from the second step: the first one compiles
            jax.block_until_ready(metrics)
            progress = Progress(total, int(train_cfg.batch_size), step + 1)
        return state, metrics

    def on_log(done, state, m):
        # A line at the end of every epoch, and every 30 s within a long one (ImageNet: 1251
        # steps per epoch at batch 1024), with images/s and the ETA as pretraining's.
        if done // spe == last_line[0] // spe and done != total and not progress.due(30.0):
            return
        last_line[0] = done
        log(f"  {'fine-tune' if finetune else 'linear'} epoch {done / spe:.4g}/{epochs:g} step {done}/{total} | "
            f"loss {float(m['loss']):.4f} | train top-1 {float(m['top1']):.4f} | lr {float(m['lr']):.4g} | "
            + progress.timing(done))

    state = resumable.run_steps(
        # Checked (loss finite, a line due) at most every 50 steps, so a long epoch still reports.
        state, one_step, start=start, total=total, log_every=min(spe, 50), on_log=on_log,
        nonfinite_message=lambda what, done: (f"Classifier training: {what} at step {done}; lower "
                                              "--config.train.optimizer.base_lr."),
        manager=manager, save_every=int(train_cfg.checkpoint_every_steps or steps_per_epoch),
        meta=lambda done: {"step": done, "finetune": finetune})
    state = jax.device_get(state)
    enc_params = state["trainable"]["encoder"] if finetune else variables["params"]
    return {"encoder": {"params": enc_params, "batch_stats": state["batch_stats"]},
            "head": head, "head_variables": {"params": state["trainable"]["head"], "batch_stats": state["head_stats"]},
            "seconds": time.perf_counter() - t0}


def _initial_state(pretrained, head, optimizer, finetune: bool, seed: int) -> dict:
    """The classifier's train state before its first step (head N(0, 0.01²), bias 0)."""
    variables = pretrained.variables
    head_vars = head.init(jax.random.PRNGKey(seed), jnp.zeros((1, pretrained.encoder.feature_dim)))
    trainable = {"head": head_vars["params"]}
    if finetune:
        trainable["encoder"] = variables["params"]
    return {"step": jnp.zeros((), jnp.int32), "trainable": trainable,
            "batch_stats": variables["batch_stats"], "head_stats": head_vars.get("batch_stats", {}),
            "opt_state": optimizer.init(trainable)}


def load_classifier(checkpoint_dir: str) -> dict:
    """The trained classifier of a `train_classifier` checkpoint dir, as host arrays:
    {'head': {'params', 'batch_stats'}, 'encoder': {'params', 'batch_stats'} or None (linear
    evaluation: the encoder is the pretrained one, unchanged), 'step'}."""
    try:
        state, step, _ = checkpoint.restore_raw(checkpoint_dir)
    except FileNotFoundError:
        raise FileNotFoundError(f"No classifier checkpoint in {checkpoint_dir}; run `python -m "
                                "ssl_jax.evaluate` with the linear or finetune protocol first.") from None
    trainable = state["trainable"]
    encoder = ({"params": trainable["encoder"], "batch_stats": state.get("batch_stats", {})}
               if "encoder" in trainable else None)
    return {"head": {"params": trainable["head"], "batch_stats": state.get("head_stats", {})},
            "encoder": encoder, "step": int(step)}


def classifier_accuracy(encoder, encoder_variables, head, head_variables, batches, mesh, report=None) -> dict:
    """Top-1 / top-5 of encoder + linear head over an eval iterator (inference mode);
    `report(done_batches)` as in features.extract_features (logging.pass_reporter)."""
    encode = features_lib.make_encode_fn(encoder, mesh)
    feats, labels = features_lib.extract_features(encode, encoder_variables["params"],
                                                  encoder_variables["batch_stats"], batches, mesh, report)
    logits = np.asarray(head.apply(head_variables, feats, train=False), np.float64)
    return topk_accuracy(logits, labels)


def topk_accuracy(logits, labels, ks=(1, 5)) -> dict:
    """{'top1', 'top5'}: fraction of rows whose label has fewer than k strictly larger logits."""
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels).astype(np.int64)
    true = logits[np.arange(len(labels)), labels]
    rank = np.sum(logits > true[:, None], axis=1)
    return {f"top{k}": float(np.mean(rank < k)) for k in ks}
