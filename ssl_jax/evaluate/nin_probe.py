"""The NIN-block probe of RotNet (Gidaris et al. 2018) and SSL++ (seed 002, Table III): a fresh
NIN block and a linear softmax layer trained with labels on the frozen map of block B_k; and
RotNet's 1-, 2- and 3-layer FC probes on the flattened map (SSL++ Table IV), see
`FrozenBlockProbe`.

The classifier is a new block of RotNet's NIN layout (3x3, 1x1, 1x1 convs of 192·width
channels, each with BN and ReLU; models.nin.NINBlock, RotNet's 'NIN_ConvBlock3'), a global
average pool (192-d) and a linear layer (ssl_jax.evaluate.supervised.LinearHead). The
pretrained NIN runs up to block k in inference mode (running BN statistics, as RotNet's frozen
feature extractor, which has no optimizer and so stays in eval mode) under stop_gradient; its
parameters are frozen (a zero update), so only the new block and the linear layer learn.

Training reuses `supervised.train_classifier` (its jitted step, optimizer, checkpointing and
resume) on the module `FrozenBlockProbe` (frozen NIN + the probe's trainable layers) as the
'encoder': one classifier directory per (probe, block) under
WORKDIR/classifiers/<probe>-block<k>-<hash>; a rerun resumes.
Recipe (SSL++ Table II, evaluation on CIFAR-10 = RotNet's): SGD, batch 128, LR 0.1, momentum
0.9, weight decay 5e-4, 200 epochs, LR x 0.1 at 100 and 150 (configs/eval/layer_probe.py:nin).
Training images: the eval config's view, else the pretraining run's (a RotNet run: the whole
image and a flip; RotNet's probe also translates by up to 4 px, which the input pipeline does
not: not done here). Tested on the centre images of the test split.
"""
from __future__ import annotations

import hashlib
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssl_jax import storage
from ssl_jax.data import pipeline
from ssl_jax.evaluate import supervised
from ssl_jax.models.nin import NIN, NINBlock, block_layers
from ssl_jax.models.resnet import norm_layer


PROBE_HEADS = ("nin_block", "fc1", "fc2", "fc3")


def fc_hidden_width(num_classes: int) -> int:
    """Hidden width of RotNet's 2- and 3-layer FC probes: min(20·classes, 2048) (200 on CIFAR-10)."""
    return min(20 * int(num_classes), 2048)


class FrozenBlockProbe(nn.Module):
    """The frozen NIN up to block `block` (submodule 'backbone', always in inference mode, its
    output under stop_gradient), then the probe's trainable part; returns float32 features for
    the final linear layer (supervised.LinearHead), by `head`:

      nin_block  a fresh NIN block ('probe_block': 3x3, 1x1, 1x1 convs of 192·width channels,
                 BN, ReLU) and the global average pool: [N, 192·width];
      fc1        RotNet's 'MultLayerFC1': a BatchNorm without affine parameters per channel of
                 the map ('probe_bn'), flattened: [N, C·H·W] (the linear layer is the probe);
      fc2, fc3   RotNet's 'MultLayerFC2/3': the flattened map through 1 or 2 hidden layers
                 Dense(hidden, no bias) -> BN -> ReLU ('fc1', 'fc2'), hidden =
                 fc_hidden_width(num_classes): [N, hidden].

    SSL++ Table IV compares these on B4 ('Conv' = nin_block). `map_hw` (the block's map side,
    for the flattened width) and `num_classes` are set by `probe_pretrained`."""

    backbone: NIN
    block: int
    head: str = "nin_block"
    map_hw: int = 8
    num_classes: int = 10

    @property
    def feature_dim(self) -> int:
        if self.head == "nin_block":
            return block_layers(3, self.backbone.width_multiplier)[-1][1]
        if self.head == "fc1":
            return self.backbone.block_channels(self.block) * self.map_hw * self.map_hw
        return fc_hidden_width(self.num_classes)

    @nn.compact
    def __call__(self, x, train: bool = False, **kwargs):
        del kwargs
        if self.head not in PROBE_HEADS:
            raise ValueError(f"layer_probe.probe_heads: {self.head!r} is not one of {PROBE_HEADS}.")
        maps = self.backbone(x, train=False, return_maps=True, up_to=self.block)
        y = jax.lax.stop_gradient(maps[f"block{self.block}"])
        dtype = self.backbone.dtype
        if self.head == "nin_block":
            y = NINBlock(block_layers(3, self.backbone.width_multiplier), None, dtype,
                         self.backbone.conv_backend, name="probe_block")(y, train)
            return jnp.mean(y.astype(jnp.float32), axis=(1, 2))
        norm = norm_layer(train, dtype, 1)
        if self.head == "fc1":
            y = norm(use_scale=False, use_bias=False, name="probe_bn")(y)
            return y.reshape(y.shape[0], -1).astype(jnp.float32)
        y = y.reshape(y.shape[0], -1)
        for i in range(int(self.head[2:]) - 1):
            y = nn.Dense(fc_hidden_width(self.num_classes), use_bias=False, dtype=dtype, name=f"fc{i + 1}")(y)
            y = nn.relu(norm(name=f"fc{i + 1}_bn")(y))
        return y.astype(jnp.float32)


