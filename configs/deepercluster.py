"""DeeperCluster (Caron et al., ICCV 2019) presets.

Command:
    python -m ssl_jax.main --config=configs/deepercluster.py[:PRESET] --workdir=DIR

Presets:
  imagenet (default)  The authors' recipe (their README and main.py defaults) on ImageNet: VGG-16 with
                      BatchNorm behind the Sobel layer, 224 px, 16 super-classes = 4 rotations x 4 super-clusters, 10000 clusters
                      in all (2500 sub-clusters per super-cluster), re-clustering every 3 epochs, PCA to
                      4096 (capped by the feature size), 10 k-means iterations, super-clusters computed
                      once (as their code), SGD LR 0.1 momentum 0.9 (heads without), wd 1e-5, global
                      batch 3072 (48 per GPU x 64 GPUs), 100 epochs. Their headline runs are on 96M
                      YFCC100M images with 320k clusters, which are not available here. Hardware: 64
                      GPUs as the authors'; runtime and an ImageNet result: not measured here.
  cifar10             ResNet-18 with the CIFAR stem at 32 px, batch 256, 200 epochs, 4 rotations x 2
                      super-clusters x 50 sub-clusters, re-clustering every 3 epochs (our choice). One GPU;
                      runtime and result not measured here.
  demo                scikit-learn digits at 16 px, ResNet-18 at width 1/8, 32 epochs, 4 rotations x 2
                      super-clusters x 25 sub-clusters, re-clustering every 4 epochs at LR 0.2 (as
                      DeepCluster's demo). Measured (2026-12-06, 2 cores, seed 0, 117 s end to
                      end): kNN 0.722 / linear 0.917 / clustering NMI 0.471 against 0.644 / 0.761 /
                      0.291 at random initialisation.
"""
from ssl_jax import presets as P

PRESETS = ("imagenet", "cifar10", "demo")


def get_config(preset: str = "imagenet"):
    preset, c = P.start("deepercluster.py", preset, PRESETS)
    c.deepercluster = dict(num_super_clusters=4, num_sub_clusters=2500, rotations=4, fixed_super_clusters=True,
                           pca_dim=4096, kmeans_iters=10, cluster_features="pooled", reassign_epochs=3,
                           sample_uniformly=True, num_views=1, per_view_bn=False, momentum=None,
                           predictor=None, projector=None)
    P.use_dataset(c, preset)
    if preset == "imagenet":  # the authors' VGG-16-BN behind the Sobel layer, clustering fc7 before its ReLU
        c.model.update(dict(name="vgg16", sobel=True, dropout=0.5))
        c.deepercluster.update(dict(cluster_features="fc7_pre_relu"))
        c.global_batch_size = 3072
    else:
        c.global_batch_size = 256
    c.data.views = P.crop_flip_views(1)
    c.num_epochs = 100
    c.optimizer.update(dict(name="sgd", base_lr=0.1, lr_scaling="none", momentum=0.9, weight_decay=1e-5,
                            warmup_epochs=0.0, decay="steps", decay_epochs=(),
                            no_momentum_params=("super_head", "sub_heads")))
    if preset == "cifar10":
        c.num_epochs = 200
        c.deepercluster.update(dict(num_super_clusters=2, num_sub_clusters=50, pca_dim=128))
    elif preset == "demo":
        c.global_batch_size = 128
        c.num_epochs = 32
        c.data.views = P.crop_flip_views(1, crop_min=0.4)
        c.data.views[0]["flip_prob"] = 0.0  # a mirrored digit is another symbol
        c.deepercluster.update(dict(num_super_clusters=2, num_sub_clusters=25, pca_dim=32, reassign_epochs=4))
        c.optimizer.base_lr = 0.2
    return c
