"""SSL++'s stage C (Chen et al., IEEE TIP; seed 002, Eq. 5) as a wrapper around a proxy-task method:
the method's own head V₁ and loss L_s, plus a semantic head V₂, a C-way classifier on the
backbone's pooled features trained on frozen per-example pseudo-labels z_n:

    L = proxy_weight · L_s + λ · L_c,    L_c = mean cross-entropy(V₂(f_θ(x_n)), z_n).

`build_method` calls `wrap(method, config)`; config.sslpp.labels = '' (the base default) returns the
method unchanged. Config section `sslpp` (defaults: ssl_jax.presets.base_config):
  labels        path of the stage-B labels file ('' = off), written by `write_labels`: labels [N]
                int32 in dataset-index order and the fingerprint of the training set they label
                (dataset, split, num_examples) with the stage-A run's step and the label source.
                It is checked against this run's training set (one error on a mismatch).
                'coupled': no file; the labels are the backbone's own clusters, recomputed during
                training (`CoupledSemanticHead`, the paper's Table XII ablation).
  num_classes   C, V₂'s outputs (SSL++: 70, IIC's over-clustering head); every label must be < C.
  weight        λ. No default: SSL++ uses 1 for colorization and context encoder, 0.05 for
                rotation and AET (configs/sslpp.py sets them); 0 = the proxy alone (Table IX).
  proxy_weight  the weight of L_s (1; 0 = the semantic labels alone, Table XI's "SPL only").
  head_hidden_dim  0: V₂ is linear (the default); > 0: a 2-layer MLP (BN, ReLU) of that width.
                The paper says only "a parameterized classifier on top of f_θ(x_n)". Linear is the
                default because the point of V₂ is to make the pooled features themselves (what kNN
                and the probes read) linearly semantic; a hidden layer could hold the semantics in
                the head and spare the last block, the layer SSL++ sets out to cure. It is also the
                shape of RotNet's V₁.
  view          which features V₂ reads: 'features' (what the method reports as its features:
                RotNet's upright copy, colorization's L-channel input, the context encoder's
                masked image, AET's original image) or 'all_copies' (RotNet only: all four rotated
                copies, each with the image's label). The paper is silent; configs/sslpp.py's
                rotation presets take 'all_copies', the literal reading of Eqs. 3-4 (both heads on
                the same inputs x_n, the rotated copies for the rotation task).

The labels are a constant of the step (N int32 on every device: 200 KB for CIFAR-10's 50 000), not
per-example state: they never change in stage C and are reread (and rechecked) from the file on
resume. V₂'s params live under params['semantic_head'] (trained by the optimizer, checkpointed,
dropped by the evaluation as every head is). Metrics: semantic_loss (L_c), semantic_top1 (V₂'s
agreement with the pseudo-labels), proxy_loss (L_s).

Coupled (labels 'coupled'; SSL++ Table XII, "following [20] we iteratively use k-means to cluster
deep features of samples", its foil): the same L = L_s + λ·L_c, but z_n is per-example state
refreshed DeepCluster's way through the loop's dataset-refresh machinery (ssl_jax.train.refresh,
as ssl_jax.methods.deepcluster): every `recluster_epochs` epochs (the paper does not say how
often; 1 = DeepCluster's every epoch) the backbone's pooled features of every training image
(evaluation view as the task feeds it to the network, inference mode) are clustered by
DeepCluster's procedure
(ssl_jax.methods.deepcluster.cluster_features: PCA-whitening to `pca_dim`, 0 = the features'
dimension (NIN's 192 is below DeepCluster's 256), L2, k-means with K = num_classes, random init,
`kmeans_iters` iterations (DeepCluster's 20), empty clusters split), seeded by the run's seed and the
epoch; V₂ is re-initialised and its optimizer state reset at each refresh (cluster ids permute
between clusterings). Epochs keep the proxy task's uniform order (DeepCluster's sampling uniform
over clusters would reweight L_s as well). Refresh metrics: refresh_inertia,
refresh_nonempty_clusters, refresh_nmi_previous.
"""
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sklearn.metrics import normalized_mutual_info_score

from ssl_jax import storage
from ssl_jax.data import pipeline
from ssl_jax.methods import common, deepcluster
from ssl_jax.methods.dataset_targets import DatasetTargets
from ssl_jax.models import build_head
from ssl_jax.parallel import PER_EXAMPLE_KEY

