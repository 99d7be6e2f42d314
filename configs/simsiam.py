"""SimSiam (Chen & He, CVPR 2021) presets.

Command:
    python -m ssl_jax.main --config=configs/simsiam.py[:PRESET] --workdir=DIR

Presets:
  imagenet (default)  The paper's recipe: ResNet-50, ImageNet, 224 px, global batch 512, 100 epochs,
                      SGD LR 0.05 x B/256, momentum 0.9, weight decay 1e-4 on every parameter, cosine,
                      no warm-up, the predictor at the fixed peak LR; projector 3 layers 2048 with BN
                      after every layer (the output BN without affine parameters, the last Dense
                      without bias), predictor 2048 -> 512 -> 2048; MoCo v2's views (crop (0.2, 1)).
                      Hardware: 8 V100-class GPUs (runtime not measured here). Paper: 68.1% linear top-1
                      at 100 epochs (paper's Table 4, not measured here).
  cifar10             The paper's CIFAR-10 recipe (App. D): ResNet-18 with the CIFAR stem, 32 px,
                      batch 512, 800 epochs, SGD 0.03 x B/256, weight decay 5e-4, 2-layer projector,
                      no blur. One GPU; runtime not measured here. Paper: 91.8% linear top-1 (App. D).
  demo                scikit-learn digits at 16 px, ResNet-18 at width 1/8, 32 epochs, offline,
                      ~3 min on 2 CPU cores; SGD 0.5 x B/256 (at the CIFAR LR the loss barely moves
                      in the demo's 352 steps: measured kNN 0.70 at 0.06, 0.87 at 0.5).
                      Measured (README, Methods; 2026-11-22, XLA's convolutions): kNN / linear probe
                      0.861 / 0.917 (random init 0.644 / 0.761).
"""
from ssl_jax import presets as P

PRESETS = ("imagenet", "cifar10", "demo")


def get_config(preset: str = "imagenet"):
    preset, c = P.start("simsiam.py", preset, PRESETS)
    c.global_batch_size = 512
    c.num_epochs = 100
    c.simsiam = dict(projector=P.head(2048, 2048, num_layers=3, output_bn="plain", output_bias=False),
                     predictor=P.head(512, 2048, num_layers=2), momentum=None, per_view_bn=True, num_views=2)
    c.data.views = P.moco_v2_views(crop_min=0.2)
    c.optimizer.update(dict(name="sgd", base_lr=0.05, weight_decay=1e-4, warmup_epochs=0.0,
                            exclude_bias_and_bn_from_wd=False, constant_lr_modules=("predictor",)))
    P.use_dataset(c, preset)
    if preset == "cifar10":
        c.global_batch_size = 512
        c.num_epochs = 800
        c.simsiam.projector.num_layers = 2
        c.optimizer.update(dict(base_lr=0.03, weight_decay=5e-4))
    elif preset == "demo":
        c.simsiam.update(dict(projector=P.head(256, 256, num_layers=2, output_bn="plain", output_bias=False),
                              predictor=P.head(64, 256, num_layers=2)))
        c.optimizer.update(dict(base_lr=0.5, weight_decay=5e-4, warmup_epochs=0.0))
    return c
