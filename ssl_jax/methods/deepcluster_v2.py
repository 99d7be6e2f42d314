"""DeepCluster-v2 (Caron et al., NeurIPS 2020, the SwAV paper, App. A; the authors'
main_deepclusterv2.py): DeepCluster with SwAV's improvements (multi-crop, an MLP projector,
L2-normalised embeddings, prototypes as the classifier, a temperature), and k-means on a memory
bank of the embeddings the network produced while training instead of a separate feature pass.

Network: encoder -> projector -> L2-normalised embedding z -> `num_heads` sets of
`num_prototypes` unit vectors (the prototypes, params 'prototypes/kernel' [H, K, D]); the logits
of head h for every crop are z · prototypes_hᵀ. The prototypes get no gradient (stop-gradient
here, and the config freezes them in the optimizer, `optimizer.frozen_params = ('prototypes',)`,
so neither momentum nor weight decay moves them, as the authors' code, which drops their
gradient for the whole run): they are set to the k-means centroids at every refresh.

Per-example state (rows = dataset indices): 'bank' [num_rows, num_global_crops, D] float32, the
normalised embeddings of each image's global crops, written in the train step for the batch's
rows (`.at[batch_index].set`); 'assignments' [num_rows, num_heads] int32, −1 before the first
clustering.

Every epoch opens with a refresh (ssl_jax.train.refresh): for each head h, spherical k-means
(random initialisation from K distinct rows, `kmeans_iters` Lloyd iterations, an empty cluster
keeps its centroid, a seed per (epoch, head)) on global crop h mod num_global_crops of the bank
-> assignments[:, h] and prototypes_h = the (unit) centroids. Loss: losses.deepcluster_v2 of the
logits of all crops [H, V, N, K] against each image's assignments, temperature `temperature`.

Choices (documented differences from the authors' code):
  - the bank is filled before the first clustering by a feature pass over the evaluation view
    of the train split (centre crop, no augmentation; the same projection copied into every
    global-crop slot), where the authors run their augmented multi-crop training loader once
    (init_memory): deterministic, so an interrupted run recreates the same labels;
  - an image the epoch's batches skip (the incomplete last batch is dropped) keeps its older
    embedding in the bank and is clustered with it; the authors' per-epoch bank holds only the
    images of that epoch and leaves the others unlabelled for the next epoch;
  - the refresh clusters the bank on the host's first device (all N rows at once): at ImageNet
    scale the [N, K] similarities are computed in row chunks (kmeans' chunk_size), the bank
    itself is N x 2 x 128 float32 (1.3 GB) of host memory during the refresh.
Logged at each refresh: the fraction of non-empty clusters per head, the spherical k-means
inertia (sum of 1 − cos) and the NMI between each head's consecutive assignments.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from ssl_jax import clustering, losses
from ssl_jax.methods.dataset_targets import DatasetTargets
from ssl_jax.models import build_head
from ssl_jax.parallel import PER_EXAMPLE_KEY

# Above this many [N, K] similarity entries (256 MB of float32) the refresh's k-means computes
# them over row chunks of at most that size.
KMEANS_FULL_ENTRIES = 2 ** 26


class MultiPrototypes(nn.Module):
    """`num_heads` sets of `num_prototypes` prototypes (param 'kernel' [H, K, D], unit rows):
    the scores [..., H, K] of the L2-normalised input against each set. The kernel is under
    stop-gradient: DeepCluster-v2 sets it to k-means centroids, never by gradient descent."""

    num_heads: int
    num_prototypes: int

    @property
    def output_dim(self) -> int:
        return self.num_heads * self.num_prototypes

    @nn.compact
    def __call__(self, x, train: bool, bn_views: int = 1):
        del train, bn_views  # no BatchNorm
        x = losses.l2_normalize(x.astype(jnp.float32))

        def init(key, shape, dtype=jnp.float32):
            return losses.l2_normalize(jax.random.normal(key, shape, dtype))

        kernel = self.param("kernel", init, (self.num_heads, self.num_prototypes, x.shape[-1]))
        return jnp.einsum("...d,hkd->...hk", x, jax.lax.stop_gradient(kernel),
                          precision=jax.lax.Precision.HIGHEST)


class DeepClusterV2(DatasetTargets):
    """Config section `deepcluster_v2`: projector, num_heads, num_prototypes, num_views,
    num_global_crops, temperature, kmeans_iters, momentum (None), predictor (None),
    per_view_bn."""

    name = "deepcluster_v2"
    head_outputs = (("projector", "z"), ("prototypes", "p"))

    def __init__(self, config, total_steps, steps_per_epoch=None):
        super().__init__(config, total_steps, steps_per_epoch)
        c = self.cfg
        self.num_heads, self.num_prototypes = int(c.num_heads), int(c.num_prototypes)
        self.num_global_crops, self.temperature = int(c.num_global_crops), float(c.temperature)
        self.kmeans_iters = int(c.kmeans_iters)
        self.embedding_dim = int(c.projector.output_dim)
        if not 1 <= self.num_global_crops <= self.num_views:
            raise ValueError(f"deepcluster_v2.num_global_crops={self.num_global_crops} must be in [1, num_views="
                             f"{self.num_views}]: the bank holds the global crops, which come first.")
        if self.num_heads < 1 or self.kmeans_iters < 0:
            raise ValueError(f"deepcluster_v2 needs num_heads >= 1 and kmeans_iters >= 0; got num_heads="
                             f"{self.num_heads}, kmeans_iters={self.kmeans_iters}.")
        if self.num_prototypes > self.num_examples:
            data = config.data
            raise ValueError(f"deepcluster_v2.num_prototypes={self.num_prototypes} exceeds the {self.num_examples} "
                             f"training examples of {data.dataset}:{data.train_split} (k-means seeds each cluster "
                             "with a distinct image); lower --config.deepcluster_v2.num_prototypes.")
        frozen = tuple(config.optimizer.frozen_params)
        if "prototypes" not in frozen:
            raise ValueError("deepcluster_v2's prototypes are the k-means centroids and must not be moved by the "
                             f"optimizer (weight decay would shrink them); optimizer.frozen_params={frozen} lacks "
                             "them: add 'prototypes' (configs/deepcluster_v2.py sets it).")

    def build_heads(self):
        # Called by the base constructor, before __init__ reads the section.
        c = self.cfg
        return {"projector": build_head(c.projector),
                "prototypes": MultiPrototypes(int(c.num_heads), int(c.num_prototypes))}

    def init_per_example(self, rng):
        del rng
        return {"bank": jnp.zeros((self.num_rows, self.num_global_crops, self.embedding_dim), jnp.float32),
                "assignments": jnp.full((self.num_rows, self.num_heads), -1, jnp.int32)}

    def refresh_due(self, epoch):
        del epoch  # every epoch opens with a clustering
        return True

    def refresh_pass_due(self, epoch):
        """Only the first refresh needs the feature pass (to fill the empty bank); later ones
        cluster the embeddings the previous epoch wrote."""
        return epoch == 0

    def refresh_features(self, params, batch_stats, images):
        """The normalised projection [b, D] of the evaluation view (inference mode)."""
        h = self.encoder.apply({"params": params["encoder"], "batch_stats": batch_stats["encoder"]}, images,
                               train=False)
        z = self.heads["projector"].apply({"params": params["projector"], "batch_stats": batch_stats["projector"]},
                                          h, train=False)
        return losses.l2_normalize(z.astype(jnp.float32))

    def cluster(self, bank: np.ndarray, epoch: int):
        """Spherical k-means of each head on its global crop of `bank` [num_examples, G, D]:
        (assignments [num_examples, H] int32, centroids [H, K, D] float32, results)."""
        n, k = bank.shape[0], self.num_prototypes
        chunk = None if n * k <= KMEANS_FULL_ENTRIES else max(KMEANS_FULL_ENTRIES // k, 1)
        results = [clustering.kmeans(bank[:, h % self.num_global_crops], k, num_iters=self.kmeans_iters,
                                     seed=self.refresh_seed(epoch, h), init="random", spherical=True,
                                     empty="keep", tol=0.0, chunk_size=chunk)
                   for h in range(self.num_heads)]
        assignments = np.stack([np.asarray(r.assignments, np.int32) for r in results], axis=1)
        centroids = np.stack([np.asarray(r.centroids, np.float32) for r in results])
        return assignments, centroids, results

    def refresh(self, params, batch_stats, method_state, features, epoch):
        n = self.num_examples
        per_example = method_state[PER_EXAMPLE_KEY]
        bank = np.array(per_example["bank"], np.float32)
        if features is not None:
            bank[:n] = np.asarray(features, np.float32)[:, None, :]
        elif epoch == 0:
            raise ValueError("deepcluster_v2: the refresh of epoch 0 needs the feature pass that fills the "
                             "memory bank (features=None).")
        previous = np.asarray(per_example["assignments"])[:n]
        assignments, centroids, results = self.cluster(bank[:n], epoch)
        metrics = {"refresh_inertia": float(np.mean([r.inertia for r in results]))}
        for h, r in enumerate(results):
            metrics[f"refresh_nonempty_fraction_{h}"] = float(np.mean(np.asarray(r.sizes) > 0))
        if previous.min() >= 0:
            metrics["refresh_nmi_previous"] = float(np.mean(
                [normalized_mutual_info_score(previous[:, h], assignments[:, h]) for h in range(self.num_heads)]))
        params = dict(params, prototypes={"kernel": centroids})
        per_example = dict(per_example, bank=bank, assignments=self.padded(assignments, -1))
        return params, dict(method_state, **{PER_EXAMPLE_KEY: per_example}), (), metrics

    def objective(self, out, target, method_state, rng, step, params):
        per_example = method_state[PER_EXAMPLE_KEY]
        index = method_state["batch_index"]
        labels = jnp.asarray(per_example["assignments"])[index].T       # [H, N]
        logits = jnp.moveaxis(out["p"], 2, 0)                            # [V, N, H, K] -> [H, V, N, K]
        loss = losses.deepcluster_v2(logits, labels, temperature=self.temperature)
        # The bank: this batch's rows get the normalised embeddings of their global crops.
        emb = jax.lax.stop_gradient(losses.l2_normalize(out["z"][:self.num_global_crops].astype(jnp.float32)))
        bank = jnp.asarray(per_example["bank"]).at[index].set(jnp.swapaxes(emb, 0, 1))
        labelled = (labels >= 0)[:, None, :]                             # [H, 1, N]
        hits = (jnp.argmax(logits, axis=-1) == labels[:, None, :]) & labelled
        metrics = {"cluster_top1": jnp.sum(hits) / jnp.maximum(jnp.sum(labelled) * logits.shape[1], 1)}
        return loss, metrics, {PER_EXAMPLE_KEY: dict(per_example, bank=bank)}
