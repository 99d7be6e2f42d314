"""The base of methods whose targets come from passes over the whole training set (DeepCluster,
SeLa, DeepCluster-v2): per-example state, refresh passes and sampled epochs.

What a subclass adds to a JointEmbeddingMethod (the loop's side: ssl_jax.train.refresh):
  init_per_example(rng)   {name: array [num_rows, ...]}: pseudo-labels, a memory bank. Rows are
                          dataset indices (the pipeline's batch['index']); num_rows is the
                          training set's size rounded up to a multiple of the global batch, so
                          the arrays split over any device count that splits the batch (they are
                          sharded, not replicated: ssl_jax.parallel.PER_EXAMPLE_KEY). Padding
                          rows are never read.
  refresh_due(epoch)      whether a refresh opens that epoch (before its first step)
  refresh_features        None, or fn(params, batch_stats, images) -> per-row outputs of the
                          network in inference mode, computed over the train split's evaluation
                          view (centre crop, no augmentation) before `refresh`
  refresh_features_on_device
                          False: the pass's rows are gathered on every host as NumPy [N, ...];
                          True: they stay on the devices, [num_rows, ...] sharded over the
                          example axis (rows past N are 0), for passes too large for a host
  refresh_pass_due(epoch) whether the refresh opening `epoch` needs that pass (default: yes;
                          DeepCluster-v2 needs it only to fill its memory bank at epoch 0)
  refresh(params, batch_stats, method_state, features, epoch)
                          -> (params, method_state, reset_heads, metrics): method_state and
                          features on the host, params and batch_stats the devices' arrays
                          (replace a head, do not copy the rest); pure in its inputs and the
                          run's seed (a resumed run recreates the same labels); `reset_heads`
                          names the heads re-initialised, whose optimizer state the loop resets
  samples, epoch_order    a sampled epoch order (DeepCluster's uniform sampling over clusters)
In `objective`, method_state['batch_index'] holds the batch's dataset indices.
"""
import abc

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.data import pipeline
from ssl_jax.methods.base import JointEmbeddingMethod
from ssl_jax.parallel import PER_EXAMPLE_KEY


class DatasetTargets(JointEmbeddingMethod, abc.ABC):
    """JointEmbeddingMethod with per-example state refreshed by passes over the dataset."""

    samples = False
    refresh_features = None
    refresh_features_on_device = False
    monitor_key = "z"  # the output the collapse monitors read: 'z' (a projection) or 'h'

    def __init__(self, config, total_steps, steps_per_epoch=None):
        super().__init__(config, total_steps, steps_per_epoch)
        data = config.data
        self.num_examples = int(pipeline.split_info(data)["num_examples_total"])
        batch = int(config.global_batch_size)
        self.num_rows = -(-self.num_examples // batch) * batch
        self.seed = int(config.seed)
        self.num_epochs = max(int(np.ceil(self.total_steps / self.steps_per_epoch)), 1)

    @abc.abstractmethod
    def init_per_example(self, rng: jax.Array) -> dict:
        """{name: [num_rows, ...] array}: the per-example state before any refresh."""

    @abc.abstractmethod
    def refresh_due(self, epoch: int) -> bool:
        """Whether a refresh opens `epoch`."""

    @abc.abstractmethod
    def refresh(self, params, batch_stats, method_state, features, epoch: int):
        """(params, method_state, reset_heads, metrics) after the refresh opening `epoch`."""

    def refresh_pass_due(self, epoch: int) -> bool:
        """Whether the refresh opening `epoch` needs the feature pass (features=None otherwise)."""
        del epoch
        return True

    def init_extra_state(self, rng):
        return {PER_EXAMPLE_KEY: self.init_per_example(rng), "refreshed_at": jnp.int32(-1)}

    def loss_aux(self, out, stats, target_stats, method_state, updates, metrics):
        # With monitor_key 'h' the projector monitors (z_std, effective rank) read the encoder's
        # features: for methods whose only heads are classifiers re-initialised at refreshes
        # (DeepCluster, DeeperCluster, SeLa), the logits' rank (8 for DeeperCluster's demo) says
        # nothing about a collapse of the representation.
        return super().loss_aux(dict(out, z=out[self.monitor_key]), stats, target_stats, method_state,
                                updates, metrics)

    def with_batch(self, method_state, batch):
        return dict(method_state, batch_index=batch["index"])

    def refresh_seed(self, epoch: int, stream: int = 0) -> int:
        """A seed for the randomness of the refresh opening `epoch` (k-means, head init): a pure
        function of the run's seed, so a resumed run draws the same."""
        return int(np.random.SeedSequence([self.seed, epoch, stream]).generate_state(1)[0] >> 1)

    def padded(self, rows: np.ndarray, fill) -> np.ndarray:
        """Per-example rows [num_examples, ...] padded to [num_rows, ...] with `fill`."""
        rows = np.asarray(rows)
        pad = np.full((self.num_rows - len(rows),) + rows.shape[1:], fill, rows.dtype)
        return np.concatenate([rows, pad])


def uniform_over_labels(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Positions into `labels` for one epoch of len(labels) draws, uniform over the non-empty
    labels (DeepCluster's UnifLabelSampler): each non-empty label gets n // K_nonempty + 1 draws of
    its members, with replacement only when it has fewer members than that; the draws are
    shuffled and cut to n. Labels < 0 (none yet) are never drawn; with no label at all, a
    permutation."""
    n = len(labels)
    present = np.unique(labels[labels >= 0])
    if len(present) == 0:
        return rng.permutation(n)
    per_label = n // len(present) + 1
    # Members of every label at once, each in ascending order (a stable sort): O(N log N), where a
    # scan per label is O(N·K), minutes at ImageNet's 1.28M images x 10k clusters.
    by_label = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[by_label], present)
    ends = np.searchsorted(labels[by_label], present, side="right")
    draws = [rng.choice(by_label[a:b], per_label, replace=b - a < per_label) for a, b in zip(starts, ends)]
    return rng.permutation(np.concatenate(draws))[:n]
