"""Export a pretrained encoder for fine-tuning: python -m ssl_jax.export.

    python -m ssl_jax.export --workdir=DIR --format=flax|safetensors|torchvision --output=FILE \
        [--network=default|online|target] [--step=N] [--include_heads] [--classifier=CDIR] [--overwrite]

`--workdir` is the directory of an `ssl_jax.main` run (the latest checkpoint, or `--step`) or a
`.msgpack` file written by `--format=flax` (to convert it to the other formats).

Formats:
  flax         One msgpack file (`ssl_jax.pretrained.save_flax`): the encoder config, the run
               it came from and the encoder's {'params', 'batch_stats'} (with --include_heads
               also the projector / predictor / prototype heads). Rebuild the network in one
               call: `pre = ssl_jax.pretrained.load_flax(FILE)`;
               `pre.encoder.apply(pre.variables, x_nhwc, train=False)`.
  safetensors  A framework-neutral safetensors file of the same arrays in Flax layout, keys
               '/'-joined paths: 'params/stage1_block1/conv1/kernel' (HWIO),
               'batch_stats/stem_bn/mean', heads under 'heads/<name>/params/...'. The metadata
               holds the model config as JSON and the source run (method, dataset, backbone,
               step, network). `unflatten_variables` rebuilds the trees.
  torchvision  ResNets only: a safetensors file whose keys, shapes and layouts are those of a
               torchvision `ResNet`'s `state_dict()` without `fc` (conv weights OIHW; BatchNorm
               weight/bias/running_mean/running_var/num_batches_tracked). A width multiplier
               w != 1 scales every channel count, stem included (NOT torchvision's wide_resnet,
               which widens only the bottleneck's inner convs), and the CIFAR stem is a 3x3/1
               conv without max-pool, so no torchvision constructor builds it. The metadata
               describes the architecture as data (never code: a loader must not execute text
               read from a weights file); numbers, booleans and lists are JSON, `block` a word:
                 depth         10 .. 200 (the name; a builder needs only the keys below)
                 width         the width multiplier, e.g. 0.125
                 block         "basic" (BasicBlock, ResNet-18/34) or "bottleneck" (ResNet-50+)
                 layers        blocks per stage, torchvision's `layers`, e.g. [2, 2, 2, 2]
                 stem_width    conv1's output channels
                 cifar_stem    true: conv1 is 3x3 stride 1 padding 1 and there is no max-pool;
                               false: torchvision's 7x7 stride 2 padding 3 and 3x3/2 max-pool
                 planes        per stage, torchvision's `planes`: the channels of a block's
                               3x3 conv (both convs of a basic block, conv1 and conv2 of a
                               bottleneck)
                 stage_widths  per stage, the output channels of its blocks (planes, or
                               4 * planes for a bottleneck); block 1 of a stage gets a
                               `downsample` (1x1 conv + BN) where the stride is 2 or its input
                               width differs from this, as in torchvision
                 num_classes   fc's outputs (fc = Linear(stage_widths[-1], num_classes)); 0:
                               no fc (fc = Identity)
               The widths are read from the exported kernels, so they are exact at any width.
               README.md ("Export for fine-tuning") shows a PyTorch `build_resnet_from(meta)`
               that reads only these keys and loads the file with `strict=True`; it gives the
               same pooled features as the Flax encoder.

Inputs. Every format records how to feed the network: `layout` (NCHW for torchvision, NHWC for
flax and safetensors), `image_size`, `mean` and `std` (RGB in [0, 1], then (x - mean) / std per
channel, as in pretraining): safetensors metadata keys, and the flax file's `input` entry.

Padding. Flax's 'SAME' pads a stride-2 3x3 conv asymmetrically, (0, 1), on even inputs while
PyTorch pads (1, 1); ssl_jax's ResNet uses explicit symmetric padding everywhere (3x3 convs
(1, 1), the 7x7 stem (3, 3), the 3x3/2 max-pool (1, 1) with -inf; its 1x1 strided projections
need none), so the exported torchvision network computes the same function, at any input size
(tests/test_export.py checks it against a NumPy torchvision forward pass at 33 and 64 px).
BatchNorm epsilon is 1e-5 in both; momentum differs in meaning but does not matter at inference.

Classifier. `--classifier=CDIR` adds a classifier trained by `python -m ssl_jax.evaluate`
(linear or finetune protocol; CDIR is the `WORKDIR/classifiers/<kind>-<hash>` directory it prints)
for the torchvision and safetensors formats: torchvision gets it as `fc.weight` / `fc.bias` (and
the metadata's `num_classes` is C), safetensors as `classifier/kernel` [D, C] and
`classifier/bias`. A head trained with BatchNorm (head_batchnorm) is folded into the linear layer
(the BN has no affine parameters, so w' = w / sqrt(var + eps), b' = b - (mean / sqrt(var + eps)) w:
the same function). A fine-tuned classifier brings its fine-tuned encoder, which is then exported
in place of the pretrained one. The classifier must have been trained on this --workdir's network.

Network. `--network=default` exports the network the method's paper evaluates
(`ssl_jax.pretrained.default_network`): DINO's teacher (the momentum target), the online
network for every other method; `online` / `target` choose explicitly.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from ssl_jax import cli

FORMATS = ("flax", "safetensors", "torchvision")
NETWORKS = ("default", "online", "target")
SAFETENSORS_FORMAT = "ssl_jax.export.safetensors/1"
TORCHVISION_FORMAT = "ssl_jax.export.torchvision/2"  # /2: the architecture as data; /1 held a torch program
SEP = "/"


# ----------------------------------------------------------------------------- flat arrays

def _flatten(tree: Mapping, prefix: str, out: dict) -> None:
    for key, value in tree.items():
        key = str(key)
        if SEP in key:
            raise ValueError(f"Variable name {key!r} contains {SEP!r}; it cannot be flattened.")
        path = f"{prefix}{SEP}{key}" if prefix else key
        if isinstance(value, Mapping):
            _flatten(value, path, out)
        else:
            out[path] = np.asarray(value)


def flatten_variables(variables: Mapping, heads: Mapping | None = None) -> dict[str, np.ndarray]:
    """{'/'-joined path: array} of the encoder's variables ('params/stem_conv/kernel',
    'batch_stats/stem_bn/mean', ...) and of the heads ('heads/<name>/params/...')."""
    out: dict[str, np.ndarray] = {}
    _flatten(variables, "", out)
    if heads:
        _flatten(heads, "heads", out)
    return out


def unflatten_variables(flat: Mapping[str, Any]) -> tuple[dict, dict]:
    """Inverse of `flatten_variables`: (variables with 'params' and 'batch_stats', heads)."""
    tree: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split(SEP)
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = np.asarray(value)
    heads = tree.pop("heads", {})
    tree.setdefault("params", {})
    tree.setdefault("batch_stats", {})
    return tree, heads


# ----------------------------------------------------------------------------- torchvision

def _torch_conv(kernel) -> np.ndarray:
    """Flax conv kernel [H, W, I, O] -> PyTorch weight [O, I, H, W]."""
    return np.ascontiguousarray(np.transpose(np.asarray(kernel, np.float32), (3, 2, 0, 1)))


def _torch_bn(prefix: str, params: Mapping, stats: Mapping, out: dict) -> None:
    out[f"{prefix}.weight"] = np.asarray(params["scale"], np.float32)
    out[f"{prefix}.bias"] = np.asarray(params["bias"], np.float32)
    out[f"{prefix}.running_mean"] = np.asarray(stats["mean"], np.float32)
    out[f"{prefix}.running_var"] = np.asarray(stats["var"], np.float32)
    # torchvision's BatchNorm2d has this buffer too; strict loading needs the key. Its value only
    # matters with momentum=None (cumulative averages), which nobody fine-tunes with.
    out[f"{prefix}.num_batches_tracked"] = np.zeros((), np.int64)


def to_torchvision(pretrained, fc=None) -> dict[str, np.ndarray]:
    """The encoder's variables as torchvision's ResNet `state_dict()` (without `fc`).

    `pretrained` is an `ssl_jax.pretrained.Pretrained` whose encoder is a ResNet. Flax stage s
    block b -> `layer{s}.{b-1}`; stem_conv/stem_bn -> conv1/bn1; proj_conv/proj_bn ->
    downsample.0/downsample.1; conv kernels HWIO -> OIHW; BN scale/bias/mean/var ->
    weight/bias/running_mean/running_var, plus `num_batches_tracked` (int64 scalar, 0).

    `fc`: optional linear classifier on the pooled features, (w [D, C], b [C]) or flax Dense
    params {'kernel', 'bias'}; written as fc.weight [C, D] and fc.bias [C].

    The CIFAR stem gives the same keys (conv1.weight is then [64w, 3, 3, 3]); width
    multipliers != 1 scale every channel count (not torchvision's wide_resnet).
    """
    from ssl_jax.models.resnet import STAGE_SIZES, ResNet

    encoder = pretrained.encoder
    if not isinstance(encoder, ResNet):
        name = pretrained.model_config.get("name", type(encoder).__name__)
        raise ValueError(f"torchvision export is for ResNets; use --format=safetensors (or "
                         f"--format=flax) for this {name} encoder.")
    if encoder.sobel:
        raise ValueError("This ResNet reads its input through the fixed Sobel layer (model.sobel=True), "
                         "which torchvision's ResNet does not have (its conv1 would get 2 input channels); "
                         "use --format=safetensors or --format=flax.")
    params = pretrained.variables["params"]
    stats = pretrained.variables.get("batch_stats") or {}
    out: dict[str, np.ndarray] = {"conv1.weight": _torch_conv(params["stem_conv"]["kernel"])}
    _torch_bn("bn1", params["stem_bn"], stats["stem_bn"], out)
    convs = 3 if encoder.bottleneck else 2
    for s, num_blocks in enumerate(STAGE_SIZES[encoder.depth], start=1):
        for b in range(num_blocks):
            name, prefix = f"stage{s}_block{b + 1}", f"layer{s}.{b}"
            p, st = params[name], stats[name]
            for i in range(1, convs + 1):
                out[f"{prefix}.conv{i}.weight"] = _torch_conv(p[f"conv{i}"]["kernel"])
                _torch_bn(f"{prefix}.bn{i}", p[f"bn{i}"], st[f"bn{i}"], out)
            # torchvision gives block 0 a downsample where the stride or the width changes:
            # stages 2-4, and stage 1 of the bottleneck ResNets (64 -> 256 channels).
            wants = b == 0 and (s > 1 or encoder.bottleneck)
            if ("proj_conv" in p) != wants:
                raise ValueError(f"{name} {'has' if 'proj_conv' in p else 'lacks'} a projection "
                                 f"shortcut where torchvision's ResNet does not (width "
                                 f"{encoder.width_multiplier:g} collapses channel counts); this "
                                 "network has no torchvision layout: use --format=safetensors.")
            if wants:
                out[f"{prefix}.downsample.0.weight"] = _torch_conv(p["proj_conv"]["kernel"])
                _torch_bn(f"{prefix}.downsample.1", p["proj_bn"], st["proj_bn"], out)
    if fc is not None:
        if isinstance(fc, Mapping):
            w, bias = fc["kernel"], fc["bias"]
        else:
            w, bias = fc
        w, bias = np.asarray(w, np.float32), np.asarray(bias, np.float32)
        if w.ndim != 2 or w.shape[0] != encoder.feature_dim or bias.shape != (w.shape[1],):
            raise ValueError(f"fc must be w [D, C], b [C] with D = {encoder.feature_dim} (the "
                             f"pooled feature size); got w {w.shape}, b {bias.shape}.")
        out["fc.weight"] = np.ascontiguousarray(w.T)
        out["fc.bias"] = bias
    return out


def input_metadata(pretrained, layout: str) -> dict[str, str]:
    """How to feed the exported network, as safetensors metadata strings: `layout`, and
    `image_size`, `mean`, `std` (JSON) where the source run records them."""
    from ssl_jax import pretrained as pretrained_lib

    spec = pretrained_lib.input_spec(pretrained.data, layout)
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in spec.items()}


def torchvision_metadata(pretrained, num_classes: int | None = None) -> dict[str, str]:
    """The architecture as data (depth, width, block, layers, stem_width, cifar_stem, planes,
    stage_widths, num_classes: the module docstring says what each means) and the input
    (layout NCHW, image_size, mean, std), as safetensors metadata strings. `num_classes`: the
    classifier's outputs, 0 or None without one."""
    from ssl_jax.models.resnet import STAGE_SIZES

    enc = pretrained.encoder
    depth, width, cifar = int(enc.depth), float(enc.width_multiplier), bool(enc.cifar_stem)
    params = pretrained.variables["params"]
    last_conv = "conv3" if enc.bottleneck else "conv2"
    # Channel counts from the kernels themselves (HWIO: the output is the last axis), so the
    # metadata cannot disagree with the arrays whatever rounding the width multiplier took.
    first_blocks = [params[f"stage{s}_block1"] for s in range(1, len(STAGE_SIZES[depth]) + 1)]
    arch = {"block": "bottleneck" if enc.bottleneck else "basic",
            "layers": json.dumps(list(STAGE_SIZES[depth])),
            "stem_width": json.dumps(int(np.shape(params["stem_conv"]["kernel"])[-1])),
            "planes": json.dumps([int(np.shape(b["conv1"]["kernel"])[-1]) for b in first_blocks]),
            "stage_widths": json.dumps([int(np.shape(b[last_conv]["kernel"])[-1]) for b in first_blocks]),
            "num_classes": json.dumps(int(num_classes or 0))}
    meta = {"cifar_stem": json.dumps(cifar), "width": f"{width:g}", "depth": str(depth), **arch,
            **input_metadata(pretrained, "NCHW")}
    if width != 1.0:
        meta["width_note"] = (f"every channel count (stem included) is scaled by {width:g}; this "
                              "is not torchvision's wide_resnet, whose width_per_group widens only "
                              "the bottleneck's inner convs: stem_width, planes and stage_widths "
                              "give the exact channel counts.")
    return meta


# ----------------------------------------------------------------------------- files

def save_safetensors(path: str, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> None:
    """Write `arrays` with string `metadata` (safetensors.numpy; no torch needed)."""
    from safetensors.numpy import save_file

    bad = [k for k, v in metadata.items() if not isinstance(v, str)]
    if bad:
        raise TypeError(f"safetensors metadata values must be strings; not: {bad}.")
    # order='C', not np.ascontiguousarray: that makes 0-d arrays (num_batches_tracked) 1-d.
    save_file({k: np.asarray(v, order="C") for k, v in arrays.items()}, path, metadata=dict(metadata))


def _run_metadata(pretrained, fmt: str) -> dict[str, str]:
    run = pretrained.run or {}
    meta = {"format": fmt, "network": str(pretrained.network),
            "model_config": pretrained.model_config.to_json()
            if hasattr(pretrained.model_config, "to_json") else json.dumps(dict(pretrained.model_config)),
            "run": json.dumps(run)}
    for key in ("method", "dataset", "backbone", "step"):
        if key in run:
            meta[key] = str(run[key])
    return meta


def classifier_linear(head: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """(w [D, C], b [C]) of a trained LinearHead's variables {'params', 'batch_stats'}, its
    optional BatchNorm (no scale, no offset, eps = 1e-6) folded in exactly."""
    from ssl_jax.evaluate.supervised import HEAD_BN_EPSILON

    dense = head["params"]["Dense_0"]
    w, b = np.asarray(dense["kernel"], np.float64), np.asarray(dense["bias"], np.float64)
    bn = (head.get("batch_stats") or {}).get("BatchNorm_0")
    if bn is not None:
        inv = 1.0 / np.sqrt(np.asarray(bn["var"], np.float64) + HEAD_BN_EPSILON)
        b = b - (np.asarray(bn["mean"], np.float64) * inv) @ w
        w = w * inv[:, None]
    return w.astype(np.float32), b.astype(np.float32)


def _with_classifier(pre, classifier_dir: str):
    """(pretrained, (w, b)): the classifier of `classifier_dir`, and the encoder it was trained
    with (the fine-tuned one for a fine-tuning classifier)."""
    import dataclasses

    from ssl_jax.evaluate.supervised import load_classifier

    saved = load_classifier(classifier_dir)
    if saved["encoder"] is not None:
        pre = dataclasses.replace(pre, variables=saved["encoder"])
    w, b = classifier_linear(saved["head"])
    if w.shape[0] != pre.encoder.feature_dim:
        raise ValueError(f"the classifier in {classifier_dir} takes {w.shape[0]}-d features, this encoder "
                         f"gives {pre.encoder.feature_dim}: it was trained on another network.")
    return pre, (w, b)


def _load(source: str, network: str, step: int | None):
    from ssl_jax import pretrained as pretrained_lib

    if os.path.isfile(source):
        try:
            return pretrained_lib.load(source, network, step)
        except Exception as e:
            if type(e) is ValueError:  # pretrained's own message (wrong format, network, step)
                raise
            # Not msgpack at all (msgpack's ValueError subclasses), or msgpack of another kind.
            raise ValueError(f"{source} is not an ssl_jax Flax export ({type(e).__name__}: {e}); "
                             "pass a training workdir or a file written by --format=flax.") from e
    return pretrained_lib.load(source, network, step)


def export(source: str, fmt: str, output: str, network: str = "default", step: int | None = None,
           include_heads: bool = False, overwrite: bool = False, classifier: str | None = None) -> dict[str, str]:
    """Write the encoder of `source` (workdir or Flax .msgpack) to `output` in format `fmt`
    (with the trained classifier of the `classifier` directory, see the module docstring).

    Returns a summary (format, network, step, backbone, output). The file appears complete or
    not at all (written to a temporary file in the same directory, then renamed).
    """
    from ssl_jax import pretrained as pretrained_lib

    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r}; choose one of {', '.join(FORMATS)}.")
    if network not in NETWORKS:
        raise ValueError(f"network={network!r}; choose one of {', '.join(NETWORKS)}.")
    if classifier and fmt == "flax":
        raise ValueError("--classifier is written by --format=torchvision (as fc) or --format=safetensors "
                         "(as classifier/kernel, classifier/bias); the flax format carries the encoder "
                         "and its self-supervised heads only.")
    if fmt == "torchvision" and include_heads:
        raise ValueError("--include_heads has no torchvision form (torchvision's ResNet has no "
                         "projector/predictor): use --format=safetensors or --format=flax for heads.")
    output = os.path.abspath(output)
    if os.path.isdir(output):
        raise ValueError(f"--output={output} is a directory; pass a file name, e.g. {output}/model.{fmt}.")
    directory = os.path.dirname(output)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"the directory of --output={output} does not exist; create it first.")
    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it or choose another --output.")

    pre = _load(source, network, step)
    fc = None
    if classifier:
        pre, fc = _with_classifier(pre, classifier)
    if fmt == "torchvision":
        arrays = to_torchvision(pre, fc=fc)  # before any file is created: a ViT fails here
        meta = {**_run_metadata(pre, TORCHVISION_FORMAT),
                **torchvision_metadata(pre, None if fc is None else fc[0].shape[1])}
    elif fmt == "safetensors":
        arrays = flatten_variables(pre.variables, pre.heads if include_heads else None)
        meta = {**_run_metadata(pre, SAFETENSORS_FORMAT), **input_metadata(pre, "NHWC")}
        if fc is not None:
            arrays.update({f"classifier{SEP}kernel": fc[0], f"classifier{SEP}bias": fc[1]})
    if fc is not None:
        meta["classifier"] = os.path.abspath(classifier)

    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(output)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        if fmt == "flax":
            pretrained_lib.save_flax(tmp, pre, include_heads=include_heads)
        else:
            save_safetensors(tmp, arrays, meta)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, output)
    finally:
        for leftover in (tmp, tmp + ".tmp"):
            if os.path.exists(leftover):
                os.remove(leftover)
    return {"format": fmt, "network": str(pre.network), "step": str((pre.run or {}).get("step")),
            "backbone": str((pre.run or {}).get("backbone", pre.model_config.get("name"))),
            "output": output}


