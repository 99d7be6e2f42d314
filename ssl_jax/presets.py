"""Building blocks of the configs in configs/: one base config, dataset presets, view recipes.

Every config file starts from `base_config(method)` and changes only what its paper
changes, so a field has one meaning and one default everywhere.
"""
import os

import ml_collections

# ImageNet channel statistics, used for every dataset as the reference implementations do.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DATASET_PRESETS = ("imagenet", "cifar10", "demo")


def head(hidden_dim: int, output_dim: int, num_layers: int = 2, hidden_bn: bool = True,
         output_bn: str = "none", output_bias: bool = True) -> ml_collections.ConfigDict:
    """A projector / predictor config (see ssl_jax.models.MLPHead)."""
    return ml_collections.ConfigDict(dict(hidden_dim=hidden_dim, output_dim=output_dim,
                                          num_layers=num_layers, hidden_bn=hidden_bn,
                                          output_bn=output_bn, output_bias=output_bias))


def momentum(base: float, schedule: str = "cosine") -> ml_collections.ConfigDict:
    """A momentum-target config: EMA rate `base`, 'cosine' (-> 1) or 'constant'."""
    return ml_collections.ConfigDict(dict(base=base, schedule=schedule))


def byol_views(crop_min: float = 0.08) -> list:
    """The two asymmetric views of BYOL (Grill et al., 2020, Table 6); also Barlow Twins',
    VICReg's and MoCo v3's."""
    common = dict(crop_scale=(crop_min, 1.0), crop_ratio=(3 / 4, 4 / 3), flip_prob=0.5,
                  color_jitter_prob=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1,
                  grayscale_prob=0.2, blur_sigma=(0.1, 2.0), solarize_threshold=0.5)
    return [dict(common, blur_prob=1.0, solarize_prob=0.0),
            dict(common, blur_prob=0.1, solarize_prob=0.2)]


def multi_crop_views(global_view: dict, local_view: dict, num_global: int, num_local: int,
                     global_size: int, local_size: int, global_scale: tuple, local_scale: tuple) -> list:
    """Multi-crop (SwAV, DINO): `num_global` crops of `global_size` px then `num_local` of
    `local_size` px, each from its own random-resized crop; global_view / local_view give the
    other augmentations (global_view may be a list, one dict per global crop)."""
    globals_ = global_view if isinstance(global_view, list) else [global_view] * num_global
    return ([dict(g, size=global_size, crop_scale=tuple(global_scale)) for g in globals_[:num_global]] +
            [dict(local_view, size=local_size, crop_scale=tuple(local_scale)) for _ in range(num_local)])


def simclr_views(strength: float = 1.0, blur_prob: float = 0.5, crop_min: float = 0.08) -> list:
    """SimCLR's symmetric views (Chen et al., 2020, App. A): colour jitter of strength s
    (brightness, contrast, saturation 0.8·s, hue 0.2·s) with p=0.8, grayscale p=0.2, blur
    p=0.5. MoCo v2 / SimSiam use strength 0.5 with hue 0.1 (`moco_v2_views`)."""
    view = dict(crop_scale=(crop_min, 1.0), crop_ratio=(3 / 4, 4 / 3), flip_prob=0.5,
                color_jitter_prob=0.8, brightness=0.8 * strength, contrast=0.8 * strength,
                saturation=0.8 * strength, hue=0.2 * strength, grayscale_prob=0.2,
                blur_prob=blur_prob, blur_sigma=(0.1, 2.0), solarize_prob=0.0,
                solarize_threshold=0.5)
    return [dict(view), dict(view)]


def moco_v2_views(crop_min: float = 0.2) -> list:
    """MoCo v2's symmetric views (also SimSiam's): jitter (0.4, 0.4, 0.4, 0.1) p=0.8,
    grayscale p=0.2, blur p=0.5, crop scale (0.2, 1)."""
    views = simclr_views(strength=0.5, blur_prob=0.5, crop_min=crop_min)
    for v in views:
        v["hue"] = 0.1
    return views


