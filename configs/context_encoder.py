"""Context Encoder (Pathak et al., CVPR 2016) presets: SSL++'s 'Context' proxy task, L2 loss only
(ssl_jax.methods.context_encoder).

Command:
    python -m ssl_jax.main --config=configs/context_encoder.py[:PRESET] --workdir=DIR

Presets:
  cifar10 (default)  SSL++'s recipe (seed 002, Table II, the Context row) on the 4-block NIN (model
                     'nin', width 1): batch 512, 200 epochs, SGD LR 0.01 (no scaling with the batch),
                     momentum 0.9, weight decay 5e-4 (coupled), no warm-up, LR x 0.1 at epochs 100
                     and 150. Central 16x16 region of the 32-px image (a quarter of the area, as
                     Pathak's 64 of 128), hole shrunk by a 1-px overlap band (Pathak's 4 px at 128 px)
                     weighted 10x, hole filled with the mean colour; decoder from the 8x8 block4 map:
                     1x1 conv 256 + BN + ReLU, one 4x4/2 transposed conv (128) + BN + ReLU, 3x3 conv to
                     RGB. Views: the whole image and a horizontal flip (not given by SSL++). Hardware:
                     one GPU. SSL++ Table III (NIN-block probe): 78.8 / 70.7 / 63.9 on B2 / B3 / B4;
                     kNN K=10: 41.5 / 39.7 / 30.9 (paper numbers, not measured here).
  demo               scikit-learn digits at 16 px, ResNet-18 at width 1/8 (2x2 output map), batch 128,
                     32 epochs, SGD 0.1 x 0.1 at epochs 20 and 28, the central 8x8 region with a 1-px
                     overlap band, decoder width 64; crop (0.4, 1), no flip. 2 CPU cores: 1 min 11 s
                     with evaluation (2026-12-06, warm compilation cache); kNN / linear 0.858 / 0.928
                     against 0.644 / 0.761 at random init.
"""
from ssl_jax import presets as P

PRESETS = ("cifar10", "demo")


def get_config(preset: str = "cifar10"):
    preset, c = P.start("context_encoder.py", preset, PRESETS)
    c.context_encoder = dict(mask_fraction=0.5, overlap=1, overlap_weight=10.0, head_hidden=256,
                             num_views=1, per_view_bn=False, momentum=None, projector=None, predictor=None)
    P.use_dataset(c, preset)
    c.global_batch_size = 512
    c.num_epochs = 200
    c.data.views = P.crop_flip_views(1, crop_min=1.0)
    c.data.views[0]["crop_ratio"] = (1.0, 1.0)
    c.optimizer.update(dict(name="sgd", base_lr=0.01, lr_scaling="none", momentum=0.9, nesterov=False,
                            weight_decay=5e-4, exclude_bias_and_bn_from_wd=False, warmup_epochs=0.0,
                            decay="steps", decay_epochs=(100, 150), decay_factor=0.1))
    if preset == "cifar10":
        c.model.update(dict(name="nin", width=1.0, dtype="float32"))
    elif preset == "demo":
        c.global_batch_size = 128
        c.num_epochs = 32
        c.context_encoder.head_hidden = 64
        c.data.views = P.crop_flip_views(1, crop_min=0.4)
        c.data.views[0]["flip_prob"] = 0.0  # a mirrored digit is another symbol
        c.optimizer.update(dict(base_lr=0.1, decay_epochs=(20, 28)))
    return c
