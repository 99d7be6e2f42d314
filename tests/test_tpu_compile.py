"""python -m ssl_jax.compile: a run compiled for a TPU topology on this CPU machine.

One compile (module fixture) of SwAV's demo preset (multi-crop: 2 x 16 px + 2 x 8 px, a ResNet-10
at width 1/8, batch 16) for v5e:2x2 (4 chips) with a (data 2, fsdp 2) mesh: the TPU compiler
must accept the step and the evaluation feature pass, no CPU-only custom call (oneDNN) may leak
into them, the collectives must be those of the mesh, and the report must carry its fields.
Needs libtpu (pip install -e ".[tpu]"); the unit tests of the counting and estimate rules do not.
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from ssl_jax import compile as compile_lib
from ssl_jax import parallel, presets
from tests.conftest import REPO_ROOT

TOPOLOGY = "v5e:2x2"
# Before any JAX backend starts in this process (collection comes first): libtpu's host-wide lock
# would refuse a second compile-only client (another test process, a compile running beside).
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def _has_libtpu() -> bool:
    try:
        import libtpu  # noqa: F401
    except ImportError:
        return False
    return True


needs_libtpu = pytest.mark.skipif(not _has_libtpu(), reason="libtpu is not installed (pip install -e \".[tpu]\"): "
                                  "no TPU compiler to compile for a topology")


@pytest.fixture(scope="module")
def compiled():
    config = presets.load_config_file("configs/swav.py:demo")
    config.global_batch_size = 16
    config.mesh.fsdp = 2
    config.model.name = "resnet10"  # the demo's ResNet-18 layers at one block per stage: less to compile
    assert config.model.conv_backend == "auto"  # resolved for the TPU, not for this 1-CPU host
    devices, spec = compile_lib.topology_devices(TOPOLOGY)
    program = compile_lib.build_programs(config, devices)
    return program, compile_lib.report(program, spec, TOPOLOGY)


@needs_libtpu
def test_no_cpu_only_call_and_the_multicrop_batch(compiled):
    program, r = compiled
    assert [d.platform for d in program.mesh.devices.flat] == ["tpu"] * 4
    assert program.config.model.conv_backend == "xla"
    for name in ("train", "features"):
        assert r[name]["cpu_only_calls"] == [], r[name]["custom_calls"]
    text = program.train.as_text()
    assert "ssl_jax_onednn" not in text
    # The multi-crop batch: 2 global 16-px and 2 local 8-px views, 16 images split over 4
    # devices (4 rows each in the per-device program's parameters).
    assert [v.shape for v in program.batch["views"]] == [(16, 16, 16, 3)] * 2 + [(16, 8, 8, 3)] * 2
    assert "f32[4,16,16,3]" in text and "f32[4,8,8,3]" in text


@needs_libtpu
def test_collectives_follow_the_mesh(compiled):
    _, r = compiled
    c = r["collectives"]
    assert c["strategy"] == "hsdp"
    measured, ideal = c["collectives"], c["ideal_collective_bytes"]
    # FSDP: split weights are gathered and gradients reduce-scattered (at batch 16 the
    # partitioner moves activations instead for some layers, so not every weight is gathered);
    # data parallelism over the other axis: gradients are summed over it (at least each
    # device's shard of them).
    assert measured["all-gather"]["bytes"] > 0 and measured["reduce-scatter"]["bytes"] > 0
    assert measured["all-reduce"]["bytes"] >= ideal["all-reduce"] > 0
    assert c["collective_over_ideal"] >= 0.5


@needs_libtpu
def test_report_fields(compiled):
    program, r = compiled
    t, f = r["train"], r["features"]
    assert (r["devices"], r["chips"], r["hosts"], r["mesh"]) == (4, 4, 1, {"data": 2, "fsdp": 2})
    for rec in (t, f):
        assert 0 < rec["hbm_used_bytes"] <= rec["hbm_capacity_bytes"] == 16 * 2 ** 30 and rec["fits"]
    # Matmuls and convolutions are nearly all of the work: XLA's count adds the elementwise
    # rest (BatchNorm, activations, the optimizer).
    assert 1.0 <= t["flops_over_analytic"] < 1.3
    e = t["estimate"]
    assert e["step_s"] >= e["roofline_s"] > 0
    assert t["images_per_s_per_chip"] == pytest.approx(16 / e["step_s"] / 4)
    assert t["estimated_hours"] == pytest.approx(program.total_steps * e["step_s"] / 3600)
    # What the report lists when a program does not fit: the state's largest leaves per device
    # (FSDP halves a split kernel's bytes) and the program's largest values.
    leaves = compile_lib.largest_state_leaves(program.state, program.mesh)
    assert len(leaves) == 5 and [b for _, b in leaves] == sorted((b for _, b in leaves), reverse=True)
    expected = sorted(((x.size * x.dtype.itemsize) // (1 if parallel.fsdp_spec(x.shape, 2) == parallel.P() else 2)
                       for x in jax.tree.leaves(program.state)), reverse=True)[:5]
    assert [b for _, b in leaves] == expected
    assert compile_lib.largest_values(program.train.as_text())[0][1] > 0
    text = compile_lib.format_report(r)
    for needle in ("fits", "GFLOP per image", "collectives per device per step (hsdp)", "ESTIMATE", "images/s per chip",
                   "not a measurement", "CPU-only custom calls: none"):
        assert needle in text, text


@needs_libtpu
def test_fsdp_mesh_on_a_slice_without_an_axis_of_that_size():
    # v5e:4x4 is a 4x4 torus: no set of its axes multiplies to 8, so fsdp=8 needs a physical
    # axis split between data and fsdp (DINO and MoCo v3 ViT-B/L ask for fsdp=8; mesh_utils
    # refused them on v5e:4x4 and v4:4x4x4 until make_mesh allowed the split).
    devices, _ = compile_lib.topology_devices("v5e:4x4")
    mesh = parallel.make_mesh(fsdp=8, devices=devices)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 8}
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in devices)
    # a size the torus has still takes whole axes: each fsdp group of 4 is one row of the torus
    rows = parallel.make_mesh(fsdp=4, devices=devices).devices
    for group in rows:
        assert len({tuple(d.coords)[1] for d in group}) == 1 or len({tuple(d.coords)[0] for d in group}) == 1


@needs_libtpu
def test_rank_monitor_under_fsdp_is_not_partitioned():
    """The effective-rank monitor of a projector whose output axis FSDP splits: compiled by
    compile_step for the TPU, its SVD runs on a replicated sample, so the step's collectives are
    one all-reduce and the gathers of the sample, none inside the SVD's QR loops. Without the
    sample's replication constraint (ssl_jax.methods.base.rank_sample) XLA partitions the SVD
    over the output axis: 87 collectives per step here, against 42 counted once each."""
    from ssl_jax import hlo_collectives, monitors
    from ssl_jax.methods.base import rank_sample
    from ssl_jax.train import step as step_lib

    devices, _ = compile_lib.topology_devices(TOPOLOGY)
    mesh = parallel.make_mesh(devices=devices, data=2, fsdp=2)
    state = {"w": jax.ShapeDtypeStruct((256, 4096), jnp.float32)}  # fsdp_spec splits the 4096 outputs
    batch = {"x": jax.ShapeDtypeStruct((512, 256), jnp.float32)}

    def step(state, batch):
        return state, {"rank": monitors.effective_rank(rank_sample(batch["x"] @ state["w"]))}

    text = compile_lib.compile_lowered(step_lib.compile_step(step, state, mesh).lower(state, batch)).as_text()
    static, per_step = hlo_collectives.collective_bytes(text), hlo_collectives.collective_bytes_per_step(text)
    assert per_step["total"]["count"] == static["total"]["count"] <= 4, per_step
    assert static["all-to-all"]["count"] == static["collective-permute"]["count"] == 0
    # At most the [256, 4096] float32 sample (4 MiB) summed over data and gathered over fsdp.
    assert per_step["total"]["bytes"] <= 3 * 256 * 4096 * 4


@needs_libtpu
def test_hsdp_gradients_are_reduce_scattered():
    """Under hsdp (data 2 x fsdp 2) the gradients of FSDP-split weights are reduce-scattered over
    fsdp, then their shards all-reduced over data. On TPU GSPMD's reduce-scatter prints as an
    all-reduce + dynamic-slice inside an AllReduceScatterFusion (the emitter of an explicit
    lax.psum_scatter): the counter must see a reduce-scatter, and count the async collective
    fusion's copies of one gather once (the old counter: 3 all-reduces of 6 MiB, 4 gathers)."""
    from ssl_jax import hlo_collectives
    from ssl_jax.train import step as step_lib

    devices, _ = compile_lib.topology_devices(TOPOLOGY)
    mesh = parallel.make_mesh(devices=devices, data=2, fsdp=2)
    state = {"w1": jax.ShapeDtypeStruct((512, 1024), jnp.float32),
             "w2": jax.ShapeDtypeStruct((1024, 512), jnp.float32)}
    batch = {"x": jax.ShapeDtypeStruct((8192, 512), jnp.float32)}  # large enough that weights, not activations, move

    def loss(p, x):
        return jnp.mean((jax.nn.relu(x @ p["w1"]) @ p["w2"] - x) ** 2)

    def step(state, batch):
        grads = jax.grad(loss)(state, batch["x"])
        return jax.tree.map(lambda w, g: w - 0.1 * g, state, grads), {}

    text = compile_lib.compile_lowered(step_lib.compile_step(step, state, mesh).lower(state, batch)).as_text()
    c = hlo_collectives.collective_bytes(text)
    full = 2 * 512 * 1024 * 4  # both float32 gradients, full size
    assert c["reduce-scatter"]["bytes"] == full  # over fsdp: operand = the full gradients
    assert c["all-reduce"]["bytes"] <= full // 2 + 64  # over data: only the shards (+ scalars)
    # Each weight gathered at most once (2 MiB here): the async collective fusion's three
    # copies of a gather are one gather (counted each, 4 MiB).
    assert 0 < c["all-gather"]["bytes"] <= full // 2


