"""Steady-state throughput, FLOPs and memory of the compiled BYOL train step.

    python benchmarks/train_step.py [--preset cifar10] [--batch 64] [--steps 10] [--dtype float32]

Prints one JSON line: images/s (an image = one example with its two views), XLA's FLOPs
per image from the compiled cost analysis next to the analytic count (online forward +
backward on 2 views, target forward on 2 views), and peak memory from the compiled
memory analysis. Extra XLA flags can be passed through the XLA_FLAGS environment variable.
"""
import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import byol as byol_config  # noqa: E402
from ssl_jax import parallel  # noqa: E402
from ssl_jax.methods import build_method  # noqa: E402
from ssl_jax.models.resnet import STAGE_SIZES, _channels  # noqa: E402
from ssl_jax.train import step as step_lib  # noqa: E402
from ssl_jax.train.optim import build_optimizer  # noqa: E402


def _taps(size: int, k: int, stride: int, pad: int) -> int:
    """Number of (output position, kernel tap) pairs along one axis that read a real input
    pixel rather than zero padding."""
    out = (size + 2 * pad - k) // stride + 1
    return sum(1 for o in range(out) for t in range(k) if 0 <= o * stride - pad + t < size)


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


def analytic_step_flops(config) -> float:
    """FLOPs per image of one BYOL step: 2 views x (online fwd + bwd, target fwd)."""
    m, b = config.model, config.byol
    enc, first = resnet_forward_flops(int(m.name[len("resnet"):]), m.width, m.cifar_stem, config.data.image_size)
    d = (512 if int(m.name[6:]) < 50 else 2048) * m.width
    mlp = lambda i, h, o: 2.0 * (i * h + h * o)
    proj = mlp(d, b.projector_hidden_dim, b.projection_dim)
    pred = mlp(b.projection_dim, b.predictor_hidden_dim, b.projection_dim)
    online_fwd = enc + proj + pred
    # Backward = input gradients + weight gradients (2x forward), except that no gradient
    # w.r.t. the input image is needed.
    online_bwd = 2 * online_fwd - first
    target_fwd = enc + proj
    return 2 * (online_fwd + online_bwd + target_fwd)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="cifar10")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    config = byol_config.get_config(args.preset)
    config.global_batch_size = args.batch
    config.model.dtype = args.dtype
    size = config.data.image_size
    mesh = parallel.make_mesh()
    method = build_method(config, total_steps=1000)
    optimizer, lr = build_optimizer(config.optimizer, global_batch_size=args.batch,
                                    steps_per_epoch=100, num_epochs=10)
    state = step_lib.create_state(method, optimizer, jax.random.PRNGKey(0),
                                  np.zeros((2, size, size, 3), np.float32), num_classes=10)
    state = jax.device_put(state, parallel.state_sharding(state, mesh))
    rng = np.random.default_rng(0)
    host = {"views": tuple(rng.normal(size=(args.batch, size, size, 3)).astype(np.float32) for _ in range(2)),
            "label": rng.integers(0, 10, size=args.batch).astype(np.int32)}
    batch = parallel.shard_batch(host, mesh)
    train_step = step_lib.make_train_step(method, optimizer, lr, num_classes=10)
    jitted = step_lib.compile_step(train_step, state, batch, mesh)
    t = time.perf_counter()
    compiled = jitted.lower(state, batch).compile()
    compile_s = time.perf_counter() - t
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    mem = compiled.memory_analysis()
    for _ in range(2):  # warm-up
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t)
    step_s = float(np.median(times))
    xla_flops = float(cost.get("flops", float("nan"))) / args.batch
    analytic = analytic_step_flops(config)
    peak = None
    if mem is not None:
        peak = int(mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
                   - mem.alias_size_in_bytes)
    print(json.dumps({
        "benchmark": "train_step", "method": "byol", "preset": args.preset, "model": config.model.name,
        "width": config.model.width, "image_size": size, "global_batch": args.batch, "dtype": args.dtype,
        "devices": mesh.devices.size, "backend": jax.default_backend(), "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "compile_s": round(compile_s, 1),
        "step_s_median": round(step_s, 4), "images_per_s": round(args.batch / step_s, 2),
        "xla_gflops_per_image": round(xla_flops / 1e9, 4),
        "analytic_gflops_per_image": round(analytic / 1e9, 4),
        "xla_over_analytic": round(xla_flops / analytic, 4),
        "achieved_gflops_per_s": round(xla_flops * args.batch / step_s / 1e9, 1),
        "peak_memory_mb": None if peak is None else round(peak / 2**20, 1),
    }))


if __name__ == "__main__":
    main()
