"""Fast linear evaluation on cached features: L2-regularised multinomial logistic regression.

Command:
    python -m ssl_jax.evaluate --config=configs/eval/linear_cached.py[:PRESET] --workdir=RUN_DIR

Features are extracted once (centre crops, encoder in inference mode, no augmentation); a
full-batch logistic regression is fitted by L-BFGS on the device for each regularisation
strength of a grid; the strength is chosen on a seeded 20% held-out part of the train split,
refitted on all of it and scored on the test split (top-1, top-5). Features are standardised
with the train statistics. This is the protocol of the SimCLR paper's transfer experiments
(Chen et al. 2020, App. B.8: "ℓ2-regularised multinomial logistic regression ... L-BFGS") and
of BYOL's transfer tables; it is much faster than the augmented linear evaluation
(configs/eval/linear.py) and usually within 1-2 points of it.

Presets:
  simclr (default)  l2 grid 1e-6 ... 1e-1 (per example on the mean-loss scale; sklearn C = 1/(l2·N)).
                    CIFAR-10 ResNet-18: ~1 min for the features + ~1 min of fits on one GPU
                    (an estimate, not measured here); result not measured here.
  demo              a `demo` run (digits): seconds on 2 CPU cores. Measured on the BYOL demo
                    run of 2026-11-22 (README, Evaluate): 93.3% top-1 (the demo's own end-of-training
                    probe, README Results: 94.2%, random init 76.1%).
"""
from ssl_jax import presets as P

PRESETS = ("simclr", "demo")


def get_config(preset: str = "simclr"):
    preset, c = P.eval_start("linear_cached.py", preset, PRESETS)
    if preset == "demo":
        P.eval_demo(c)
    return c
