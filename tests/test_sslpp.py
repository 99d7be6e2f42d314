"""SSL++ (seed 002): stage C's wrapper (ssl_jax.methods.sslpp) against a loss computed separately
(the proxy's own loss plus λ times a NumPy cross-entropy), its labels file's fingerprint check, and
the staged run (ssl_jax.stages): stage B not redone on a rerun, stage C resuming from its
checkpoint."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.methods import build_method, sslpp


def synthetic_labels(path, num_classes=7, seed=0, dataset="digits", split="train", num_examples=1437):
    """A labels file for the digits training set (seeded random labels)."""
    labels = np.random.default_rng(seed).integers(0, num_classes, num_examples)
    sslpp.write_labels(str(path), labels, dict(dataset=dataset, split=split, num_examples=num_examples),
                       num_classes=num_classes, source="random")
    return labels


def rotnet_config(labels_path, view="features", weight=0.05, proxy_weight=1.0, num_classes=7, proxy="rotnet"):
    """`proxy`'s demo preset at batch 16 with SSL++'s semantic head on the labels file."""
    import importlib
    c = importlib.import_module(f"configs.{proxy}").get_config("demo")
    c.global_batch_size = 16
    c.sslpp.update(dict(labels=str(labels_path), num_classes=num_classes, weight=weight,
                        proxy_weight=proxy_weight, view=view))
    return c


def numpy_ce(logits, labels):
    logits = np.asarray(logits, np.float64)
    logits = logits - logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -np.mean(np.take_along_axis(logp, labels[..., None], -1))


@pytest.mark.parametrize("proxy,view,weight,proxy_weight", [
    ("rotnet", "features", 0.05, 1.0), ("rotnet", "all_copies", 2.0, 0.5), ("aet", "features", 0.05, 1.0),
    # 12-18 s each op by op on 2 cores (the Lab conversion, the decoder): beyond the CI budget.
    pytest.param("colorization", "features", 1.0, 1.0, marks=pytest.mark.slow),
    pytest.param("context_encoder", "features", 1.0, 0.0, marks=pytest.mark.slow)])
def test_wrapped_loss_is_proxy_plus_lambda_ce(tmp_path, proxy, view, weight, proxy_weight):
    labels = synthetic_labels(tmp_path / "labels.npz")
    config = rotnet_config(tmp_path / "labels.npz", view, weight, proxy_weight, proxy=proxy)
    wrapped = build_method(config, total_steps=10, steps_per_epoch=5)
    assert isinstance(wrapped, sslpp.SemanticHead)
    params, stats, state = wrapped.init(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 3)))
    assert "semantic_head" in params
    rng = np.random.default_rng(1)
    index = rng.choice(len(labels), 16, replace=False).astype(np.int32)
    batch = {"views": (jnp.asarray(rng.normal(size=(16, 16, 16, 3)), jnp.float32),),
             "label": jnp.zeros(16, jnp.int32), "index": jnp.asarray(index)}
    key, step = jax.random.PRNGKey(2), jnp.int32(0)
    loss, aux = wrapped.loss(params, stats, state, batch, key, step)

    # The proxy alone (the unwrapped method), and V₂ applied here to the features it reads.
    proxy = wrapped.method
    if view == "all_copies":
        proxy_loss, proxy_aux, out = proxy.loss_and_outputs(params, stats, state, batch, key, step)
        feats = np.asarray(out["h"])
    else:
        proxy_loss, proxy_aux = proxy.loss(params, stats, state, batch, key, step)
        feats = np.asarray(proxy_aux["features"][None])
    dense = params["semantic_head"]["dense1"]  # linear V₂ (sslpp.head_hidden_dim 0)
    logits = feats.astype(np.float64) @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])
    z = np.broadcast_to(labels[index], logits.shape[:2])
    expected = proxy_weight * float(proxy_loss) + weight * numpy_ce(logits, z)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(aux["metrics"]["semantic_loss"]), numpy_ce(logits, z), rtol=1e-5)
    np.testing.assert_allclose(float(aux["metrics"]["semantic_top1"]), np.mean(logits.argmax(-1) == z), atol=1e-6)
    if (proxy, view) != ("rotnet", "features"):
        return
    # V₂'s gradient reaches the backbone: the encoder's gradient differs from the proxy's alone.
    # Compiled gradients (op by op is several times slower here).
    g_all = jax.jit(jax.grad(lambda p: wrapped.loss(p, stats, state, batch, key, step)[0]))(params)
    g_proxy = jax.jit(jax.grad(lambda p: proxy.loss(p, stats, state, batch, key, step)[0]))(params)
    diff = jax.tree.map(lambda a, c: float(jnp.max(jnp.abs(a - proxy_weight * c))), g_all["encoder"], g_proxy["encoder"])
    assert max(jax.tree.leaves(diff)) > 1e-6


def test_labels_off_leaves_the_method_unchanged():
    from configs import rotnet
    method = build_method(rotnet.get_config("demo"), total_steps=10, steps_per_epoch=5)
    assert type(method).__name__ == "RotNet"


def test_fingerprint_mismatch_is_one_clear_error(tmp_path):
    synthetic_labels(tmp_path / "labels.npz", num_examples=1000)
    with pytest.raises(ValueError, match=r"digits:train \(1000 examples\).*digits:train \(1437 examples\)"):
        build_method(rotnet_config(tmp_path / "labels.npz"), total_steps=10, steps_per_epoch=5)
    synthetic_labels(tmp_path / "labels.npz", num_classes=9)
    with pytest.raises(ValueError, match="num_classes=7"):
        build_method(rotnet_config(tmp_path / "labels.npz"), total_steps=10, steps_per_epoch=5)
    with pytest.raises(FileNotFoundError, match="run stage B"):
        build_method(rotnet_config(tmp_path / "absent.npz"), total_steps=10, steps_per_epoch=5)
    config = rotnet_config(tmp_path / "labels.npz", num_classes=9)
    config.sslpp.weight = None
    with pytest.raises(ValueError, match="sslpp.weight"):
        build_method(config, total_steps=10, steps_per_epoch=5)


def staged_config(preset="demo_random", steps=4):
    """configs/sslpp.py at test size: stage C at batch 16 for `steps` steps, a checkpoint every 2,
    evaluation by kNN only."""
    from configs import sslpp as sslpp_config
    c = sslpp_config.get_config(preset)
    c.stage_c.global_batch_size = 16
    c.stage_c.num_steps = steps
    c.stage_c.log_every_steps = 2
    c.stage_c.checkpoint.update(dict(every_steps=2, async_save=False))
    c.stage_c.eval.update(dict(linear_probe=False, compare_random_init=False, batch_size=256))
    c.stage_c.model.conv_backend = "xla"
    return c


def test_staged_run_skips_stage_b_and_resumes_stage_c(tmp_path):
    """A rerun after stage C's first checkpoint (its last one and results.json removed, as a kill
    after step 2 leaves it) resumes there, keeps stage B's file untouched, and ends with the state of
    the uninterrupted run."""
    import shutil

    from ssl_jax import stages
    from ssl_jax.train import checkpoint

    config, workdir = staged_config(), str(tmp_path / "run")
    stages.run(config, workdir)
    labels_path = os.path.join(workdir, stages.LABELS_FILE)
    labels_bytes, labels_mtime = open(labels_path, "rb").read(), os.stat(labels_path).st_mtime_ns
    stored = sslpp.read_labels(labels_path)
    assert stored["source"] == "random" and stored["fingerprint"] == dict(dataset="digits", split="train",
                                                                         num_examples=1437)
    stage_c = os.path.join(workdir, "stage_c")
    final, step, _ = checkpoint.restore_raw(stage_c)
    assert step == 4 and "semantic_head" in final["params"]
    assert json_method(stage_c) == "rotnet+sslpp"

    shutil.rmtree(os.path.join(stage_c, "checkpoints", "4"))
    os.remove(os.path.join(stage_c, "results.json"))
    stages.run(config, workdir)
    assert open(labels_path, "rb").read() == labels_bytes and os.stat(labels_path).st_mtime_ns == labels_mtime
    resumed, step, _ = checkpoint.restore_raw(stage_c)
    assert step == 4
    for a, b in zip(jax.tree.leaves(final["params"]), jax.tree.leaves(resumed["params"])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    # Stage B's file made for another label source is one error, not overwritten.
    other = staged_config("demo_gt")
    with pytest.raises(ValueError, match="holds random labels"):
        stages.run(other, workdir)



def json_method(workdir):
    import json
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)["records"][0]["method"]


KILL_STEPS = 8
KILL_ARGS = ["--config=configs/sslpp.py:demo_random", f"--config.stage_c.num_steps={KILL_STEPS}",
             "--config.stage_c.global_batch_size=16", "--config.stage_c.checkpoint.every_steps=2",
             "--config.stage_c.log_every_steps=1", "--config.stage_c.checkpoint.async_save=False",
             "--config.stage_c.eval.linear_probe=False",
             "--config.stage_c.eval.compare_random_init=False"]


@pytest.mark.slow
def test_sigkill_during_stage_c_then_rerun_matches_uninterrupted(tmp_path):
    """SIGKILL during stage C (after its step-5 log line), then the same command again: stage B is
    not redone (its file unchanged) and stage C resumes from its last whole checkpoint; the final
    state and metrics equal those of an uninterrupted staged run, bit for bit. ~2 min on 2 cores."""
    import json
    import signal
    import subprocess
    import sys

    from ssl_jax.train import checkpoint
    from ssl_jax.train.logging import unstamped
    from tests.conftest import REPO_ROOT

    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO_ROOT)
    cmd = lambda d: [sys.executable, "-m", "ssl_jax.main", *KILL_ARGS, f"--workdir={d}"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    subprocess.run(cmd(ref), check=True, env=env, cwd=REPO_ROOT, timeout=600, stdout=subprocess.DEVNULL)

    proc = subprocess.Popen(cmd(run), env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if unstamped(line).startswith("step 5/"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not os.path.exists(run / "stage_c" / "results.json")
    labels = run / "stage_b_labels.npz"
    before = (labels.read_bytes(), os.stat(labels).st_mtime_ns)

    out = subprocess.run(cmd(run), check=True, env=env, cwd=REPO_ROOT, timeout=600, capture_output=True,
                         text=True).stdout
    assert "Stage B (labels): done" in out
    assert int(out.split("starting at step ", 1)[1].split(".")[0]) == 4  # the last whole checkpoint
    assert (labels.read_bytes(), os.stat(labels).st_mtime_ns) == before
    assert labels.read_bytes() == (ref / "stage_b_labels.npz").read_bytes()
    a, step_a, _ = checkpoint.restore_raw(str(ref / "stage_c"))
    b, step_b, _ = checkpoint.restore_raw(str(run / "stage_c"))
    assert step_a == step_b == KILL_STEPS
    flat = lambda t: {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(t)}
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys() and any("semantic_head" in k for k in fa)
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)
    metrics = lambda d: [json.loads(line) for line in open(d / "stage_c" / "metrics.jsonl")]
    strip = lambda ms: [{k: v for k, v in m.items() if "per_sec" not in k and "seconds" not in k} for m in ms]
    assert [m["step"] for m in metrics(ref)] == [m["step"] for m in metrics(run)] == list(range(1, KILL_STEPS + 1))
    assert strip(metrics(ref)) == strip(metrics(run))


def test_ground_truth_labels_are_the_labels_stage_c_batches_carry(tmp_path):
    """Stage B's 'ground_truth' file, indexed by a training batch's dataset indices, gives that batch's
    labels (the file is in dataset-index order); 'random' labels are a function of the seed."""
    from ssl_jax import stages
    from ssl_jax.data import pipeline

    config = staged_config("demo_gt")
    path = str(tmp_path / "gt.npz")
    assert stages.stage_b(config, None, path) == 10
    labels = sslpp.read_labels(path)["labels"]
    batch = next(pipeline.pretrain_iterator(config.stage_c.data, global_batch_size=64, seed=3, num_views=1))
    np.testing.assert_array_equal(labels[batch["index"]], batch["label"])

    config = staged_config("demo_random")
    a, b = str(tmp_path / "r1.npz"), str(tmp_path / "r2.npz")
    assert stages.stage_b(config, None, a) == stages.stage_b(config, None, b) == 50
    assert open(a, "rb").read() == open(b, "rb").read()
    assert len(np.unique(sslpp.read_labels(a)["labels"])) == 50
