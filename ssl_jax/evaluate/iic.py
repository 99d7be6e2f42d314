"""IIC runs evaluated and used: their sub-heads' cluster assignments over a split, the
clustering protocol's records of an IIC run (ssl_jax.evaluate.run.protocol_clustering with
assign 'auto'), and `label_dataset`, the best sub-head's label for every training example (what
SSL++'s stage B stores). The method itself, its heads and the sub-head choice (`best_subhead`)
are ssl_jax.methods.iic."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ssl_jax import parallel
from ssl_jax import pretrained as pretrained_lib
from ssl_jax.data import pipeline
from ssl_jax.evaluate.clustering import label_scores
from ssl_jax.methods.iic import HEADS, best_subhead, build_subheads
from ssl_jax.train import features as features_lib


def _iic_section(pre):
    config = pre.config
    if config is None or config.get("method") != "iic" or not all(h in pre.heads for h in HEADS):
        raise ValueError("IIC head assignments need an IIC run's workdir (its config and heads); "
                         f"got a {'file' if config is None else repr(config.get('method')) + ' run'}. Train one "
                         "with configs/iic.py, or cluster the features with k-means "
                         "(--config.clustering.assign=kmeans).")
    return config.iic


def subhead_assignments(pre, data_cfg, split: str, mesh, batch_size: int, heads=HEADS, log=None):
    """({head: assignments int32 [N, num_subheads]}, class labels [N]) of every example of `split`
    (the evaluation view: centre crop, no augmentation; the network in inference mode), rows in
    dataset-index order: the argmax of each sub-head of each of `heads`, in one pass.
    `pre`: a Pretrained of an IIC workdir (ssl_jax.pretrained.load_workdir)."""
    section = _iic_section(pre)
    modules = {head: build_subheads(section, head) for head in heads}
    encoder = pre.encoder

    def assign(params, batch_stats, images):
        h = encoder.apply({"params": params["encoder"], "batch_stats": batch_stats}, images, train=False)
        # Small ints: exact in the float32 rows of the feature pass.
        return {head: jnp.argmax(m.apply({"params": params[head]}, h), axis=-1).astype(jnp.float32)
                for head, m in modules.items()}

    params = {"encoder": pre.variables["params"], **{head: pre.heads[head]["params"] for head in heads}}
    fn = features_lib.make_feature_fn(assign, mesh)
    batches = pipeline.eval_iterator(data_cfg, split, global_batch_size=batch_size)
    if log is not None:
        log(f"IIC heads {', '.join(heads)}: assignments of {data_cfg.dataset}:{split}")
    rows, labels = features_lib.extract_features(fn, params, pre.variables["batch_stats"], batches, mesh)
    return {head: r.astype(np.int32) for head, r in rows.items()}, labels


def label_dataset(source, data=None, *, split: str | None = None, head: str = "main", batch_size: int = 256,
                  step: int | None = None, mesh=None) -> dict:
    """The labels of the best sub-head (lowest training loss) of a trained IIC network for every
    example of a split, in dataset-index order: what SSL++'s stage B stores.

    source: an IIC workdir or a Pretrained loaded from one (ssl_jax.pretrained.load_workdir);
    data: a data config (dataset, data_dir, image_size, mean, std; default the run's own);
    split: default data's train_split; head: 'main' (one cluster per class) or 'overcluster'
    (SSL++'s C = 70). batch_size must split over the mesh's devices (default mesh: all).
    Returns {'labels': int32 [N], 'subhead', 'head', 'num_clusters', 'split'}."""
    pre = pretrained_lib.load_workdir(source, "online", step) if isinstance(source, str) else source
    section = _iic_section(pre)
    if data is None:
        data = pre.config.data
    split = split or data.train_split
    mesh = mesh or parallel.make_mesh()
    parallel.check_batch_divisible(batch_size, mesh)
    subhead = best_subhead(pre.method_state, head)
    rows = subhead_assignments(pre, data, split, mesh, batch_size, heads=(head,))[0][head]
    k = section["num_overclusters"] if head == "overcluster" else section["num_clusters"]
    return {"labels": rows[:, subhead], "subhead": subhead, "head": head, "num_clusters": int(k), "split": split}


def clustering_records(ctx) -> list:
    """The clustering protocol on an IIC run (ssl_jax.evaluate.run.protocol_clustering): the
    labels of the main head's best sub-head (lowest training loss) on the protocol's split,
    scored against the classes (Hungarian accuracy 'acc', NMI, ARI, many-to-one), with the mean
    and max Hungarian accuracy over the sub-heads beside it (max: selected with the labels, a
    diagnostic only); and the over-clustering head's best sub-head (its many-to-one accuracy)."""
    split = ctx.cfg.clustering.split or ctx.data.test_split
    assignments, y = subhead_assignments(ctx.pre, ctx.data, split, ctx.mesh, int(ctx.cfg.batch_size), log=ctx.log)
    out = []
    for head in ("main", "overcluster"):
        rows = assignments[head]
        best = best_subhead(ctx.pre.method_state, head)
        scores = label_scores(y, rows[:, best])
        accs = [label_scores(y, rows[:, s])["acc"] for s in range(rows.shape[1])]
        scores.update(acc_subhead_mean=float(np.mean(accs)), acc_subhead_max=float(np.max(accs)),
                      clusters_used=float(len(np.unique(rows[:, best]))))
        out.append(("clustering", f"iic_head={head},subhead={best},k={_k(ctx, head)}", scores))
    return out


def _k(ctx, head: str) -> int:
    section = _iic_section(ctx.pre)
    return int(section["num_overclusters"] if head == "overcluster" else section["num_clusters"])
