"""Weighted kNN evaluation of frozen features (Wu et al. 2018; the DINO protocol).

Command:
    python -m ssl_jax.evaluate --config=configs/eval/knn.py[:PRESET] --workdir=RUN_DIR

Features: the encoder's pooled output in inference mode on centre crops of the train split
(the memory, sharded over the devices) and of the test split (the queries, in chunks). Each
query's k most cosine-similar train features vote with weight exp(cos / T); top-1 and top-5
for every k and T go to RUN_DIR/results.json.

Presets:
  dino (default)  DINO (Caron et al. 2021, §4.1 / App.): k in {10, 20, 100, 200}, T in {0.07, 0.1}
                  (the paper reports k=20, T=0.07). ImageNet ResNet-50: ~10 min on one 8-GPU host
                  for the feature pass. DINO reports 67.5% (ResNet-50) / 74.5% (ViT-S/16) kNN top-1.
  demo            The same grid on a `demo` run (digits): seconds on 2 CPU cores. Measured on the
                  BYOL demo run of 2026-11-22 (README, Evaluate): 77.5% top-1 at k=20, T=0.1
                  (random init 64.4%).
"""
from ssl_jax import presets as P

PRESETS = ("dino", "demo")


def get_config(preset: str = "dino"):
    preset, c = P.eval_start("knn.py", preset, PRESETS)
    if preset == "demo":
        P.eval_demo(c)
    return c
