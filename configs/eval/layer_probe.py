"""Per-layer probes: kNN and linear accuracy of every ResNet stage's average-pooled output.

Command:
    python -m ssl_jax.evaluate --config=configs/eval/layer_probe.py[:PRESET] --workdir=RUN_DIR

For stage1 ... stage4 (and the final pooled features) the stage output is globally
average-pooled; a weighted kNN (k, T) and the cached-feature linear probe (the l2 grid chosen on
held-out train data) are scored on the test split. A representation specialised to the
pretext task shows as accuracy peaking before the last stage (the SSL++ seed paper's
"last-layer collapse" of proxy tasks). Records: protocol 'layer_probe', setting 'layer=stageN',
metrics knn_top1 and linear_top1. ResNet encoders only.

Presets:
  sslpp (default)  k=20, T=0.07; l2 grid 1e-4 ... 1e-1.
  demo             a `demo` run (digits).
"""
from ssl_jax import presets as P

PRESETS = ("sslpp", "demo")


def get_config(preset: str = "sslpp"):
    preset, c = P.eval_start("layer_probe.py", preset, PRESETS)
    if preset == "demo":
        P.eval_demo(c)
    return c
