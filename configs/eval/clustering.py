"""Clustering of frozen features: k-means, then NMI, ARI and Hungarian-matched accuracy.

Command:
    python -m ssl_jax.evaluate --config=configs/eval/clustering.py[:PRESET] --workdir=RUN_DIR

Features of the test split (centre crops, inference mode), L2-normalised, are clustered by
k-means (k-means++ init, the best of several restarts, in JAX on the mesh) into as many
clusters as classes (or clustering.num_clusters); the clusters are scored against the labels
with normalised mutual information, adjusted Rand index, the Hungarian (one-to-one) matched
accuracy and, for more clusters than classes, the many-to-one accuracy.

A clusterer with its own assignments (an IIC run: configs/iic.py) is scored on them instead
(clustering.assign 'auto'; 'kmeans' forces k-means on its features): the argmax of its main
head's sub-head with the lowest training loss, and of its over-clustering head
(ssl_jax.evaluate.iic.clustering_records).

Presets:
  kmeans (default)  k = number of classes, 3 restarts, up to 300 Lloyd iterations: the
                    protocol of DeepCluster / IIC / SeLa-style clustering tables. Any hardware the
                    run trained on; runtime and result not measured here.
  overcluster       k = 5 x the classes: reports the many-to-one accuracy (IIC's over-clustering).
                    Runtime and result not measured here.
  demo              a `demo` run (digits): seconds on 2 CPU cores. Measured (README, Methods):
                    NMI 0.438 / 0.530 / 0.471 / 0.621 on the DeepCluster / DeepCluster-v2 /
                    DeeperCluster / SeLa demo runs, 0.291 at random init.
"""
from ssl_jax import presets as P

PRESETS = ("kmeans", "overcluster", "demo")


def get_config(preset: str = "kmeans"):
    preset, c = P.eval_start("clustering.py", preset, PRESETS)
    if preset == "overcluster":
        c.clustering.num_clusters = -5  # negative: that many clusters per class
    elif preset == "demo":
        P.eval_demo(c)
    return c
