"""The NIN-block probe of RotNet (Gidaris et al. 2018) and SSL++ (seed 002, Table III): a fresh
NIN block and a linear softmax layer trained with labels on the frozen map of block B_k.

The classifier is a new block of RotNet's NIN layout (3x3, 1x1, 1x1 convs of 192·width
channels, each with BN and ReLU; models.nin.NINBlock, RotNet's 'NIN_ConvBlock3'), a global
average pool (192-d) and a linear layer (ssl_jax.evaluate.supervised.LinearHead). The
pretrained NIN runs up to block k in inference mode (running BN statistics, as RotNet's frozen
feature extractor, which has no optimizer and so stays in eval mode) under stop_gradient; its
parameters are frozen (a zero update), so only the new block and the linear layer learn.

Training reuses `supervised.train_classifier` (its jitted step, optimizer, checkpointing and
resume) on the module `FrozenBlockProbe` (frozen NIN + new block) as the 'encoder': one
classifier directory per block under WORKDIR/classifiers/nin_block<k>-<hash>; a rerun resumes.
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

from ssl_jax import storage
from ssl_jax.data import pipeline
from ssl_jax.evaluate import supervised
from ssl_jax.models.nin import NIN, NINBlock, block_layers


class FrozenBlockProbe(nn.Module):
    """The frozen NIN up to block `block` (submodule 'backbone', always in inference mode, its
    output under stop_gradient), then a fresh NIN block ('probe_block', no pool) and the global
    average pool: [N, 192·width] float32 features for the linear layer."""

    backbone: NIN
    block: int

    @property
    def feature_dim(self) -> int:
        return block_layers(3, self.backbone.width_multiplier)[-1][1]

    @nn.compact
    def __call__(self, x, train: bool = False, **kwargs):
        del kwargs
        maps = self.backbone(x, train=False, return_maps=True, up_to=self.block)
        y = jax.lax.stop_gradient(maps[f"block{self.block}"])
        y = NINBlock(block_layers(3, self.backbone.width_multiplier), None, self.backbone.dtype,
                     self.backbone.conv_backend, name="probe_block")(y, train)
        return jnp.mean(y.astype(jnp.float32), axis=(1, 2))


def probe_pretrained(pre, block: int, image_size: int, seed: int):
    """`pre` (ssl_jax.pretrained.Pretrained of a NIN) with its encoder replaced by the
    FrozenBlockProbe of `block`: the pretrained NIN's variables under 'backbone', a freshly
    initialised probe block (RotNet's init, seeded) under 'probe_block'."""
    import dataclasses

    if not isinstance(pre.encoder, NIN):
        name = pre.model_config.get("name", type(pre.encoder).__name__)
        raise ValueError(f"layer_probe.probe_blocks: the NIN-block probe needs a NIN encoder "
                         f"(config.model.name='nin'), this one is {name!r}; set "
                         "--config.layer_probe.probe_blocks='()'.")
    if not 1 <= block <= 4:
        raise ValueError(f"layer_probe.probe_blocks: block {block} is not one of NIN's blocks 1..4.")
    module = FrozenBlockProbe(pre.encoder, block)
    sample = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    fresh = jax.device_get(module.init(jax.random.PRNGKey(seed), sample, train=False))
    variables = {"params": dict(fresh["params"], backbone=pre.variables["params"]),
                 "batch_stats": dict(fresh["batch_stats"], backbone=pre.variables["batch_stats"])}
    return dataclasses.replace(pre, encoder=module, variables=variables)


def probe_train_config(probe_train) -> ml_collections.ConfigDict:
    """supervised.train_classifier's train config of the probe: the probe_train section as
    'fine-tuning' of the FrozenBlockProbe with the backbone's parameters frozen."""
    t = ml_collections.ConfigDict(probe_train.to_dict())
    t.update(dict(finetune=True, head_batchnorm=False, label_fraction=1.0))
    t.optimizer.frozen_params = ("encoder/backbone",)
    return t


def block_probe_records(ctx, blocks) -> list:
    """[('layer_probe', 'layer=block<k>,probe=nin_block', {'nin_block_top1', 'nin_block_top5'})]
    for every k in `blocks`, each a classifier trained as the module docstring says."""
    cfg, lp = ctx.cfg, ctx.cfg.layer_probe
    if not ctx.data.views:
        raise ValueError("layer_probe.probe_blocks: config.data.views is empty and the source run has none; "
                         "set config.data.views to the probe's training augmentation.")
    data = ml_collections.ConfigDict(ctx.data.to_dict())
    data.views = [ctx.data.views[0]]
    t = probe_train_config(lp.probe_train)
    spe = pipeline.steps_per_epoch(data, t.batch_size)
    make_batches = lambda start: pipeline.pretrain_iterator(data, global_batch_size=t.batch_size, seed=cfg.seed,
                                                            num_views=1, start_step=start)
    out = []
    for block in blocks:
        pre = probe_pretrained(ctx.pre, int(block), int(data.image_size), cfg.seed)
        identity = {"source": cfg.source, "network": cfg.network, "step": cfg.step, "seed": cfg.seed,
                    "data": data.to_dict(), "train": t.to_dict(), "block": int(block)}
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
        ckpt_dir = storage.join(ctx.workdir, "classifiers", f"nin_block{int(block)}-{digest}")
        ctx.log(f"layer_probe: NIN-block probe on block{block}, checkpointed in {ckpt_dir}")
        trained = supervised.train_classifier(pre, make_batches, steps_per_epoch=spe, train_cfg=t,
                                              num_classes=ctx.num_classes, mesh=ctx.mesh, seed=cfg.seed,
                                              log=ctx.log, checkpoint_dir=ckpt_dir)
        acc = supervised.classifier_accuracy(pre.encoder, trained["encoder"], trained["head"],
                                             trained["head_variables"], ctx.batches(data.test_split), ctx.mesh)
        out.append(("layer_probe", f"layer=block{block},probe=nin_block",
                    {"nin_block_top1": acc["top1"], "nin_block_top5": acc["top5"]}))
    return out
