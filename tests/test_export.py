"""ssl_jax.export: flat arrays, torchvision naming and layout, safetensors files, the CLI.

The torchvision export is checked numerically without PyTorch: `torch_resnet_forward` below
is a NumPy re-implementation of torchvision's ResNet forward pass (NCHW, OIHW kernels,
symmetric padding, inference-mode BatchNorm with running statistics) that reads only the
torchvision-named state dict.
"""
import functools
import json
import os
import subprocess
import sys

import flax.serialization
import jax
import numpy as np
import pytest
import safetensors
import safetensors.numpy

from ssl_jax import export as export_lib
from ssl_jax import presets
from ssl_jax import pretrained as pretrained_lib
from ssl_jax.models import build_encoder
from tests.conftest import REPO_ROOT

TORCH_BN_EPS = 1e-5
LAYERS = {10: [1, 1, 1, 1], 18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3],
          200: [3, 24, 36, 3]}
DATA = {"image_size": 32, "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)}


# ----------------------------------------------------------------------------- NumPy torchvision

def _conv(x, w, stride, pad):
    """PyTorch Conv2d (bias=False): x [N, C, H, W], w [O, C, kh, kw], zero padding (pad, pad)."""
    n, c, h, wd = x.shape
    o, ci, kh, kw = w.shape
    assert ci == c, (w.shape, x.shape)
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, o, ho, wo), np.float64)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out


def _bn(x, sd, prefix):
    """BatchNorm2d in eval mode (running statistics)."""
    shape = (1, -1, 1, 1)
    mean, var = sd[f"{prefix}.running_mean"].reshape(shape), sd[f"{prefix}.running_var"].reshape(shape)
    return ((x - mean) / np.sqrt(var + TORCH_BN_EPS) * sd[f"{prefix}.weight"].reshape(shape)
            + sd[f"{prefix}.bias"].reshape(shape))


def _max_pool_3x3_s2_p1(x):
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    ho, wo = (x.shape[2] + 2 - 3) // 2 + 1, (x.shape[3] + 2 - 3) // 2 + 1
    out = np.full(x.shape[:2] + (ho, wo), -np.inf)
    for i in range(3):
        for j in range(3):
            out = np.maximum(out, xp[:, :, i:i + 2 * (ho - 1) + 1:2, j:j + 2 * (wo - 1) + 1:2])
    return out


def _relu(x):
    return np.maximum(x, 0.0)


def torch_resnet_forward(sd, x_nchw):
    """torchvision.models.ResNet.forward up to the average pool (fc = Identity), from the
    state dict alone: the stem from conv1.weight's kernel size (7: 7x7/2 + max-pool; 3: the
    CIFAR stem 3x3/1 without max-pool), blocks and downsamples from the keys present."""
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    k = sd["conv1.weight"].shape[-1]
    if k == 7:
        x = _relu(_bn(_conv(x_nchw, sd["conv1.weight"], 2, 3), sd, "bn1"))
        x = _max_pool_3x3_s2_p1(x)
    else:
        assert k == 3
        x = _relu(_bn(_conv(x_nchw, sd["conv1.weight"], 1, 1), sd, "bn1"))
    bottleneck = "layer1.0.conv3.weight" in sd
    for layer in range(1, 5):
        b = 0
        while f"layer{layer}.{b}.conv1.weight" in sd:
            p = f"layer{layer}.{b}"
            stride = 2 if (layer > 1 and b == 0) else 1
            if bottleneck:
                y = _relu(_bn(_conv(x, sd[f"{p}.conv1.weight"], 1, 0), sd, f"{p}.bn1"))
                y = _relu(_bn(_conv(y, sd[f"{p}.conv2.weight"], stride, 1), sd, f"{p}.bn2"))
                y = _bn(_conv(y, sd[f"{p}.conv3.weight"], 1, 0), sd, f"{p}.bn3")
            else:
                y = _relu(_bn(_conv(x, sd[f"{p}.conv1.weight"], stride, 1), sd, f"{p}.bn1"))
                y = _bn(_conv(y, sd[f"{p}.conv2.weight"], 1, 1), sd, f"{p}.bn2")
            if f"{p}.downsample.0.weight" in sd:
                x = _bn(_conv(x, sd[f"{p}.downsample.0.weight"], stride, 0), sd, f"{p}.downsample.1")
            x = _relu(y + x)
            b += 1
    return x.mean(axis=(2, 3))