@needs_libtpu
def test_swav_queue_moves_no_rows_between_devices():
    """SwAV with its queue in use, data parallel over 4 TPU chips: the batch's embeddings are
    gathered once into the (replicated) queue, and Sinkhorn runs on the queue's and the batch's
    rows as separate blocks (losses.sinkhorn_blocks), each split over the devices. Joined with
    the split batch instead, rows
    moved by 16 collective-permutes here, and by a 24.4 MiB all-to-all, 15 permutes and a
    gather per step for imagenet_256 on v3:2x2."""
    from ssl_jax import hlo_collectives
    config = presets.load_config_file("configs/swav.py:demo")
    config.global_batch_size = 16
    config.model.name = "resnet10"
    config.swav.update(dict(queue_length=16, queue_start_epoch=0.0))
    devices, _ = compile_lib.topology_devices(TOPOLOGY)
    program = compile_lib.build_programs(config, devices)
    assert dict(program.mesh.shape) == {"data": 4, "fsdp": 1}
    c = hlo_collectives.collective_bytes(program.train.as_text())
    assert c["all-to-all"]["count"] == c["collective-permute"]["count"] == 0, c
    # One gather: the two global crops' 16 embeddings of 64 floats, into the queue.
    assert (c["all-gather"]["count"], c["all-gather"]["bytes"]) == (1, 2 * 16 * 64 * 4), c


