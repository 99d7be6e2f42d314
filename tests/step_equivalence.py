"""Runs two train steps of each method on a fixed global batch and saves loss + state to .npz
(methods with dataset-level refreshes: after the refresh of epoch 0, whose sharded feature pass
is saved too).

Used by tests/test_sharding.py in subprocesses, once with 1 CPU device and once with 8
simulated ones (XLA_FLAGS must be set before JAX is imported, hence a separate process).
Usage: python tests/step_equivalence.py OUT_DIR METHOD [METHOD ...]   (writes OUT_DIR/METHOD.npz)
"""
import importlib
import os
import sys

import jax
import ml_collections
import numpy as np

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
from ssl_jax.data import pipeline  # noqa: E402
from ssl_jax.methods import fussl_phase2  # noqa: E402
from tests.tiny_run import train_steps  # noqa: E402

GLOBAL_BATCH, SIZE, STEPS = 16, 16, 2


def tiny_config(name: str, resnet10: bool = True):
    """The method's demo preset at a global batch of 16, a ResNet-18 demo on ResNet-10 unless
    `resnet10` is False (W-MSE: whitening over all 16; SwAV:
    a queue of one batch, in use from the second step). 'METHOD+MODE' (e.g. 'byol+dssl'): with
    config.dssl.mode = MODE (four views per image); 'dino_vit': DINO with a ViT-Ti/4 student
    using stochastic depth; 'rotnet+sslpp': with SSL++'s semantic head (ssl_jax.methods.sslpp);
    'rotnet+coupled': that head on labels re-clustered by the dataset refresh (SSL++'s coupled
    ablation); 'aet+projective': AET's homography targets;
    'byol+ensemble3': 3 blocks (ssl_jax.methods.ensemble), on an even device count over a mesh
    with fsdp=2 (the block axis stays whole, a parameter axis is split)."""
    method, _, mode = name.partition("+")
    if method == "dino_vit":  # DINO's ViT student with stochastic depth (a per-example rng)
        method, mode = "dino", ""
        config = importlib.import_module("configs.dino").get_config("demo")
        config.model = ml_collections.ConfigDict(dict(name="vit_tiny", patch_size=4, pos_embedding="sincos",
                                                      dtype="float32", remat=False, drop_path_rate=0.2))
    else:
        config = (fussl_phase2_config() if method == "fussl_phase2"
                  else importlib.import_module(f"configs.{method}").get_config("demo"))
        # What is compared is the sharding, so both sides take XLA's kernel gradients: on one
        # device 'auto' would take oneDNN's, another summation order (parameters
        # up to ~1e-3 apart after a few LARS steps; oneDNN against XLA is tests/test_conv.py).
        config.model.conv_backend = "xla"
        if resnet10 and config.model.name == "resnet18":
            # One block per stage: the same layers and sharding, ~20% less compiling per method.
            config.model.name = "resnet10"
    if mode.startswith("ensemble"):
        config.ensemble.size = int(mode[len("ensemble"):])
        config.mesh.fsdp = 2 if jax.device_count() % 2 == 0 else 1
        mode = ""
    if mode == "coupled":  # SSL++'s coupled ablation: V2's labels re-clustered from the features
        config.sslpp.update(dict(labels="coupled", num_classes=SSLPP_CLASSES, weight=0.05, view="all_copies"))
        mode = ""
    if mode == "projective":  # AET-project: an 8-parameter homography per image
        config.aet.transform = "projective"
        mode = ""
    if mode == "sslpp":  # SSL++'s semantic head on all four copies, on synthetic digits labels
        config.sslpp.update(dict(labels=sslpp_labels(config.data), num_classes=SSLPP_CLASSES, weight=0.05,
                                 view="all_copies"))
        mode = ""
    if method == "fussl_phase2":  # phase 2b: stem..stage 3 frozen (inference-mode BN, no updates)
        config.fussl_phase2.frozen_stages = 3
        config.optimizer.frozen_params = fussl_phase2.frozen_param_prefixes(3, config.model.name)
    if mode:
        config.dssl.update(dict(mode=mode, beta=0.5, delta=0.5) if method != "moco_v2" else dict(mode=mode))
    config.global_batch_size = GLOBAL_BATCH
    config.num_epochs = 2
    config.optimizer.warmup_epochs = 0.5
    if method == "wmse":
        config.wmse.update(dict(w_size=GLOBAL_BATCH, w_iter=2))
        config.wmse.projector.output_dim = 8
        config.optimizer.decay_epochs = (-1.5, -1)
    if method == "moco_v2":
        config.moco_v2.queue_size = 4 * GLOBAL_BATCH
    if method == "deepercluster":
        # k-means run to its fixed point (10 iterations stop mid-way, where the other device
        # count's float32 rounding of the PCA moves a few borderline points and the run diverges).
        config.deepercluster.kmeans_iters = 200
    if method == "iic":
        # The random views of a pair are independent images: with the authors' 0.01-std heads the
        # outputs are ~uniform and the mutual information (the loss) is ~1e-8, float32 rounding
        # noise that differs with the summation order. Confident heads make it a real number.
        config.iic.head_init_std = 1.0
    if method == "swav":  # the queue joins the Sinkhorn normalisation from the second step
        config.swav.update(dict(queue_length=GLOBAL_BATCH, queue_start_epoch=0.0))
    return config


