"""Colorization (Zhang et al., ECCV 2016) presets: SSL++'s 'Color.' proxy task (ssl_jax.methods.colorization).

Command:
    python -m ssl_jax.main --config=configs/colorization.py[:PRESET] --workdir=DIR

Presets:
  cifar10 (default)  SSL++'s recipe (seed 002, Table II, the Color. row) on the 4-block NIN (model
                     'nin', width 1: B2-B4 192x8x8 at 32 px): batch 128, 200 epochs, Adam LR 0.01 (no
                     scaling with the batch), weight decay 5e-4 (SSL++: "for all models"; coupled L2),
                     no warm-up, LR x 0.1 at epochs 100 and 150. The L channel in, per-cell logits over
                     the 261 in-gamut ab bins of the 8x8 block4 map out (head: 3x3 conv 256 + BN + ReLU,
                     1x1 conv), soft targets (5 nearest bins, sigma 5), class rebalancing lambda 0.5.
                     Views: the whole image and a horizontal flip (SSL++ does not give its augmentation).
                     Hardware: one GPU. SSL++ Table III (NIN-block probe): 78.4 / 71.2 / 66.5 on
                     B2 / B3 / B4; kNN K=10: 58.2 / 56.5 / 49.1 (paper numbers, not measured here).
  demo               scikit-learn digits at 16 px, ResNet-18 at width 1/8 (2x2 output map), batch 128,
                     32 epochs, Adam 0.01 x 0.1 at epochs 20 and 28, head width 64; crop (0.4, 1), no
                     flip. The digits are grey: every target is the ab bin at (0, 0), so the task is
                     trivial here and the demo only shows the pipeline running: measured on 2 CPU
                     cores (1 min 34 s with evaluation, 2026-12-06) it collapses, kNN / linear 0.281 /
                     0.731 against 0.644 / 0.761 at random init. Colour images are needed to learn.
"""
from ssl_jax import presets as P

PRESETS = ("cifar10", "demo")


def get_config(preset: str = "cifar10"):
    preset, c = P.start("colorization.py", preset, PRESETS)
    c.colorization = dict(num_neighbors=5, sigma=5.0, rebalance=True, rebalance_lambda=0.5, head_hidden=256,
                          num_views=1, per_view_bn=False, momentum=None, projector=None, predictor=None)
    P.use_dataset(c, preset)
    c.global_batch_size = 128
    c.num_epochs = 200
    c.data.views = P.crop_flip_views(1, crop_min=1.0)
    c.data.views[0]["crop_ratio"] = (1.0, 1.0)
    c.optimizer.update(dict(name="adam", base_lr=0.01, lr_scaling="none", weight_decay=5e-4,
                            exclude_bias_and_bn_from_wd=False, warmup_epochs=0.0, decay="steps",
                            decay_epochs=(100, 150), decay_factor=0.1))
    if preset == "cifar10":
        c.model.update(dict(name="nin", width=1.0, dtype="float32"))
    elif preset == "demo":
        c.num_epochs = 32
        c.colorization.head_hidden = 64
        c.data.views = P.crop_flip_views(1, crop_min=0.4)
        c.data.views[0]["flip_prob"] = 0.0  # a mirrored digit is another symbol
        c.optimizer.decay_epochs = (20, 28)
    return c