def test_matmul_flops_closed_form():
    """2 x multiply-adds of a conv and a dense layer, forward and both gradients, from the jaxpr."""
    x = jnp.zeros((2, 8, 8, 3))
    w = jnp.zeros((3, 3, 3, 4))
    d = jnp.zeros((4, 5))

    def f(w, d):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(y.mean((1, 2)) @ d)

    # 'SAME' 3x3 on 8x8: per axis 3 x 8 - 2 = 22 (position, tap) pairs read the image, not the padding.
    conv, dense = 2 * (2 * 4 * 3) * 22 * 22, 2 * 2 * 4 * 5
    assert compile_lib.matmul_flops(jax.make_jaxpr(f)(w, d)) == conv + dense
    # Gradients of both weights: the conv's kernel gradient and the dense layer's input and
    # weight gradients (none for the constant image x).
    assert compile_lib.matmul_flops(jax.make_jaxpr(jax.grad(f, argnums=(0, 1)))(w, d)) == 2 * conv + 3 * dense
    # A strided convolution's input gradient is a convolution of the dilated output gradient:
    # the same multiply-adds as the forward (the holes and the padding are not counted).
    strided = lambda x: jnp.sum(jax.lax.conv_general_dilated(x, w, (2, 2), "SAME",
                                                             dimension_numbers=("NHWC", "HWIO", "NHWC")))
    forward = compile_lib.matmul_flops(jax.make_jaxpr(strided)(x))
    # 'SAME' at stride 2 on 8 px pads 0 before, 1 after: per axis 4 outputs x 3 taps, less the
    # one tap on the padding = 11.
    assert forward == 2 * (2 * 4 * 3) * 11 * 11
    assert compile_lib.matmul_flops(jax.make_jaxpr(jax.grad(strided))(x)) == 2 * forward
    scanned = jax.make_jaxpr(lambda d: jax.lax.scan(lambda c, _: (c @ d[:, :4], None), jnp.zeros((2, 4)),
                                                    None, length=7)[0])(d)
    assert compile_lib.matmul_flops(scanned) == 7 * 2 * 2 * 4 * 4


