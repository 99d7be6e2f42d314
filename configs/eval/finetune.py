"""Semi-supervised and transfer fine-tuning: encoder + linear layer trained on labelled data.

Command:
    python -m ssl_jax.evaluate --config=configs/eval/finetune.py[:PRESET] --workdir=RUN_DIR

The whole encoder and a new Dense layer are trained (BatchNorm in training mode, its statistics
updated) on random-resized crops + flips of a label subset, then tested on centre crops.
Label subsets: ImageNet uses the SimCLR 1% / 10% lists (the TFDS datasets
`imagenet2012_subset/1pct` and `/10pct`); any other dataset a seeded, class-balanced subset of
`train.label_fraction` of each class, whose indices are saved to
RUN_DIR/label_subset_<fraction>_seed<seed>.json. Records go to RUN_DIR/results.json with
setting 'labels=<percent>%'.

Presets (the papers' numbers are theirs, not measured here):
  imagenet_1pct (default)  SimCLR v2 (Chen et al. 2020b, App. B): LARS, LR 0.005 x B/256, momentum
                           0.9, no weight decay, no warm-up, batch 1024, 60 epochs on the 1% list.
                           Choice: the head is a new linear layer on the backbone (SimCLR v2 fine-tunes
                           from the projector's first layer; the issue asks for backbone + linear).
                           SimCLR v2 ResNet-50 (1x): 57.9% top-1. Hardware: 8 GPUs or a v3-8;
                           runtime not measured here.
  imagenet_10pct           The same on the 10% list, 30 epochs. SimCLR v2 ResNet-50 (1x): 68.4%.
                           Hardware as imagenet_1pct; runtime not measured here.
  cifar10_1pct             A cifar10 run, 1% of the labels (50 per class), the SimCLR v2 recipe at
                           batch 256 for 60 epochs (small subsets need the epochs).
  cifar10_10pct            10% of the labels, 30 epochs. Both: one GPU; runtime and result not
                           measured here.
  transfer_cifar10         Fine-tuning transfer to CIFAR-10 with all labels: SGD Nesterov 0.9,
                           LR 0.05 x B/256, cosine, weight decay 5e-4 on every parameter, batch 256,
                           30 epochs (a short version of the SimCLR transfer fine-tuning grid).
                           One GPU; runtime and result not measured here.
  demo                     a `demo` run (digits), 10% of the labels (~144 images), 30 epochs, batch 48,
                           SGD Nesterov LR 0.5 x B/256 (LARS at 0.005 x B/256 barely moves the new head
                           in the demo's 90 steps). 2 CPU cores (runtime not recorded). Measured on
                           the BYOL demo run of 2026-11-22 (README, Evaluate): 81.9% top-1.
"""
from ssl_jax import presets as P

PRESETS = ("imagenet_1pct", "imagenet_10pct", "cifar10_1pct", "cifar10_10pct", "transfer_cifar10", "demo")


def get_config(preset: str = "imagenet_1pct"):
    preset, c = P.eval_start("finetune.py", preset, PRESETS)
    t = c.train
    t.update(dict(epochs=60.0, batch_size=1024))
    t.optimizer.update(dict(name="lars", nesterov=False, base_lr=0.005))
    if preset == "imagenet_1pct":
        c.data.update(dict(dataset="imagenet2012_subset/1pct", train_split="train", test_split="validation"))
    elif preset == "imagenet_10pct":
        c.data.update(dict(dataset="imagenet2012_subset/10pct", train_split="train", test_split="validation"))
        t.epochs = 30.0
    elif preset in ("cifar10_1pct", "cifar10_10pct"):
        c.batch_size = 1000
        t.update(dict(batch_size=256, label_fraction=0.01 if preset == "cifar10_1pct" else 0.1,
                      epochs=60.0 if preset == "cifar10_1pct" else 30.0))
        if preset == "cifar10_1pct":
            t.batch_size = 250  # 500 labelled images: 2 steps per epoch
    elif preset == "transfer_cifar10":
        c.batch_size = 1000
        c.data.update(dict(dataset="cifar10", train_split="train", test_split="test"))
        t.update(dict(epochs=30.0, batch_size=256))
        t.optimizer.update(dict(name="sgd", nesterov=True, base_lr=0.05, weight_decay=5e-4,
                                exclude_bias_and_bn_from_wd=False))
    elif preset == "demo":
        P.eval_demo(c)
        t.update(dict(epochs=30.0, batch_size=48, label_fraction=0.1))
        t.optimizer.update(dict(name="sgd", nesterov=True, base_lr=0.5))
    return c