VIEWS = ("features", "all_copies")
KEYS = ("labels", "num_classes", "weight", "proxy_weight", "head_hidden_dim", "view", "recluster_epochs",
        "pca_dim", "kmeans_iters")
COUPLED = "coupled"  # config.sslpp.labels for the coupled ablation
FINGERPRINT_KEYS = ("dataset", "split", "num_examples")


def fingerprint_arrays(fingerprint: dict) -> dict:
    """The fingerprint's entries as arrays for an .npz labels file ('data_classes' only for a subset)."""
    keys = FINGERPRINT_KEYS + (("data_classes",) if "data_classes" in fingerprint else ())
    return {k: np.asarray(fingerprint[k]) for k in keys}


def fingerprint_of_file(entries: dict) -> dict:
    """The fingerprint of a labels file's entries (fingerprint_arrays' inverse)."""
    out = {k: np.asarray(entries[k]).item() for k in FINGERPRINT_KEYS}
    if "data_classes" in entries:
        out["data_classes"] = [int(c) for c in np.asarray(entries["data_classes"]).reshape(-1)]
    return out


def write_labels(path: str, labels, fingerprint: dict, *, num_classes: int, source: str,
                 stage_a_step: int = -1, settings: dict | None = None) -> None:
    """Stage B's file: labels int32 [N] and the fingerprint, written atomically (a reader never
    sees a partial file). stage_a_step: the clusterer's training step (-1: no clusterer);
    settings: what else made the labels (seed, PCA dimension, ...), stored as JSON."""
    labels = np.asarray(labels, np.int32)
    if labels.ndim != 1 or labels.shape[0] != fingerprint["num_examples"]:
        raise ValueError(f"write_labels: {labels.shape} labels for {fingerprint['num_examples']} examples.")
    buf = io.BytesIO()
    np.savez(buf, labels=labels, num_classes=np.int32(num_classes), source=np.str_(source),
             stage_a_step=np.int64(stage_a_step), settings=np.str_(json.dumps(settings or {}, sort_keys=True)),
             **fingerprint_arrays(fingerprint))
    storage.write_file(path, buf.getvalue())


def read_labels(path: str) -> dict:
    """A labels file as {'labels', 'num_classes', 'source', 'stage_a_step', 'settings' (a dict; {} in
    a file written before they were stored), 'fingerprint', dataset, split, num_examples}."""
    if not storage.exists(path):
        raise FileNotFoundError(f"sslpp.labels={path!r} does not exist: run stage B (configs/sslpp.py) to "
                                "write it, or set --config.sslpp.labels='' to train the proxy task alone.")
    with np.load(io.BytesIO(storage.read_bytes(path))) as f:
        out = {k: f[k] for k in f.files}
    fingerprint = fingerprint_of_file(out)
    out = {k: (v if k in ("labels", "data_classes") else v.item()) for k, v in out.items()}
    out["fingerprint"] = fingerprint
    out["settings"] = json.loads(out.get("settings", "{}"))
    return out


def check_fingerprint(saved: dict, current: dict, path: str) -> None:
    """One clear error when a labels file labels another training set than this run's."""
    if saved != current:
        raise ValueError(
            f"The SSL++ labels in {path} are for {pipeline.describe_training_set(saved)}, but this run trains "
            f"on {pipeline.describe_training_set(current)}. "
            "Label this training set (stage B of configs/sslpp.py), or set --config.data back to the one the "
            "labels were made for.")


def wrap(method, config):
    """`method` with SSL++'s semantic head when config.sslpp.labels is set, else itself."""
    section = config.get("sslpp")
    if section is None or not section.labels:
        return method
    if section.labels == COUPLED:
        return CoupledSemanticHead(method, section, config)
    return SemanticHead(method, section, config.data)