def test_step_estimate_rules():
    spec = compile_lib.chip("v3")
    # 2 cores per v3 chip: each has half the chip's peak and bandwidth.
    bound = compile_lib.roofline_seconds(61.5e12, 1.0, spec)
    assert bound == pytest.approx(1.0)
    assert compile_lib.roofline_seconds(1.0, 450e9, spec) == pytest.approx(1.0)
    cost = {"flops": 61.5e12, "bytes accessed": 1.0}
    assert compile_lib.step_estimate(dict(cost, optimal_seconds=-14.26), spec)["used"] == "roofline"
    assert compile_lib.step_estimate(dict(cost, optimal_seconds=0.5), spec)["used"] == "roofline"  # below the peaks
    est = compile_lib.step_estimate(dict(cost, optimal_seconds=1.3), spec)
    assert (est["used"], est["step_s"]) == ("xla", 1.3)
    assert compile_lib.cpu_only_calls('custom_call_target="ssl_jax_onednn_conv_forward"') == ["ssl_jax_onednn_conv_forward"]
    assert compile_lib.cpu_only_calls('custom_call_target="EighTpu"') == []


def test_bad_topology_is_one_line():
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "ssl_jax.compile", "--config=configs/byol.py:demo",
                           "--topology=v9:2x2"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ssl_jax: error:")]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-2000:]
    assert "v9" in lines[0] and "v5e" in lines[0]
    assert "Traceback" not in proc.stderr


def test_out_of_memory_is_read_from_the_compiler_error():
    # The TPU compiler's refusal of BYOL's ImageNet step on v5e:4x4 at batch 4096 (256 per chip).
    message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
               "(32.80G) exceeds available HBM (15.75G).")
    oom = compile_lib.out_of_memory("jax.errors.JaxRuntimeError: " + message)
    assert (oom.required_bytes, oom.available_bytes) == (int(32.80 * 2 ** 30), int(15.75 * 2 ** 30))
    assert oom.message == message
    assert compile_lib.out_of_memory("INVALID_ARGUMENT: bad shape") is None
    # The other wording (DINO's ResNet-50 step on v5e:4x4, 16 MiB over).
    other = compile_lib.out_of_memory(
        "RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: XLA:TPU compile permanent error. Ran out of memory in "
        "memory space hbm. Used 15.76G of 15.75G hbm. Exceeded hbm capacity by 16.38M.")
    assert (other.required_bytes, other.available_bytes) == (int(15.76 * 2 ** 30), int(15.75 * 2 ** 30))
    # What the command prints for it: does not fit, how much, the largest state leaves.
    record = {"fits": False, "hbm_used_bytes": oom.required_bytes, "hbm_capacity_bytes": 16 * 2 ** 30,
              "compile_error": oom.message, "largest_state_leaves": [(".params['w']", 2 ** 30)]}
    report = {"method": "byol", "model": "resnet50", "dtype": "bfloat16", "remat": False, "topology": "v5e:4x4",
              "devices": 16, "chips": 16, "hosts": 4, "mesh": {"data": 16, "fsdp": 1}, "global_batch_size": 4096,
              "total_steps": 312000, "steps_per_epoch": 312, "notes": [],
              "train": dict(record, analytic_flops_per_image=63.4e9), "features": dict(record)}
    text = compile_lib.format_report(report)
    assert "train step: DOES NOT FIT: needs 32.80 GiB of 16.00 GiB per device" in text
    assert "largest state leaf per device: .params['w'] 1.00 GiB" in text and "63.40 GFLOP per image analytic" in text


