"""ssl_jax/hlo_collectives.py: collective bytes read from compiled HLO text.

Hand-written HLO snippets with byte counts worked out by hand, and one real compile on 8
simulated CPU devices (in a subprocess: the device count must be set before JAX starts)."""
import json
import subprocess
import sys
import textwrap

import pytest

from ssl_jax import hlo_collectives
from ssl_jax.hlo_collectives import (KINDS, collective_bytes, group_size, ideal_bytes,
                                        parse_collectives, shape_bytes, split_tuple, strategy_of)
from tests.conftest import REPO_ROOT, device_env


def test_shape_bytes_dtypes_and_layouts():
    assert shape_bytes("f32[3,3,64,64]{3,2,1,0}") == 3 * 3 * 64 * 64 * 4
    assert shape_bytes("bf16[8,128]{1,0:T(8,128)(2,1)}") == 8 * 128 * 2
    assert shape_bytes("f16[10]{0}") == 20
    assert shape_bytes("s32[7]") == 28 and shape_bytes("u32[]") == 4
    assert shape_bytes("pred[5]{0}") == 5
    assert shape_bytes("s8[3]") == 3 and shape_bytes("f8e4m3fn[6]") == 6
    assert shape_bytes("s4[3]") == 2          # 12 bits, rounded up
    assert shape_bytes("f64[2]") == 16 and shape_bytes("c64[2]") == 16
    assert shape_bytes("f32[<=8,2]") == 64    # dynamic bound: the bound counts
    assert shape_bytes("(f32[2]{0}, /*index=1*/(bf16[4]{0}, pred[]))") == 8 + 8 + 1
    with pytest.raises(ValueError):
        shape_bytes("q7[2]")


def test_split_tuple():
    assert split_tuple("f32[2]{0}") == ["f32[2]{0}"]
    assert split_tuple("((f32[2]{0}, f32[3]{0}), (f32[16]{0}, f32[24]{0}))") == [
        "(f32[2]{0}, f32[3]{0})", "(f32[16]{0}, f32[24]{0})"]
    assert split_tuple("(f32[4,4]{1,0:T(2,2)}, u32[], u32[])") == ["f32[4,4]{1,0:T(2,2)}", "u32[]", "u32[]"]


def test_group_size_spellings():
    assert group_size("replica_groups={{0,1,2,3},{4,5,6,7}}, to_apply=%add") == 4
    assert group_size("replica_groups=[2,4]<=[4,2]T(1,0), dimensions={0}") == 4
    assert group_size("replica_groups=[1,8]<=[8]") == 8
    assert group_size("replica_groups=mesh['data'=2,'fsdp'=4] {'fsdp'}, x") == 4
    assert group_size("replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_0','axis_1'}") == 8
    assert group_size("replica_groups=mesh['axis_0'=4,'axis_1'=2], device_ids=([2,4]T(1,0)) {'axis_0'}, "
                      "use_global_device_ids=true") == 4
    assert group_size("replica_groups=mesh['a'=2,'b'=4] {'a','b':(2)2}, x") == 4
    assert group_size("replica_groups={}, to_apply=%add") is None
    assert group_size("replica_groups=mesh['a'=2], to_apply=%add, metadata={op_name=\"x\"}") is None