class SemanticHead:
    """The wrapped method plus V₂; every other attribute (encoder, heads, cfg, after_update,
    view_plan, evaluated_network, ...) is the method's own."""

    def __init__(self, method, section, data_cfg):
        self._configure(method, section)
        stored = read_labels(section.labels)
        check_fingerprint(stored["fingerprint"], pipeline.training_fingerprint(data_cfg), section.labels)
        labels = stored["labels"]
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"The labels in {section.labels} range over [{labels.min()}, {labels.max()}], "
                             f"outside config.sslpp.num_classes={self.num_classes}: set it to the labels' "
                             f"C ({stored['num_classes']}).")
        self.labels = labels
        self.num_examples = int(labels.shape[0])

    def _configure(self, method, section):
        """Check `section`; set the weights, the view, C and V₂."""
        self.method = method
        unknown, missing = set(section.keys()) - set(KEYS), set(KEYS) - set(section.keys())
        if unknown or missing:
            raise ValueError(f"config.sslpp: unknown keys {sorted(unknown)}, missing {sorted(missing)}; "
                             f"it has exactly {list(KEYS)} (ssl_jax.presets.base_config sets them).")
        if section.weight is None:
            raise ValueError("config.sslpp.weight (λ) is not set: SSL++ uses 1 for colorization and the "
                             "context encoder, 0.05 for rotation and AET (configs/sslpp.py); e.g. "
                             "--config.sslpp.weight=0.05.")
        if section.view not in VIEWS:
            raise ValueError(f"config.sslpp.view={section.view!r}; choose one of {VIEWS}.")
        if section.view == "all_copies" and not hasattr(method, "loss_and_outputs"):
            raise ValueError(f"config.sslpp.view='all_copies' needs RotNet's rotated copies; {method.name} has "
                             "one input per image: set --config.sslpp.view=features.")
        self.weight, self.proxy_weight = float(section.weight), float(section.proxy_weight)
        self.view, self.num_classes = section.view, int(section.num_classes)
        if self.num_classes < 1:
            raise ValueError(f"config.sslpp.num_classes={self.num_classes} must be >= 1.")
        hidden = int(section.head_hidden_dim)
        self.semantic_head = build_head(dict(
            hidden_dim=hidden, output_dim=self.num_classes, num_layers=2 if hidden > 0 else 1,
            hidden_bn=True, output_bn="none", output_bias=True))

    def __getattr__(self, name):
        if name == "method":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.method, name)

    def init(self, rng, images):
        params, batch_stats, method_state = self.method.init(rng, images)
        h = jnp.zeros((images.shape[0], self.method.encoder.feature_dim))
        variables = self.semantic_head.init(jax.random.fold_in(rng, 0x551), h, train=False)
        params["semantic_head"] = variables["params"]
        batch_stats["semantic_head"] = variables.get("batch_stats", {})
        return params, batch_stats, method_state

    def loss(self, params, batch_stats, method_state, batch, rng, step):
        """proxy_weight · L_s + λ · L_c; aux as the method's, with V₂'s statistics and metrics."""
        m = self.method
        if self.view == "all_copies":
            proxy_loss, aux, out = m.loss_and_outputs(params, batch_stats, method_state, batch, rng, step)
            feats = out["h"]  # [4, N, D]
        else:
            proxy_loss, aux = m.loss(params, batch_stats, method_state, batch, rng, step)
            feats = aux["features"][None]
        logits, stats = common.apply_views(self.semantic_head, params["semantic_head"],
                                           batch_stats["semantic_head"], feats, per_view_bn=False)
        semantic_loss, top1 = semantic_objective(logits, self.batch_labels(method_state, batch))
        loss = self.proxy_weight * proxy_loss + self.weight * semantic_loss
        aux = dict(aux, batch_stats=dict(aux["batch_stats"], semantic_head=stats),
                   metrics=dict(aux["metrics"], proxy_loss=proxy_loss, semantic_loss=semantic_loss,
                                semantic_top1=top1))
        return loss, aux


    def batch_labels(self, method_state, batch):
        """z_n [N] of the batch's images (their dataset indices)."""
        del method_state
        return jnp.asarray(self.labels)[batch["index"]]


