"""DeeperCluster (Caron et al., ICCV 2019, "Unsupervised Pre-Training of Image Features on
Non-Curated Data"): DeepCluster's clusters combined with RotNet's rotations, with targets in
the product space rotation x cluster, learned through a hierarchical loss.

Every `reassign_epochs` epochs (the paper: 3) a refresh clusters the features of every
training image (evaluation view, not rotated; DeepCluster's pipeline: PCA-whitening, L2,
k-means with empty clusters split) hierarchically: into `num_super_clusters` (m) super-clusters,
then each super-cluster on its own into `num_sub_clusters` (k) sub-clusters (fewer when it has
fewer than k images). In a step, each image is rotated by r in 0..`rotations` - 1, drawn per
image from the step's key; its super-class is s = r·m + (its super-cluster), one of
S = rotations·m, and its sub-class the sub-cluster. Heads: the super-class classifier V
(`super_head`, [D, S]) and one sub-class classifier W_s per super-class (`sub_heads`, [S, D, k]);
loss: `losses.hierarchical_cross_entropy` (CE of V against s + CE of W_s against the
sub-cluster: only the true super-class's W_s gets gradient). Both heads are re-initialised at
every refresh (N(0, 0.01), bias 0; their optimizer state reset; trained without momentum, as
DeepCluster's top layer). Epochs sample uniformly over the (super-cluster, sub-cluster) pairs,
hence uniformly within each super-class. With m = 1 and rotations = 1 this is DeepCluster;
with k = 1 it is RotNet (the 4-way rotation loss).

Choices: the authors' code computes the super-clusters once and reuses them at every later
reassignment (it caches them on disk); `fixed_super_clusters` (default True) does the same, False
re-clusters both levels each time. The authors' VGG-16 trains the super-classes on separate GPU
groups, each with its own images and rotation; here every batch mixes them, which is the same
objective.
"""
import jax
import jax.numpy as jnp
import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from ssl_jax import losses
from ssl_jax.methods.deepcluster import DeepCluster, fresh_linear
from ssl_jax.models import build_head
from ssl_jax.parallel import PER_EXAMPLE_KEY


def rotate(images: jax.Array, rotation: jax.Array) -> jax.Array:
    """images [N, H, H, C] each rotated by rotation[n] x 90° counter-clockwise."""
    options = jnp.stack([jnp.rot90(images, k, axes=(1, 2)) for k in range(4)])  # [4, N, H, W, C]
    return jnp.take_along_axis(options, rotation[None, :, None, None, None], axis=0)[0]


