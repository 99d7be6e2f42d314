"""Steady-state throughput, FLOPs and memory of a method's compiled train step.

    python benchmarks/train_step.py [--config byol] [--preset cifar10] [--batch 64] [--steps 10]
                                    [--dtype float32] [--mesh data=D,fsdp=F] [--remat]
                                    [--set section.key=value ...]
    python benchmarks/train_step.py --all [--preset cifar10] [--batch 32]   # one line per method

Prints one JSON line per run: images/s (an image = one example with all its views), XLA's
FLOPs per image from the compiled cost analysis next to the analytic count (see
`analytic_step_flops`), peak memory from the compiled memory analysis, and the bytes of
the collectives in the compiled (SPMD-partitioned) step per kind, next to the least a
data-parallel / FSDP step needs (`ssl_jax/hlo_collectives.py` defines both, per device)
and their ratio. Extra XLA flags can be passed through the XLA_FLAGS environment variable;
simulate devices on a CPU with

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/train_step.py \
        --mesh data=1,fsdp=8 --batch 16 --steps 2

`--mesh` sets config.mesh (default data=-1,fsdp=1: every device data-parallel); `--remat`
sets config.model.remat=True (per-block rematerialisation, where the model supports it).
With `conv_backend` 'onednn' (the presets' 'auto' on one CPU device; printed) XLA's cost
analysis does not see the custom calls' FLOPs (most of the convolutions): they are counted
from the HLO (`onednn_call_flops`), and `compiled_over_analytic` compares XLA's count plus
theirs with the analytic count (`xla_over_analytic`: XLA's alone).
"""
import argparse
import importlib
import json
import math
import os
import re
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ssl_jax import xla_flags  # noqa: E402

xla_flags.set_cpu_defaults()  # the commands' XLA CPU flags, before JAX creates its CPU client
from ssl_jax.hlo_collectives import collective_report  # noqa: E402
from ssl_jax import parallel  # noqa: E402
from ssl_jax.methods import METHODS, build_method  # noqa: E402
from ssl_jax.models import DINOHead, Prototypes  # noqa: E402
from ssl_jax.models.resnet import STAGE_SIZES, _channels  # noqa: E402
from ssl_jax.train import step as step_lib  # noqa: E402
from ssl_jax.train.optim import build_optimizer  # noqa: E402


def _taps(size: int, k: int, stride: int, pad: int, out: int | None = None) -> int:
    """Number of (output position, kernel tap) pairs along one axis that read a real input
    pixel rather than zero padding (`pad` before the input; `out` positions, by default as
    many as with `pad` after it too)."""
    out = (size + 2 * pad - k) // stride + 1 if out is None else out
    return sum(1 for o in range(out) for t in range(k) if 0 <= o * stride - pad + t < size)


_ONEDNN_CALL = re.compile(
    r"= f32\[([\d,]+)\]\S* custom-call\(.*custom_call_target=\"ssl_jax_onednn_conv_(\w+)\".*"
    r"operand_layout_constraints=\{f32\[([\d,]+)\]\S*, f32\[([\d,]+)\]")


def onednn_call_flops(hlo_text: str) -> float:
    """FLOPs of the oneDNN convolution custom calls in a compiled step's HLO, counted like
    `resnet_forward_flops` (taps on zero padding excluded): XLA's cost analysis does not see
    them. Each of the three operations (forward, input gradient, kernel gradient) costs what
    the forward convolution costs."""
    total = 0.0
    for line in hlo_text.splitlines():
        match = _ONEDNN_CALL.search(line)
        if not match:
            continue
        op = match.group(2)
        out, a, b = (tuple(map(int, match.group(i).split(","))) for i in (1, 3, 4))
        attr = {k: int(v) for k, v in re.findall(r"(stride_h|stride_w|pad_top|pad_left) = (-?\d+)", line)}
        x, y, kernel = {"forward": (a, out, b), "input_grad": (out, a, b), "weight_grad": (a, b, out)}[op]
        taps_h = _taps(x[1], kernel[0], attr["stride_h"], attr["pad_top"], out=y[1])
        taps_w = _taps(x[2], kernel[1], attr["stride_w"], attr["pad_left"], out=y[2])
        total += 2.0 * x[0] * taps_h * taps_w * kernel[2] * kernel[3]
    return total


