"""SimSiam with heavy augmentations and directional self-supervised learning (DSSL, Bai et al., CVPR 2022).

Command:
    python -m ssl_jax.main --config=configs/dssl_simsiam.py[:PRESET] --workdir=DIR --config.data.data_dir=DIR

Presets (CIFAR-10 rows of the paper's Tables 2-3; the setting is in ssl_jax.presets.dssl_config):
  cifar10 (default)     SimSiam w/ DSSL: views v, v' and harder views ra(2,5)+jigsaw(4) of each,
                        alpha = gamma = 1, beta = delta = 0, each term x 1/4 (Algorithm 1).
  cifar10_heavy         SimSiam w/ T̂: ra(2,5)+jigsaw(4) on top of both views, SimSiam's own loss.
  cifar10_repro         SimSiam "repro.": four standard views as two symmetric pairs (the same
                        four encoder passes as DSSL).
  cifar10_ra4_10, cifar10_heavy_ra4_10, cifar10_ra8_16, cifar10_heavy_ra8_16
                        The same with RandAugment(4, 10) / (8, 16) as the heavy policy (Table 3).
  demo                  SimSiam's demo preset (scikit-learn digits, offline) with DSSL; 2 CPU
                        cores, four views per image (about twice the plain demo's steps' work); runtime
                        and result not measured here.
Hardware: one GPU for the CIFAR-10 presets (800 epochs at batch 512 with four views per image:
about twice the time of plain SimSiam); far too slow for a 2-core CPU. The paper: SimSiam 91.8 (repro.), 94.17 w/ DSSL; w/ T̂ collapses (9.78, Fig. 1)
(paper's numbers, linear top-1 on CIFAR-10 with ResNet-18, not measured here).
"""
from ssl_jax import presets as P

PRESETS = P.DSSL_PRESETS


def get_config(preset: str = "cifar10"):
    return P.dssl_config(__file__, "simsiam", preset)
