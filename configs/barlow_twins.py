"""Barlow Twins (Zbontar et al., ICML 2021) presets.

Command:
    python -m ssl_jax.main --config=configs/barlow_twins.py[:PRESET] --workdir=DIR

Presets:
  imagenet (default)  The paper's recipe: ResNet-50, ImageNet, 224 px, global batch 2048, 1000 epochs,
                      LARS with LR 0.2 x B/256 for the weights and 0.0048 x B/256 for biases and BN
                      parameters (bias_and_bn_lr_factor = 0.024), which get no weight decay or LARS
                      adaptation; weight decay 1.5e-6, 10 warm-up epochs, cosine down to 1/1000 of the
                      peak; projector 8192-8192-8192 (BN + ReLU between, last layer without bias);
                      lambda 0.0051; BYOL's views. Hardware: 32 V100-class GPUs, ~124 h in the paper.
                      Paper: 73.2% linear top-1 (paper's Table 1; not measured here).
  cifar10             ResNet-18 with the CIFAR stem, 32 px, batch 256, 1000 epochs, projector
                      2048-2048-2048, LARS 0.3 x B/256 with trust 0.02 and weight decay 1e-4
                      (solo-learn's CIFAR setting; the paper has none), no blur. One GPU; runtime and
                      result not measured here.
  demo                scikit-learn digits at 16 px, ResNet-18 at width 1/8, 32 epochs, offline,
                      ~3 min on 2 CPU cores.
                      Measured (README, Methods; 2026-11-22, XLA's convolutions): kNN / linear probe
                      0.864 / 0.953 (random init 0.644 / 0.761).
"""
from ssl_jax import presets as P

PRESETS = ("imagenet", "cifar10", "demo")


def get_config(preset: str = "imagenet"):
    preset, c = P.start("barlow_twins.py", preset, PRESETS)
    c.global_batch_size = 2048
    c.barlow_twins = dict(projector=P.head(8192, 8192, num_layers=3, output_bias=False), predictor=None,
                          momentum=None, per_view_bn=True, num_views=2, lambd=0.0051)
    c.optimizer.update(dict(name="lars", base_lr=0.2, weight_decay=1.5e-6, warmup_epochs=10.0,
                            end_lr_factor=0.001, bias_and_bn_lr_factor=0.0048 / 0.2))
    P.use_dataset(c, preset)
    if preset == "cifar10":
        c.barlow_twins.projector = P.head(2048, 2048, num_layers=3, output_bias=False)
        c.optimizer.update(dict(base_lr=0.3, weight_decay=1e-4, trust_coefficient=0.02,
                                bias_and_bn_lr_factor=1.0))
    elif preset == "demo":
        c.barlow_twins.projector = P.head(256, 256, num_layers=3, output_bias=False)
        c.optimizer.update(dict(base_lr=0.3, weight_decay=1e-4, trust_coefficient=0.02,
                                bias_and_bn_lr_factor=1.0))
    return c