def torchvision_shapes(depth, width=1.0, cifar_stem=False):
    """{key: shape} of torchvision's resnet{depth}().state_dict() without fc (channel counts
    scaled by `width` as ssl_jax scales them)."""
    ch = lambda c: max(1, int(round(c * width)))  # noqa: E731
    bottleneck = depth >= 50
    expansion = 4 if bottleneck else 1
    shapes = {}

    def bn(prefix, c):
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    stem = ch(64)
    shapes["conv1.weight"] = (stem, 3, 3, 3) if cifar_stem else (stem, 3, 7, 7)
    bn("bn1", stem)
    inplanes = stem
    for layer, blocks in enumerate(LAYERS[depth], start=1):
        planes = ch(64 * 2 ** (layer - 1))
        for b in range(blocks):
            p = f"layer{layer}.{b}"
            if bottleneck:
                convs = [(planes, inplanes, 1), (planes, planes, 3), (planes * expansion, planes, 1)]
            else:
                convs = [(planes, inplanes, 3), (planes, planes, 3)]
            for i, (o, c, kk) in enumerate(convs, start=1):
                shapes[f"{p}.conv{i}.weight"] = (o, c, kk, kk)
                bn(f"{p}.bn{i}", o)
            if b == 0 and (layer > 1 or bottleneck):
                shapes[f"{p}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    return shapes


# ----------------------------------------------------------------------------- helpers

def _randomize(tree, rng):
    """Every leaf random and non-trivial: kernels He-scaled, BN scales in [0.5, 1.5] (the
    default init zeroes each block's last one), biases/means nonzero, variances positive."""
    def leaf(path, x):
        name = path[-1].key
        shape = np.shape(x)
        if name == "kernel":
            return (rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[:-1]))).astype(np.float32)
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
        return rng.normal(0.0, 0.2, size=shape).astype(np.float32)  # bias, mean
    return jax.tree_util.tree_map_with_path(leaf, tree)


def _model_cfg(**fields):
    """A complete config.model (base_config's) with float32 compute and XLA's convolutions,
    updated with `fields`."""
    cfg = presets.base_config("byol").model
    cfg.update({"dtype": "float32", "conv_backend": "xla", **fields})
    return cfg


def _random_resnet(name, width, cifar_stem, seed=0):
    cfg = _model_cfg(name=name, width=width, cifar_stem=cifar_stem)
    encoder = build_encoder(cfg)
    variables = jax.eval_shape(functools.partial(encoder.init, train=False), jax.random.PRNGKey(0),
                               np.zeros((1, 32, 32, 3), np.float32))
    variables = _randomize(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variables),
                           np.random.default_rng(seed))
    run = {"method": "byol", "dataset": "test", "backbone": f"{name}_w{width:g}", "step": 7}
    return pretrained_lib.Pretrained(encoder=encoder, variables=variables, heads={},
                                     model_config=cfg, run=run, network="online", data=dict(DATA))


def _features(pre, x_nhwc):
    return np.asarray(pre.encoder.apply(pre.variables, x_nhwc, train=False), np.float64)


def _check_torch_matches_flax(pre, size, seed=0):
    sd = export_lib.to_torchvision(pre)
    x = np.random.default_rng(seed).normal(size=(2, size, size, 3)).astype(np.float32)
    expected = _features(pre, x)
    got = torch_resnet_forward(sd, np.transpose(x, (0, 3, 1, 2)).astype(np.float64))
    assert got.shape == expected.shape
    assert np.abs(expected).max() > 1e-2  # a non-degenerate output
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


# ----------------------------------------------------------------------------- torchvision

@pytest.mark.parametrize("size", [16, 19])
def test_torchvision_resnet18_cifar_stem_same_function(size):
    pre = _random_resnet("resnet18", 0.25, cifar_stem=True, seed=size)
    _check_torch_matches_flax(pre, size, seed=size)