def base_config(method: str) -> ml_collections.ConfigDict:
    """The ImageNet / ResNet-50 skeleton shared by every method; `method` names the method
    and its config section (added by the method's config file)."""
    c = ml_collections.ConfigDict()
    c.method = method
    c.seed = 0
    c.global_batch_size = 4096
    c.num_epochs = 1000
    c.num_steps = -1  # > 0 overrides num_epochs
    c.log_every_steps = 100
    # '' = the method's random initialisation; else a weights file (ssl_jax.train.init_weights)
    # whose modules replace the initialised ones at step 0 (FUSSL's later phases set it).
    c.init_weights = ""

    # classes: the class ids (or names) a run keeps, () = every class; a subset's labels are
    # 0..K-1 in the order given, its example count and dataset indices its own (filtered, then
    # sliced over processes: ssl_jax.data.sources). eval_classes: the classes of the evaluation
    # after (and during) pretraining and the default of `python -m ssl_jax.evaluate` on the run,
    # () = data.classes; a held-out set gives a cross-class evaluation (FUSSL's Table 4).
    c.data = ml_collections.ConfigDict(dict(
        dataset="imagenet2012", data_dir=ml_collections.FieldReference(None, field_type=str),
        train_split="train", eval_train_split="train", test_split="validation",
        image_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, shuffle_buffer=50_000,
        views=byol_views(), classes=(), eval_classes=()))
    # ImageNet-scale presets run on TPU/GPU: bfloat16 compute with float32 params, optimizer
    # state and loss math (every loss upcasts). remat: recompute each block's activations in
    # the backward pass (less memory, ~1/3 more compute). conv_backend 'auto': a ResNet's
    # convolutions by oneDNN on a single CPU device, by XLA elsewhere (models.conv).
    # ResNet keys (width, cifar_stem, zero_init_residual, conv_backend) and ViT keys
    # (patch_size, pos_embedding, drop_path_rate): one model section whatever the backbone,
    # so a field has one default; each backbone reads its own. sobel: the fixed grayscale +
    # Sobel input layer (DeepCluster's; every CNN: ResNet, AlexNet, VGG-16). dropout: the rate
    # before AlexNet's fc6 and fc7 and VGG-16's fc7 (names 'alexnet', 'vgg16': DeepCluster, SeLa,
    # DeeperCluster; 0.5; drawn from the online encoder's 'drop_path' rng, as ViT's stochastic depth).
    c.model = ml_collections.ConfigDict(dict(name="resnet50", width=1.0, cifar_stem=False, dtype="bfloat16",
                                             remat=False, conv_backend="auto", zero_init_residual=True,
                                             patch_size=16, pos_embedding="sincos", drop_path_rate=0.0,
                                             sobel=False, dropout=0.5))
    c.optimizer = ml_collections.ConfigDict(dict(
        name="lars", base_lr=0.2, lr_scaling="linear", weight_decay=1.5e-6, momentum=0.9,
        trust_coefficient=1e-3, nesterov=False, b1=0.9, b2=0.999, warmup_epochs=10.0,
        decay="cosine", end_lr_factor=0.0, decay_epochs=(), decay_factor=0.1,
        constant_lr_modules=(), bias_and_bn_lr_factor=1.0, frozen_params=(), freeze_epochs={},
        weight_decay_end=ml_collections.FieldReference(None, field_type=float), clip_grad_per_param=0.0,
        exclude_bias_and_bn_from_wd=True, no_momentum_params=()))
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=3, async_save=True))
    # Heavy augmentations and directional SSL (DSSL, Bai et al. 2022); mode 'none' leaves the
    # method as its paper has it. See ssl_jax.methods.dssl.
    c.dssl = ml_collections.ConfigDict(dict(mode="none", heavy_policy="ra(2,5)+jigsaw(4)", alpha=1.0,
                                            beta=0.0, gamma=1.0, delta=0.0, term_scale=0.25))
    # SSL++'s semantic head V2 on a proxy task (ssl_jax.methods.sslpp); labels '' = off, a stage-B
    # file, or 'coupled' (re-clustered every recluster_epochs by DeepCluster's k-means on the
    # backbone's features, PCA-whitened to pca_dim, 0 = their dimension). weight (λ) has no
    # default: configs/sslpp.py sets the paper's per-task value.
    c.sslpp = ml_collections.ConfigDict(dict(
        labels="", num_classes=70, weight=ml_collections.FieldReference(None, field_type=float),
        proxy_weight=1.0, head_hidden_dim=0, view="features", recluster_epochs=1, pca_dim=0, kmeans_iters=20))
    # An ensemble of `size` identically initialised copies of the method trained as one program
    # (FUSSL's phase 1; ssl_jax.methods.ensemble); 1 = the method alone. eval_block: the block
    # that evaluation and export read; execution: how the program runs the blocks ('auto':
    # unrolled on CPUs, a loop on accelerators; ensemble.resolve_execution).
    c.ensemble = ml_collections.ConfigDict(dict(size=1, eval_block=0, execution="auto"))
    # Devices used (-1: all) as a (data, fsdp) mesh; data=-1 takes what fsdp leaves. fsdp > 1
    # shards params and optimizer state over that axis (ssl_jax.parallel); the batch is split
    # over both axes either way.
    c.mesh = ml_collections.ConfigDict(dict(num_devices=-1, data=-1, fsdp=1))
    c.eval = ml_collections.ConfigDict(dict(
        batch_size=1024, knn_k=200, knn_temperature=0.1, linear_probe=False, compare_random_init=False,
        every_steps=0))  # > 0: also kNN top-1 into metrics.jsonl every that many steps (a multiple of log_every_steps)
    return c