# ----------------------------------------------------------------------------- CLI

def _define_flags():
    from absl import flags

    flags.DEFINE_string("workdir", None, "Training workdir (latest or --step checkpoint) or an "
                        "exported .msgpack file (--format=flax output) to convert.")
    flags.DEFINE_enum("format", None, list(FORMATS), "Output format (see the module docstring).")
    flags.DEFINE_string("output", None, "Output file (written atomically).")
    flags.DEFINE_enum("network", "default", list(NETWORKS),
                      "Which network: default = the one the method's paper evaluates (DINO: "
                      "teacher; others: online).")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_bool("include_heads", False, "Also export the projector/predictor/prototype "
                      "heads (flax and safetensors formats).")
    flags.DEFINE_string("classifier", None, "A classifier directory written by `python -m "
                        "ssl_jax.evaluate` (linear / finetune: WORKDIR/classifiers/...) to export as "
                        "fc (torchvision) or classifier/* (safetensors).")
    flags.DEFINE_bool("overwrite", False, "Replace --output if it exists.")
    flags.mark_flags_as_required(["workdir", "format", "output"])
    return flags.FLAGS


def main(argv):
    from absl import app, flags, logging

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    with cli.user_errors("ssl_jax.export"):
        summary = export(f.workdir, f.format, f.output, network=f.network, step=f.step,
                         include_heads=f.include_heads, overwrite=f.overwrite, classifier=f.classifier)
    print(f"Exported {summary['network']} network ({summary['backbone']}, step {summary['step']}) "
          f"as {summary['format']} to {summary['output']}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from ssl_jax import xla_flags

    xla_flags.set_cpu_defaults()  # the commands' XLA CPU default, before JAX starts
    from absl import app

    _define_flags()
    app.run(main, flags_parser=cli.parse_flags)
