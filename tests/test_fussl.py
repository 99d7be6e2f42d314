"""FUSSL's phase 2 (ssl_jax.methods.fussl_phase2) and the staged run (ssl_jax/fussl.py, configs/fussl.py)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import losses
from ssl_jax.data import pipeline
from ssl_jax.methods import build_method, fussl_phase2
from ssl_jax.parallel import PER_EXAMPLE_KEY
from tests.test_faults import _sigterm_self


def synthetic_labels(path, data_cfg, num_classes, m=3, seed=0):
    """A labels file of fuzzy labels from random ensemble outputs, for the config's training set."""
    fp = pipeline.training_fingerprint(data_cfg)
    out = np.random.default_rng(seed).normal(size=(m, fp["num_examples"], num_classes)).astype(np.float32)
    classes, weights = losses.fuzzy_labels(jnp.asarray(out))
    fussl_phase2.write_labels(str(path), classes, weights, fp, chosen_block=0, block_errors=[1.0] * m,
                              config={"label_mode": "fuzzy"})
    return str(path)


def phase2_config(tmp_path, frozen_stages=0):
    """configs/fussl.py:demo's phase 2 at test size (ResNet-10, batch 16) on synthetic labels."""
    from configs import fussl
    c = fussl.get_config("demo").phase2
    c.model.update(dict(name="resnet10", conv_backend="xla"))
    c.global_batch_size = 16
    c.num_epochs = 2
    c.fussl_phase2.labels = synthetic_labels(tmp_path / "labels.npz", c.data, c.fussl_phase2.projector.output_dim)
    if frozen_stages:
        c.fussl_phase2.frozen_stages = frozen_stages
        c.optimizer.frozen_params = fussl_phase2.frozen_param_prefixes(frozen_stages, c.model.name)
    return c


def test_phase2_loss_is_soft_ce_against_the_rows_labels(tmp_path):
    """The step's loss is the soft-target CE (NumPy) of the projector output against the labels of
    the batch's dataset indices (not of its positions)."""
    config = phase2_config(tmp_path)
    method = build_method(config, total_steps=10, steps_per_epoch=5)
    images = np.random.default_rng(1).normal(size=(16, 16, 16, 3)).astype(np.float32)
    params, stats, state = method.init(jax.random.PRNGKey(0), jnp.asarray(images))
    index = np.random.default_rng(2).choice(method.num_examples, 16, replace=False)
    batch = {"views": (jnp.asarray(images),), "index": jnp.asarray(index), "label": jnp.zeros(16, jnp.int32)}
    loss, aux = method.loss(params, stats, state, batch, jax.random.PRNGKey(1), 0)
    out, _ = method.forward_online(params, stats, [jnp.asarray(images)])
    z = np.asarray(out["z"][0], np.float64)
    stored = fussl_phase2.read_labels(config.fussl_phase2.labels)
    y = np.zeros((16, z.shape[1]))
    for r, n in enumerate(index):
        for c, w in zip(stored["classes"][n], stored["weights"][n]):
            y[r, c] += w
    logits = z / np.linalg.norm(z, axis=1, keepdims=True) / 0.1
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(1, keepdims=True)
    np.testing.assert_allclose(float(loss), -(y * logp).sum(1).mean(), rtol=1e-4)
    per = state[PER_EXAMPLE_KEY]
    assert per["classes"].shape == (method.num_rows, 3) and per["weights"].dtype == jnp.float32


def test_frozen_stages_and_their_statistics_stay_bit_identical(tmp_path):
    """With stem..stage 3 frozen, three Adam steps leave their params and BatchNorm statistics
    bit-identical while stage 4 and the projector (params and statistics) change."""
    from tests.tiny_run import train_steps

    config = phase2_config(tmp_path, frozen_stages=3)
    start, _ = train_steps(config, image_size=16, steps=0, steps_per_epoch=5)
    p0, s0 = jax.device_get(start.params), jax.device_get(start.batch_stats)
    state, losses_ = train_steps(config, image_size=16, steps=3, steps_per_epoch=5)
    assert np.all(np.isfinite(losses_))
    p1, s1 = jax.device_get(state.params), jax.device_get(state.batch_stats)
    frozen = ("stem", "stage1", "stage2", "stage3")
    changed = []
    for tree0, tree1 in ((p0, p1), (s0, s1)):
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(tree0), jax.tree.leaves(
                {k: tree1[k] for k in tree0})):
            name = jax.tree_util.keystr(path)
            if "'encoder'" in name and any(f"'{f}" in name for f in frozen):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
            else:
                changed.append((name, not np.array_equal(np.asarray(a), np.asarray(b))))
    assert any("stage4" in n for n, _ in changed) and any("projector" in n for n, _ in changed)
    assert all(c for n, c in changed if n.endswith("['kernel']") or n.endswith("['mean']")), \
        [n for n, c in changed if not c]


