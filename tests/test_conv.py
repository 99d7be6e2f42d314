"""oneDNN's convolutions (ssl_jax/native, ssl_jax.models.conv) against XLA's convolution and its autodiff."""
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ssl_jax import native, presets
from ssl_jax.models import build_encoder
from ssl_jax.models.conv import MIN_ONEDNN_OUTPUT_PIXELS, conv_with_onednn, onednn_conv, resolve_conv_backend
from tests.conftest import REPO_ROOT, device_env

needs_onednn = pytest.mark.skipif(not native.onednn_conv_available(),
                                  reason=f"oneDNN kernels unavailable: {native.unavailable_reason()}")
NHWC = ("NHWC", "HWIO", "NHWC")

# (input [N, H, W, Ci], kernel [KH, KW, Ci, Co], strides, padding): the ResNet convolutions
# (3x3 same, strided 3x3 with (0, 1) or (1, 1) padding, strided 1x1, the 7x7/2 stem, the
# 3-channel CIFAR stem) and a non-square, uneven one.
CASES = [
    ((4, 16, 16, 8), (3, 3, 8, 8), (1, 1), ((1, 1), (1, 1))),
    ((4, 16, 16, 8), (3, 3, 8, 16), (2, 2), ((0, 1), (0, 1))),
    ((4, 16, 16, 8), (3, 3, 8, 16), (2, 2), ((1, 1), (1, 1))),
    ((4, 16, 16, 8), (1, 1, 8, 16), (2, 2), ((0, 0), (0, 0))),
    ((2, 32, 32, 3), (7, 7, 3, 8), (2, 2), ((3, 3), (3, 3))),
    ((4, 16, 16, 3), (3, 3, 3, 8), (1, 1), ((1, 1), (1, 1))),
    ((3, 9, 13, 5), (3, 2, 5, 7), (2, 1), ((2, 0), (1, 0))),
]


def _data(x_shape, w_shape, strides, padding, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(x_shape, np.float32))
    w = jnp.asarray(rng.standard_normal(w_shape, np.float32))
    y = lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)
    dy = jnp.asarray(rng.standard_normal(y.shape, np.float32))
    return x, w, dy


def _close(got, want, tol=1e-5):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= tol * np.max(np.abs(want))


@needs_onednn
@pytest.mark.parametrize("x_shape,w_shape,strides,padding", CASES)
def test_onednn_operations_equal_xla(x_shape, w_shape, strides, padding):
    """Forward, input gradient and kernel gradient, each against XLA's."""
    x, w, dy = _data(x_shape, w_shape, strides, padding)
    y, vjp = jax.vjp(lambda x, w: lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC), x, w)
    dx, dw = vjp(dy)
    ops = jax.jit(lambda x, w, dy: (onednn_conv("forward", x, w, strides, padding),
                                    onednn_conv("input_grad", dy, w, strides, padding, out_shape=x.shape),
                                    onednn_conv("weight_grad", x, dy, strides, padding, out_shape=w.shape)))
    for got, want in zip(ops(x, w, dy), (y, dx, dw)):
        _close(got, want)


@needs_onednn
@pytest.mark.parametrize("case", [0, 1, 4])
def test_conv_forward_and_both_gradients_equal_lax(case):
    """Through the wrapper (a custom_vjp): the same output and gradients as lax, and the three
    custom calls really are in the compiled forward and gradient."""
    x_shape, w_shape, strides, padding = CASES[case]
    x, w, dy = _data(x_shape, w_shape, strides, padding, seed=1)
    ref = lambda x, w: lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)
    new = lambda x, w: conv_with_onednn(x, w, strides, padding, dimension_numbers=NHWC)
    y_ref, vjp_ref = jax.vjp(ref, x, w)
    y_new, vjp_new = jax.vjp(new, x, w)
    _close(y_new, y_ref)
    for got, want in zip(vjp_new(dy), vjp_ref(dy)):
        _close(got, want)
    hlo = jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(new(x, w)) * dy), argnums=(0, 1))).lower(x, w).as_text()
    for target in native.FFI_TARGETS:
        assert target in hlo, target
    # Under vmap the custom calls run once per mapped element, with lax's results.
    xs, dys = jnp.stack([x, 2 * x]), jnp.stack([dy, -dy])
    grads = jax.vmap(jax.grad(lambda x, w, dy: jnp.sum(new(x, w) * dy), argnums=(0, 1)), (0, None, 0))
    ref_grads = jax.vmap(jax.grad(lambda x, w, dy: jnp.sum(ref(x, w) * dy), argnums=(0, 1)), (0, None, 0))
    for got, want in zip(grads(xs, w, dys), ref_grads(xs, w, dys)):
        _close(got, want)


