"""RotNet (Gidaris et al., ICLR 2018) presets: rotation prediction, SSL++'s 'Rotation' proxy task.

Command:
    python -m ssl_jax.main --config=configs/rotnet.py[:PRESET] --workdir=DIR

Presets:
  cifar10 (default)  SSL++'s recipe (seed 002, Table II, the Rotation row) on RotNet's CIFAR-10
                     model: the 4-block NIN (model 'nin', width 1: B2-B4 are 192x8x8), batch 128
                     images (x 4 rotated copies = 512 rows through the network), 200 epochs, SGD LR
                     0.1 (no scaling with the batch), momentum 0.9, Nesterov (RotNet's code),
                     weight decay 5e-4 on every parameter (coupled, as PyTorch's SGD), no warm-up,
                     LR x 0.1 at epochs 60, 120, 160 (SSL++ Table II; RotNet's own code multiplies
                     by 0.2 there: --config.optimizer.decay_factor=0.2). Views: RotNet's CIFAR
                     augmentation, a random crop of the 4-px zero-padded image (done on the device,
                     rotnet.pad_crop=4) and a horizontal flip; RotNet's CIFAR mean and std.
                     Hardware: one GPU. RotNet paper: 89.06% with a NIN-block classifier on B2
                     (SSL++ Table III: 90.8 / 86.4 / 60.1 on B2 / B3 / B4; kNN K=10: 69.9 / 72.4 /
                     18.2); paper numbers, not measured here.
  demo               scikit-learn digits at 16 px (upright digits: the rotation is predictable), NIN
                     at width 1/8 (24 channels), batch 128 x 4 copies, 32 epochs, SGD 0.1, x 0.1 at
                     epochs 20 and 28; crop (0.4, 1) without flip and no translation (an 8x8 digit
                     upsampled to 16 px has no room to shift). Offline. Measured (2026-12-06, seed
                     0, 2 CPU cores shared with other jobs: 6 min training + 1.5 min evaluation;
                     at the 280 img/s of its least-contended first 60 steps training takes 2.7 min):
                     rotation loss 0.74 (step 20) -> 0.27 (step 352), rotation top-1 0.56 -> 0.89;
                     end-of-training kNN (pooled block 4) 65.3% against 79.2% at random init, linear probe 77.2 / 86.9%: the last block is
                     rotation-specific, SSL++'s finding (Table V: B4 18.2 vs random 36.9). Blocks 2
                     and 3 are above random init: configs/eval/layer_probe.py:nin_demo (kNN K=10 B2
                     91.7% vs 68.1%).
"""
from ssl_jax import presets as P

PRESETS = ("cifar10", "demo")

# RotNet's CIFAR-10 normalisation (its dataloader: [125.3, 123.0, 113.9] / 255, [63.0, 62.1, 66.7] / 255).
CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)


def get_config(preset: str = "cifar10"):
    preset, c = P.start("rotnet.py", preset, PRESETS)
    c.rotnet = dict(pad_crop=4, num_views=1, per_view_bn=False, momentum=None, projector=None, predictor=None)
    P.use_dataset(c, preset)
    c.model.update(dict(name="nin", width=1.0, dtype="float32"))
    c.global_batch_size = 128
    c.num_epochs = 200
    # The whole image (crop scale and ratio 1), then the flip; RotNet's translation is on the device.
    c.data.views = P.crop_flip_views(1, crop_min=1.0)
    c.data.views[0]["crop_ratio"] = (1.0, 1.0)
    c.data.update(dict(mean=CIFAR_MEAN, std=CIFAR_STD))
    c.optimizer.update(dict(name="sgd", base_lr=0.1, lr_scaling="none", momentum=0.9, nesterov=True,
                            weight_decay=5e-4, exclude_bias_and_bn_from_wd=False, warmup_epochs=0.0,
                            decay="steps", decay_epochs=(60, 120, 160), decay_factor=0.1))
    if preset == "demo":
        c.model.width = 0.125
        c.num_epochs = 32
        c.rotnet.pad_crop = 0
        c.data.views = P.crop_flip_views(1, crop_min=0.4)
        c.data.views[0]["flip_prob"] = 0.0  # a mirrored digit is another symbol
        c.data.update(dict(mean=P.IMAGENET_MEAN, std=P.IMAGENET_STD))
        c.optimizer.decay_epochs = (20, 28)
    return c