def test_frozen_stages_without_the_optimizer_mask_is_one_error(tmp_path):
    config = phase2_config(tmp_path)
    config.fussl_phase2.frozen_stages = 3
    with pytest.raises(ValueError, match="optimizer.frozen_params lacks"):
        build_method(config, total_steps=10, steps_per_epoch=5)


def test_labels_of_another_training_set_are_one_error(tmp_path):
    config = phase2_config(tmp_path)
    path = tmp_path / "other.npz"
    fp = dict(pipeline.training_fingerprint(config.data), num_examples=5)
    fussl_phase2.write_labels(str(path), np.zeros((5, 3)), np.ones((5, 3)) / 3, fp, chosen_block=0,
                              block_errors=[0, 0, 0], config={})
    config.fussl_phase2.labels = str(path)
    with pytest.raises(ValueError, match="5 examples"):
        build_method(config, total_steps=10, steps_per_epoch=5)


def test_presets_split_phase2_and_set_their_variant():
    """Phase 2a trains all layers for e2_full epochs, 2b the rest with stem..stage 3 frozen (in the
    model and the optimizer) unless no_freeze; hard / soft set the label mode; base / base_long are
    the baseline alone for the phase-1 and the phase-1 + phase-2 epochs."""
    from configs import fussl as fussl_config
    from ssl_jax import fussl

    for scale, (e1, e2, e2_full, _) in fussl_config.SCHEDULE.items():
        c = fussl_config.get_config(scale)
        full, frozen = fussl.phase2_configs(c, "labels.npz")
        assert (full.num_epochs, frozen.num_epochs) == (e2_full, e2 - e2_full)
        assert full.fussl_phase2.frozen_stages == 0 and not full.optimizer.frozen_params
        assert frozen.fussl_phase2.frozen_stages == 3 and frozen.fussl_phase2.labels == "labels.npz"
        assert set(frozen.optimizer.frozen_params) == set(fussl_phase2.frozen_param_prefixes(3, c.phase1.model.name))
        assert c.phase1.ensemble.size == 3 and c.phase1.num_epochs == e1
        assert c.phase2.fussl_phase2.projector.to_dict() == c.phase1.simclr.projector.to_dict()
        _, nf = fussl.phase2_configs(fussl_config.get_config(f"{scale}_no_freeze"), "x")
        assert nf.fussl_phase2.frozen_stages == 0 and not nf.optimizer.frozen_params
        for mode in ("hard", "soft"):
            assert fussl_config.get_config(f"{scale}_{mode}").fussl.label_mode == mode
        base, long = fussl_config.get_config(f"{scale}_base"), fussl_config.get_config(f"{scale}_base_long")
        assert base.method == long.method == "simclr" and base.ensemble.size == 1
        assert (base.num_epochs, long.num_epochs) == (e1, e1 + e2)
    bad = fussl_config.get_config("demo")
    bad.fussl.e2_full = 8
    with pytest.raises(ValueError, match="e2_full"):
        fussl.run(bad, "/nonexistent/never_written")


