"""MoCo v2 (Chen, Fan, Girshick & He, 2020) presets.

Command:
    python -m ssl_jax.main --config=configs/moco_v2.py[:PRESET] --workdir=DIR

Presets:
  imagenet (default)  The paper's recipe: ResNet-50, ImageNet, 224 px, global batch 256, 200 epochs,
                      SGD LR 0.03 x B/256 with momentum 0.9 and weight decay 1e-4 on every parameter
                      (PyTorch SGD), cosine, no warm-up; MLP head 2048 -> 2048 -> 128 without BN;
                      key encoder EMA m = 0.999; queue of 65536 keys; temperature 0.2; views: crop
                      scale (0.2, 1), jitter (0.4, 0.4, 0.4, 0.1) p=0.8, grayscale 0.2, blur p=0.5.
                      Hardware: 8 V100-class GPUs, ~53 h in the paper. Paper: 67.5% linear top-1
                      (paper's Table 2, not measured here).
  imagenet_800        As imagenet for 800 epochs (8 V100-class GPUs; runtime not measured here).
                      Paper: 71.1% (Table 2).
  cifar10             ResNet-18 with the CIFAR stem, 32 px, batch 256, 800 epochs, SGD 0.06 x B/256,
                      weight decay 5e-4, queue 4096, m = 0.99, T = 0.1: the CIFAR-10 setting of the
                      MoCo authors' CIFAR demo (the paper has no CIFAR recipe), no blur. One GPU; runtime
                      and result not measured here.
  demo                scikit-learn digits at 16 px, ResNet-18 at width 1/8, 32 epochs, offline,
                      ~3 min on 2 CPU cores; queue 1024, SGD 0.5 x B/256, and BN in the head's hidden
                      layer (as MoCo v3 and SimCLR): with the paper's BN-free head the loss stays at
                      log(K+1) for the demo's 352 steps (measured: kNN 0.70 without, 0.87 with).
                      Measured (README, Methods; 2026-11-22, XLA's convolutions): kNN / linear probe
                      0.861 / 0.919 (random init 0.644 / 0.761).
"""
from ssl_jax import presets as P

PRESETS = ("imagenet", "imagenet_800", "cifar10", "demo")


def get_config(preset: str = "imagenet"):
    preset, c = P.start("moco_v2.py", preset, PRESETS)
    c.global_batch_size = 256
    c.num_epochs = 200
    c.moco_v2 = dict(projector=P.head(2048, 128, num_layers=2, hidden_bn=False), predictor=None,
                     momentum=P.momentum(0.999, "constant"), per_view_bn=True, num_views=2,
                     queue_size=65536, temperature=0.2)
    c.data.views = P.moco_v2_views(crop_min=0.2)
    c.optimizer.update(dict(name="sgd", base_lr=0.03, weight_decay=1e-4, warmup_epochs=0.0,
                            exclude_bias_and_bn_from_wd=False))
    P.use_dataset(c, "imagenet" if preset.startswith("imagenet") else preset)
    if preset == "imagenet_800":
        c.num_epochs = 800
    elif preset == "cifar10":
        c.num_epochs = 800
        c.moco_v2.update(dict(queue_size=4096, temperature=0.1))
        c.moco_v2.momentum.base = 0.99
        c.optimizer.update(dict(base_lr=0.06, weight_decay=5e-4))
    elif preset == "demo":
        c.moco_v2.update(dict(projector=P.head(256, 64, num_layers=2, hidden_bn=True),
                              queue_size=1024, temperature=0.2))
        c.moco_v2.momentum.base = 0.99
        c.optimizer.update(dict(base_lr=0.5, weight_decay=5e-4, warmup_epochs=0.0))
    return c