def probe_pretrained(pre, block: int, image_size: int, seed: int, head: str = "nin_block",
                     num_classes: int = 10):
    """`pre` (ssl_jax.pretrained.Pretrained of a NIN) with its encoder replaced by the
    FrozenBlockProbe of `block` and `head`: the pretrained NIN's variables under 'backbone',
    the probe's fresh ones (flax / RotNet init, seeded) beside them."""
    import dataclasses

    if not isinstance(pre.encoder, NIN):
        name = pre.model_config.get("name", type(pre.encoder).__name__)
        raise ValueError(f"layer_probe.probe_blocks: the NIN-block probe needs a NIN encoder "
                         f"(config.model.name='nin'), this one is {name!r}; set "
                         "--config.layer_probe.probe_blocks='()'.")
    if not 1 <= block <= 4:
        raise ValueError(f"layer_probe.probe_blocks: block {block} is not one of NIN's blocks 1..4.")
    if head not in PROBE_HEADS:
        raise ValueError(f"layer_probe.probe_heads: {head!r} is not one of {PROBE_HEADS}.")
    sample = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    maps = jax.eval_shape(lambda v, x: pre.encoder.apply(v, x, train=False, return_maps=True, up_to=block),
                          pre.variables, sample)
    module = FrozenBlockProbe(pre.encoder, block, head, int(maps[f"block{block}"].shape[1]), int(num_classes))
    fresh = jax.device_get(module.init(jax.random.PRNGKey(seed), sample, train=False))
    variables = {"params": dict(fresh["params"], backbone=pre.variables["params"]),
                 "batch_stats": dict(fresh.get("batch_stats", {}), backbone=pre.variables["batch_stats"])}
    return dataclasses.replace(pre, encoder=module, variables=variables)


def probe_train_config(probe_train) -> ml_collections.ConfigDict:
    """supervised.train_classifier's train config of the probe: the probe_train section as
    'fine-tuning' of the FrozenBlockProbe with the backbone's parameters frozen."""
    t = ml_collections.ConfigDict(probe_train.to_dict())
    t.update(dict(finetune=True, head_batchnorm=False, label_fraction=1.0))
    t.optimizer.frozen_params = ("encoder/backbone",)
    return t


def per_class_subset(labels, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of `per_class` examples of every class of `labels` (all of a class that
    has fewer), chosen by a seeded permutation per class: the few-label runs of RotNet / SSL++
    Table VIII (20, 100, 400, 1000 labels per class)."""
    labels = np.asarray(labels)
    if per_class < 1:
        raise ValueError(f"layer_probe.probe_labels_per_class: per_class={per_class} must be >= 1 (0 = all labels).")
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class]
                                   for c in np.unique(labels)]))


def block_probe_records(ctx, blocks, heads=("nin_block",), labels_per_class=(0,)) -> list:
    """[('layer_probe', 'layer=block<k>,probe=<head>[,labels=<n>/class]', {'<head>_top1',
    '<head>_top5'})] for every head in `heads` (PROBE_HEADS), k in `blocks` and n in
    `labels_per_class` (0: every training label; n > 0: n per class, `per_class_subset`, of this
    process's slice of the train split), each a classifier trained as the module docstring says.
    A few-label run keeps probe_train.epochs over its subset, so it takes fewer steps (SSL++ does
    not give its few-label schedule): 20 labels per class at batch 128 is 1 step per epoch."""
    cfg, lp = ctx.cfg, ctx.cfg.layer_probe
    data = ctx.train_view_data("layer_probe.probe_blocks: config.data.views is empty and the source run has "
                               "none; set config.data.views to the probe's training augmentation.")
    t = probe_train_config(lp.probe_train)
    out = []
    for n in labels_per_class:
        n = int(n)
        if n == 0:
            spe = pipeline.steps_per_epoch(data, t.batch_size)
            make_batches = lambda start: pipeline.pretrain_iterator(
                data, global_batch_size=t.batch_size, seed=cfg.seed, num_views=1, start_step=start)
        else:
            indices = per_class_subset(pipeline.train_labels(data), n, cfg.seed)
            subset = lambda start, idx=indices: pipeline.subset_iterator(
                data, idx, global_batch_size=t.batch_size, seed=cfg.seed, start_step=start)
            first, spe = subset(0)
            make_batches = lambda start, first=first, subset=subset: first if start == 0 else subset(start)[0]
        for head in heads:
            for block in blocks:
                pre = probe_pretrained(ctx.pre, int(block), int(data.image_size), cfg.seed, head, ctx.num_classes)
                identity = {"source": cfg.source, "network": cfg.network, "step": cfg.step, "seed": cfg.seed,
                            "data": data.to_dict(), "train": t.to_dict(), "block": int(block), "head": head,
                            "labels_per_class": n}
                digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
                ckpt_dir = storage.join(ctx.workdir, "classifiers", f"{head}-block{int(block)}-{digest}")
                labels = f",labels={n}/class" if n else ""
                ctx.log(f"layer_probe: {head} probe on block{block}{labels}, checkpointed in {ckpt_dir}")
                trained = supervised.train_classifier(pre, make_batches, steps_per_epoch=spe, train_cfg=t,
                                                      num_classes=ctx.num_classes, mesh=ctx.mesh, seed=cfg.seed,
                                                      log=ctx.log, checkpoint_dir=ckpt_dir)
                report = ctx.pass_reporter(f"{head} probe on block{block}: {data.dataset}:{data.test_split}",
                                           data.test_split)
                acc = supervised.classifier_accuracy(pre.encoder, trained["encoder"], trained["head"],
                                                     trained["head_variables"], ctx.batches(data.test_split),
                                                     ctx.mesh, report)
                out.append(("layer_probe", f"layer=block{block},probe={head}{labels}",
                            {f"{head}_top1": acc["top1"], f"{head}_top5": acc["top5"]}))
    return out