def crop_flip_views(num_views: int = 1, crop_min: float = 0.08) -> list:
    """Random-resized crop and horizontal flip only (DeepCluster's training augmentation)."""
    view = dict(crop_scale=(crop_min, 1.0), crop_ratio=(3 / 4, 4 / 3), flip_prob=0.5, color_jitter_prob=0.0,
                brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, grayscale_prob=0.0, blur_prob=0.0,
                blur_sigma=(0.1, 2.0), solarize_prob=0.0, solarize_threshold=0.5)
    return [dict(view) for _ in range(num_views)]


def swav_recipe(c: ml_collections.ConfigDict, scale: str) -> None:
    """The multi-crop recipe SwAV and DeepCluster-v2 share (Caron et al., 2020) at `scale`
    ('imagenet', 'cifar10', 'demo'): 800 epochs; 2 x 224 + 6 x 96 px crops with SimCLR's colour
    distortion; LARS 0.3 x B/256 (trust on every parameter), wd 1e-6, 10 warm-up epochs, cosine
    to 1/1000; then the dataset preset (`use_dataset`). cifar10: 2 crops of 32 px, no blur,
    LARS 0.6 with trust 0.02; demo: 2 x 16 + 2 x 8 px crops without colour, LARS 1.0, trust
    0.02, wd 1e-5. The method's section (prototypes, crops counted in num_views) is its own."""
    c.num_epochs = 800
    view = simclr_views(strength=1.0, blur_prob=0.5)[0]
    c.data.views = multi_crop_views(view, view, 2, 6, 224, 96, (0.14, 1.0), (0.05, 0.14))
    c.optimizer.update(dict(name="lars", base_lr=0.3, weight_decay=1e-6, warmup_epochs=10.0,
                            end_lr_factor=0.001, exclude_bias_and_bn_from_wd=False))
    use_dataset(c, scale)
    if scale == "cifar10":
        view = dict(view, blur_prob=0.0)
        c.data.views = multi_crop_views(view, view, 2, 0, 32, 16, (0.14, 1.0), (0.05, 0.14))
        c.optimizer.update(dict(base_lr=0.6, trust_coefficient=0.02))
    elif scale == "demo":
        view = dict(view, blur_prob=0.0, flip_prob=0.0, color_jitter_prob=0.0, grayscale_prob=0.0)
        c.data.views = multi_crop_views(view, view, 2, 2, 16, 8, (0.4, 1.0), (0.1, 0.4))
        c.optimizer.update(dict(base_lr=1.0, trust_coefficient=0.02, weight_decay=1e-5))