def test_fussl_compiles_one_phase_at_a_time():
    # A staged run is several trainings: --phase picks one; without it, one error naming the flag.
    from ssl_jax.methods import build_method, fussl_phase2
    config = presets.load_config_file("configs/fussl.py:demo")
    with pytest.raises(ValueError, match=r"--phase=1 \| 2a \| 2b"):
        compile_lib.phase_config(config, None)
    with pytest.raises(ValueError, match="leave --phase out"):
        compile_lib.phase_config(presets.load_config_file("configs/byol.py:demo"), "1")
    phase1, notes = compile_lib.phase_config(config, "1")
    assert phase1.to_dict() == config.phase1.to_dict() and "phase 1" in notes[0]
    phase2b, _ = compile_lib.phase_config(config, "2b")
    assert phase2b.method == "fussl_phase2" and phase2b.fussl_phase2.frozen_stages == 3
    assert phase2b.num_epochs == config.phase2.num_epochs - config.fussl.e2_full and phase2b.init_weights == ""
    # The stand-in labels label every training image for each of the m blocks, and the method
    # accepts them for this training set (it checks their fingerprint and classes when built).
    labels = fussl_phase2.read_labels(phase2b.fussl_phase2.labels)
    assert labels["classes"].shape == (1437, config.fussl.ensemble_size)
    assert build_method(phase2b, 10).num_classes == config.phase2.fussl_phase2.projector.output_dim
    progressive = presets.load_config_file("configs/fussl.py:demo_progressive")
    phase2, _ = compile_lib.phase_config(progressive, "2")
    assert phase2.num_epochs == progressive.phase2.num_epochs and phase2.fussl_phase2.frozen_stages == 0
    with pytest.raises(ValueError, match=r"--phase=1 \| 2 "):
        compile_lib.phase_config(progressive, "2a")


def test_feature_pass_of_an_ensemble_reads_its_eval_block():
    # FUSSL's phase 1 is an ensemble (stacked [m, ...] params): the evaluation reads one block.
    import optax
    from ssl_jax.methods import build_method
    from ssl_jax.train import step as step_lib
    config = presets.load_config_file("configs/fussl.py:demo").phase1
    config.model.name = "resnet10"
    method = build_method(config, 10)
    s = config.data.image_size
    state = jax.eval_shape(lambda rng: step_lib.create_state(method, optax.sgd(0.1), rng, jnp.zeros((2, s, s, 3)), 10),
                           jax.random.PRNGKey(0))
    assert state.params["encoder"]["stem_conv"]["kernel"].shape[0] == config.ensemble.size
    lowered = compile_lib.lower_features(method, state, parallel.make_mesh(1), 8, s)
    assert lowered.out_info.shape == (8, method.block.encoder.feature_dim)


def test_an_ensemble_step_counts_its_loop_body_per_block():
    # lax.map over m blocks is one while loop: XLA counts its body once, the step runs it m times.
    cost = {"flops": 4.0e12, "bytes accessed": 1.0e11, "optimal_seconds": -1.0}
    assert compile_lib.per_step_cost(cost, 1) is cost
    scaled = compile_lib.per_step_cost(cost, 3)
    assert (scaled["flops"], scaled["bytes accessed"], scaled["optimal_seconds"]) == (1.2e13, 3.0e11, -1.0)
    spec = compile_lib.chip("v4")
    assert compile_lib.step_estimate(scaled, spec)["step_s"] == pytest.approx(
        3 * compile_lib.step_estimate(cost, spec)["step_s"])
