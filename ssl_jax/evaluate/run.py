"""One evaluation protocol on one pretrained encoder: `run(eval_config, workdir)`.

Loads the encoder (ssl_jax.pretrained: a training workdir's checkpoint or an exported file),
fills the data fields the eval config leaves empty from the pretraining run, runs the protocol
on the mesh and merges its records into WORKDIR/results.json (ssl_jax.results schema); they
also go to WORKDIR/tensorboard under eval/ (ssl_jax.train.tensorboard).
"""
from __future__ import annotations

import hashlib
import json
import time

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from ssl_jax import parallel, pretrained as pretrained_lib, results as results_lib, storage
from ssl_jax.data import pipeline
from ssl_jax.train import features as features_lib, preemption, tensorboard
from ssl_jax.train import logging as logging_lib
from ssl_jax.evaluate import supervised
from ssl_jax.evaluate.knn import knn_accuracy, plurality_knn_accuracy, shard_memory
from ssl_jax.evaluate.linear import linear_probe_accuracy

def resolve_data(eval_cfg, pre) -> ml_collections.ConfigDict:
    """The eval data config: the eval config's fields where set, else the pretraining run's.

    Splits, views and data_dir are inherited only when the dataset is the run's own; another
    dataset (transfer) gets 'train' / 'test' splits unless the eval config names them.
    classes (the class subset evaluated, ssl_jax.data.sources): data.classes of the eval config if
    set; else, on the run's own dataset, the run's data.eval_classes, else its data.classes (a
    cross-class run is evaluated on its held-out classes, a subset run on its classes); on
    another dataset every class."""
    d, run = eval_cfg.data, dict(pre.data)
    dataset = d.dataset or run.get("dataset")
    if not dataset:
        raise ValueError("The encoder's source carries no data config (an export without it?): set "
                         "--config.data.dataset, image_size, mean and std.")
    same = dataset == run.get("dataset")
    out = {
        "dataset": dataset,
        "data_dir": d.data_dir if d.data_dir is not None else run.get("data_dir"),
        "train_split": d.train_split or (run.get("train_split") if same else None) or "train",
        "test_split": d.test_split or (run.get("test_split") if same else None) or "test",
        "image_size": d.image_size if d.image_size > 0 else run.get("image_size"),
        "mean": tuple(d.mean) or tuple(run.get("mean") or ()),
        "std": tuple(d.std) or tuple(run.get("std") or ()),
        "views": list(d.views) or (list(run.get("views") or []) if same else []),
        "shuffle_buffer": d.shuffle_buffer,
        "classes": tuple(pipeline.classes(d)) or (
            tuple(run.get("eval_classes") or run.get("classes") or ()) if same else ()),
    }
    missing = [k for k in ("image_size", "mean", "std") if not out[k]]
    if missing:
        raise ValueError(f"Evaluation data fields {missing} are unknown (not in the eval config nor "
                         f"the source run); set --config.data.<field>.")
    return ml_collections.ConfigDict(out)


class Context:
    """What every protocol needs: the encoder, the data config, the mesh and a batch iterator.

    Features are extracted once per (split, stages) and kept: several protocols on one
    context (the end-of-training evaluation) share one pass over the data."""

    def __init__(self, eval_cfg, pre, data_cfg, mesh, num_classes, workdir, log):
        self.cfg, self.pre, self.data, self.mesh = eval_cfg, pre, data_cfg, mesh
        self.num_classes, self.workdir, self.log = num_classes, workdir, log
        self._features = {}

    def batches(self, split):
        return pipeline.eval_iterator(self.data, split, global_batch_size=self.cfg.batch_size)

    def features(self, split, stages=False):
        if (split, stages) not in self._features:
            encode = features_lib.make_encode_fn(self.pre.encoder, self.mesh, stages=stages)
            v = self.pre.variables
            report = self.pass_reporter(f"features of {self.data.dataset}:{split} ({self.pre.network})", split)
            self._features[split, stages] = features_lib.extract_features(
                encode, v["params"], v["batch_stats"], self.batches(split), self.mesh, report)
        return self._features[split, stages]

    def train_view_data(self, empty_message: str):
        """The data config with one view, the protocol's training augmentation (the first of
        data.views); ValueError(empty_message) when data.views is empty."""
        if not self.data.views:
            raise ValueError(empty_message)
        data = ml_collections.ConfigDict(self.data.to_dict())
        data.views = [self.data.views[0]]
        return data

    def pass_reporter(self, what: str, split: str):
        """Progress lines of a pass over `split` at the protocol's batch size (silent when short)."""
        n = pipeline.num_eval_batches(self.data, split, self.cfg.batch_size)
        return logging_lib.pass_reporter(what, n, int(self.cfg.batch_size), self.log)

    def train_test_features(self, stages=False):
        train = self.features(self.data.train_split, stages)
        test = self.features(self.data.test_split, stages)
        return train, test