@pytest.mark.parametrize("size", [33, 64])
def test_torchvision_resnet50_imagenet_stem_same_function(size):
    # Odd and even sizes: torch's symmetric padding of the strided 3x3 convs, the 7x7/2 stem
    # and the 3x3/2 max-pool against ssl_jax's explicit padding.
    pre = _random_resnet("resnet50", 0.25, cifar_stem=False, seed=size)
    _check_torch_matches_flax(pre, size, seed=size)


def test_torchvision_fc_layer():
    pre = _random_resnet("resnet18", 0.125, cifar_stem=True)
    rng = np.random.default_rng(1)
    d = pre.encoder.feature_dim
    w, b = rng.normal(size=(d, 5)).astype(np.float32), rng.normal(size=5).astype(np.float32)
    sd = export_lib.to_torchvision(pre, fc=(w, b))
    assert sd["fc.weight"].shape == (5, d) and sd["fc.bias"].shape == (5,)
    np.testing.assert_array_equal(sd["fc.weight"], w.T)
    assert export_lib.to_torchvision(pre, fc={"kernel": w, "bias": b}).keys() == sd.keys()
    with pytest.raises(ValueError, match="pooled feature size"):
        export_lib.to_torchvision(pre, fc=(w[1:], b))


@pytest.mark.parametrize("name,cifar_stem", [("resnet18", True), ("resnet50", False)])
def test_torchvision_keys_small(name, cifar_stem):
    pre = _random_resnet(name, 0.25, cifar_stem)
    sd = export_lib.to_torchvision(pre)
    expected = torchvision_shapes(int(name[6:]), 0.25, cifar_stem)
    assert set(sd) == set(expected)
    assert {k: v.shape for k, v in sd.items()} == expected
    assert all(v.dtype == np.float32 for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    assert all(sd[k].dtype == np.int64 and sd[k].shape == () for k in sd if k.endswith("num_batches_tracked"))


def test_torchvision_keys_and_shapes_full_resnet50():
    cfg = _model_cfg(name="resnet50")
    encoder = build_encoder(cfg)
    abstract = jax.eval_shape(functools.partial(encoder.init, train=False), jax.random.PRNGKey(0),
                              np.zeros((1, 224, 224, 3), np.float32))
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)  # lazily zero pages
    pre = pretrained_lib.Pretrained(encoder=encoder, variables=variables, heads={},
                                    model_config=cfg,
                                    run={}, network="online")
    shapes = {k: v.shape for k, v in export_lib.to_torchvision(pre).items()}
    assert shapes == torchvision_shapes(50)
    # torchvision resnet50: 53 convs + 53 BNs (2 params, 3 buffers) + fc (2) = 320 entries.
    assert len(shapes) == 320 - 2
    assert shapes["conv1.weight"] == (64, 3, 7, 7)
    assert shapes["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert shapes["layer4.2.bn3.running_var"] == (2048,)
    assert shapes["layer3.0.conv2.weight"] == (256, 256, 3, 3)
    assert "fc.weight" not in shapes


def test_torchvision_keys_resnet18_count():
    # torchvision resnet18: 20 convs + 20 BNs (2 params, 3 buffers) + fc (2) = 122 entries.
    assert len(torchvision_shapes(18)) == 122 - 2


# ----------------------------------------------------------------------------- the README's torch builder

README_BUILDER_MARK = "<!-- torchvision-builder: tests/test_export.py runs this block -->"
ARCH_KEYS = ("depth", "width", "block", "layers", "stem_width", "cifar_stem", "planes", "stage_widths",
             "num_classes")


def _readme_torch_block() -> str:
    """The ```python block after README_BUILDER_MARK in the README's "Export for fine-tuning"."""
    readme = open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8").read()
    section = readme.split("\n## Export for fine-tuning\n", 1)[1].split("\n## ", 1)[0]
    assert section.count(README_BUILDER_MARK) == 1, "the builder's marker left the Export section"
    return section.split(README_BUILDER_MARK + "\n```python\n", 1)[1].split("\n```\n", 1)[0]


def _run_readme_block(metadata, arrays):
    """Exec the README's block (build_resnet_from(meta), then the strict load of
    "r18.safetensors") against tests/torch_stub.py, the file served from memory; its `model`."""
    from tests import torch_stub

    stub = torch_stub.modules({"r18.safetensors": (metadata, arrays)})
    saved = {name: sys.modules.get(name) for name in stub}
    sys.modules.update(stub)
    try:
        scope = {"__name__": "__main__"}
        exec(compile(_readme_torch_block(), "README.md: Export for fine-tuning", "exec"), scope)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return scope["model"]


def _reference_metadata(depth, width, cifar_stem, num_classes):
    """The architecture keys the export should write, from the torchvision rules and
    ssl_jax's channel rounding (an independent statement of what torchvision_metadata reads
    off the kernels)."""
    ch = lambda c: max(1, int(round(c * width)))  # noqa: E731
    expansion = 4 if depth >= 50 else 1
    planes = [ch(64 * 2 ** i) for i in range(4)]
    return {"depth": str(depth), "width": f"{width:g}", "block": "bottleneck" if depth >= 50 else "basic",
            "layers": json.dumps(LAYERS[depth]), "stem_width": json.dumps(ch(64)),
            "cifar_stem": json.dumps(cifar_stem), "planes": json.dumps(planes),
            "stage_widths": json.dumps([p * expansion for p in planes]), "num_classes": json.dumps(num_classes)}


def _with_fc(shapes, depth, width, num_classes):
    shapes = dict(shapes)
    if num_classes:
        features = max(1, int(round(512 * width))) * (4 if depth >= 50 else 1)
        shapes.update({"fc.weight": (num_classes, features), "fc.bias": (num_classes,)})
    return shapes


@pytest.mark.parametrize("depth", sorted(LAYERS))
def test_readme_builder_every_depth_and_width(depth):
    # Every depth the library trains at the widths its presets use (1/8 .. 2), both stems, with
    # and without fc: the README's code builds exactly the export's key and shape set
    # (torchvision_shapes, which the export matches: test_torchvision_keys_*) and its strict
    # load accepts it (shape-only arrays: a ResNet-200 at width 2 costs no memory).
    for width in (0.125, 0.25, 0.5, 1.0, 2.0):
        for cifar_stem in (False, True):
            for num_classes in (0, 10):
                expected = _with_fc(torchvision_shapes(depth, width, cifar_stem), depth, width, num_classes)
                arrays = {k: np.broadcast_to(np.zeros((), np.float32), shape) for k, shape in expected.items()}
                model = _run_readme_block(_reference_metadata(depth, width, cifar_stem, num_classes), arrays)
                assert model.state_dict() == expected, (depth, width, cifar_stem, num_classes)


@pytest.mark.parametrize("name,width,cifar_stem", [("resnet18", 0.125, True), ("resnet50", 0.25, False),
                                                   ("resnet34", 0.5, True)])
def test_readme_builder_loads_the_export(name, width, cifar_stem, tmp_path):
    # The export's own file, with and without its classifier, written and read back through
    # safetensors: the README's code builds its exact key/shape set and loads it strictly.
    pre = _random_resnet(name, width, cifar_stem)
    rng = np.random.default_rng(0)
    depth = int(name[6:])
    for num_classes in (0, 7):
        fc = (rng.normal(size=(pre.encoder.feature_dim, 7)), rng.normal(size=7)) if num_classes else None
        sd = export_lib.to_torchvision(pre, fc=fc)
        path = str(tmp_path / f"{name}_{num_classes}.safetensors")
        export_lib.save_safetensors(path, sd, {**export_lib._run_metadata(pre, export_lib.TORCHVISION_FORMAT),
                                               **export_lib.torchvision_metadata(pre, num_classes=num_classes)})
        with safetensors.safe_open(path, "np") as f:
            meta = f.metadata()
        back = safetensors.numpy.load_file(path)
        assert "torch_model" not in meta  # data, never code
        assert {k: meta[k] for k in ARCH_KEYS} == _reference_metadata(depth, width, cifar_stem, num_classes)
        model = _run_readme_block(meta, back)
        assert model.state_dict() == {k: v.shape for k, v in sd.items()}
        assert ("fc.weight" in model.state_dict()) == bool(num_classes)


@pytest.mark.parametrize("name,width,cifar_stem", [("resnet101", 0.5, False), ("resnet200", 2.0, True)])
def test_torchvision_metadata_deep_and_wide(name, width, cifar_stem):
    # The metadata alone (read off the kernels' shapes: abstract arrays suffice) for the depths
    # and the width the file-level test above does not export.
    cfg = _model_cfg(name=name, width=width, cifar_stem=cifar_stem)
    encoder = build_encoder(cfg)
    variables = jax.eval_shape(functools.partial(encoder.init, train=False), jax.random.PRNGKey(0),
                               np.zeros((1, 32, 32, 3), np.float32))
    pre = pretrained_lib.Pretrained(encoder=encoder, variables=variables, heads={}, model_config=cfg,
                                    run={}, network="online", data=dict(DATA))
    meta = export_lib.torchvision_metadata(pre, num_classes=3)
    assert {k: meta[k] for k in ARCH_KEYS} == _reference_metadata(int(name[6:]), width, cifar_stem, 3)


def test_readme_shows_the_torch_builder():
    code = _readme_torch_block()
    assert "def build_resnet_from(meta):" in code and "strict=True" in code
    assert "exec(" not in code and "eval(" not in code.replace("model.eval()", "")
    readme = open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8").read()
    assert "torch_model" not in readme.split("\n## Export for fine-tuning\n", 1)[1].split("\n## ", 1)[0]


def test_the_package_ships_no_pytorch():
    # Every file of the installed package (code, package data, native sources): no PyTorch.
    package = os.path.join(REPO_ROOT, "ssl_jax")
    offenders = []
    for root, dirs, files in os.walk(package):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            text = open(os.path.join(root, name), "rb").read()
            if b"import torch" in text or b"from torch" in text:
                offenders.append(os.path.relpath(os.path.join(root, name), REPO_ROOT))
    assert offenders == [], f"PyTorch code in the package: {offenders}"


def _random_vit():
    cfg = _model_cfg(name="vit_tiny", patch_size=8)
    encoder = build_encoder(cfg)
    abstract = jax.eval_shape(functools.partial(encoder.init, train=False), jax.random.PRNGKey(0),
                              np.zeros((1, 16, 16, 3), np.float32))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), abstract)
    return pretrained_lib.Pretrained(encoder=encoder, variables=dict(variables, batch_stats={}),
                                     heads={}, model_config=cfg, run={"method": "dino", "step": 1},
                                     network="target")