def use_dataset(c: ml_collections.ConfigDict, preset: str) -> None:
    """Switch the data, backbone, logging and evaluation of `c` to a dataset preset:
    'imagenet' (as base_config), 'cifar10' (ResNet-18 with the CIFAR stem, 32 px, batch 256,
    no blur: a 23-px-class blur wipes out a 32-px image) or 'demo' (scikit-learn digits at
    16 px, ResNet-18 at width 1/8, batch 128, 32 epochs; runs offline in ~3 min on 2 cores)."""
    if preset == "imagenet":
        return
    if preset == "cifar10":
        c.global_batch_size = 256
        c.data.update(dict(dataset="cifar10", test_split="test", image_size=32, shuffle_buffer=50_000))
        for v in c.data.views:
            v["blur_prob"] = 0.0
        c.model.update(dict(name="resnet18", cifar_stem=True, dtype="float32"))
        c.checkpoint.every_steps = 1950  # every 10 epochs
        c.log_every_steps = 50
        c.eval.update(dict(batch_size=1000, linear_probe=True, every_steps=1950))
    elif preset == "demo":
        c.global_batch_size = 128
        c.num_epochs = 32
        c.log_every_steps = 20
        c.data.update(dict(dataset="digits", test_split="test", image_size=16, shuffle_buffer=2_000))
        for v in c.data.views:
            # 8x8 digits: a crop below 40% of the area or a mirror image changes the digit.
            v.update(dict(crop_scale=(0.4, 1.0), flip_prob=0.0, blur_prob=0.0))
        c.model.update(dict(name="resnet18", width=0.125, cifar_stem=True, dtype="float32"))
        c.optimizer.update(dict(warmup_epochs=2.0))
        c.checkpoint.every_steps = 100
        # k=20 (DINO's other standard value): with ~144 training images per class, k=200
        # neighbours would always reach into other classes.
        c.eval.update(dict(batch_size=360, knn_k=20, linear_probe=True, compare_random_init=True,
                           every_steps=100))
    else:
        raise ValueError(f"Unknown dataset preset {preset!r}; valid: {DATASET_PRESETS}.")


def start(config_file: str, preset: str, presets) -> tuple:
    """(preset, base config) for configs/<config_file>: an empty preset means the file's
    default (presets[0]); an unknown one is an error listing the valid ones. The method is
    the file's name (configs/byol.py -> 'byol')."""
    preset = _check_preset(f"configs/{config_file}", preset, presets)
    return preset, base_config(os.path.splitext(config_file)[0])


def _check_preset(path: str, preset: str, presets) -> str:
    """`preset`, or the default presets[0] if empty; an unknown one is an error naming the valid ones."""
    preset = preset or presets[0]
    if preset not in presets:
        raise ValueError(f"Unknown preset {preset!r} for {path}; use one of: {', '.join(presets)}.")
    return preset


# ------------------------------------------------------------------------------ evaluation

EVAL_PROTOCOLS = ("knn", "linear", "linear_cached", "finetune", "clustering", "layer_probe", "monitor")


def eval_train_view(crop_min: float = 0.08, flip_prob: float = 0.5) -> dict:
    """The augmentation of supervised evaluation training (linear, fine-tuning): random
    resized crop + horizontal flip only, as in the SimCLR / BYOL / MoCo protocols."""
    return dict(crop_scale=(crop_min, 1.0), crop_ratio=(3 / 4, 4 / 3), flip_prob=flip_prob,
                color_jitter_prob=0.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0,
                grayscale_prob=0.0, blur_prob=0.0, blur_sigma=(0.1, 2.0), solarize_prob=0.0,
                solarize_threshold=0.5)