class CoupledSemanticHead(SemanticHead):
    """SSL++'s coupled ablation (module docstring): V₂'s labels are per-example state [num_rows]
    (ssl_jax.parallel.PER_EXAMPLE_KEY, sharded like the batch), refreshed by the loop
    (ssl_jax.train.refresh) with DeepCluster's clustering of the backbone's features."""

    samples = False
    refresh_features_on_device = False
    # The DatasetTargets helpers, which read self.seed and self.num_rows.
    refresh_seed = DatasetTargets.refresh_seed
    padded = DatasetTargets.padded

    def __init__(self, method, section, config):
        self._configure(method, section)
        if hasattr(method, "refresh_due"):
            raise ValueError(f"config.sslpp.labels='coupled' re-clusters through the dataset refreshes, which "
                             f"{method.name} already uses for its own targets; use a proxy task (rotnet, "
                             "colorization, context_encoder, aet).")
        self.recluster_epochs, self.pca_dim = int(section.recluster_epochs), int(section.pca_dim)
        self.kmeans_iters = int(section.kmeans_iters)
        if self.recluster_epochs < 1 or self.pca_dim < 0 or self.kmeans_iters < 1:
            raise ValueError(f"config.sslpp: coupled labels need recluster_epochs >= 1, pca_dim >= 0 (0: the "
                             f"features' dimension) and kmeans_iters >= 1; got {self.recluster_epochs}, "
                             f"{self.pca_dim}, {self.kmeans_iters}.")
        self.num_examples = pipeline.training_fingerprint(config.data)["num_examples"]
        batch = int(config.global_batch_size)
        self.num_rows = -(-self.num_examples // batch) * batch
        self.seed = int(config.seed)
        if self.num_classes > self.num_examples:
            raise ValueError(f"config.sslpp.num_classes={self.num_classes} exceeds the {self.num_examples} "
                             "training images to cluster; lower it.")

    def init(self, rng, images):
        params, batch_stats, method_state = super().init(rng, images)
        method_state = dict(method_state, **{PER_EXAMPLE_KEY: {"labels": jnp.full((self.num_rows,), -1, jnp.int32)},
                                             "refreshed_at": jnp.int32(-1)})
        return params, batch_stats, method_state

    def batch_labels(self, method_state, batch):
        # Set by the refresh that opens epoch 0, before the first step.
        return method_state[PER_EXAMPLE_KEY]["labels"][batch["index"]]

    def refresh_due(self, epoch: int) -> bool:
        return epoch % self.recluster_epochs == 0

    def refresh_pass_due(self, epoch: int) -> bool:
        del epoch
        return True

    def refresh_features(self, params, batch_stats, images):
        """The backbone's pooled features in inference mode of each image's evaluation view as the
        task feeds it to the network (`head_init_images`: colorization's grey L image, the context
        encoder's masked image; RotNet's and AET's image as it is): what V₂ reads in training."""
        to_input = getattr(self.method, "head_init_images", lambda x: x)
        enc = self.method.encoder
        return enc.apply({"params": params["encoder"], "batch_stats": batch_stats["encoder"]}, to_input(images),
                         train=False).astype(jnp.float32)

    def refresh(self, params, batch_stats, method_state, features, epoch: int):
        """New labels (DeepCluster's clustering of `features`), a fresh V₂ (reset: its optimizer state
        too): (params, method_state, ('semantic_head',), metrics)."""
        del batch_stats
        features = np.asarray(features)[:self.num_examples]
        dim = self.pca_dim or features.shape[1]
        if dim > features.shape[1]:
            raise ValueError(f"config.sslpp.pca_dim={dim} exceeds the {features.shape[1]} dimensions of the "
                             "backbone's features; lower it (0 = their dimension).")
        result = deepcluster.cluster_features(features, self.num_classes, pca_dim=dim,
                                              kmeans_iters=self.kmeans_iters, seed=self.refresh_seed(epoch, 0))
        labels = np.asarray(result.assignments, np.int32)
        previous = np.asarray(method_state[PER_EXAMPLE_KEY]["labels"])[:self.num_examples]
        metrics = {"refresh_inertia": result.inertia, "refresh_nonempty_clusters": len(np.unique(labels))}
        if previous.min() >= 0:
            metrics["refresh_nmi_previous"] = normalized_mutual_info_score(previous, labels)
        head = self.semantic_head.init(jax.random.PRNGKey(self.refresh_seed(epoch, 1)),
                                       jnp.zeros((1, features.shape[1]), jnp.float32), train=False)
        params = dict(params, semantic_head=jax.tree.map(np.asarray, head["params"]))
        per_example = dict(method_state[PER_EXAMPLE_KEY], labels=self.padded(labels, -1))
        return params, dict(method_state, **{PER_EXAMPLE_KEY: per_example}), ("semantic_head",), metrics


def semantic_objective(logits, labels):
    """(L_c, top-1) of V₂'s logits [V, N, C] against the pseudo-labels [N] (the same label for
    every copy of an image): mean cross-entropy over the V·N rows, in float32."""
    logits = logits.astype(jnp.float32)
    z = jnp.broadcast_to(labels, logits.shape[:2])
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, z))
    top1 = jnp.mean((jnp.argmax(logits, -1) == z).astype(jnp.float32))
    return loss, top1
