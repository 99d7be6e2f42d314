"""DeepCluster (Caron et al., ECCV 2018): alternate k-means on the features of the whole training
set and training the network to predict the cluster of each image.

Each epoch opens with a refresh (ssl_jax.train.refresh): the features of every training image
(evaluation view; the encoder's `cluster_features` output: AlexNet's fc7 before its ReLU, as the
authors' code drops the last ReLU for clustering; a ResNet's pooled features) -> PCA to `pca_dim`
with whitening -> L2 normalisation -> k-means with K = `num_clusters` (random initialisation as
Faiss, `kmeans_iters` Lloyd iterations, a new seed every epoch) with the paper's empty-cluster
rule (a random non-empty cluster, chosen with probability proportional to its size - 1, is split)
-> those assignments are the epoch's labels. Cluster ids permute from one clustering to the
next, so the top layer (a linear classifier, weights N(0, 0.01), bias 0) is re-initialised and
its optimizer state reset at every refresh; it is trained by plain SGD without momentum
(`optimizer.no_momentum_params`). The epoch samples images uniformly over the non-empty
clusters (n/K_nonempty + 1 per cluster). Loss: cross-entropy of the top layer's logits against
the image's cluster. The NMI between consecutive clusterings (the paper's stability curve, Fig. 2)
is logged at every refresh as `refresh_nmi_previous`.
"""
import jax
import jax.numpy as jnp
import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from ssl_jax import clustering, losses
from ssl_jax.methods.dataset_targets import DatasetTargets, uniform_over_labels
from ssl_jax.models import build_head
from ssl_jax.parallel import PER_EXAMPLE_KEY


def fresh_linear(key, in_dim: int, out_dim: int, leading: tuple = ()) -> dict:
    """The authors' initialisation of a new classifier: weights N(0, 0.01²), bias 0 (with
    `leading` axes: that many independent classifiers)."""
    return {"kernel": 0.01 * jax.random.normal(key, leading + (in_dim, out_dim), jnp.float32),
            "bias": jnp.zeros(leading + (out_dim,), jnp.float32)}


def cluster_features(features, num_clusters: int, *, pca_dim: int, kmeans_iters: int, seed: int):
    """DeepCluster's clustering of feature rows [N, D]: PCA-whitening to pca_dim (<= D), L2
    normalisation, k-means (random init as Faiss, kmeans_iters iterations, empty clusters split)
    -> ssl_jax.clustering.KMeansResult. Also SSL++'s coupled ablation (ssl_jax.methods.sslpp)."""
    x = clustering.pca_whiten(jnp.asarray(features), pca_dim)
    return clustering.kmeans(x, num_clusters, num_iters=kmeans_iters, init="random", empty="split", seed=seed)


class DeepCluster(DatasetTargets):
    """Config section `deepcluster`: num_clusters, pca_dim, kmeans_iters, cluster_features (the
    encoder's return_stages key clustered), reassign_epochs (re-cluster every that many
    epochs; the paper: 1), sample_uniformly, num_views (1), per_view_bn, momentum (None),
    predictor (None), projector (None: the top layer is built here)."""

    name = "deepcluster"
    head_outputs = (("top_layer", "z"),)
    samples = True
    monitor_key = "h"  # the heads are classifiers: the monitors read the encoder

    def build_heads(self):
        # A linear classifier (one Dense) over the encoder's output.
        return {"top_layer": build_head(dict(hidden_dim=0, output_dim=int(self.cfg.num_clusters), num_layers=1,
                                             hidden_bn=False, output_bn="none", output_bias=True))}

    def init(self, rng, images):
        params, batch_stats, state = super().init(rng, images)
        params.update(self._fresh_heads(jax.random.fold_in(rng, 7)))
        return params, batch_stats, state

    def _fresh_heads(self, key) -> dict:
        """The heads a refresh re-initialises, initialised: the top layer."""
        return {"top_layer": {"dense1": fresh_linear(key, self.encoder.feature_dim, int(self.cfg.num_clusters))}}

    def cluster(self, features, num_clusters: int, seed: int):
        """DeepCluster's clustering of feature rows (`cluster_features`) -> KMeansResult."""
        dim = int(self.cfg.pca_dim)
        if dim > features.shape[1]:
            raise ValueError(f"{self.name}.pca_dim={dim} exceeds the {features.shape[1]} dimensions of the "
                             f"'{self.cfg.cluster_features}' features; lower --config.{self.name}.pca_dim.")
        return cluster_features(features, num_clusters, pca_dim=dim, kmeans_iters=int(self.cfg.kmeans_iters),
                                seed=seed)

    def init_per_example(self, rng):
        return {"labels": jnp.full((self.num_rows,), -1, jnp.int32)}

    def refresh_due(self, epoch):
        return epoch % int(self.cfg.reassign_epochs) == 0

    def refresh_features(self, params, batch_stats, images):
        stages = self.encoder.apply({"params": params["encoder"], "batch_stats": batch_stats["encoder"]}, images,
                                    train=False, return_stages=True)
        return stages[self.cfg.cluster_features].astype(jnp.float32)

    def refresh(self, params, batch_stats, method_state, features, epoch):
        result = self.cluster(features, int(self.cfg.num_clusters), self.refresh_seed(epoch, 0))
        labels = np.asarray(result.assignments, np.int32)
        previous = np.asarray(method_state[PER_EXAMPLE_KEY]["labels"])[:self.num_examples]
        metrics = {"refresh_inertia": result.inertia, "refresh_empty_splits": int(result.num_empty_splits),
                   "refresh_nonempty_clusters": len(np.unique(labels))}
        if previous.min() >= 0:
            metrics["refresh_nmi_previous"] = normalized_mutual_info_score(previous, labels)
        params = dict(params, **jax.tree.map(np.asarray, self._fresh_heads(
            jax.random.PRNGKey(self.refresh_seed(epoch, 1)))))
        per_example = dict(method_state[PER_EXAMPLE_KEY], labels=self.padded(labels, -1))
        return params, dict(method_state, **{PER_EXAMPLE_KEY: per_example}), ("top_layer",), metrics

    def sampling_labels(self, per_example) -> np.ndarray:
        """The labels the epochs sample uniformly over ([num_rows], -1: none yet)."""
        return np.asarray(per_example["labels"])

    def epoch_order(self, per_example, epoch, seed, slice_indices):
        rng = np.random.default_rng([seed, epoch, int(slice_indices[0])])
        if not self.cfg.sample_uniformly:
            return rng.permutation(slice_indices)
        return slice_indices[uniform_over_labels(self.sampling_labels(per_example)[slice_indices], rng)]

    def objective(self, out, target, method_state, rng, step, params):
        labels = method_state[PER_EXAMPLE_KEY]["labels"][method_state["batch_index"]]
        logits = out["z"][0]
        loss = losses.deepcluster_v2(logits[None, None], labels[None], temperature=1.0)
        top1 = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
        return loss, {"cluster_top1": top1}, {}
