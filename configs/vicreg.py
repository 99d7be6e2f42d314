"""VICReg (Bardes, Ponce & LeCun, ICLR 2022) presets.

Command:
    python -m ssl_jax.main --config=configs/vicreg.py[:PRESET] --workdir=DIR

Presets:
  imagenet (default)  The paper's recipe: ResNet-50, ImageNet, 224 px, global batch 2048, 1000 epochs,
                      LARS base LR 0.2 x B/256, weight decay 1e-6, biases and BN parameters excluded
                      from weight decay and LARS adaptation, 10 warm-up epochs, cosine down to 1/1000
                      of the peak; expander 8192-8192-8192; loss weights 25 / 25 / 1 (the paper's
                      Eq. 6; the released code halves the variance term: add
                      --config.vicreg.var_weight=12.5 to match it); BYOL's views.
                      Hardware: 32 V100-class GPUs (runtime not measured here). Paper: 73.2% linear
                      top-1 (paper's Table 1, not measured here).
  cifar10             ResNet-18 with the CIFAR stem, 32 px, batch 256, 1000 epochs, expander
                      2048-2048-2048, LARS 0.3 x B/256 with trust 0.02 and weight decay 1e-4
                      (solo-learn's CIFAR setting; the paper has none), no blur. One GPU; runtime and
                      result not measured here.
  demo                scikit-learn digits at 16 px, ResNet-18 at width 1/8, 32 epochs, offline,
                      ~3 min on 2 CPU cores.
                      Measured (README, Methods; 2026-11-22, XLA's convolutions): kNN / linear probe
                      0.975 / 0.983 (random init 0.644 / 0.761).
"""
from ssl_jax import presets as P

PRESETS = ("imagenet", "cifar10", "demo")


def get_config(preset: str = "imagenet"):
    preset, c = P.start("vicreg.py", preset, PRESETS)
    c.global_batch_size = 2048
    c.vicreg = dict(projector=P.head(8192, 8192, num_layers=3), predictor=None, momentum=None,
                    per_view_bn=True, num_views=2, sim_weight=25.0, var_weight=25.0, cov_weight=1.0)
    c.optimizer.update(dict(name="lars", base_lr=0.2, weight_decay=1e-6, warmup_epochs=10.0,
                            end_lr_factor=0.001))
    P.use_dataset(c, preset)
    if preset == "cifar10":
        c.vicreg.projector = P.head(2048, 2048, num_layers=3)
        c.optimizer.update(dict(base_lr=0.3, weight_decay=1e-4, trust_coefficient=0.02))
    elif preset == "demo":
        c.vicreg.projector = P.head(256, 256, num_layers=3)
        c.optimizer.update(dict(base_lr=0.3, weight_decay=1e-4, trust_coefficient=0.02))
    return c