def knn_records(ctx, train, test, ks, temperatures, protocol="knn", setting_prefix=""):
    """[(protocol, setting, metrics)] of weighted kNN for every (k, T) on one memory."""
    (tr_x, tr_y), (te_x, te_y) = train, test
    memory, labels, valid = shard_memory(tr_x, tr_y, ctx.mesh)
    # The knn protocol's config sets the query chunk; the others (layer_probe) keep knn_accuracy's.
    chunk = {"chunk_size": int(ctx.cfg.knn.chunk_size)} if "knn" in ctx.cfg else {}
    out = []
    for k in ks:
        for t in temperatures:
            acc = knn_accuracy(memory, labels, te_x, te_y, num_classes=ctx.num_classes, k=int(k),
                               temperature=float(t), train_valid=valid, **chunk)
            out.append((protocol, f"{setting_prefix}k={k},T={t:g}", acc))
            preemption.poll_pass()  # between settings (each a pass over all queries)
    return out


def protocol_knn(ctx):
    train, test = ctx.train_test_features()
    return knn_records(ctx, train, test, ctx.cfg.knn.ks, ctx.cfg.knn.temperatures)


def protocol_linear_cached(ctx):
    (tr_x, tr_y), (te_x, te_y) = ctx.train_test_features()
    lc = ctx.cfg.linear_cached
    res = linear_probe_accuracy(tr_x, tr_y, te_x, te_y, num_classes=ctx.num_classes,
                                l2_grid=tuple(lc.l2_grid), holdout_fraction=lc.holdout_fraction,
                                seed=ctx.cfg.seed, num_steps=lc.max_steps)
    return [("linear_cached", "", {"top1": res["top1"], "top5": res["top5"], "l2": res["l2"]})]


def protocol_trained(ctx):
    """Linear evaluation or fine-tuning, on all labels or a class-balanced fraction."""
    t, cfg = ctx.cfg.train, ctx.cfg
    data = ctx.train_view_data("config.data.views is empty: the linear / fine-tuning protocols need their "
                               "training augmentation (see presets.eval_train_view).")
    fraction = float(t.label_fraction)
    if fraction < 1.0:
        indices = pipeline.class_balanced_subset(pipeline.train_labels(data), fraction, cfg.seed)
        subset = lambda start: pipeline.subset_iterator(data, indices, global_batch_size=t.batch_size,
                                                         seed=cfg.seed, start_step=start)
        first, spe = subset(0)
        make_batches = lambda start: first if start == 0 else subset(start)[0]
        if jax.process_index() == 0:
            path = storage.join(ctx.workdir, f"label_subset_{fraction:g}_seed{cfg.seed}.json")
            storage.write_file(path, json.dumps({
                "dataset": data.dataset, "split": data.train_split, "fraction": fraction, "seed": cfg.seed,
                "process_count": jax.process_count(), "indices_of_process_0": indices.tolist()}))
        setting = f"labels={fraction * 100:g}%"
    else:
        make_batches = lambda start: pipeline.pretrain_iterator(
            data, global_batch_size=t.batch_size, seed=cfg.seed, num_views=1, start_step=start)
        spe = pipeline.steps_per_epoch(data, t.batch_size)
        setting = ""
    parallel.check_batch_divisible(t.batch_size, ctx.mesh)
    kind = "finetune" if t.finetune else "linear"
    ckpt_dir = classifier_dir(ctx.workdir, kind, cfg, data)
    ctx.log(f"{kind}: the classifier is checkpointed in {ckpt_dir} (a rerun resumes from it; "
            "python -m ssl_jax.export --classifier=DIR exports it)")
    trained = supervised.train_classifier(ctx.pre, make_batches, steps_per_epoch=spe, train_cfg=t,
                                          num_classes=ctx.num_classes, mesh=ctx.mesh, seed=cfg.seed,
                                          log=ctx.log, checkpoint_dir=ckpt_dir)
    report = ctx.pass_reporter(f"{kind} classifier on {data.dataset}:{data.test_split}", data.test_split)
    acc = supervised.classifier_accuracy(ctx.pre.encoder, trained["encoder"], trained["head"],
                                         trained["head_variables"], ctx.batches(data.test_split), ctx.mesh, report)
    return [(kind, setting, acc)]