# ENTRY of a hand-written module: a combined (tuple) f32/bf16 all-reduce, an async
# all-gather, an async bf16 all-reduce, a sync reduce-scatter, a reduce-scatter wrapped in
# a generic async-start, an async collective-permute, an all-to-all, and look-alikes that
# are not collectives (a fusion named after one, a `-done`).
HLO = textwrap.dedent("""\
    HloModule jit_step, entry_computation_layout={(f32[8,1024]{1,0})->f32[1,1024]{1,0}}

    %add (a: f32[], b: f32[]) -> f32[] {
      %a = f32[] parameter(0)
      %b = f32[] parameter(1)
      ROOT %sum = f32[] add(f32[] %a, f32[] %b)
    }

    %wrapped_reduce_scatter_computation (param_0: f32[4,256]) -> f32[1,256] {
      %param_0 = f32[4,256]{1,0} parameter(0)
      ROOT %reduce-scatter.9 = f32[1,256]{1,0} reduce-scatter(%param_0), channel_id=7, replica_groups=[2,4]<=[8], dimensions={0}, to_apply=%add
    }

    ENTRY %main.0_spmd (param: f32[8,1024], p1: f32[512], p2: f32[3,3,64,64], p3: bf16[10], p4: bf16[1024,256]) -> f32[1,1024] {
      %param = f32[8,1024]{1,0} parameter(0), sharding={replicated}
      %p1 = f32[512]{0} parameter(1)
      %p2 = f32[3,3,64,64]{3,2,1,0} parameter(2)
      %p3 = bf16[10]{0} parameter(3)
      %p4 = bf16[1024,256]{1,0} parameter(4)
      %all-reduce.60 = (f32[512]{0}, f32[3,3,64,64]{3,2,1,0}, /*index=2*/bf16[10]{0}) all-reduce(%p1, %p2, %p3), channel_id=5, replica_groups={{0,1,2,3,4,5,6,7}}, use_global_device_ids=true, to_apply=%add, metadata={op_name="jit(step)/all-reduce(x)"}
      %all-gather-start = (f32[16,64]{1,0}, f32[128,64]{1,0}) all-gather-start(%slice.1), channel_id=1, replica_groups=[1,8]<=[8], dimensions={0}, use_global_device_ids=true
      %all-gather-done = f32[128,64]{1,0} all-gather-done(%all-gather-start)
      %all-reduce-start = bf16[1024,256]{1,0} all-reduce-start(%p4), channel_id=2, replica_groups=mesh['data'=2,'fsdp'=4] {'fsdp'}, use_global_device_ids=true, to_apply=%add
      %all-reduce-done = bf16[1024,256]{1,0} all-reduce-done(%all-reduce-start)
      %fusion.all-reduce = f32[128,64]{1,0} fusion(%all-gather-done), kind=kLoop, calls=%fused_computation
      %reduce-scatter = f32[1,1024]{1,0} reduce-scatter(%param), channel_id=3, replica_groups={{0,1,2,3,4,5,6,7}}, dimensions={0}, to_apply=%add
      %reduce-scatter-start = ((f32[4,256]{1,0}), f32[1,256]{1,0}) async-start(%slice.2), calls=%wrapped_reduce_scatter_computation
      %reduce-scatter-done = f32[1,256]{1,0} async-done(%reduce-scatter-start)
      %collective-permute-start = (f32[4,4]{1,0}, f32[4,4]{1,0}, u32[], u32[]) collective-permute-start(%x), channel_id=4, source_target_pairs={{0,1},{1,0}}
      %collective-permute-done = f32[4,4]{1,0} collective-permute-done(%collective-permute-start)
      %all-to-all = s32[8,16]{1,0} all-to-all(%y), channel_id=6, replica_groups={{0,1},{2,3},{4,5},{6,7}}, dimensions={0}
      ROOT %copy = f32[1,1024]{1,0} copy(%reduce-scatter)
    }
    """)


def test_parse_hand_written_module():
    stats = collective_bytes(HLO)
    assert set(stats) == set(KINDS) | {"total"}
    # One combined all-reduce: 512 f32 + 3*3*64*64 f32 + 10 bf16; plus the async bf16 one.
    combined = 512 * 4 + 3 * 3 * 64 * 64 * 4 + 10 * 2
    assert combined == 149524
    async_bf16 = 1024 * 256 * 2
    assert stats["all-reduce"]["count"] == 2
    assert stats["all-reduce"]["bytes"] == combined + async_bf16
    # all-gather-start: the result (second tuple element), counted once (not the -done).
    assert stats["all-gather"] == {"count": 1, "bytes": 128 * 64 * 4, "link_bytes": 128 * 64 * 4 * 7 / 8}
    # reduce-scatter: the operands (8x1024 f32 looked up by name; 4x256 f32 inside the
    # wrapped async computation), the async wrapper itself not counted again.
    assert stats["reduce-scatter"]["count"] == 2
    assert stats["reduce-scatter"]["bytes"] == 8 * 1024 * 4 + 4 * 256 * 4
    assert stats["collective-permute"] == {"count": 1, "bytes": 64, "link_bytes": 64.0}
    assert stats["all-to-all"] == {"count": 1, "bytes": 8 * 16 * 4, "link_bytes": 8 * 16 * 4 / 2}
    assert stats["total"]["count"] == 7
    assert stats["total"]["bytes"] == sum(stats[k]["bytes"] for k in KINDS)
    # Link traffic: all-reduce 2(n-1)/n x buffer, n = 8 for the combined one, 4 for bf16.
    assert stats["all-reduce"]["link_bytes"] == pytest.approx(combined * 2 * 7 / 8 + async_bf16 * 2 * 3 / 4)
    names = {r["name"] for r in parse_collectives(HLO)}
    assert "fusion.all-reduce" not in names and "all-gather-done" not in names