def resnet_forward_flops(depth: int, width: float, cifar_stem: bool, size: int) -> tuple[float, float]:
    """(forward FLOPs of the convolutions of one image, FLOPs of the first conv), by hand.

    A conv costs 2*C_in*C_out FLOPs (multiply + add) per (output pixel, kernel tap) pair.
    Pairs that fall on zero padding are not counted, because XLA's cost analysis does not
    count them either (at 4x4 feature maps a 3x3 conv has 31% of its taps on padding).
    """
    def conv(hw, k, stride, cin, cout):
        pad = (k - 1) // 2
        return 2.0 * _taps(hw, k, stride, pad) ** 2 * cin * cout, (hw + 2 * pad - k) // stride + 1

    stem = _channels(64, width)
    if cifar_stem:
        first, hw = conv(size, 3, 1, 3, stem)
    else:
        first, hw = conv(size, 7, 2, 3, stem)
        hw = (hw + 2 - 3) // 2 + 1  # 3x3/2 max-pool, padding 1
    total, cin = first, stem
    for i, blocks in enumerate(STAGE_SIZES[depth]):
        f = _channels(64 * 2 ** i, width)
        for j in range(blocks):
            stride = 2 if (i > 0 and j == 0) else 1
            if depth < 50:
                a, out_hw = conv(hw, 3, stride, cin, f)
                b, _ = conv(out_hw, 3, 1, f, f)
                total, cout = total + a + b, f
            else:
                a, _ = conv(hw, 1, 1, cin, f)
                b, out_hw = conv(hw, 3, stride, f, f)
                c, _ = conv(out_hw, 1, 1, f, 4 * f)
                total, cout = total + a + b + c, 4 * f
            if cin != cout or stride != 1:
                total += conv(hw, 1, stride, cin, cout)[0]
            cin, hw = cout, out_hw
    return total, first


def head_flops(module, in_dim: int) -> float:
    """Forward FLOPs of one head (its Dense layers) for one input vector."""
    if isinstance(module, Prototypes):
        return 2.0 * in_dim * module.num_prototypes
    if isinstance(module, DINOHead):
        dims = [in_dim] + [module.hidden_dim] * (module.num_layers - 1) + [module.bottleneck_dim, module.output_dim]
    else:  # MLPHead
        dims = [in_dim] + [module.hidden_dim] * (module.num_layers - 1) + [module.output_dim]
    return sum(2.0 * a * b for a, b in zip(dims[:-1], dims[1:]))


def heads_flops(method, names) -> float:
    """Forward FLOPs of the named heads applied in order to one encoder output."""
    total, dim = 0.0, method.encoder.feature_dim
    for name in names:
        module = method.heads[name]
        total += head_flops(module, dim)
        dim = module.output_dim
    return total


def loss_flops(config, method) -> float:
    """FLOPs per image of the loss's matrix products, forward + backward (backward ~2x
    forward where both operands get gradients, ~1x where one is a stop-gradient key)."""
    cfg, n = method.cfg, config.global_batch_size
    name = config.method
    if name == "swav":          # the queue's prototype scores (no gradient), per global crop
        return cfg.num_global_crops * 2.0 * cfg.queue_length * cfg.projector.output_dim * cfg.num_prototypes / n
    if name in ("byol", "simsiam", "dino", "carl", "carp"):
        return 0.0              # row-wise cosines / per-sample cross-entropies only
    d = cfg.projector.output_dim
    if name == "simclr":        # 4 blocks [N, N] x D per 2 views -> 8 N D per image
        return 3 * 8.0 * n * d
    if name == "moco_v2":       # q . queue^T, no gradient to the queue
        return 2 * 2.0 * cfg.queue_size * d
    if name == "moco_v3":       # 2 terms of q . k^T
        return 2 * 4.0 * n * d
    if name == "barlow_twins":  # C = z1^T z2
        return 3 * 2.0 * d * d
    if name == "vicreg":        # two covariances
        return 3 * 4.0 * d * d
    return 3 * 4.0 * method.num_views * cfg.w_iter * d * d  # wmse: covariance + whitening per view


