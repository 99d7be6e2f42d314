"""MoCo v3 (Chen, Xie & He, ICCV 2021) presets: ResNet-50 and ViT.

Command:
    python -m ssl_jax.main --config=configs/moco_v3.py[:PRESET] --workdir=DIR

Presets:
  imagenet (default)  The authors' ResNet-50 recipe: ImageNet, 224 px, global batch 4096, 300 epochs,
                      LARS base LR 0.3 x B/256, weight decay 1.5e-6, 10 warm-up epochs then cosine;
                      projector 3 layers 2048 -> 4096 -> 4096 -> 256 and predictor 2 layers
                      256 -> 4096 -> 256, BN in every hidden layer and (projector) on the output
                      without affine parameters; momentum 0.99 -> 1 on a cosine; temperature 1.0 and
                      the authors' 2T loss factor; BYOL's asymmetric views with crop scale (0.2, 1).
                      Hardware: a TPU v3-256 / 64-GPU class cluster (runtime not measured here). Paper:
                      72.8% linear top-1 at 300 epochs (paper's number, not measured here).
                      Note: the paper's text gives the projector 3 layers; the authors' ResNet code
                      builds 2 (set --config.moco_v3.projector.num_layers=2 for that).
  imagenet_1000       As imagenet, 1000 epochs, momentum 0.996; same hardware, runtime not measured
                      here. Paper: 74.6%.
  cifar10             ResNet-18 with the CIFAR stem, 32 px, batch 256, 1000 epochs, heads 2048 wide,
                      T = 0.2, LARS 1.0 x B/256 with trust 0.02, wd 1e-5 (solo-learn's CIFAR setting
                      for momentum methods; the paper has no CIFAR recipe), no blur. One GPU; runtime and
                      result not measured here.
  demo                scikit-learn digits at 16 px, ResNet-18 at width 1/8, 32 epochs, offline,
                      ~3 min on 2 CPU cores.
                      Measured (README, Methods; 2026-11-22, XLA's convolutions): kNN / linear probe
                      0.894 / 0.953 (random init 0.644 / 0.761).
  vit_small           The paper's ViT recipe: ViT-S/16 with fixed 2-D sin-cos position embedding and a
                      frozen random patch projection (never updated, no weight decay), ImageNet 224 px,
                      batch 4096, 300 epochs, AdamW LR 1.5e-4 x B/256, weight decay 0.1 on every
                      parameter (the authors' AdamW), 40 warm-up epochs then cosine, T = 0.2, momentum
                      0.99 -> 1, heads as for ResNet (hidden 4096, output 256), crop scale (0.08, 1).
                      Hardware as imagenet; runtime not measured here. Paper: 73.2% linear top-1
                      (paper's number, not measured here).
  vit_base            As vit_small with ViT-B/16. Paper: 76.7%. Params and optimizer state split over 8
                      devices (mesh.fsdp=8; fsdp must divide the device count). Hardware as imagenet;
                      runtime not measured here.
  vit_large           As vit_base with ViT-L/16 (FSDP over 8 devices; add --config.model.remat=True
                      when activations do not fit). Hardware as imagenet; runtime and result not
                      measured here.
  ImageNet presets compute in bfloat16 (float32 params, optimizer state and loss math);
  cifar10 and demo in float32.
"""

from ssl_jax import presets as P

PRESETS = ("imagenet", "imagenet_1000", "cifar10", "demo", "vit_small", "vit_base", "vit_large")


def get_config(preset: str = "imagenet"):
    preset, c = P.start("moco_v3.py", preset, PRESETS)
    c.num_epochs = 300
    c.moco_v3 = dict(projector=P.head(4096, 256, num_layers=3, output_bn="plain"),
                     predictor=P.head(4096, 256, num_layers=2),
                     momentum=P.momentum(0.99, "cosine"), per_view_bn=True, num_views=2, temperature=1.0)
    c.data.views = P.byol_views(crop_min=0.2)
    c.optimizer.update(dict(name="lars", base_lr=0.3, weight_decay=1.5e-6, warmup_epochs=10.0))
    P.use_dataset(c, "imagenet" if preset.startswith(("imagenet", "vit")) else preset)
    if preset == "imagenet_1000":
        c.num_epochs = 1000
        c.moco_v3.momentum.base = 0.996
    elif preset == "cifar10":
        c.num_epochs = 1000
        c.moco_v3.update(dict(projector=P.head(2048, 256, num_layers=3, output_bn="plain"),
                              predictor=P.head(2048, 256, num_layers=2), temperature=0.2))
        c.optimizer.update(dict(base_lr=1.0, weight_decay=1e-5, trust_coefficient=0.02))
    elif preset == "demo":
        c.num_epochs = 32
        c.moco_v3.update(dict(projector=P.head(256, 64, num_layers=3, output_bn="plain"),
                              predictor=P.head(256, 64, num_layers=2), temperature=0.2))
        c.optimizer.update(dict(base_lr=1.0, weight_decay=1e-5, trust_coefficient=0.02))
    elif preset in ("vit_small", "vit_base", "vit_large"):
        c.model.update(dict(name=preset, patch_size=16, pos_embedding="sincos", dtype="bfloat16", remat=False))
        if preset != "vit_small":
            c.mesh.fsdp = 8  # params and optimizer state split over 8 devices (ssl_jax.parallel)
        c.moco_v3.temperature = 0.2
        c.data.views = P.byol_views(crop_min=0.08)
        c.optimizer.update(dict(name="adamw", base_lr=1.5e-4, weight_decay=0.1, warmup_epochs=40.0,
                                exclude_bias_and_bn_from_wd=False, frozen_params=("encoder/patch_embed",)))
    return c
