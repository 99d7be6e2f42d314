"""SeLa, self-labelling (Asano, Rupprecht & Vedaldi, ICLR 2020): the labels of the whole training
set are the solution of an optimal-transport problem, an equipartition of the images over K
labels that maximises the network's own log-likelihood, found by Sinkhorn-Knopp; the network is
trained by cross-entropy on them and the labels are re-optimised `nopts` times over training.

Heads: `num_heads` linear heads of `num_clusters` outputs each (one Dense of heads x K outputs),
never reset; each head has its own labels ([N, heads], a random equipartition to start with,
as the authors' code). Loss: the mean over heads of the cross-entropy against the head's label.
Label optimisation (`losses.self_label`, λ = `lam`): at the paper's schedule, the
(nopts - 1) + 1 times (E + 1)·i/(nopts - 1) epochs, i = 0 .. nopts - 1, of the authors' code,
floored to the epoch boundary where a refresh runs (so with nopts > epochs every epoch opens
with one). Choices: the label pass reads the evaluation view (centre crop, no augmentation),
which makes it deterministic and exactly resumable; the authors feed their augmented training
loader ("can also be a loader with less augmentation", their comment). The N x heads x K
log-probabilities never reach a host: the pass keeps them on the devices, sharded over the
example axis (`refresh_features_on_device`), and Sinkhorn-Knopp runs there in one jitted
program, its sums over N all-reduced by XLA; only the int labels [N, heads] come to the host.
For the paper's ImageNet run (1.28M x 10 x 3000 float32, 154 GB) that is 4.8 GB per device on
32 devices, 1.2 GB on 128.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from ssl_jax import losses, parallel
from ssl_jax.methods.dataset_targets import DatasetTargets
from ssl_jax.models import build_head
from ssl_jax.parallel import PER_EXAMPLE_KEY


def _solve_heads(log_probs: jax.Array, lam: float, num_examples: int) -> jax.Array:
    """Each head's Sinkhorn-Knopp labels, int32 [num_rows, heads], from log-probabilities
    [num_rows, heads, K] whose rows past `num_examples` are padding (label −1)."""
    valid = jnp.arange(log_probs.shape[0]) < num_examples
    return jnp.stack([losses.self_label(log_probs[:, h], lam=lam, valid=valid)
                      for h in range(log_probs.shape[1])], axis=1)


def label_epochs(num_epochs: int, nopts: int) -> frozenset:
    """The epochs whose start re-optimises the labels: floor((E + 1)·i/(nopts - 1)) < E for
    i = 0 .. nopts - 1 (the authors' schedule in examples seen, at epoch granularity)."""
    if nopts < 1:
        return frozenset()
    times = (num_epochs + 1.0001) * np.linspace(0.0, 1.0, nopts) if nopts > 1 else np.zeros(1)
    return frozenset(int(t) for t in np.floor(times) if t < num_epochs)


class SeLa(DatasetTargets):
    """Config section `sela`: num_heads, num_clusters, lam, nopts, num_views (1), per_view_bn,
    momentum (None), predictor (None), projector (None: the heads are built here)."""

    name = "sela"
    head_outputs = (("heads", "z"),)
    monitor_key = "h"  # the heads are classifiers: the monitors read the encoder
    refresh_features_on_device = True

    def __init__(self, config, total_steps, steps_per_epoch=None):
        super().__init__(config, total_steps, steps_per_epoch)
        self.num_heads, self.num_clusters = int(self.cfg.num_heads), int(self.cfg.num_clusters)
        if self.num_clusters > self.num_examples:
            raise ValueError(f"sela.num_clusters={self.num_clusters} exceeds the {self.num_examples} training "
                             "examples; lower --config.sela.num_clusters.")
        self.refresh_epochs = label_epochs(self.num_epochs, int(self.cfg.nopts))
        self._solve = jax.jit(functools.partial(_solve_heads, lam=float(self.cfg.lam),
                                                num_examples=self.num_examples))

    def build_heads(self):
        # Called by the base constructor, before __init__ sets num_heads.
        return {"heads": build_head(dict(hidden_dim=0, output_dim=int(self.cfg.num_heads * self.cfg.num_clusters),
                                         num_layers=1, hidden_bn=False, output_bn="none", output_bias=True))}

    def init_per_example(self, rng):
        """Each head's labels: a random equipartition (label n mod K of a random permutation)."""
        keys = jax.random.split(rng, self.num_heads)
        labels = jnp.stack([jax.random.permutation(k, jnp.arange(self.num_examples) % self.num_clusters)
                            for k in keys], axis=1).astype(jnp.int32)
        pad = jnp.full((self.num_rows - self.num_examples, self.num_heads), -1, jnp.int32)
        return {"labels": jnp.concatenate([labels, pad])}

    def refresh_due(self, epoch):
        return epoch in self.refresh_epochs

    def _logits(self, z):
        """[..., heads·K] -> [..., heads, K]."""
        return z.reshape(z.shape[:-1] + (self.num_heads, self.num_clusters))

    def refresh_features(self, params, batch_stats, images):
        h = self.encoder.apply({"params": params["encoder"], "batch_stats": batch_stats["encoder"]}, images,
                               train=False)
        z = self.heads["heads"].apply({"params": params["heads"], "batch_stats": batch_stats["heads"]}, h,
                                      train=False)
        return jax.nn.log_softmax(self._logits(z.astype(jnp.float32)), axis=-1)  # [b, heads, K]

    def refresh(self, params, batch_stats, method_state, features, epoch):
        previous = np.asarray(method_state[PER_EXAMPLE_KEY]["labels"])[:self.num_examples]
        # features: [num_rows, heads, K], sharded over the devices (or host rows [N, ...] from
        # a caller that computed them elsewhere; padded here to the same rows).
        if not isinstance(features, jax.Array):
            features = self.padded(np.asarray(features, np.float32), 0.0)
        labels = parallel.to_host(self._solve(features))[:self.num_examples]
        counts = np.stack([np.bincount(labels[:, h], minlength=self.num_clusters) for h in range(self.num_heads)])
        metrics = {"refresh_nmi_previous": float(np.mean([normalized_mutual_info_score(previous[:, h], labels[:, h])
                                                          for h in range(self.num_heads)])),
                   "refresh_label_count_min": int(counts.min()), "refresh_label_count_max": int(counts.max())}
        per_example = dict(method_state[PER_EXAMPLE_KEY], labels=self.padded(labels, -1))
        return params, dict(method_state, **{PER_EXAMPLE_KEY: per_example}), (), metrics

    def objective(self, out, target, method_state, rng, step, params):
        labels = method_state[PER_EXAMPLE_KEY]["labels"][method_state["batch_index"]]  # [N, heads]
        logits = self._logits(out["z"][0])  # [N, heads, K]
        loss = losses.deepcluster_v2(jnp.transpose(logits, (1, 0, 2))[:, None], labels.T, temperature=1.0)
        top1 = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
        return loss, {"label_top1": top1}, {}