SSLPP_CLASSES = 7


def sslpp_labels(data_cfg) -> str:
    """A labels file of seeded random labels for the config's training set (the digits), as stage B
    writes it; the same bytes from every process that makes it (written atomically)."""
    from ssl_jax.methods import sslpp
    import tempfile
    fingerprint = pipeline.training_fingerprint(data_cfg)
    path = os.path.join(tempfile.gettempdir(), f"ssl_jax_sslpp_{fingerprint['dataset']}_labels.npz")
    labels = np.random.default_rng(0).integers(0, SSLPP_CLASSES, fingerprint["num_examples"])
    sslpp.write_labels(path, labels, fingerprint, num_classes=SSLPP_CLASSES, source="random")
    return path


def fussl_phase2_config():
    """configs/fussl.py:demo's phase 2 on a labels file of fuzzy labels from seeded random ensemble
    outputs for its training set (the digits), as the staged run writes it."""
    import tempfile
    import jax.numpy as jnp
    from ssl_jax import losses
    config = importlib.import_module("configs.fussl").get_config("demo").phase2
    fingerprint = pipeline.training_fingerprint(config.data)
    dim = config.fussl_phase2.projector.output_dim
    out = np.random.default_rng(0).normal(size=(3, fingerprint["num_examples"], dim)).astype(np.float32)
    classes, weights = losses.fuzzy_labels(jnp.asarray(out))
    path = os.path.join(tempfile.gettempdir(), f"ssl_jax_fussl_{fingerprint['dataset']}_labels.npz")
    fussl_phase2.write_labels(path, classes, weights, fingerprint, chosen_block=0, block_errors=[0.0] * 3,
                              config={"source": "random"})
    config.fussl_phase2.labels = path
    return config


def run(method: str, out_path: str) -> None:
    extras = {}
    state, losses = train_steps(tiny_config(method), image_size=SIZE, steps=STEPS, steps_per_epoch=5,
                                labels_from_one_device=True, extras=extras)
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(
        {"params": state.params, "batch_stats": state.batch_stats, "method_state": state.method_state,
         **extras}))
    arrays = {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}
    np.savez(out_path, loss=np.asarray(losses), num_devices=len(jax.devices()), **arrays)


if __name__ == "__main__":
    out_dir, methods = sys.argv[1], sys.argv[2:]
    for name in methods:
        run(name, os.path.join(out_dir, f"{name}.npz"))