def test_reduce_scatter_operand_fallback_from_group_size():
    # Operand not defined in the text: result size x group size.
    hlo = "%rs = bf16[2,64]{1,0} reduce-scatter(%missing), replica_groups=[1,8]<=[8], dimensions={0}, to_apply=%add"
    assert collective_bytes(hlo)["reduce-scatter"]["bytes"] == 2 * 64 * 2 * 8


def test_combined_all_gather_start():
    hlo = ("%ags = ((f32[2]{0}, bf16[4]{0}), (f32[16]{0}, bf16[32]{0})) all-gather-start(%a, %b), "
           "replica_groups={{0,1,2,3,4,5,6,7}}, dimensions={0}")
    assert collective_bytes(hlo)["all-gather"]["bytes"] == 16 * 4 + 32 * 2


def test_ideal_bytes():
    assert ideal_bytes(1000, "dp") == {"all-reduce": 1000, "all-gather": 0, "reduce-scatter": 0, "total": 1000}
    f = ideal_bytes(1000, "fsdp", fsdp=8, replicated_bytes=10, forward_only_bytes=500)
    assert f == {"all-reduce": 10, "all-gather": 1500, "reduce-scatter": 1000, "total": 2510}
    h = ideal_bytes(800, "hsdp", data=2, fsdp=4, replicated_bytes=10)
    assert h == {"all-reduce": 10 + 200, "all-gather": 800, "reduce-scatter": 800, "total": 1810}
    assert [strategy_of(8, 1), strategy_of(1, 8), strategy_of(2, 4)] == ["dp", "fsdp", "hsdp"]
    with pytest.raises(ValueError):
        ideal_bytes(1, "zero2")


REAL = textwrap.dedent("""\
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from ssl_jax.hlo_collectives import collective_bytes
    mesh = Mesh(np.array(jax.devices()), ("x",))
    split, whole = NamedSharding(mesh, P("x")), NamedSharding(mesh, P())
    # A batch split 8 ways reduced over the batch: partial sums, one all-reduce of f32[1024].
    x = jax.ShapeDtypeStruct((64, 1024), jnp.float32)
    reduce = jax.jit(lambda a: jnp.sum(a, axis=0), in_shardings=split, out_shardings=whole)
    # Gradient of a replicated f32[256,128] weight on a split batch: all-reduce of the gradient.
    w, b = jax.ShapeDtypeStruct((256, 128), jnp.float32), jax.ShapeDtypeStruct((64, 256), jnp.float32)
    grad = jax.jit(jax.grad(lambda w, b: jnp.sum(jnp.tanh(b @ w))), in_shardings=(whole, split),
                   out_shardings=whole)
    # Split -> replicated reshard of an f32[64,256]: one all-gather of the whole array.
    gather = jax.jit(lambda a: a + 1.0, in_shardings=split, out_shardings=whole)
    print(json.dumps({
        "devices": jax.device_count(),
        "reduce": collective_bytes(reduce.lower(x).compile().as_text()),
        "grad": collective_bytes(grad.lower(w, b).compile().as_text()),
        "gather": collective_bytes(gather.lower(b).compile().as_text()),
    }))
    """)