def analytic_step_flops(config, method) -> float:
    """FLOPs per image of one step: the online network's forward and backward on the views
    it sees, the momentum target's forward on its views, and the loss's matrix products.
    Multi-crop views are counted at their own sizes. ResNet encoders only (NaN otherwise)."""
    m = config.model
    if not m.name.startswith("resnet"):
        return float("nan")
    depth = int(m.name[len("resnet"):])
    views = list(config.data.views)
    sizes = [views[v % len(views)].get("size") or config.data.image_size for v in range(method.num_views)]
    online_heads = [name for name, _ in method.head_outputs if name in method.heads]
    online_views = method.online_views or range(method.num_views)
    target_views = (method.target_views or range(method.num_views)) if method.momentum is not None else []
    total = 0.0
    for v in online_views:
        enc, first = resnet_forward_flops(depth, m.width, m.cifar_stem, sizes[v])
        fwd = enc + heads_flops(method, online_heads)
        # Backward = input gradients + weight gradients (2x forward), except that no gradient
        # w.r.t. the input image is needed.
        total += fwd + 2 * fwd - first
    for v in target_views:
        enc, _ = resnet_forward_flops(depth, m.width, m.cifar_stem, sizes[v])
        total += enc + heads_flops(method, method.target_modules[1:])
    return total + loss_flops(config, method)


def parse_mesh(text: str) -> dict:
    """'data=2,fsdp=4' -> {'data': 2, 'fsdp': 4} (keys of config.mesh; missing ones keep
    their defaults)."""
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in ("data", "fsdp", "num_devices"):
            raise argparse.ArgumentTypeError(f"--mesh expects data=D,fsdp=F, got {text!r}")
        out[key.strip()] = int(value)
    return out


def _num(x: float, digits: int):
    """round(x, digits), or None for NaN (no timed steps): the output stays strict JSON."""
    return None if math.isnan(x) else round(x, digits)