def staged_config(steps=4, **fussl):
    """configs/fussl.py:demo at test size: ResNet-10, batch 16, phase 1 `steps` steps, phase 2a and 2b
    `steps` steps each, a checkpoint every 2, kNN only."""
    from configs import fussl as fussl_config
    c = fussl_config.get_config("demo")
    c.fussl.update(dict(label_batch_size=256, **fussl))
    for phase in (c.phase1, c.phase2):
        phase.model.update(dict(name="resnet10", conv_backend="xla"))
        phase.global_batch_size = 16
        phase.log_every_steps = 1
        phase.checkpoint.update(dict(every_steps=2, async_save=False))
        phase.eval.update(dict(linear_probe=False, compare_random_init=False, batch_size=256, every_steps=0))
    c.phase1.num_steps = steps
    c.phase1.optimizer.warmup_epochs = 0.0
    c.phase2.num_steps = 2 * steps  # split 1:1 (e2_full = num_epochs / 2)
    c.phase2.num_epochs, c.fussl.e2_full = 2, 1
    return c


def flat(tree):
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.slow
def test_staged_run_labels_resumes_and_refuses_other_labels(tmp_path, monkeypatch):
    """(slow: ~70 s of CPU, 3.5 min on 2 shared cores: a 3-block phase-1 compile and three
    evaluations.) The staged run at test size: the labels file's rows are the fuzzy labels of the phase-1
    blocks' outputs on those images (recomputed here from the checkpoint), the chosen block has the
    least mean error, phase 2a starts from it, phase 2b keeps the frozen stages of 2a's end; a rerun
    after phase 2b's first checkpoint resumes to the uninterrupted state; a labels file of other
    settings is one error."""
    import shutil

    from ssl_jax import fussl
    from ssl_jax.methods import ensemble
    from ssl_jax.train import checkpoint, init_weights, preemption

    config, workdir = staged_config(), str(tmp_path / "run")
    labels_path = os.path.join(workdir, "fussl_labels.npz")

    # SIGTERM in the labelling pass after phase 1: PreemptedPass (exit code 75 on the command line), no
    # labels file, phase 1 kept; the rerun below labels and goes on.
    real_pass = fussl.labelling_pass
    monkeypatch.setattr(fussl, "labelling_pass", lambda *args: _sigterm_self())
    with pytest.raises(preemption.PreemptedPass, match="during the labelling pass"):
        fussl.run(config, workdir)
    assert not os.path.exists(labels_path)
    assert os.path.exists(os.path.join(workdir, "phase1", "results.json"))
    monkeypatch.setattr(fussl, "labelling_pass", real_pass)
    fussl.run(config, workdir)
    stored = fussl_phase2.read_labels(labels_path)
    assert stored["fingerprint"] == dict(dataset="digits", split="train", num_examples=1437)
    assert stored["classes"].shape == stored["weights"].shape == (1437, 3)
    assert stored["chosen_block"] == int(np.argmin(stored["block_errors"]))
    np.testing.assert_allclose(stored["weights"].sum(1), 1.0, rtol=1e-5)

    # The file's rows, recomputed from phase 1's checkpoint on the first batch of the pass.
    phase1, step1, _ = checkpoint.restore_raw(os.path.join(workdir, "phase1"))
    assert step1 == 4
    method = build_method(config.phase1, total_steps=1, steps_per_epoch=1)
    batch = next(pipeline.eval_iterator(config.phase1.data, "train", global_batch_size=64))
    out = ensemble.project(method, phase1["params"], phase1["batch_stats"], jnp.asarray(batch["image"]))
    classes, weights = losses.fuzzy_labels(out)
    rows = np.asarray(batch["index"])[np.asarray(batch["mask"])]
    np.testing.assert_array_equal(stored["classes"][rows], np.asarray(classes)[:len(rows)])
    np.testing.assert_allclose(stored["weights"][rows], np.asarray(weights)[:len(rows)], rtol=1e-5, atol=1e-6)

    # Phase 2a starts from the chosen block; phase 2b's frozen stages are 2a's final ones.
    init = init_weights.read(os.path.join(workdir, "phase2a_init.msgpack"))
    chosen = flat(ensemble.select_block(phase1["params"], stored["chosen_block"])["encoder"])
    for k, v in flat(init["params"]["encoder"]).items():
        np.testing.assert_array_equal(v, chosen[k], err_msg=k)
    a, _, _ = checkpoint.restore_raw(os.path.join(workdir, "phase2a"))
    final, step, _ = checkpoint.restore_raw(os.path.join(workdir, "phase2b"))
    assert step == 4
    fa, fb = flat(a["params"]["encoder"]), flat(final["params"]["encoder"])
    for k in fa:
        same = np.array_equal(fa[k], fb[k])
        assert same == ("stage4" not in k), k
    assert os.path.exists(os.path.join(workdir, "phase2b", "results.json"))

    # Killed after phase 2b's step-2 checkpoint: the rerun resumes there, labels untouched.
    phase2b = os.path.join(workdir, "phase2b")
    labels_bytes = open(labels_path, "rb").read()
    shutil.rmtree(os.path.join(phase2b, "checkpoints", "4"))
    os.remove(os.path.join(phase2b, "results.json"))
    fussl.run(config, workdir)
    assert open(labels_path, "rb").read() == labels_bytes
    resumed, step, _ = checkpoint.restore_raw(phase2b)
    assert step == 4
    fr, ff = flat(resumed["params"]), flat(final["params"])
    for k in ff:
        np.testing.assert_allclose(fr[k], ff[k], rtol=1e-5, atol=1e-6, err_msg=k)

    # Labels of other settings: one error, the file kept.
    with pytest.raises(ValueError, match="other settings"):
        fussl.run(staged_config(label_mode="hard"), workdir)
    assert open(labels_path, "rb").read() == labels_bytes