def classifier_dir(workdir: str, kind: str, eval_cfg, data) -> str:
    """WORKDIR/classifiers/<kind>-<hash>: one directory per (source, network, checkpoint step,
    data, training config, seed), so a rerun of the same evaluation resumes and any change
    trains a new classifier instead of resuming another one."""
    identity = {"source": eval_cfg.source, "network": eval_cfg.network, "step": eval_cfg.step,
                "seed": eval_cfg.seed, "data": data.to_dict(), "train": eval_cfg.train.to_dict()}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return storage.join(workdir, "classifiers", f"{kind}-{digest}")


CLUSTERING_ASSIGN = ("auto", "kmeans", "heads")


def protocol_clustering(ctx):
    """k-means on the encoder's features, or a clusterer's own assignments (clustering.assign:
    'auto' takes an IIC run's heads, ssl_jax.evaluate.iic.clustering_records)."""
    from ssl_jax.evaluate.clustering import clustering_scores

    c = ctx.cfg.clustering
    if c.assign not in CLUSTERING_ASSIGN:
        raise ValueError(f"clustering.assign={c.assign!r}; valid: {CLUSTERING_ASSIGN}.")
    if c.assign == "heads" or (c.assign == "auto" and (ctx.pre.config or {}).get("method") == "iic"):
        from ssl_jax.evaluate import iic

        return iic.clustering_records(ctx)
    x, y = ctx.features(c.split or ctx.data.test_split)
    k = c.num_clusters if c.num_clusters > 0 else abs(c.num_clusters or -1) * ctx.num_classes
    x = jax.device_put(np.asarray(x), parallel.replicated(ctx.mesh))
    scores = clustering_scores(x, y, num_clusters=k, seed=ctx.cfg.seed, num_restarts=c.num_restarts,
                               num_iters=c.num_iters, l2_normalize=c.l2_normalize)
    return [("clustering", f"k={k}", scores)]


def protocol_layer_probe(ctx):
    """kNN and linear probes of every ResNet stage or NIN block (average-pooled) or of the class
    token at a quarter, half and three quarters of a ViT's depth, then of the output ('pooled');
    with layer_probe.plurality_ks, plurality-vote kNN per K on each; with probe_blocks, NIN-block
    probes (configs/eval/layer_probe.py)."""
    lp = ctx.cfg.layer_probe
    (tr, tr_y), (te, te_y) = ctx.train_test_features(stages=True)
    out = []
    depth = lambda name: (name == "pooled", int("0" + "".join(c for c in name if c.isdigit())))
    for layer in sorted(tr, key=depth):  # stage1..4 / block3, 6, 9; then pooled
        knn = knn_records(ctx, (tr[layer], tr_y), (te[layer], te_y), [lp.k], [lp.temperature])[0][2]
        lin = linear_probe_accuracy(tr[layer], tr_y, te[layer], te_y, num_classes=ctx.num_classes,
                                    l2_grid=tuple(lp.l2_grid), seed=ctx.cfg.seed)
        out.append(("layer_probe", f"layer={layer},k={lp.k},T={lp.temperature:g}",
                    {"knn_top1": knn["top1"], "linear_top1": lin["top1"]}))
        if lp.plurality_ks:  # SSL++'s per-block kNN (Tables V, VI)
            memory, labels, valid = shard_memory(tr[layer], tr_y, ctx.mesh)
            accs = plurality_knn_accuracy(memory, labels, te[layer], te_y, num_classes=ctx.num_classes,
                                          ks=tuple(lp.plurality_ks), metric=lp.knn_metric, train_valid=valid)
            out += [("layer_probe", f"layer={layer},k={k},vote=plurality", {"knn_top1": acc})
                    for k, acc in accs.items()]
    if lp.probe_blocks:
        from ssl_jax.evaluate.nin_probe import block_probe_records

        out += block_probe_records(ctx, tuple(lp.probe_blocks), tuple(lp.probe_heads),
                                   tuple(lp.probe_labels_per_class))
    return out