def test_uncovered_convolutions_are_plain_xla():
    """Grouped, dilated and bfloat16 convolutions and those with a small output map give lax's
    results and gradients with no custom call; string padding is resolved as lax resolves it."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 4), np.float32))
    w_grouped = jnp.asarray(rng.standard_normal((3, 3, 2, 4), np.float32))
    w = jnp.asarray(rng.standard_normal((3, 3, 4, 4), np.float32))
    cases = {
        "grouped": (x, w_grouped, dict(feature_group_count=2)),
        "dilated": (x, w, dict(rhs_dilation=(2, 2))),
        "bfloat16": (x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), {}),
        "7x7 output": (x[:, :7, :7], w, {}),
    }
    assert 7 * 7 < MIN_ONEDNN_OUTPUT_PIXELS <= 8 * 8
    for name, (xc, wc, kw) in cases.items():
        def loss(conv, x, w):
            return jnp.sum(conv(x, w, (1, 1), "SAME", dimension_numbers=NHWC, **kw).astype(jnp.float32) ** 2)
        grad = jax.grad(loss, argnums=(1, 2))
        for got, want in zip(grad(conv_with_onednn, xc, wc), grad(lax.conv_general_dilated, xc, wc)):
            np.testing.assert_array_equal(got, want, err_msg=name)
        jaxpr = str(jax.make_jaxpr(lambda x, w: grad(conv_with_onednn, x, w))(xc, wc))
        assert "ffi_call" not in jaxpr and "custom_vjp" not in jaxpr, name
    x16 = jnp.asarray(rng.standard_normal((2, 16, 16, 4), np.float32))
    strided_same = lambda f: f(x16, w, (2, 2), "SAME", dimension_numbers=NHWC)
    _close(strided_same(conv_with_onednn), strided_same(lax.conv_general_dilated))


@needs_onednn
def test_resnet_gradients_and_params_equal_with_either_backend():
    """A ResNet-18 (CIFAR stem) and a ResNet-50 (ImageNet stem, bottlenecks) at small width:
    the same parameters, outputs and gradients (float32 summation order aside)."""
    rng = np.random.default_rng(3)
    for name, cifar, size in (("resnet18", True, 16), ("resnet50", False, 32)):
        x = jnp.asarray(rng.random((4, size, size, 3), np.float32))
        out = {}
        for impl in ("xla", "onednn"):
            cfg = presets.base_config("byol").model
            cfg.update(dict(name=name, width=0.125, cifar_stem=cifar, dtype="float32", conv_backend=impl))
            enc = build_encoder(cfg)
            assert enc.conv_backend == impl
            v = enc.init(jax.random.PRNGKey(0), x, train=False)

            def loss(p):
                h, _ = enc.apply({"params": p, "batch_stats": v["batch_stats"]}, x, train=True,
                                 mutable=["batch_stats"])
                return jnp.sum(jnp.sin(3 * h))
            out[impl] = (v["params"], *jax.jit(jax.value_and_grad(loss))(v["params"]))
        jax.tree.map(np.testing.assert_array_equal, out["xla"][0], out["onednn"][0])
        np.testing.assert_allclose(out["onednn"][1], out["xla"][1], rtol=1e-6)
        jax.tree.map(lambda a, b: _close(a, b, 1e-4), out["onednn"][2], out["xla"][2])


def test_resolve_conv_backend_choices():
    assert resolve_conv_backend("xla") == "xla"
    with pytest.raises(ValueError, match="conv_backend='cudnn' is not one of"):
        resolve_conv_backend("cudnn")
    want = "onednn" if native.onednn_conv_available() else "xla"
    assert resolve_conv_backend("auto") == want
    if want == "xla":
        with pytest.raises(ValueError, match="unavailable"):
            resolve_conv_backend("onednn")


def test_resolve_conv_backend_follows_the_target_devices_not_the_host():
    """A compile for one TPU (python -m ssl_jax.compile) from this one-CPU host: 'auto' is XLA,
    'onednn' an error; one CPU device given explicitly resolves as the host does."""
    tpu = types.SimpleNamespace(platform="tpu")
    assert resolve_conv_backend("auto", devices=[tpu]) == "xla"
    with pytest.raises(ValueError, match="runs on 1 tpu device"):
        resolve_conv_backend("onednn", devices=[tpu])
    assert resolve_conv_backend("auto", devices=jax.devices()[:1]) == resolve_conv_backend("auto")


def test_resolve_conv_backend_on_eight_devices_keeps_xla():
    """The custom calls are not partitioned: with 8 devices 'auto' is XLA and 'onednn' an error."""
    code = ("from ssl_jax.models.conv import resolve_conv_backend\n"
            "assert resolve_conv_backend('auto') == 'xla'\n"
            "try:\n    resolve_conv_backend('onednn')\nexcept ValueError as e:\n"
            "    assert 'one CPU device, the model runs on 8 cpu device(s)' in str(e), e\n"
            "else:\n    raise AssertionError('no error')\n")
    subprocess.run([sys.executable, "-c", code], env=device_env(8), cwd=REPO_ROOT, check=True, timeout=300)


@needs_onednn
def test_independent_calls_in_one_program_agree_with_lax():
    """XLA runs independent operations concurrently: four networks' gradients in one program,
    repeated. Without the kernels' lock, calls sharing oneDNN's scratchpad corrupted each
    other or spun forever."""
    rng = np.random.default_rng(4)
    xs = [jnp.asarray(rng.standard_normal((32, 16, 16, 16), np.float32)) for _ in range(4)]
    ws = [jnp.asarray(0.1 * rng.standard_normal((3, 3, 16, 16), np.float32)) for _ in range(3)]

    def grads(conv):
        def net(ws, x):
            for w in ws:
                x = jnp.tanh(conv(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC))
            return jnp.sum(x ** 2)
        return jax.jit(lambda ws, *xs: [jax.grad(net)(ws, x) for x in xs])

    want = grads(lax.conv_general_dilated)(ws, *xs)
    run = grads(conv_with_onednn)
    for _ in range(10):
        jax.tree.map(_close, run(ws, *xs), want)
