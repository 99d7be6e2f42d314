"""Forward, input-gradient and weight-gradient time of XLA's 3x3 convolutions at the shapes of
a ResNet-18 with the CIFAR stem (run by hand, not in CI).

    python benchmarks/conv_layers.py [--batch 64] [--reps 7]

Prints ONE JSON line: per stage (32²×64, 16²×128, 8²×256, 4²×512; stride 1, SAME padding,
float32, NHWC / HWIO), the median milliseconds of the forward convolution, of its gradient
with respect to the input and of its gradient with respect to the kernel, each by XLA and by
oneDNN's custom calls (ssl_jax.native, where available), and of XLA's three in one compiled
function, with the GFLOP/s of each (2·N·H·W·9·C_in·C_out FLOPs per convolution).

The library's XLA flags are set before JAX starts so that the convolutions run under the library's own CPU default
(YNNPACK fusion off, ssl_jax.xla_flags.set_cpu_defaults); the XLA flags in effect are printed with the result.
Before 2026-11-22 this script imported JAX alone and so measured XLA with YNNPACK on, under which
the weight gradient at 32²×64 takes 3x as long (benchmarks/RESULTS_train_step.md, section 12).
"""
import argparse
import json
import os
import time

from ssl_jax import xla_flags

xla_flags.set_cpu_defaults()  # the commands' XLA CPU flags, before JAX starts
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

from ssl_jax import native  # noqa: E402
from ssl_jax.models.conv import onednn_conv  # noqa: E402

STAGES = ((32, 64), (16, 128), (8, 256), (4, 512))


def conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def median_ms(fn, args, reps: int) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    fns = {
        "forward": jax.jit(lambda x, w, dy: conv(x, w)),
        "input_grad": jax.jit(lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0]),
        "weight_grad": jax.jit(lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0]),
        "forward_and_both_grads": jax.jit(lambda x, w, dy: (lambda y, vjp: (y, vjp(dy)))(*jax.vjp(conv, x, w))),
    }
    if native.onednn_conv_available():
        same = ((1, 1), ((1, 1), (1, 1)))
        fns["forward_onednn"] = jax.jit(lambda x, w, dy: onednn_conv("forward", x, w, *same))
        fns["input_grad_onednn"] = jax.jit(lambda x, w, dy: onednn_conv("input_grad", dy, w, *same, out_shape=x.shape))
        fns["weight_grad_onednn"] = jax.jit(lambda x, w, dy: onednn_conv("weight_grad", x, dy, *same, out_shape=w.shape))
    result = {"benchmark": "conv_layers", "batch": args.batch, "backend": jax.default_backend(),
              "xla_flags": os.environ.get("XLA_FLAGS", ""), "stages": {}}
    for hw, c in STAGES:
        kx, kw, kd = jax.random.split(jax.random.PRNGKey(hw), 3)
        x = jax.random.normal(kx, (args.batch, hw, hw, c), jnp.float32)
        w = jax.random.normal(kw, (3, 3, c, c), jnp.float32) * (9 * c) ** -0.5
        dy = jax.random.normal(kd, (args.batch, hw, hw, c), jnp.float32)
        gflop = 2 * args.batch * hw * hw * 9 * c * c / 1e9
        stage = {}
        for name, fn in fns.items():
            ms = median_ms(fn, (x, w, dy), args.reps)
            convs = 3 if name == "forward_and_both_grads" else 1
            stage[name] = {"ms": round(ms, 1), "gflop_per_s": round(convs * gflop / ms * 1e3, 1)}
        result["stages"][f"{hw}x{hw}x{c}"] = stage
    print(json.dumps(result))


if __name__ == "__main__":
    main()
