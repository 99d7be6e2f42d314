"""Per-layer probes: kNN and linear accuracy of every stage / block of an encoder; with a NIN
encoder, SSL++'s per-block protocol (plurality-vote kNN, NIN-block probe).

Command:
    python -m ssl_jax.evaluate --config=configs/eval/layer_probe.py[:PRESET] --workdir=RUN_DIR

For every stage (ResNet: stage1 ... stage4; NIN: block1 ... block4; ViT: class tokens at 1/4,
1/2, 3/4 of the depth) and the final pooled features, the output is globally average-pooled; a
weighted kNN (k, T) and the cached-feature linear probe (the l2 grid chosen on held-out train
data) are scored on the test split. A representation specialised to the pretext task shows as
accuracy peaking before the last stage (the SSL++ seed paper's "last-layer collapse" of proxy
tasks). Records: protocol 'layer_probe', setting 'layer=NAME,k=..,T=..', metrics knn_top1 and
linear_top1.

With layer_probe.plurality_ks (SSL++ Tables V, VI) every layer also gets a plurality-vote kNN
per K (setting 'layer=NAME,k=K,vote=plurality', metric knn_top1; layer_probe.knn_metric
'cosine' or 'euclidean': the paper does not name its metric); with layer_probe.probe_blocks
(NIN only) a probe is trained per block and per head of layer_probe.probe_heads
(ssl_jax.evaluate.nin_probe: 'nin_block', RotNet's 'fc1', 'fc2', 'fc3'; setting
'layer=blockK,probe=HEAD', metrics HEAD_top1 / top5), on the eval config's view or else the
pretraining run's, with every training label or, for each n > 0 of
layer_probe.probe_labels_per_class, n per class (setting suffix ',labels=n/class'). SSL++
Table IV: --config.layer_probe.probe_blocks='(4,)'
--config.layer_probe.probe_heads='("fc1","fc2","fc3","nin_block")'; Table VIII:
--config.layer_probe.probe_labels_per_class='(20,100,400,1000)'.

Presets:
  sslpp (default)  k=20, T=0.07; l2 grid 1e-4 ... 1e-1. Hardware: one GPU for a CIFAR-10 or
                   ImageNet run (one feature pass per split, a linear probe per layer); expected:
                   for proxy tasks accuracy peaking before the last stage (SSL++ Tables III, V);
                   not measured here.
  demo             a `demo` run (digits): seconds to a minute on 2 CPU cores (the demo run's
                   layer probes are part of tests/test_evaluate.py).
  nin              SSL++'s CIFAR-10 NIN protocol: plurality kNN, K in {1, 3, 5, 10, 15, 20},
                   on blocks 1-4, and NIN-block probes on B2, B3, B4 (SGD 0.1, batch 128,
                   200 epochs, x 0.1 at 100 and 150, weight decay 5e-4). Hardware: a GPU (three
                   200-epoch CIFAR-10 trainings).
  nin_demo         the same on a NIN `demo` run (configs/rotnet.py:demo): probes of 8 epochs,
                   x 0.1 at 6. Measured (2026-12-06, 2 shared CPU cores, ~4 min, ~6.5 min for the
                   random init; RotNet demo run, seed 0): plurality kNN K=10 on B1/B2/B3/B4
                   83.3 / 91.7 / 85.0 / 65.8 % (random init 68.3 / 68.1 / 76.4 / 73.3 %);
                   NIN-block probe on B2/B3/B4 89.4 / 80.0 / 62.2 % (random init 61.9 / 55.0 /
                   35.3 %): B4 falls below B3 and below random init in kNN, as SSL++ Table V.
"""
from ssl_jax import presets as P

PRESETS = ("sslpp", "demo", "nin", "nin_demo")


def get_config(preset: str = "sslpp"):
    preset, c = P.eval_start("layer_probe.py", preset, PRESETS)
    if preset in ("nin", "nin_demo"):
        c.layer_probe.update(dict(plurality_ks=(1, 3, 5, 10, 15, 20), probe_blocks=(2, 3, 4)))
    if preset in ("demo", "nin_demo"):
        P.eval_demo(c)
    if preset == "nin_demo":
        c.layer_probe.probe_train.update(dict(epochs=8.0, batch_size=128))
        c.layer_probe.probe_train.optimizer.decay_epochs = (6,)
    return c