def test_torchvision_rejects_vit():
    pre = _random_vit()
    with pytest.raises(ValueError, match="torchvision export is for ResNets; use --format=safetensors"):
        export_lib.to_torchvision(pre)


def test_torchvision_rejects_a_sobel_resnet():
    cfg = _model_cfg(name="resnet18", width=0.125, cifar_stem=True, sobel=True)
    encoder = build_encoder(cfg)
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(
        functools.partial(encoder.init, train=False), jax.random.PRNGKey(0), np.zeros((1, 16, 16, 3), np.float32)))
    pre = pretrained_lib.Pretrained(encoder=encoder, variables=variables, heads={}, model_config=cfg,
                                    run={"method": "deepcluster", "step": 1}, network="online")
    with pytest.raises(ValueError, match="Sobel layer .* use --format=safetensors"):
        export_lib.to_torchvision(pre)


# ----------------------------------------------------------------------------- flat / safetensors

def test_flatten_unflatten_round_trip():
    pre = _random_resnet("resnet18", 0.125, cifar_stem=True)
    heads = {"projector": {"params": {"dense1": {"kernel": np.ones((4, 3), np.float32)}},
                           "batch_stats": {"bn1": {"mean": np.zeros(3, np.float32)}}}}
    flat = export_lib.flatten_variables(pre.variables, heads)
    assert flat["params/stage1_block1/conv1/kernel"].shape == (3, 3, 8, 8)
    assert "batch_stats/stem_bn/mean" in flat
    assert "heads/projector/params/dense1/kernel" in flat
    variables, heads_back = export_lib.unflatten_variables(flat)
    jax.tree.map(np.testing.assert_array_equal, variables, pre.variables)
    jax.tree.map(np.testing.assert_array_equal, heads_back, heads)
    assert not any(k.startswith("heads/") for k in export_lib.flatten_variables(pre.variables))