def test_real_compiled_collectives_on_8_simulated_devices():
    env = device_env(8)
    proc = subprocess.run([sys.executable, "-c", REAL], check=False, env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 8
    for name, kind, nbytes in (("reduce", "all-reduce", 1024 * 4),
                               ("grad", "all-reduce", 256 * 128 * 4),
                               ("gather", "all-gather", 64 * 256 * 4)):
        stats = out[name]
        assert stats[kind] == {"count": 1, "bytes": nbytes,
                               "link_bytes": nbytes * (2 if kind == "all-reduce" else 1) * 7 / 8}, (name, stats)
        assert stats["total"]["bytes"] == nbytes, (name, stats)


LOOPED = textwrap.dedent("""\
    HloModule looped

    %add (a: f32[], b: f32[]) -> f32[] {
      %a = f32[] parameter(0)
      %b = f32[] parameter(1)
      ROOT %sum = f32[] add(f32[] %a, f32[] %b)
    }

    %inner_cond (p: (s32[], f32[64])) -> pred[] {
      %p = (s32[], f32[64]{0}) parameter(0)
      %i = s32[] get-tuple-element(%p), index=0
      %n = s32[] constant(3)
      ROOT %lt = pred[] compare(%i, %n), direction=LT
    }

    %inner_body (p: (s32[], f32[64])) -> (s32[], f32[64]) {
      %p = (s32[], f32[64]{0}) parameter(0)
      %x = f32[64]{0} get-tuple-element(%p), index=1
      %cp = f32[64]{0} collective-permute(%x), channel_id=9, source_target_pairs={{0,1},{1,0}}
      ROOT %t = (s32[], f32[64]{0}) tuple(%i, %cp)
    }

    %outer_cond (p: (s32[], f32[64])) -> pred[] {
      %p = (s32[], f32[64]{0}) parameter(0)
      %i = s32[] get-tuple-element(%p), index=0
      %n = s32[]{:T(128)} constant(4)
      ROOT %lt = pred[] compare(%i, %n), direction=LT
    }

    %outer_body (p: (s32[], f32[64])) -> (s32[], f32[64]) {
      %p = (s32[], f32[64]{0}) parameter(0)
      %x = f32[64]{0} get-tuple-element(%p), index=1
      %ar = f32[64]{0} all-reduce(%x), channel_id=8, replica_groups={{0,1}}, to_apply=%add
      %w = (s32[], f32[64]{0}) while(%p), condition=%inner_cond, body=%inner_body
      ROOT %t = (s32[], f32[64]{0}) tuple(%i, %ar)
    }

    %unknown_cond (p: (s32[], f32[64])) -> pred[] {
      %p = (s32[], f32[64]{0}) parameter(0)
      ROOT %c = pred[] custom-call(%p), custom_call_target="done"
    }

    %unknown_body (p: (s32[], f32[64])) -> (s32[], f32[64]) {
      %p = (s32[], f32[64]{0}) parameter(0)
      %x = f32[64]{0} get-tuple-element(%p), index=1
      %ag = f32[128]{0} all-gather(%x), channel_id=7, replica_groups={{0,1}}, dimensions={0}
      ROOT %t = (s32[], f32[64]{0}) tuple(%i, %x)
    }

    ENTRY %main (x: f32[64]) -> f32[64] {
      %x = f32[64]{0} parameter(0)
      %ar0 = f32[64]{0} all-reduce(%x), channel_id=1, replica_groups={{0,1}}, to_apply=%add
      %w = (s32[], f32[64]{0}) while(%t0), condition=%outer_cond, body=%outer_body, metadata={op_name="map"}
      %u = (s32[], f32[64]{0}) while(%t0), condition=%unknown_cond, body=%unknown_body
      ROOT %r = f32[64]{0} copy(%ar0)
    }
    """)


def test_per_step_counts_multiply_loop_bodies_by_their_trip_counts():
    static, per_step = collective_bytes(LOOPED), hlo_collectives.collective_bytes_per_step(LOOPED)
    assert static["all-reduce"]["count"] == 2 and static["collective-permute"]["count"] == 1
    # all-reduce: once in the entry + once per outer iteration (4); the permute: 4 x 3 nested.
    assert per_step["all-reduce"] == {"count": 5, "bytes": 5 * 256, "link_bytes": 5 * 256.0}
    assert per_step["collective-permute"]["count"] == 12 and per_step["collective-permute"]["bytes"] == 12 * 256
    # A loop whose condition is not `counter < constant` is counted once and reported.
    assert per_step["all-gather"]["count"] == 1 and per_step["unknown_trip_loops"] == 1
    assert per_step["total"]["bytes"] == sum(per_step[k]["bytes"] for k in KINDS)