def eval_base_config(protocol: str) -> ml_collections.ConfigDict:
    """The skeleton of configs/eval/<protocol>.py. Data fields left empty ('', -1, ()) are taken
    from the pretraining run (its config.json, or the export's data fields): set
    data.dataset for a transfer evaluation on another dataset."""
    if protocol not in EVAL_PROTOCOLS:
        raise ValueError(f"Unknown evaluation protocol {protocol!r}; valid: {EVAL_PROTOCOLS}.")
    c = ml_collections.ConfigDict()
    c.protocol = protocol
    c.source = ""  # a training workdir or an exported .msgpack; '' = --workdir
    c.network = "default"  # 'default' (the method paper's choice) | 'online' | 'target' | 'random_init'
    c.step = -1  # checkpoint step; -1 = latest
    c.seed = 0
    c.batch_size = 1024  # global batch of feature extraction
    c.mesh = ml_collections.ConfigDict(dict(num_devices=-1, data=-1, fsdp=1))
    # classes: the class subset evaluated (() = the run's data.eval_classes or data.classes on
    # its own dataset, every class on another: ssl_jax.evaluate.run.resolve_data).
    c.data = ml_collections.ConfigDict(dict(
        dataset="", data_dir=ml_collections.FieldReference(None, field_type=str), train_split="",
        test_split="", image_size=-1, mean=(), std=(), views=[], shuffle_buffer=10_000, classes=()))
    if protocol == "knn":
        c.knn = ml_collections.ConfigDict(dict(ks=(10, 20, 100, 200), temperatures=(0.07, 0.1),
                                               chunk_size=256))
    elif protocol == "linear_cached":
        c.linear_cached = ml_collections.ConfigDict(dict(
            l2_grid=(1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1), holdout_fraction=0.2, max_steps=1000))
    elif protocol in ("linear", "finetune"):
        c.data.views = [eval_train_view()]
        opt = base_config("eval").optimizer
        opt.update(dict(name="sgd", nesterov=True, momentum=0.9, weight_decay=0.0, warmup_epochs=0.0))
        c.train = ml_collections.ConfigDict(dict(epochs=90.0, batch_size=1024, finetune=protocol == "finetune",
                                                 label_fraction=1.0, head_batchnorm=False, optimizer=opt,
                                                 checkpoint_every_steps=0))  # 0: every epoch
    elif protocol == "clustering":
        # assign: 'auto' (a clusterer's own head where the run has one: IIC; else k-means),
        # 'kmeans' (k-means on the encoder's features) or 'heads' (the IIC heads).
        c.clustering = ml_collections.ConfigDict(dict(num_clusters=-1, split="test", num_restarts=3,
                                                      num_iters=300, l2_normalize=True, assign="auto"))
    elif protocol == "layer_probe":
        # SSL++'s per-block protocol (configs/eval/layer_probe.py:nin): plurality-vote kNN for
        # every K in plurality_ks (() = none) with knn_metric ('cosine' | 'euclidean'), and the
        # probes of probe_heads ('nin_block', 'fc1', 'fc2', 'fc3': ssl_jax.evaluate.nin_probe) on
        # every block in probe_blocks (() = none; NIN encoders), trained with probe_train (SSL++
        # Table II's CIFAR-10 evaluation recipe), on all labels (0) or n per class for every n in
        # probe_labels_per_class (SSL++ Table VIII: 20, 100, 400, 1000).
        probe_opt = base_config("eval").optimizer
        probe_opt.update(dict(name="sgd", base_lr=0.1, lr_scaling="none", momentum=0.9, nesterov=True,
                              weight_decay=5e-4, exclude_bias_and_bn_from_wd=False, warmup_epochs=0.0,
                              decay="steps", decay_epochs=(100, 150), decay_factor=0.1))
        probe_train = ml_collections.ConfigDict(dict(epochs=200.0, batch_size=128, optimizer=probe_opt,
                                                     checkpoint_every_steps=0))
        c.layer_probe = ml_collections.ConfigDict(dict(k=20, temperature=0.07,
                                                       l2_grid=(1e-4, 1e-3, 1e-2, 1e-1),
                                                       plurality_ks=(), knn_metric="cosine",
                                                       probe_blocks=(), probe_heads=("nin_block",),
                                                       probe_labels_per_class=(0,),
                                                       probe_train=probe_train))
    elif protocol == "monitor":
        c.monitor = ml_collections.ConfigDict(dict(num_examples=2048))
    return c


def eval_demo(c: ml_collections.ConfigDict) -> None:
    """Settings every evaluation protocol changes for a `demo` pretraining run (scikit-learn
    digits at 16 px): small batches; crops and no mirror images (a mirrored digit is another digit)."""
    c.batch_size = 360
    if c.data.views:
        c.data.views = [eval_train_view(crop_min=0.4, flip_prob=0.0)]
    if "train" in c:
        # The demo's tiny network has features of std ~0.03 per dimension: a BatchNorm without
        # affine parameters before the classifier (MAE's linear probe) makes the LR scale-free.
        c.train.head_batchnorm = True


def eval_start(config_file: str, preset: str, presets) -> tuple:
    """(preset, base config) of configs/eval/<config_file> (the protocol is the file name)."""
    preset = _check_preset(f"configs/eval/{config_file}", preset, presets)
    return preset, eval_base_config(os.path.splitext(config_file)[0])


