"""Linear evaluation: a linear classifier trained on a frozen encoder with augmentation.

Command:
    python -m ssl_jax.evaluate --config=configs/eval/linear.py[:PRESET] --workdir=RUN_DIR

The encoder runs in inference mode (BatchNorm with its running statistics) and is not
updated; a Dense layer (init N(0, 0.01²), bias 0) is trained on random-resized crops with
horizontal flips and tested on centre crops (resize to 1/0.875 of the size and crop, i.e.
256 -> 224 on ImageNet). Writes top-1 and top-5 to RUN_DIR/results.json.

Presets (the recipe each comes from; accuracies quoted are the papers', not measured here):
  imagenet (default)  SimCLR / BYOL: SGD with Nesterov momentum 0.9, LR 0.2 x B/256 (BYOL's sweep
                      picks 0.2 at batch 1024), cosine, no weight decay, batch 1024, 90 epochs
                      (SimCLR 90; BYOL 80). 8 GPUs or a v3-8, ~10 h. BYOL ResNet-50: 74.3%.
  imagenet_moco       MoCo v1/v2: SGD momentum 0.9, LR 30 (no batch scaling), batch 256,
                      100 epochs, LR x0.1 at epochs 60 and 80, no weight decay. MoCo v2: 71.1%.
                      8 GPUs; runtime not measured here.
  imagenet_lars       MoCo v3 / large-batch style: LARS, LR 0.1 x B/256 at batch 4096 (peak 1.6),
                      90 epochs, cosine, 10 warm-up epochs, no weight decay. MoCo v3 ResNet-50: 74.6%.
                      A TPU slice / multi-GPU host for batch 4096; runtime not measured here.
  cifar10             CIFAR-10 from a cifar10 run (32 px): SGD Nesterov 0.9, LR 0.1 x B/256, batch
                      256, 100 epochs, cosine, no weight decay, crops scale (0.08, 1) + flip.
                      One GPU, ~15 min.
  transfer_cifar10    Transfer: the same CIFAR recipe on CIFAR-10 for an encoder pretrained on
                      another dataset (images at the pretraining run's size). One GPU; runtime and
                      result not measured here.
  demo                a `demo` run (digits): 20 epochs, batch 120, LR 2.0 x B/256, a BatchNorm
                      without affine before the classifier; ~40 s on 2 CPU cores. Measured on the
                      BYOL demo run: 85.6% (the cached-feature probe: 93.3%).
"""
from ssl_jax import presets as P

PRESETS = ("imagenet", "imagenet_moco", "imagenet_lars", "cifar10", "transfer_cifar10", "demo")


def get_config(preset: str = "imagenet"):
    preset, c = P.eval_start("linear.py", preset, PRESETS)
    t = c.train
    t.optimizer.update(dict(base_lr=0.2))
    if preset == "imagenet_moco":
        t.update(dict(epochs=100.0, batch_size=256))
        t.optimizer.update(dict(nesterov=False, base_lr=30.0, lr_scaling="none", decay="steps",
                                decay_epochs=(60, 80), decay_factor=0.1))
    elif preset == "imagenet_lars":
        t.update(dict(epochs=90.0, batch_size=4096))
        t.optimizer.update(dict(name="lars", nesterov=False, base_lr=0.1, warmup_epochs=10.0))
    elif preset in ("cifar10", "transfer_cifar10"):
        t.update(dict(epochs=100.0, batch_size=256))
        t.optimizer.update(dict(base_lr=0.1))
        c.batch_size = 1000
        if preset == "transfer_cifar10":
            c.data.update(dict(dataset="cifar10", train_split="train", test_split="test"))
    elif preset == "demo":
        P.eval_demo(c)
        t.update(dict(epochs=20.0, batch_size=120))
        t.optimizer.update(dict(base_lr=2.0))
    return c