KILL_ARGS = ["--config=configs/fussl.py:demo", "--config.fussl.label_batch_size=256",
             "--config.phase1.num_steps=6", "--config.phase1.optimizer.warmup_epochs=0",
             "--config.phase2.num_steps=12", "--config.phase2.num_epochs=2", "--config.fussl.e2_full=1"]
for _phase in ("phase1", "phase2"):
    KILL_ARGS += [f"--config.{_phase}.{k}" for k in (
        "model.name=resnet10", "model.conv_backend=xla", "global_batch_size=16", "log_every_steps=1",
        "checkpoint.every_steps=2", "checkpoint.async_save=False", "eval.linear_probe=False",
        "eval.compare_random_init=False", "eval.batch_size=256", "eval.every_steps=0")]


@pytest.mark.slow
def test_sigkill_in_either_phase_then_rerun_matches_uninterrupted(tmp_path):
    """SIGKILL during phase 1 (after its step-5 line) and, in a second run, during phase 2b (after
    its step-5 line), then the same command again: each resumes from its last whole checkpoint (step
    4), the labels are made once, and phase 1's, phase 2a's and phase 2b's final states and metrics
    equal an uninterrupted run's bit for bit. ~10 min on 2 cores (five staged runs, mostly compiles)."""
    import json
    import signal
    import subprocess
    import sys

    from ssl_jax.train import checkpoint
    from ssl_jax.train.logging import unstamped
    from tests.conftest import REPO_ROOT

    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO_ROOT)
    cmd = lambda d: [sys.executable, "-m", "ssl_jax.main", *KILL_ARGS, f"--workdir={d}"]
    ref = tmp_path / "ref"
    subprocess.run(cmd(ref), check=True, env=env, cwd=REPO_ROOT, timeout=900, stdout=subprocess.DEVNULL)

    def kill_then_rerun(run, phase_line):
        proc = subprocess.Popen(cmd(run), env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        armed = False
        for line in proc.stdout:
            armed = armed or unstamped(line).startswith(phase_line)
            if armed and unstamped(line).startswith("step 5/"):
                proc.send_signal(signal.SIGKILL)
                break
        proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
        out = subprocess.run(cmd(run), check=True, env=env, cwd=REPO_ROOT, timeout=900, capture_output=True,
                             text=True).stdout
        assert "starting at step 4." in out
        return out

    out = kill_then_rerun(tmp_path / "a", "Phase 1 ")
    assert "Labels (fuzzy" in out  # made after the resumed phase 1, once
    out = kill_then_rerun(tmp_path / "b", "Phase 2b ")
    assert "Phase 1 (an ensemble of 3 simclr blocks): done" in out and "Labels: done" in out

    metrics = lambda d: [{k: v for k, v in json.loads(line).items() if "per_sec" not in k and "seconds" not in k}
                         for line in open(d / "metrics.jsonl")]
    for run in ("a", "b"):
        assert (tmp_path / run / "fussl_labels.npz").read_bytes() == (ref / "fussl_labels.npz").read_bytes()
        for phase, steps in (("phase1", 6), ("phase2a", 6), ("phase2b", 6)):
            a, step_a, _ = checkpoint.restore_raw(str(ref / phase))
            b, step_b, _ = checkpoint.restore_raw(str(tmp_path / run / phase))
            assert step_a == step_b == steps
            fa, fb = flat(a), flat(b)
            assert fa.keys() == fb.keys()
            for k in fa:
                np.testing.assert_array_equal(fa[k], fb[k], err_msg=f"{run} {phase} {k}")
            assert metrics(ref / phase) == metrics(tmp_path / run / phase)


# ---------------------------------------------------------------- the progressive schedule (Case 3)

def progressive_config(baseline="simclr", m=2, cycles=2, steps=2):
    """configs/fussl.py:demo_progressive at test size (ResNet-10, batch 16, `steps` steps per phase,
    a checkpoint every 2, kNN only), with `baseline` as an ensemble of `m`."""
    from configs import fussl as fussl_config
    c = fussl_config.get_config("demo_progressive")
    c.fussl.update(dict(baseline=baseline, ensemble_size=m, cycles=cycles, label_batch_size=256))
    c.phase1 = fussl_config.phase1_config(baseline, "demo", m)
    c.phase1.num_epochs = fussl_config.PROGRESSIVE["demo"][1]
    for phase in (c.phase1, c.phase2):
        phase.model.update(dict(name="resnet10", conv_backend="xla"))
        phase.global_batch_size = 16
        phase.num_steps = steps
        phase.log_every_steps = 1
        phase.checkpoint.update(dict(every_steps=2, async_save=False))
        phase.eval.update(dict(linear_probe=False, compare_random_init=False, batch_size=256, every_steps=0))
    c.phase1.optimizer.warmup_epochs = 0.0
    c.phase2.fussl_phase2.projector = c.phase1[baseline].projector.copy_and_resolve_references()
    return c


def test_progressive_cycle_starts_every_block_and_the_target_from_the_previous_phase2(tmp_path):
    """Cycle 2's phase-1 state (BYOL, 2 blocks): in every block the encoder and projector params and
    BatchNorm statistics, and the momentum target's copy of them, are exactly cycle 1's last phase-2
    checkpoint; the predictor and the probe are the fresh init of cycle 2's seed; the optimizer
    state is a fresh one (no step taken)."""
    from ssl_jax import fussl, parallel
    from ssl_jax.methods import ensemble
    from ssl_jax.train import checkpoint, loop
    from ssl_jax.train.state import TrainState

    config = progressive_config("byol", m=2)
    # Cycle 1's finished phase 2: a checkpoint of random encoder / projector weights (shapes of the
    # baseline's block: phase 2 trains phase 1's network), BatchNorm statistics included.
    block = build_method(config.phase1, total_steps=4, steps_per_epoch=2).block
    shapes = jax.eval_shape(block.init, jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 3)))
    rng = np.random.default_rng(0)
    rand = lambda tree: jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), tree)
    params = {k: rand(shapes[0][k]) for k in ("encoder", "projector")}
    stats = {k: jax.tree.map(lambda x: np.abs(x) + 0.5, rand(shapes[1][k])) for k in ("encoder", "projector")}
    phase2_dir = tmp_path / "cycle1" / "phase2"
    manager = checkpoint.make_manager(str(phase2_dir), keep=2, async_save=False)
    checkpoint.save(manager, TrainState(step=jnp.int32(7), params=params, batch_stats=stats, opt_state={},
                                        method_state={}, rng=jax.random.PRNGKey(3)), {"step": 7})
    manager.wait_until_finished()

    (tmp_path / "cycle2").mkdir()
    init = fussl._init_file(str(tmp_path / "cycle2" / "phase1_init.msgpack"), str(phase2_dir), None)
    cycle2 = fussl.cycle_phase1_config(config, 2, init)
    assert cycle2.seed == config.phase1.seed + 1 and cycle2.init_weights == init
    assert fussl.cycle_phase1_config(config, 1, "").init_weights == ""

    def initial(cfg):
        mesh = parallel.mesh_from_config(cfg.mesh)
        info, _, _, method, optimizer, _ = loop.build(cfg, mesh)
        state, _ = loop.init_state(cfg, method, optimizer, info, mesh)
        return jax.device_get(state), optimizer

    state, optimizer = initial(cycle2)
    fresh, _ = initial(fussl.cycle_phase1_config(config, 2, ""))
    for k in range(2):
        s, f = ensemble.select_block(state, k), ensemble.select_block(fresh, k)
        target = s.method_state["target"]
        assert sorted(target["params"]) == ["encoder", "projector"]
        for name in ("encoder", "projector"):
            for got, want in ((s.params[name], params[name]), (s.batch_stats[name], stats[name]),
                              (target["params"][name], params[name]), (target["batch_stats"][name], stats[name])):
                fg, fw = flat(got), flat(want)
                assert fg.keys() == fw.keys()
                for key in fw:
                    np.testing.assert_array_equal(fg[key], fw[key], err_msg=f"block {k} {name} {key}")
        for name in ("predictor", "probe"):  # what phase 2 does not have: the seed's fresh init
            for key, v in flat(f.params[name]).items():
                np.testing.assert_array_equal(flat(s.params[name])[key], v, err_msg=f"block {k} {name} {key}")
        want_opt = flat(optimizer.init(s.params))
        for key, v in flat(s.opt_state).items():
            np.testing.assert_array_equal(v, want_opt[key], err_msg=key)
    assert int(state.step) == 0