def benchmark(config_name: str, preset: str, batch_size: int, steps: int, dtype: str,
              mesh_overrides: dict | None = None, remat: bool = False,
              hlo_out: str | None = None, overrides: dict | None = None) -> dict:
    """Compile the step of configs/<config_name>.py:<preset> at `batch_size` and time it.
    `overrides`: {dotted config key: value}, as --config.KEY=VALUE on the command line."""
    config = importlib.import_module(f"configs.{config_name}").get_config(preset)
    config.mesh.update(mesh_overrides or {})
    for key, value in (overrides or {}).items():
        parent, _, leaf = key.rpartition(".")
        section = config
        for part in filter(None, parent.split(".")):
            section = section[part]
        try:  # numbers and true/false as JSON, anything else as a string
            section[leaf] = json.loads(value)
        except json.JSONDecodeError:
            section[leaf] = value
    if remat:
        if "remat" not in config.model:
            print("warning: config.model has no `remat` field in this version; --remat is "
                  "passed to the model config but may have no effect", file=sys.stderr)
        config.model.remat = True
    if config.method == "wmse":
        # Whitening needs sub-batches larger than the embedding: keep the preset's w_size.
        batch_size = max(batch_size, config.wmse.w_size)
    config.global_batch_size = batch_size
    config.model.dtype = dtype
    if config.method == "moco_v2":
        config.moco_v2.queue_size -= config.moco_v2.queue_size % batch_size
    size = config.data.image_size
    mesh = parallel.mesh_from_config(config.mesh)
    parallel.check_batch_divisible(batch_size, mesh)
    method = build_method(config, total_steps=1000)
    optimizer, lr = build_optimizer(config.optimizer, global_batch_size=batch_size,
                                    steps_per_epoch=100, num_epochs=10)
    sample = np.zeros((2, size, size, 3), np.float32)
    state = jax.jit(lambda r: step_lib.create_state(method, optimizer, r, sample, num_classes=10))(
        jax.random.PRNGKey(0))
    state = jax.device_put(state, parallel.state_sharding(state, mesh))
    rng = np.random.default_rng(0)
    views = list(config.data.views)
    sizes = [views[v % len(views)].get("size") or size for v in range(method.num_views)]
    host = {"views": tuple(rng.normal(size=(batch_size, s, s, 3)).astype(np.float32) for s in sizes),
            "label": rng.integers(0, 10, size=batch_size).astype(np.int32)}
    batch = parallel.shard_batch(host, mesh)
    train_step = step_lib.make_train_step(method, optimizer, lr, num_classes=10)
    jitted = step_lib.compile_step(train_step, state, mesh)
    t = time.perf_counter()
    compiled = jitted.lower(state, batch).compile()
    compile_s = time.perf_counter() - t
    hlo_text = compiled.as_text()
    if hlo_out:
        with open(hlo_out, "w") as f:
            f.write(hlo_text)
    collectives = collective_report(hlo_text, state, mesh)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    mem = compiled.memory_analysis()
    for _ in range(2 if steps > 0 else 0):  # warm-up (--steps 0: compile and analyse only)
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t)
    step_s = float(np.median(times)) if times else float("nan")
    xla_flops = float(cost.get("flops", float("nan"))) / batch_size
    onednn_flops = onednn_call_flops(hlo_text) / batch_size
    analytic = analytic_step_flops(config, method)
    peak = None
    if mem is not None:
        peak = int(mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
                   - mem.alias_size_in_bytes)
    return {
        "benchmark": "train_step", "method": config.method, "preset": preset, "model": config.model.name,
        "width": config.model.width, "image_size": size, "views": method.num_views,
        "global_batch": batch_size, "dtype": dtype, "remat": bool(config.model.get("remat", False)),
        "conv_backend": getattr(method.encoder, "conv_backend", None),
        "mesh": dict(mesh.shape), "devices": mesh.devices.size, "backend": jax.default_backend(), "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "compile_s": round(compile_s, 1),
        "step_s_median": _num(step_s, 4), "images_per_s": _num(batch_size / step_s, 2),
        "xla_gflops_per_image": round(xla_flops / 1e9, 4),
        "analytic_gflops_per_image": round(analytic / 1e9, 4),
        "xla_over_analytic": round(xla_flops / analytic, 4),
        "onednn_gflops_per_image": round(onednn_flops / 1e9, 4),
        "compiled_over_analytic": round((xla_flops + onednn_flops) / analytic, 4),
        "achieved_gflops_per_s": _num((xla_flops + onednn_flops) * batch_size / step_s / 1e9, 1),
        "peak_memory_mb": None if peak is None else round(peak / 2**20, 1),
        **collectives,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="byol", help="a config file name in configs/")
    ap.add_argument("--all", action="store_true", help="every method, one JSON line each")
    ap.add_argument("--preset", default="cifar10")
    ap.add_argument("--batch", type=int, default=None, help="default 64, or 32 with --all")
    ap.add_argument("--steps", type=int, default=10,
                    help="timed steps after 2 warm-up steps; 0: compile and analyse only")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--mesh", type=parse_mesh, default={},
                    help="config.mesh overrides, e.g. data=2,fsdp=4 (default: data-parallel over all devices)")
    ap.add_argument("--remat", action="store_true", help="set config.model.remat=True")
    ap.add_argument("--hlo-out", default=None,
                    help="write the compiled step's HLO text here (not with --all)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. --set byol.per_view_bn=false (repeatable)")
    args = ap.parse_args()
    overrides = dict(kv.split("=", 1) for kv in args.set)
    names = sorted(METHODS) if args.all else [args.config]
    batch = args.batch or (32 if args.all else 64)
    for name in names:
        print(json.dumps(benchmark(name, args.preset, batch, args.steps, args.dtype, args.mesh, args.remat,
                                   None if args.all else args.hlo_out, overrides)), flush=True)


if __name__ == "__main__":
    main()