def test_safetensors_round_trip(tmp_path):
    pre = _random_resnet("resnet18", 0.125, cifar_stem=True)
    sd = export_lib.to_torchvision(pre)
    meta = {**export_lib._run_metadata(pre, export_lib.TORCHVISION_FORMAT),
            **export_lib.torchvision_metadata(pre)}
    path = str(tmp_path / "r18.safetensors")
    export_lib.save_safetensors(path, sd, meta)
    back = safetensors.numpy.load_file(path)
    assert back.keys() == sd.keys()
    for k in sd:
        assert back[k].dtype == sd[k].dtype and back[k].shape == sd[k].shape, k
        np.testing.assert_array_equal(back[k], sd[k])
    with safetensors.safe_open(path, "np") as f:
        md = f.metadata()
    assert md["format"] == export_lib.TORCHVISION_FORMAT
    assert (md["cifar_stem"], md["width"], md["depth"]) == ("true", "0.125", "18")
    assert (md["method"], md["step"], md["network"]) == ("byol", "7", "online")
    assert json.loads(md["model_config"])["name"] == "resnet18"
    assert "wide_resnet" in md["width_note"]
    assert "torch_model" not in md  # the architecture as data, no program
    assert (md["block"], json.loads(md["layers"]), json.loads(md["stem_width"])) == ("basic", [2, 2, 2, 2], 8)
    assert (json.loads(md["planes"]), json.loads(md["stage_widths"])) == ([8, 16, 32, 64], [8, 16, 32, 64])
    assert json.loads(md["num_classes"]) == 0
    assert (md["layout"], md["image_size"]) == ("NCHW", "32")
    assert (json.loads(md["mean"]), json.loads(md["std"])) == ([0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    with pytest.raises(TypeError, match="strings"):
        export_lib.save_safetensors(path, sd, {"step": 3})


# ----------------------------------------------------------------------------- CLI on a real run

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ssl_jax.export", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny_run(demo_run):
    """The session's BYOL demo run (ResNet-18 w 1/8, CIFAR stem, 16 px; tests/conftest.py)."""
    return str(demo_run[0])


def _one_line_error(proc):
    assert proc.returncode in (1, 2), (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssl_jax: error: "), proc.stderr
    return lines[0]


def test_cli_flax_round_trip_and_networks(tiny_run, tmp_path):
    x = np.random.default_rng(0).normal(size=(4, 16, 16, 3)).astype(np.float32)
    online_out, target_out = str(tmp_path / "online.msgpack"), str(tmp_path / "target.msgpack")
    proc = _cli(f"--workdir={tiny_run}", "--format=flax", f"--output={online_out}", "--include_heads")
    assert proc.returncode == 0, proc.stderr
    assert "online network" in proc.stdout
    proc = _cli(f"--workdir={tiny_run}", "--format=flax", f"--output={target_out}", "--network=target")
    assert proc.returncode == 0, proc.stderr

    online, target = pretrained_lib.load_flax(online_out), pretrained_lib.load_flax(target_out)
    assert (online.network, target.network) == ("online", "target")
    assert online.run["step"] == 352 and online.run["method"] == "byol"
    assert set(online.heads) >= {"projector", "predictor"} and target.heads == {}
    ref_online = pretrained_lib.load(tiny_run, "online")
    ref_target = pretrained_lib.load(tiny_run, "target")
    np.testing.assert_array_equal(_features(online, x), _features(ref_online, x))
    np.testing.assert_array_equal(_features(target, x), _features(ref_target, x))
    assert np.abs(_features(online, x) - _features(target, x)).max() > 1e-6  # the EMA target lags the online network

    # The flax file converts further: safetensors (Flax layout) and torchvision.
    st = str(tmp_path / "online.safetensors")
    proc = _cli(f"--workdir={online_out}", "--format=safetensors", f"--output={st}", "--include_heads")
    assert proc.returncode == 0, proc.stderr
    variables, heads = export_lib.unflatten_variables(safetensors.numpy.load_file(st))
    jax.tree.map(np.testing.assert_array_equal, variables, jax.device_get(ref_online.variables))
    assert set(heads) == set(online.heads)
    with safetensors.safe_open(st, "np") as f:
        md = f.metadata()
    assert (md["format"], md["network"], md["step"], md["method"]) == (
        export_lib.SAFETENSORS_FORMAT, "online", "352", "byol")
    # Every format records the input: layout, size, normalisation (the flax file in `input`).
    assert (md["layout"], md["image_size"]) == ("NHWC", "16")
    payload = flax.serialization.msgpack_restore(open(online_out, "rb").read())
    spec = json.loads(payload["input"])
    assert (spec["layout"], spec["image_size"]) == ("NHWC", 16)
    assert (spec["mean"], spec["std"]) == (json.loads(md["mean"]), json.loads(md["std"]))
    assert oct(os.stat(st).st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_cli_torchvision_on_run(tiny_run, tmp_path):
    out = str(tmp_path / "r18.safetensors")
    proc = _cli(f"--workdir={tiny_run}", "--format=torchvision", f"--output={out}")
    assert proc.returncode == 0, proc.stderr
    sd = safetensors.numpy.load_file(out)
    assert set(sd) == set(torchvision_shapes(18, 0.125, cifar_stem=True))
    with safetensors.safe_open(out, "np") as f:
        md = f.metadata()
    assert (md["cifar_stem"], md["width"], md["depth"], md["network"]) == ("true", "0.125", "18", "online")
    # What a PyTorch user needs to feed it, from the run's data config (the demo: digits at 16 px).
    run_data = json.load(open(os.path.join(tiny_run, "config.json")))["data"]
    assert (md["layout"], md["image_size"]) == ("NCHW", "16")
    assert (json.loads(md["mean"]), json.loads(md["std"])) == (list(run_data["mean"]), list(run_data["std"]))
    pre = pretrained_lib.load(tiny_run)
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype(np.float32)
    expected = _features(pre, x)
    got = torch_resnet_forward(sd, np.transpose(x, (0, 3, 1, 2)).astype(np.float64))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_cli_refuses_to_overwrite(tiny_run, tmp_path):
    out = tmp_path / "model.msgpack"
    out.write_bytes(b"keep me")
    proc = _cli(f"--workdir={tiny_run}", "--format=flax", f"--output={out}")
    line = _one_line_error(proc)
    assert "exists" in line and "--overwrite" in line
    assert out.read_bytes() == b"keep me"
    proc = _cli(f"--workdir={tiny_run}", "--format=flax", f"--output={out}", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert pretrained_lib.load_flax(str(out)).run["step"] == 352
    assert sorted(os.listdir(tmp_path)) == ["model.msgpack"]  # no temporary file left


def test_cli_user_errors(tiny_run, tmp_path):
    out = str(tmp_path / "x.safetensors")
    line = _one_line_error(_cli(f"--workdir={tiny_run}", "--format=torchvision", f"--output={out}",
                                "--include_heads"))
    assert "--format=safetensors" in line
    line = _one_line_error(_cli(f"--workdir={tiny_run}", "--format=flax", f"--output={out}", "--step=99"))
    assert "saved steps: [200, 300, 352]" in line
    line = _one_line_error(_cli(f"--workdir={tmp_path / 'nope'}", "--format=flax", f"--output={out}"))
    assert "neither a training workdir" in line
    line = _one_line_error(_cli(f"--workdir={tiny_run}/config.json", "--format=flax", f"--output={out}"))
    assert "not an ssl_jax Flax export" in line
    line = _one_line_error(_cli(f"--workdir={tiny_run}", "--format=onnx", f"--output={out}"))
    assert "flax|safetensors|torchvision" in line
    assert os.listdir(tmp_path) == []


def test_cli_vit_torchvision_is_an_error(tmp_path):
    pre = _random_vit()
    src = str(tmp_path / "vit.msgpack")
    pretrained_lib.save_flax(src, pre)
    out = str(tmp_path / "vit.safetensors")
    line = _one_line_error(_cli(f"--workdir={src}", "--format=torchvision", f"--output={out}"))
    assert "torchvision export is for ResNets; use --format=safetensors" in line
    assert sorted(os.listdir(tmp_path)) == ["vit.msgpack"]  # nothing written, no temporary file
    proc = _cli(f"--workdir={src}", "--format=safetensors", f"--output={out}")
    assert proc.returncode == 0, proc.stderr
    variables_back, _ = export_lib.unflatten_variables(safetensors.numpy.load_file(out))
    jax.tree.map(np.testing.assert_array_equal, variables_back["params"], pre.variables["params"])


@pytest.mark.parametrize("finetune", [False, True])
def test_cli_exports_a_trained_classifier_as_fc(tiny_run, tmp_path, finetune):
    """A classifier checkpoint of ssl_jax.evaluate (here 4 steps on random images, head with
    BatchNorm) exported with --classifier: torchvision's fc (BN folded in) on the exported
    network reproduces encoder + head; a fine-tuned classifier brings its encoder."""
    import ml_collections

    from ssl_jax import parallel, presets
    from ssl_jax.evaluate import supervised

    pre = pretrained_lib.load(tiny_run)
    rng = np.random.default_rng(2)

    def batches(start):
        while True:
            yield {"views": (rng.normal(size=(8, 16, 16, 3)).astype(np.float32),),
                   "label": rng.integers(0, 10, 8).astype(np.int32)}

    opt = presets.base_config("eval").optimizer
    opt.update(dict(name="sgd", base_lr=0.1, weight_decay=0.0, warmup_epochs=0.0))
    cfg = ml_collections.ConfigDict(dict(epochs=1.0, batch_size=8, finetune=finetune, head_batchnorm=True,
                                         optimizer=opt, checkpoint_every_steps=0))
    cdir = str(tmp_path / "classifier")
    trained = supervised.train_classifier(pre, batches, steps_per_epoch=4, train_cfg=cfg, num_classes=10,
                                          mesh=parallel.make_mesh(), log=lambda *_: None, checkpoint_dir=cdir)
    out = str(tmp_path / "with_fc.safetensors")
    proc = _cli(f"--workdir={tiny_run}", "--format=torchvision", f"--output={out}", f"--classifier={cdir}")
    assert proc.returncode == 0, proc.stderr
    sd = safetensors.numpy.load_file(out)
    assert sd["fc.weight"].shape == (10, pre.encoder.feature_dim) and sd["fc.bias"].shape == (10,)
    with safetensors.safe_open(out, "np") as f:
        md = f.metadata()
    assert json.loads(md["num_classes"]) == 10 and json.loads(md["stage_widths"])[-1] == pre.encoder.feature_dim
    assert "torch_model" not in md
    x = rng.normal(size=(3, 16, 16, 3)).astype(np.float32)
    feats = pre.encoder.apply(trained["encoder"], x, train=False)
    expected = np.asarray(trained["head"].apply(trained["head_variables"], feats, train=False))
    got = torch_resnet_forward(sd, np.transpose(x, (0, 3, 1, 2)).astype(np.float64)) @ sd["fc.weight"].T + sd["fc.bias"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    moved = np.abs(np.asarray(feats) - _features(pre, x)).max() > 1e-6
    assert moved == finetune  # a fine-tuned encoder is exported in place of the pretrained one
    st = str(tmp_path / "with_fc_flax_layout.safetensors")
    assert _cli(f"--workdir={tiny_run}", "--format=safetensors", f"--output={st}",
                f"--classifier={cdir}").returncode == 0
    assert safetensors.numpy.load_file(st)["classifier/kernel"].shape == (pre.encoder.feature_dim, 10)
    flax_out = str(tmp_path / "x.msgpack")
    assert "torchvision" in _one_line_error(_cli(f"--workdir={tiny_run}", "--format=flax", f"--output={flax_out}",
                                                 f"--classifier={cdir}"))