def test_progressive_presets_and_their_checks():
    """progressive / SCALE_progressive: 4 cycles of 200 + 100 epochs (demo 2 + 1), all layers in
    phase 2; a frozen progressive phase 2, cycles with the sequential schedule or an init file set
    by hand are one error each."""
    from configs import fussl as fussl_config
    from ssl_jax import fussl

    assert fussl_config.get_config("progressive").to_dict() == fussl_config.get_config("imagenet_progressive").to_dict()
    for scale, (cycles, e1, e2) in fussl_config.PROGRESSIVE.items():
        c = fussl_config.get_config(f"{scale}_progressive")
        assert (c.fussl.schedule, c.fussl.cycles, c.fussl.freeze) == ("progressive", cycles, False)
        assert (c.phase1.num_epochs, c.phase2.num_epochs, c.fussl.e2_full) == (e1, e2, e2)
        assert cycles * (e1 + e2) == sum(fussl_config.SCHEDULE[scale][:2]) or scale == "demo"
        assert fussl_config.get_config(scale).fussl.schedule == "sequential"
    for change, match in ((dict(freeze=True), "no fixed layer"), (dict(e2_full=0), "no fixed layer"),
                          (dict(schedule="sequential"), "cycles"), (dict(schedule="cyclic"), "schedule")):
        bad = fussl_config.get_config("demo_progressive")
        bad.fussl.update(change)
        with pytest.raises(ValueError, match=match):
            fussl.run(bad, "/nonexistent/never_written")
    bad = fussl_config.get_config("demo")
    bad.phase2.init_weights = "w.msgpack"
    with pytest.raises(ValueError, match="init_weights"):
        fussl.run(bad, "/nonexistent/never_written")


