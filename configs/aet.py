"""AET (Zhang et al., CVPR 2019) presets, AET-affine and AET-project: SSL++'s 'AET' proxy task
(ssl_jax.methods.aet).

Command:
    python -m ssl_jax.main --config=configs/aet.py[:PRESET] --workdir=DIR

Presets:
  cifar10 (default)  SSL++'s recipe (seed 002, Table II, the AET row) on the 4-block NIN (model 'nin',
                     width 1), two shared-weight branches: batch 512, SGD LR 0.1 (no scaling with the
                     batch), momentum 0.9, weight decay 5e-4 (coupled), no warm-up; 1500 epochs with
                     the LR x 0.2 at epochs 240, 480, 640, 800, 1200 (AET's own schedule: SSL++'s
                     table cell is garbled, printed "500" epochs with drops up to 1000). AET's affine
                     family: rotation +-180 deg, translation +-0.2, scale [0.7, 1.3], shear +-30 deg;
                     the 6 matrix entries regressed from the concatenated pooled block4 features of
                     both branches. Views: the whole image and a horizontal flip. Hardware: one GPU.
                     SSL++ Table III (NIN-block probe): 90.7 / 86.2 / 59.4 on B2 / B3 / B4; kNN K=10:
                     70.4 / 68.3 / 25.1 (paper numbers, not measured here).
  demo               scikit-learn digits at 16 px, ResNet-18 at width 1/8, batch 128, 32 epochs, SGD
                     0.1 x 0.2 at epochs 20 and 28; crop (0.4, 1), no flip. 2 CPU cores: 2 min 38 s
                     with evaluation (2026-12-06, warm compilation cache); kNN / linear 0.778 / 0.881
                     against 0.644 / 0.761 at random init.
  cifar10_projective, demo_projective
                     the same with AET-project: a homography that sends the image's corners, scaled
                     by U[0.8, 1.2] and turned by 0/90/180/270 deg about the centre, each a further
                     U[-0.125, 0.125] of the side along x and y (AET's CIFAR-10 family); its 8 entries
                     (H33 = 1) regressed. SSL++ names both families, its tables say "AET".
                     demo_projective measured (2026-12-06, 2 CPU cores under load ~20): 4.5 min of
                     training + 0.5 min evaluation; kNN / linear 0.767 / 0.844 (random init 0.644 /
                     0.761; demo, rerun in the same session: 0.811 / 0.878). At this scale neither
                     family's regression gets far: parameter MSE 0.279 -> 0.249 against a target
                     variance of 0.257 (affine: 0.389 -> 0.369 against 0.379).
"""
from ssl_jax import presets as P

PRESETS = ("cifar10", "demo", "cifar10_projective", "demo_projective")


def get_config(preset: str = "cifar10"):
    preset, c = P.start("aet.py", preset, PRESETS)
    preset, _, family = preset.partition("_")
    # transform: 'affine' or 'projective'; the affine family's ranges, then the projective one's
    # (AET Sec. 4.1.1; ssl_jax.methods.aet).
    c.aet = dict(transform=family or "affine", rotation=180.0, translation=0.2, scale=(0.7, 1.3), shear=30.0,
                 corner_shift=0.125, projective_scale=(0.8, 1.2),
                 num_views=1, per_view_bn=False, momentum=None, projector=None, predictor=None)
    P.use_dataset(c, preset)
    c.global_batch_size = 512
    c.num_epochs = 1500
    c.data.views = P.crop_flip_views(1, crop_min=1.0)
    c.data.views[0]["crop_ratio"] = (1.0, 1.0)
    c.optimizer.update(dict(name="sgd", base_lr=0.1, lr_scaling="none", momentum=0.9, nesterov=False,
                            weight_decay=5e-4, exclude_bias_and_bn_from_wd=False, warmup_epochs=0.0,
                            decay="steps", decay_epochs=(240, 480, 640, 800, 1200), decay_factor=0.2))
    if preset == "cifar10":
        c.model.update(dict(name="nin", width=1.0, dtype="float32"))
    elif preset == "demo":
        c.global_batch_size = 128
        c.num_epochs = 32
        c.data.views = P.crop_flip_views(1, crop_min=0.4)
        c.data.views[0]["flip_prob"] = 0.0  # a mirrored digit is another symbol
        c.optimizer.decay_epochs = (20, 28)
    return c
