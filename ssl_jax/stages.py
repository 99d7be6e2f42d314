"""SSL++'s staged run (configs/sslpp.py; `ssl_jax.main` calls `run` when config.method == 'sslpp').

  A  the IIC clusterer: config.stage_a trained into DIR/stage_a (a normal workdir, resumed as any
     run), or config.stage_a_workdir, a finished IIC run, used as it is;
  B  every training example labelled once (ssl_jax.evaluate.iic.label_dataset: the best sub-head of
     stage_b.head) into DIR/stage_b_labels.npz with the training set's fingerprint and stage A's step,
     written atomically; or the dataset's labels ('ground_truth'), seeded random ones ('random'), or
     PCA + k-means on the pixels ('kmeans': `kmeans_labels`, Table IX's "K-means"); with 'coupled'
     (Table XII) there is no stage B: stage C re-clusters its own features (ssl_jax.methods.sslpp);
  C  config.stage_c (a proxy-task config) with config.stage_c.sslpp.labels pointing at that file,
     trained into DIR/stage_c (a normal workdir: `python -m ssl_jax.evaluate` and `ssl_jax.export`
     read it as any other).

Rerunning the command continues where it stopped: a stage whose workdir holds results.json (written
after its training and evaluation) is done; an unfinished one resumes from its checkpoint; stage B
is skipped when its file exists with this run's fingerprint and source, and a file made otherwise
(another training set, another label source, clusterer step or label settings:
`label_settings`, stored with the labels) is one error, never overwritten.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssl_jax import clustering, parallel
from ssl_jax import pretrained as pretrained_lib
from ssl_jax import storage
from ssl_jax.data import pipeline
from ssl_jax.evaluate import in_training
from ssl_jax.evaluate import iic as iic_eval
from ssl_jax.methods import sslpp
from ssl_jax.train import preemption
from ssl_jax.train.logging import console

SOURCES = ("iic", "ground_truth", "random", "kmeans", "coupled", "none")
LABELS_FILE = "stage_b_labels.npz"


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    """Stages A, B, C of SSL++ into `workdir`; the records of stage C."""
    source = config.stage_b.source
    if source not in SOURCES:
        raise ValueError(f"config.stage_b.source={source!r}; choose one of {SOURCES}.")
    stage_c = config.stage_c.copy_and_resolve_references()
    storage.makedirs(workdir)
    if source == "coupled":  # no stage A or B: labels from stage C's own features, re-clustered
        stage_c.sslpp.update(dict(labels=sslpp.COUPLED, num_classes=int(config.stage_b.num_classes)))
    elif source != "none":
        stage_a_dir = stage_a(config, workdir) if source == "iic" else None
        path = storage.join(workdir, LABELS_FILE)
        num_classes = stage_b(config, stage_a_dir, path)
        stage_c.sslpp.update(dict(labels=str(path), num_classes=num_classes))
    what = "C (the proxy task + SSL++'s semantic head)" if stage_c.sslpp.labels else "C (the proxy task alone)"
    return train_stage(stage_c, storage.join(workdir, "stage_c"), what)


def train_stage(config, workdir: str, what: str, kind: str = "Stage") -> list[dict]:
    """A training stage of a staged run (SSL++ here, FUSSL's phases in ssl_jax.fussl): skipped when
    finished (its results.json), else trained / resumed; `kind` names it in the log lines."""
    results = storage.join(workdir, "results.json")
    if storage.exists(results):
        console(f"{kind} {what}: done ({results}).", flush=True)
        return []
    console(f"{kind} {what} in {workdir}.", flush=True)
    return in_training.pretrain_and_evaluate(config, workdir)


def stage_a(config, workdir: str) -> str:
    """The workdir of the finished IIC clusterer."""
    if config.stage_a_workdir:
        given = config.stage_a_workdir
        run_config = pretrained_lib.load_run_config(given)
        if run_config.get("method") != "iic" or not storage.exists(storage.join(given, "results.json")):
            raise ValueError(f"config.stage_a_workdir={given!r} is not a finished IIC run (an IIC workdir "
                             "with results.json); train one with configs/iic.py, or leave it '' to train "
                             "stage A here.")
        console(f"Stage A (IIC clusterer): using {given}.", flush=True)
        return given
    if config.stage_a.method != "iic":
        raise ValueError(f"config.stage_a.method={config.stage_a.method!r}: stage A trains IIC (configs/iic.py).")
    path = storage.join(workdir, "stage_a")
    train_stage(config.stage_a, path, "A (the IIC clusterer)")
    return path


def stage_b(config, stage_a_dir: str | None, path: str) -> int:
    """The labels file at `path` (made unless present for this run); returns its C."""
    b, data = config.stage_b, config.stage_c.data
    fingerprint = pipeline.training_fingerprint(data)
    pre = pretrained_lib.load_workdir(stage_a_dir, "online") if stage_a_dir else None
    step = int(pre.run["step"]) if pre is not None else -1
    if storage.exists(path):
        stored = sslpp.read_labels(path)
        sslpp.check_fingerprint(stored["fingerprint"], fingerprint, path)
        if stored["source"] != b.source or stored["stage_a_step"] != step:
            raise ValueError(f"{path} holds {stored['source']} labels (clusterer step {stored['stage_a_step']}), "
                             f"but this run asks for {b.source} labels (clusterer step {step}). Use a new "
                             "--workdir, or delete the file (and stage_c/) to relabel.")
        # A file from before the settings were stored ({}) is taken as it is.
        if stored["settings"] and stored["settings"] != label_settings(b):
            raise ValueError(f"{path} holds {b.source} labels made with config.stage_b {stored['settings']}, but "
                             f"this run sets {label_settings(b)}. Use a new --workdir, or delete the file (and "
                             "stage_c/) to relabel.")
        console(f"Stage B (labels): done ({path}).", flush=True)
        return int(stored["num_classes"])
    console(f"Stage B (labels from {b.source}) into {path}.", flush=True)
    with preemption.sigterm_stops(lambda: preemption.PreemptedPass("stage B (labelling)")):
        labels, num_classes = stage_b_labels(b, data, pre, fingerprint)
    if jax.process_index() == 0:
        sslpp.write_labels(path, labels, fingerprint, num_classes=num_classes, source=b.source, stage_a_step=step,
                           settings=label_settings(b))
    parallel.barrier("sslpp stage B")  # every process reads the file in stage C
    return int(num_classes)


def stage_b_labels(b, data, pre, fingerprint) -> tuple[np.ndarray, int]:
    """(labels in dataset-index order, C) from config.stage_b's source; `pre` is stage A's clusterer."""
    if b.source == "iic":
        if pre.config.data.dataset != data.dataset or pre.config.data.train_split != data.train_split:
            raise ValueError(f"Stage A clustered {pre.config.data.dataset}:{pre.config.data.train_split} but "
                             f"stage C trains on {data.dataset}:{data.train_split}; set both to one training set.")
        out = iic_eval.label_dataset(pre, split=data.train_split, head=b.head, batch_size=int(b.batch_size))
        labels, num_classes = out["labels"], out["num_clusters"]
    elif b.source == "ground_truth":
        labels = pipeline.train_labels(data, process_index=0, process_count=1)
        num_classes = int(pipeline.split_info(data)["num_classes"])
    elif b.source == "kmeans":
        result = kmeans_labels(training_pixels(data, int(b.batch_size)), int(b.num_classes),
                               pca_dim=int(b.pca_dim), whiten=bool(b.whiten), seed=int(b.seed),
                               num_iters=int(b.kmeans_iters))
        labels, num_classes = np.asarray(result.assignments), int(b.num_classes)
        console(f"Stage B: k-means on {b.pca_dim} principal components of the pixels: "
                f"{len(np.unique(labels))} of {num_classes} clusters used, {result.num_iters} iterations.",
                flush=True)
    else:  # random: uniform over C, a function of the seed alone
        num_classes = int(b.num_classes)
        labels = np.random.default_rng(int(b.seed)).integers(0, num_classes, fingerprint["num_examples"])
    return labels, int(num_classes)



def label_settings(b) -> dict:
    """The config.stage_b fields that the labels of b.source depend on (stored with them)."""
    keys = {"iic": ("head",), "random": ("seed", "num_classes"),
            "kmeans": ("seed", "num_classes", "pca_dim", "whiten", "kmeans_iters")}.get(b.source, ())
    return {k: b[k] for k in keys}


def training_pixels(data, batch_size: int) -> np.ndarray:
    """[N, S·S·3] float32: every training image's evaluation view (centre crop at data.image_size,
    normalised by data.mean / data.std as every view the network sees), flattened, in
    dataset-index order (the order of the labels file). Polls for a multi-process SIGTERM per batch."""
    n = pipeline.training_fingerprint(data)["num_examples"]
    out = None
    for batch in pipeline.eval_iterator(data, data.train_split, global_batch_size=batch_size,
                                        process_index=0, process_count=1):
        # Every process reads every batch: a SIGTERM of a multi-process run stops them all here,
        # at the same batch (one process: at once, by stage_b's sigterm_stops).
        preemption.poll_pass()
        keep = batch["mask"]
        rows = batch["image"][keep].reshape(int(keep.sum()), -1)
        if out is None:
            out = np.zeros((n, rows.shape[1]), np.float32)
        out[batch["index"][keep]] = rows
    return out


def kmeans_labels(pixels, num_clusters: int, *, pca_dim: int, whiten: bool = False, seed: int = 0,
                  num_iters: int = 300):
    """SSL++'s "K-means" label scheme (seed 002, Table IX: "PCA to make dimension reduction of
    original high-dimensional image data to perform stable k-means clustering"): the rows
    projected on their top `pca_dim` principal components (ssl_jax.clustering.pca_project; with
    `whiten`, DeepCluster's whitened PCA + L2 normalisation instead, clustering.pca_whiten), then
    k-means with K = num_clusters (k-means++ seeding with scikit-learn's greedy trials, at most
    `num_iters` Lloyd iterations: scikit-learn's defaults), deterministic in `seed`.
    Returns the ssl_jax.clustering.KMeansResult (assignments [N] in the rows' order).

    The paper gives neither the PCA dimension nor K nor whether PCA whitens. Defaults
    (configs/sslpp.py): K = the IIC labels' C (70: the same V₂ as "Ours", so only the labels
    differ), 256 components (DeepCluster's, the paper's coupled ablation "follows [20]"; CIFAR-10's
    top 256 pixel components hold most of its variance), no whitening: the text describes a
    dimension reduction only, and whitening raw pixels would give the many low-variance (noise)
    directions the weight of the dominant ones."""
    pixels = jnp.asarray(pixels, jnp.float32)
    if pca_dim > pixels.shape[1]:
        raise ValueError(f"config.stage_b.pca_dim={pca_dim} exceeds the {pixels.shape[1]} pixel values of an "
                         "image; lower --config.stage_b.pca_dim.")
    x = clustering.pca_whiten(pixels, pca_dim) if whiten else clustering.pca_project(pixels, pca_dim)
    return clustering.kmeans(x, num_clusters, num_iters=num_iters, seed=seed)