@pytest.mark.slow
def test_progressive_run_hands_weights_over_and_resumes_to_the_same_state(tmp_path):
    """(slow: two cycles of a 2-block phase 1 and a phase 2, then two reruns: 85 s of CPU, 4 min on
    2 loaded cores.) The staged
    progressive run at test size: every cycle keeps its labels (settings naming the cycle), cycle 2's
    phase 1 starts from cycle 1's final phase 2 (the init file), a rerun of the finished run trains
    nothing, and a rerun after the last stage's last checkpoint is deleted ends in the same state."""
    import shutil

    from ssl_jax import fussl
    from ssl_jax.train import checkpoint, init_weights

    config, workdir = progressive_config("simclr", m=2, cycles=2, steps=4), str(tmp_path / "run")
    fussl.run(config, workdir)
    for c in (1, 2):
        stored = fussl_phase2.read_labels(os.path.join(workdir, f"cycle{c}", "fussl_labels.npz"))
        assert stored["classes"].shape == (1437, 2) and f"('cycle', {c})" in stored["settings"]
    handed = init_weights.read(os.path.join(workdir, "cycle2", "phase1_init.msgpack"))
    phase2_1, step, _ = checkpoint.restore_raw(os.path.join(workdir, "cycle1", "phase2"))
    assert step == 4
    for name in ("encoder", "projector"):
        fh, fp = flat(handed["params"][name]), flat(phase2_1["params"][name])
        assert fh.keys() == fp.keys()
        for k in fp:
            np.testing.assert_array_equal(fh[k], fp[k], err_msg=f"{name} {k}")

    last = os.path.join(workdir, "cycle2", "phase2")
    final, step, _ = checkpoint.restore_raw(last)
    assert step == 4 and os.path.exists(os.path.join(last, "results.json"))
    mtime = os.path.getmtime(os.path.join(last, "results.json"))
    assert fussl.run(config, workdir) == []  # finished: every stage skipped
    assert os.path.getmtime(os.path.join(last, "results.json")) == mtime

    shutil.rmtree(os.path.join(last, "checkpoints", "4"))
    os.remove(os.path.join(last, "results.json"))
    fussl.run(config, workdir)
    resumed, step, _ = checkpoint.restore_raw(last)
    assert step == 4
    fr, ff = flat(resumed), flat(final)
    assert fr.keys() == ff.keys()
    for k in ff:
        np.testing.assert_array_equal(fr[k], ff[k], err_msg=k)


