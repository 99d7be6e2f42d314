"""SimCLR (Chen et al., ICML 2020) presets.

Command:
    python -m ssl_jax.main --config=configs/simclr.py[:PRESET] --workdir=DIR

Presets:
  imagenet (default)  The paper's recipe: ResNet-50, ImageNet, 224 px, global batch 4096,
                      1000 epochs, LARS base LR 0.3 x B/256 (lr_scaling='sqrt' with base_lr=0.075
                      gives the paper's square-root option), weight decay 1e-6, 10 warm-up epochs
                      then cosine, temperature 0.1, projector 2048 -> 2048 -> 128 with BN (v1),
                      colour strength 1.0, blur p=0.5 on both views, global BN over both views.
                      Hardware: a TPU v3-128 class slice; the paper: ~1.5 h per 100 epochs at batch
                      4096 on 128 TPU v3 cores, so ~15 h for 1000 (not measured here). Paper: 69.3%
                      linear top-1 (paper's Table 6, not measured here).
  imagenet_v2         As imagenet with SimCLR v2's 3-layer projector (2048-2048-128) and 800 epochs.
                      Hardware as imagenet; runtime and result not measured here (the SimCLR v2
                      paper's ResNet-50 numbers are for its selective-kernel variants too).
  cifar10             ResNet-18 with the CIFAR stem, 32 px, batch 256, 1000 epochs. The paper's
                      CIFAR choices (App. B.9): temperature 0.5, colour strength 0.5, no blur; LARS
                      base LR 0.4 x B/256 with trust 0.02 and weight decay 1e-5 (solo-learn's CIFAR
                      setting, because the paper's CIFAR runs use ResNet-50 and batch 1024+). One GPU,
                      about a day. solo-learn reports ~90% linear top-1 for this kind of recipe
                      (their number, not measured here).
  demo                scikit-learn digits at 16 px, ResNet-18 at width 1/8, 32 epochs, offline, ~3 min
                      on 2 CPU cores; prints kNN and linear-probe accuracy next to random init.
                      Measured (README, Methods; 2026-11-22, XLA's convolutions): kNN / linear probe
                      0.969 / 0.983 (random init 0.644 / 0.761).
"""
from ssl_jax import presets as P

PRESETS = ("imagenet", "imagenet_v2", "cifar10", "demo")


def get_config(preset: str = "imagenet"):
    preset, c = P.start("simclr.py", preset, PRESETS)
    # SimCLR's head: BN after every layer, the last one without offset (its code: center=False).
    c.simclr = dict(projector=P.head(2048, 128, num_layers=2, output_bn="scale", output_bias=False),
                    predictor=None, momentum=None, per_view_bn=False, num_views=2, temperature=0.1)
    c.data.views = P.simclr_views(strength=1.0, blur_prob=0.5)
    c.optimizer.update(dict(name="lars", base_lr=0.3, weight_decay=1e-6, warmup_epochs=10.0))
    P.use_dataset(c, "imagenet" if preset.startswith("imagenet") else preset)
    if preset == "imagenet_v2":
        c.num_epochs = 800
        c.simclr.projector.num_layers = 3
    elif preset == "cifar10":
        c.data.views = P.simclr_views(strength=0.5, blur_prob=0.0)
        c.simclr.temperature = 0.5
        c.optimizer.update(dict(base_lr=0.4, weight_decay=1e-5, trust_coefficient=0.02))
    elif preset == "demo":
        views = P.simclr_views(strength=0.5, blur_prob=0.0, crop_min=0.4)
        for v in views:
            v["flip_prob"] = 0.0
        c.data.views = views
        c.simclr.projector = P.head(256, 64, num_layers=2, output_bn="scale", output_bias=False)
        c.simclr.temperature = 0.5
        c.optimizer.update(dict(base_lr=1.0, weight_decay=1e-5, trust_coefficient=0.02))
    return c
