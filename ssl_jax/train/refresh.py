"""Dataset-level refresh passes (DeepCluster, SeLa, DeepCluster-v2): at the epoch boundaries a
method asks for, the loop runs a feature pass over the whole training set and hands it to the
method, which returns its new per-example state (pseudo-labels, centroids) and may reset heads.

The method side (ssl_jax.methods.dataset_targets.DatasetTargets):
  refresh_due(epoch) -> bool                 whether a refresh opens that epoch
  refresh_features                           None (no pass), or fn(params, batch_stats, images)
                                             -> per-row outputs, in inference mode
  refresh_features_on_device                 the pass's rows stay sharded on the devices
  refresh_pass_due(epoch) -> bool            whether this refresh needs that pass
  refresh(params, batch_stats, method_state, features, epoch)
      -> (params, method_state, reset_heads, metrics)
  samples, epoch_order(per_example, epoch, seed, slice_indices)   sampled epoch orders

Exactness: the pass reads the train split's evaluation view in dataset-index order (the eval
pipeline, sharded over devices and processes, rows sorted back by index), and the method's
refresh is a pure function of (state, features, epoch). A run killed during a refresh or after
it resumes from a checkpoint taken before it and recreates the same state; the step of the last
refresh is kept in the state (`refreshed_at`) so it is never run twice.
"""
import functools
import time

import jax
import numpy as np

from ssl_jax import parallel
from ssl_jax.data import pipeline
from ssl_jax.train import features as features_lib
from ssl_jax.train import logging as logging_lib
from ssl_jax.train import optim


def refreshes(method) -> bool:
    """Whether the method has dataset-level refreshes."""
    return hasattr(method, "refresh_due")


def is_due(method, state, step: int, steps_per_epoch: int) -> bool:
    """A refresh opens epoch step / steps_per_epoch and has not run yet for this step."""
    if not refreshes(method) or step % steps_per_epoch or not method.refresh_due(step // steps_per_epoch):
        return False
    return int(parallel.to_host(state.method_state["refreshed_at"])) != step


def check_fingerprint(saved: dict | None, current: dict, checkpoint_dir: str) -> None:
    """One clear error when a checkpoint's per-example state belongs to another training set."""
    saved = (saved or {}).get("dataset_fingerprint")
    if saved is not None and saved != current:
        raise ValueError(
            f"The checkpoints in {checkpoint_dir} hold per-example state (pseudo-labels) of "
            f"{pipeline.describe_training_set(saved)}, but this run trains on "
            f"{pipeline.describe_training_set(current)}. Use a new "
            "--workdir for a different training set, or set --config.data back to the one of the run.")


@functools.lru_cache(maxsize=8)
def _feature_fn(method, mesh):
    """The jitted pass of one run, compiled once for all its refreshes."""
    return features_lib.make_feature_fn(method.refresh_features, mesh)


def feature_pass(method, state, config, mesh):
    """The method's refresh features of every training example in dataset-index order: host
    NumPy [N, ...], or, for a method with `refresh_features_on_device`, global device arrays
    [num_rows, ...] sharded over the example axis (never gathered on a host)."""
    fn = _feature_fn(method, mesh)
    data, batch_size = config.data, int(config.eval.batch_size)
    batches = pipeline.eval_iterator(data, data.train_split, global_batch_size=batch_size)
    # A line every 30 s on a long pass (ImageNet: minutes); silent on the demo's ~1 s.
    report = logging_lib.pass_reporter(f"refresh features of {data.dataset}:{data.train_split}",
                                       pipeline.num_eval_batches(data, data.train_split, batch_size), batch_size)
    if method.refresh_features_on_device:
        return features_lib.extract_features_on_device(fn, state.params, state.batch_stats, batches, mesh,
                                                       method.num_rows, report)
    features, _ = features_lib.extract_features(fn, state.params, state.batch_stats, batches, mesh, report)
    return features


def run(method, state, step: int, epoch: int, *, config, mesh, optimizer, state_sharding, features=None):
    """(state after the refresh that opens `epoch` at `step`, metrics of the refresh).
    `features`: the pass's output when the caller already has it (tests), else computed here."""
    t0 = time.perf_counter()
    wanted = method.refresh_features is not None and method.refresh_pass_due(epoch)
    if wanted and features is None:
        features = feature_pass(method, state, config, mesh)
    features = features if wanted else None
    # The method state (per-example rows) comes to the host; params and statistics stay on the
    # devices (the refreshes replace heads, they do not read weights), and every leaf the refresh
    # left as it was keeps its device array: only new leaves are placed.
    params, method_state, reset, metrics = method.refresh(
        state.params, state.batch_stats, parallel.to_host(state.method_state), features, epoch)
    method_state = dict(method_state, refreshed_at=np.int32(step))
    opt_state = optim.reset_state(optimizer, state.opt_state, params, tuple(reset))
    new = state.replace(params=params, method_state=method_state, opt_state=opt_state)

    def place(leaf, sharding):
        if isinstance(leaf, jax.Array) and leaf.sharding == sharding:
            return leaf
        return parallel.from_host(np.asarray(leaf), sharding)

    return jax.tree.map(place, new, state_sharding), dict(metrics, refresh_seconds=time.perf_counter() - t0)


def epoch_order_fn(method, state, config):
    """None, or the pipeline's `epoch_order` for a method that samples its epochs from its
    per-example state (pure in (seed, epoch, that state): resuming gives the same order)."""
    if not getattr(method, "samples", False):
        return None
    per_example = parallel.to_host(state.method_state[parallel.PER_EXAMPLE_KEY])
    offset, size = pipeline.slice_range(config.data, jax.process_index(), jax.process_count())
    slice_indices = np.arange(offset, offset + size)
    return lambda epoch: method.epoch_order(per_example, epoch, config.seed, slice_indices)