def test_init_weights_replace_their_modules_and_the_targets_copy_only(tmp_path):
    """ssl_jax.train.init_weights: a written file read back puts its modules into the online
    params / statistics and into the momentum target's copy; other modules, the probe and other
    method state keep their values; another module's shape or an unknown module is one error."""
    from ssl_jax.train import init_weights

    rng = np.random.default_rng(0)
    r = lambda *s: rng.normal(size=s).astype(np.float32)
    params = {"encoder": {"w": r(3, 4)}, "projector": {"w": r(4, 2)}, "predictor": {"w": r(2, 2)},
              "probe": {"w": r(4, 10)}}
    stats = {"encoder": {"mean": r(4)}, "projector": {}, "predictor": {}}
    state = {"target": {"params": {"encoder": {"w": r(3, 4)}, "projector": {"w": r(4, 2)}},
                        "batch_stats": {"encoder": {"mean": r(4)}, "projector": {}}}, "queue": r(5, 2)}
    source = {"encoder": {"w": r(3, 4)}, "projector": {"w": r(4, 2)}}
    source_stats = {"encoder": {"mean": r(4)}, "projector": {}}
    path = str(tmp_path / "w.msgpack")
    init_weights.write(path, source, source_stats, ("encoder", "projector"), "a test")
    weights = init_weights.read(path)
    assert weights["source"] == "a test"
    p, s, m = init_weights.apply(params, stats, state, weights)
    for name in ("encoder", "projector"):
        for tree in (p, m["target"]["params"]):
            np.testing.assert_array_equal(tree[name]["w"], source[name]["w"])
    for tree in (s, m["target"]["batch_stats"]):
        np.testing.assert_array_equal(tree["encoder"]["mean"], source_stats["encoder"]["mean"])
    for name in ("predictor", "probe"):
        np.testing.assert_array_equal(p[name]["w"], params[name]["w"])
    np.testing.assert_array_equal(m["queue"], state["queue"])
    wrong = dict(weights, params=dict(weights["params"], encoder={"w": np.zeros((3, 5), np.float32)}))
    with pytest.raises(ValueError, match="params of another 'encoder'"):
        init_weights.apply(params, stats, state, wrong)
    unknown = dict(weights, params=dict(weights["params"], prototypes={"w": np.zeros(3, np.float32)}))
    with pytest.raises(ValueError, match="'prototypes'"):
        init_weights.apply(params, stats, state, unknown)
    with pytest.raises(FileNotFoundError, match="init_weights"):
        init_weights.read(str(tmp_path / "none.msgpack"))