# ------------------------------------------------------------------------------------ DSSL

# The heavy policies of the DSSL paper's CIFAR-10 rows: its default (Sec. 4.1) and Table 3's.
DSSL_POLICIES = {"": "ra(2,5)+jigsaw(4)", "_ra4_10": "ra(4,10)", "_ra8_16": "ra(8,16)"}
DSSL_PRESETS = tuple(f"cifar10{mode}{tag}" for tag in DSSL_POLICIES for mode in ("", "_heavy")) + (
    "cifar10_repro", "demo")


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """The config of a `path.py[:preset]` value (what --config takes), loaded the way
    ml_collections' config_flags loads it: by path, get_config(preset) or get_config()."""
    import importlib.util

    path, _, preset = spec.partition(":")
    name = "_ssl_jax_config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(preset) if preset else module.get_config()


def method_config(config_dir: str, method: str, preset: str) -> ml_collections.ConfigDict:
    """get_config(preset) of configs/<method>.py, loaded by path from `config_dir` (config files
    are loaded by path, not imported as a package)."""
    return load_config_file(f"{os.path.join(config_dir, method)}.py:{preset}")


def complete_config(partial, base: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
    """`partial` (a dict or ConfigDict: an older run's config.json, an export's metadata)
    completed once against the base config, so that code can read every field strictly: a
    field `partial` has keeps its value, a field it lacks takes base_config's default. Fields
    the base config does not know (a method's own section) are kept as they are. `base`:
    the config to complete against (default base_config(partial's method))."""
    partial = partial.to_dict() if hasattr(partial, "to_dict") else dict(partial)
    if base is None:
        base = base_config(partial.get("method", ""))
    merged = _merge(base.to_dict(), partial)
    return ml_collections.ConfigDict(merged)


def _merge(defaults: dict, values: dict) -> dict:
    """`defaults` overridden by `values`, recursively through the dicts both have."""
    out = dict(defaults)
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def dssl_config(config_file: str, method: str, preset: str) -> ml_collections.ConfigDict:
    """A preset of configs/dssl_<method>.py (`config_file` is that file's __file__): the method's
    own config with the DSSL paper's CIFAR-10 setting (Bai et al. 2022, Sec. 4.1 and its code):
    ResNet-18 with the CIFAR stem, batch 512, 800 epochs, SGD 0.03 x B/256, momentum 0.9, weight
    decay 5e-4, 10 linear warm-up epochs (the released code; the paper names only the cosine),
    cosine; standard views as SimSiam's CIFAR ones (crop (0.2, 1), flip, jitter (0.4, 0.4, 0.4,
    0.1) p=0.8, grayscale 0.2, no blur). Preset names: cifar10[_heavy|_repro][_ra4_10|_ra8_16]
    (DSSL, "w/ T̂", the equal-compute baseline; heavy policy default ra(2,5)+jigsaw(4)), and
    demo (the method's demo with DSSL)."""
    preset = _check_preset(f"configs/dssl_{method}.py", preset, DSSL_PRESETS)
    here = os.path.dirname(os.path.abspath(config_file))
    if preset == "demo":
        c = method_config(here, method, "demo")
        c.dssl.mode = "dssl"
        return c
    c = method_config(here, method, "cifar10")
    c.global_batch_size = 512
    c.num_epochs = 800
    c.data.views = moco_v2_views(crop_min=0.2)
    for v in c.data.views:
        v["blur_prob"] = 0.0
    c.optimizer.update(dict(name="sgd", base_lr=0.03, momentum=0.9, nesterov=False, weight_decay=5e-4,
                            warmup_epochs=10.0, decay="cosine", exclude_bias_and_bn_from_wd=False))
    c.checkpoint.every_steps = 97 * 50  # every 50 epochs (97 steps per epoch), as the code
    c.eval.every_steps = 97 * 10
    rest = preset[len("cifar10"):]
    c.dssl.mode = "dssl"
    for mode in ("_heavy", "_repro"):
        if rest.startswith(mode):
            c.dssl.mode, rest = mode[1:], rest[len(mode):]
    c.dssl.heavy_policy = DSSL_POLICIES[rest]
    return c