def protocol_monitor(ctx):
    from ssl_jax.monitors import representation_monitors

    if not ctx.data.views:
        raise ValueError("config.data.views is empty and the source run has none: the monitors need "
                         "two augmented views; set config.data.views.")
    m = ctx.cfg.monitor
    b = ctx.cfg.batch_size
    batches = pipeline.pretrain_iterator(ctx.data, global_batch_size=b, seed=ctx.cfg.seed, num_views=2)
    encode = features_lib.make_encode_fn(ctx.pre.encoder, ctx.mesh)
    v = ctx.pre.variables
    z1, z2 = [], []
    while sum(len(z) for z in z1) < m.num_examples:
        views = next(batches)["views"]
        for view, acc in zip(views, (z1, z2)):
            out = encode(v["params"], v["batch_stats"], parallel.shard_batch(view, ctx.mesh))
            acc.append(np.asarray(multihost_utils.process_allgather(out, tiled=True)))
    z1 = np.concatenate(z1)[:m.num_examples]
    z2 = np.concatenate(z2)[:m.num_examples]
    metrics = {k: float(val) for k, val in representation_monitors(z1, z2).items()}
    metrics["collapse_std_reference"] = 1.0 / np.sqrt(z1.shape[1])
    return [("monitor", f"n={len(z1)}", metrics)]


PROTOCOLS = {"knn": protocol_knn, "linear_cached": protocol_linear_cached, "linear": protocol_trained,
             "finetune": protocol_trained, "clustering": protocol_clustering,
             "layer_probe": protocol_layer_probe, "monitor": protocol_monitor}


def timed_records(ctx, protocols) -> list[dict]:
    """Results records of running each of `protocols` (functions of the context returning
    [(protocol, setting, metrics)]) on `ctx`, stamped with their total wall time."""
    t0 = time.perf_counter()
    outputs = [out for protocol in protocols for out in protocol(ctx)]
    seconds = time.perf_counter() - t0
    return [r for protocol, setting, metrics in outputs for r in results_lib.make_records(
        ctx.pre.run, protocol=protocol, eval_dataset=results_lib.dataset_label(ctx.data), network=ctx.pre.network,
        metrics=metrics, setting=setting, wall_seconds=seconds)]


def run(eval_cfg: ml_collections.ConfigDict, workdir: str, log=logging_lib.console) -> list[dict]:
    """Evaluate, merge the records into WORKDIR/results.json (process 0) and return them."""
    if eval_cfg.protocol not in PROTOCOLS:
        raise ValueError(f"Unknown protocol {eval_cfg.protocol!r}; valid: {sorted(PROTOCOLS)}.")
    source = eval_cfg.source or workdir
    pre = pretrained_lib.load(source, eval_cfg.network, None if eval_cfg.step < 0 else eval_cfg.step)
    storage.makedirs(workdir)
    results_lib.read_records(workdir)  # an unreadable results.json stops us now, not after the work
    data = resolve_data(eval_cfg, pre)
    info = pipeline.split_info(data)
    mesh = parallel.mesh_from_config(eval_cfg.mesh)
    parallel.check_batch_divisible(eval_cfg.batch_size, mesh)
    ctx = Context(eval_cfg, pre, data, mesh, info["num_classes"], workdir, log)
    log(f"{eval_cfg.protocol}: {pre.run.get('method')} {pre.network} network at step {pre.run.get('step')} "
        f"on {data.dataset}{f' classes {tuple(data.classes)}' if data.classes else ''} "
        f"({mesh.devices.size} device(s)).")
    # SIGTERM: one line and exit code 75, results.json untouched (the linear / fine-tuning protocols
    # checkpoint their classifier on SIGTERM themselves, and their rerun resumes it).
    with preemption.sigterm_stops(lambda: preemption.PreemptedPass(f"the {eval_cfg.protocol} evaluation")):
        records = timed_records(ctx, [PROTOCOLS[eval_cfg.protocol]])
    if jax.process_index() == 0:
        results_lib.write_records(workdir, records)
        tensorboard.write_records(workdir, records)  # next to the training curves, under eval/
        for r in records:
            # format_number: 1e-5 for an l2 strength, not 0.0000
            value = results_lib.format_number(r["value"], 4)
            log(f"  {r['protocol']:13s} {r['setting']:24s} {r['metric']:14s} {value}")
    return records