class DeeperCluster(DeepCluster):
    """Config section `deepercluster`: num_super_clusters, num_sub_clusters, rotations (4 or 1),
    fixed_super_clusters, pca_dim, kmeans_iters, cluster_features, reassign_epochs,
    sample_uniformly, num_views (1), per_view_bn, momentum (None), predictor, projector (None)."""

    name = "deepercluster"
    head_outputs = (("super_head", "z"),)

    def __init__(self, config, total_steps, steps_per_epoch=None):
        super().__init__(config, total_steps, steps_per_epoch)
        self.m, self.k = int(self.cfg.num_super_clusters), int(self.cfg.num_sub_clusters)
        self.rotations = int(self.cfg.rotations)
        if self.rotations not in (1, 4):
            raise ValueError(f"deepercluster.rotations={self.rotations}: use 4 (RotNet's angles) or 1 (none).")
        if self.m * self.k > self.num_examples:
            raise ValueError(f"deepercluster: {self.m} x {self.k} clusters exceed the {self.num_examples} "
                             "training examples; lower num_super_clusters or num_sub_clusters.")

    @property
    def num_super_classes(self) -> int:
        return int(self.cfg.rotations) * int(self.cfg.num_super_clusters)

    def build_heads(self):  # called by the base constructor, before __init__ sets m, k
        return {"super_head": build_head(dict(hidden_dim=0, output_dim=self.num_super_classes, num_layers=1,
                                              hidden_bn=False, output_bn="none", output_bias=True))}

    def _fresh_heads(self, key) -> dict:
        k1, k2 = jax.random.split(key)
        dim = self.encoder.feature_dim
        return {"super_head": {"dense1": fresh_linear(k1, dim, self.num_super_classes)},
                "sub_heads": fresh_linear(k2, dim, int(self.cfg.num_sub_clusters), (self.num_super_classes,))}

    def init_per_example(self, rng):
        return {"super": jnp.full((self.num_rows,), -1, jnp.int32), "sub": jnp.full((self.num_rows,), -1, jnp.int32)}

    def refresh(self, params, batch_stats, method_state, features, epoch):
        previous = {k: np.asarray(v)[:self.num_examples] for k, v in method_state[PER_EXAMPLE_KEY].items()}
        if self.cfg.fixed_super_clusters and previous["super"].min() >= 0:
            super_labels = previous["super"]
        else:
            super_labels = np.asarray(self.cluster(features, self.m, self.refresh_seed(epoch, 0)).assignments)
        sub_labels = np.zeros(self.num_examples, np.int32)
        for c in range(self.m):
            members = np.flatnonzero(super_labels == c)
            if len(members) <= self.k:  # fewer images than sub-clusters: one each
                sub_labels[members] = np.arange(len(members))
            elif self.k > 1:
                result = self.cluster(features[members], self.k, self.refresh_seed(epoch, 1 + c))
                sub_labels[members] = np.asarray(result.assignments)
        composite = super_labels * self.k + sub_labels
        metrics = {"refresh_nonempty_clusters": len(np.unique(composite))}
        if previous["sub"].min() >= 0:
            metrics["refresh_nmi_previous"] = normalized_mutual_info_score(
                previous["super"] * self.k + previous["sub"], composite)
        params = dict(params, **jax.tree.map(np.asarray, self._fresh_heads(
            jax.random.PRNGKey(self.refresh_seed(epoch, self.m + 1)))))
        per_example = {"super": self.padded(super_labels.astype(np.int32), -1),
                       "sub": self.padded(sub_labels.astype(np.int32), -1)}
        return (params, dict(method_state, **{PER_EXAMPLE_KEY: per_example}), ("super_head", "sub_heads"),
                metrics)

    def sampling_labels(self, per_example):
        """(super-cluster, sub-cluster) pairs: uniform over them is uniform within each super-class."""
        composite = np.asarray(per_example["super"]) * self.k + np.asarray(per_example["sub"])
        return np.where(composite < 0, -1, composite)

    def loss(self, params, batch_stats, method_state, batch, rng, step):
        """The image of each example rotated by its drawn angle, then the usual forward."""
        views = batch["views"]
        rotation = jax.random.randint(jax.random.fold_in(rng, 4), (views[0].shape[0],), 0, self.rotations)
        batch = dict(batch, views=(rotate(views[0], rotation),) + tuple(views[1:]), rotation=rotation)
        return super().loss(params, batch_stats, method_state, batch, rng, step)

    def with_batch(self, method_state, batch):
        return dict(super().with_batch(method_state, batch), rotation=batch["rotation"])

    def objective(self, out, target, method_state, rng, step, params):
        index = method_state["batch_index"]
        per_example = method_state[PER_EXAMPLE_KEY]
        super_class = method_state["rotation"] * self.m + per_example["super"][index]
        sub_class = per_example["sub"][index]
        h = out["h"][0].astype(jnp.float32)
        heads = params["sub_heads"]
        # Only the sub-class classifier of each image's super-class: [N, D] x [N, D, k].
        sub_logits = jnp.einsum("nd,ndk->nk", h, heads["kernel"][super_class]) + heads["bias"][super_class]
        super_logits = out["z"][0]
        loss = losses.hierarchical_cross_entropy(super_logits, super_class, sub_logits, sub_class)
        return loss, {"super_top1": jnp.mean(jnp.argmax(super_logits, -1) == super_class),
                      "sub_top1": jnp.mean(jnp.argmax(sub_logits, -1) == sub_class)}, {}
