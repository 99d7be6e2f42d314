"""CARL (Silva & Ramírez Rivera; thesis ch. 5) presets.

Command:
    python -m ssl_jax.main --config=configs/carl.py[:PRESET] --workdir=DIR

Presets:
  cifar10 (default)   The thesis's main setting: ResNet-18 with the CIFAR stem, CIFAR-10 at 32 px, batch
                      256, 200 epochs, LARS with LR 0.6 -> 0.0006 on a cosine, no warm-up, weight decay
                      5e-4; projector 512 -> 512 -> 128 with BN; 100 linear prototypes; λ_e 4 -> 1.5
                      over 100 epochs (the thesis's CIFAR ablation values; its main runs do not give
                      them); SimCLR's augmentations (jitter 0.8/0.8/0.8/0.2, blur p=0.5). Not in the
                      thesis, chosen here: LARS trust coefficient 0.02 (batch 256) and momentum 0.9.
                      One GPU; runtime not given in the thesis, not measured here. Thesis Table 5.2: 78.94%
                      linear top-1 at 200 epochs (its number, not measured here).
  imagenet            ResNet-50, ImageNet 224 px, 3000 prototypes ("following SwAV"), projector
                      2048 -> 2048 -> 128, the same optimizer settings: the thesis gives no CARL-specific
                      ImageNet hyperparameters, so this is a starting point (thesis Table 6.1: 65.7% at 200
                      epochs). Hardware: a multi-GPU machine or a TPU slice (the thesis does not say);
                      runtime not measured here.
  demo                scikit-learn digits at 16 px, ResNet-18 at width 1/8, 32 epochs, 30 prototypes;
                      offline, ~3 min on 2 CPU cores.
                      Measured (README, Methods; 2026-11-22, XLA's convolutions): kNN / linear probe
                      0.889 / 0.936 (random init 0.644 / 0.761).
"""
from ssl_jax import presets as P

PRESETS = ("cifar10", "imagenet", "demo")


def carl_views(size_crop_min: float = 0.08) -> list:
    return P.simclr_views(strength=1.0, blur_prob=0.5, crop_min=size_crop_min)


def get_config(preset: str = "cifar10"):
    preset, c = P.start("carl.py", preset, PRESETS)
    c.global_batch_size = 256
    c.num_epochs = 200
    c.data.views = carl_views()
    c.carl = dict(projector=P.head(2048, 128, num_layers=2), assigner=P.head(1, 3000, num_layers=1, output_bias=False),
                  momentum=None, per_view_bn=True, num_views=2,
                  entropy_weight_start=4.0, entropy_weight_end=1.5, entropy_decay_epochs=100.0)
    c.optimizer.update(dict(name="lars", base_lr=0.6, weight_decay=5e-4, warmup_epochs=0.0,
                            end_lr_factor=0.001, trust_coefficient=0.02))
    P.use_dataset(c, preset)
    if preset == "cifar10":
        c.data.views = carl_views()
        c.carl.update(dict(projector=P.head(512, 128, num_layers=2),
                           assigner=P.head(1, 100, num_layers=1, output_bias=False)))
    elif preset == "demo":
        c.data.views = [dict(v, crop_scale=(0.4, 1.0), flip_prob=0.0, blur_prob=0.0) for v in carl_views()]
        c.carl.update(dict(projector=P.head(256, 64, num_layers=2),
                           assigner=P.head(1, 30, num_layers=1, output_bias=False), entropy_decay_epochs=16.0))
        c.optimizer.update(dict(base_lr=1.0, weight_decay=1e-5))
    return c
