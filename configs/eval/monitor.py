"""Representation monitors of frozen features: collapse, effective rank, alignment, uniformity.

Command:
    python -m ssl_jax.evaluate --config=configs/eval/monitor.py[:PRESET] --workdir=RUN_DIR

Two augmented views (the pretraining run's own augmentation, data.views) of the first
monitor.num_examples train images go through the encoder (inference mode); on the pooled
features it reports the collapse monitor (mean per-dimension std of the L2-normalised
features; SimSiam §4.1: 1/sqrt(D) for spread features, 0 for collapse) with its reference
1/sqrt(D), the effective rank (RankMe), and the alignment and uniformity of Wang & Isola (2020).

Presets:
  standard (default)  2048 images. Any hardware the run trained on; runtime and result not
                      measured here.
  demo                a `demo` run (digits): 360 images; seconds on 2 CPU cores. Result not
                      recorded here (the tests check std below 1/sqrt(D), effective rank > 5).
"""
from ssl_jax import presets as P

PRESETS = ("standard", "demo")


def get_config(preset: str = "standard"):
    preset, c = P.eval_start("monitor.py", preset, PRESETS)
    if preset == "demo":
        P.eval_demo(c)
        c.monitor.num_examples = 360
    return c
