"""Evaluation protocols: the trained linear classifier, label subsets, the sharded kNN memory,
and every protocol of `python -m ssl_jax.evaluate` on the demo run."""
import json
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax

import ml_collections
import numpy as np
import pytest

from ssl_jax import parallel, presets, results
from ssl_jax.data import pipeline
from ssl_jax.evaluate import supervised
from ssl_jax.pretrained import Pretrained
from tests.conftest import REPO_ROOT, device_env


class _FlattenEncoder(nn.Module):
    """A parameter-free 'encoder': the flattened image (features = pixels)."""
    feature_dim: int = 8

    @nn.compact
    def __call__(self, x, train: bool = False):
        return x.reshape(x.shape[0], -1)


def _separable(n, rng, w):
    """Two classes in 8-D split by the hyperplane w·x = 0 with a margin."""
    x = rng.normal(size=(4 * n, 8))
    margin = x @ w / np.linalg.norm(w)
    x = x[np.abs(margin) > 0.3][:n]
    return x.reshape(n, 2, 2, 2).astype(np.float32), (x @ w > 0).astype(np.int32)


@pytest.mark.parametrize("head_batchnorm", [False, True])
def test_linear_classifier_reaches_100_percent_on_separable_data(head_batchnorm):
    rng = np.random.default_rng(0)
    w = rng.normal(size=8)
    x, y = _separable(512, rng, w)
    mesh = parallel.make_mesh()

    def batches():
        while True:
            for i in range(0, 512, 64):
                yield {"views": (x[i:i + 64],), "label": y[i:i + 64]}

    opt = presets.base_config("eval").optimizer
    opt.update(dict(name="sgd", base_lr=0.5, nesterov=True, weight_decay=0.0, warmup_epochs=0.0))
    cfg = ml_collections.ConfigDict(dict(epochs=30.0, batch_size=64, finetune=False,
                                         head_batchnorm=head_batchnorm, optimizer=opt,
                                         checkpoint_every_steps=0))
    pre = Pretrained(encoder=_FlattenEncoder(), variables={"params": {}, "batch_stats": {}}, heads={},
                     model_config=ml_collections.ConfigDict(), run={}, network="online")
    out = supervised.train_classifier(pre, lambda start: batches(), steps_per_epoch=8, train_cfg=cfg, num_classes=2,
                                      mesh=mesh, log=lambda *_: None)
    test_x, test_y = _separable(256, np.random.default_rng(1), w)
    logits = out["head"].apply(out["head_variables"], test_x.reshape(256, -1), train=False)
    assert supervised.topk_accuracy(logits, test_y, ks=(1,))["top1"] == 1.0


def test_classifier_preempted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch):
    """SIGTERM at step 50 of 240: checkpoint, Preempted; the rerun resumes at 50 with the
    batches from there on and ends with the same head, bit for bit; load_classifier reads it."""
    from ssl_jax.train import preemption

    rng = np.random.default_rng(0)
    x, y = _separable(512, rng, rng.normal(size=8))
    mesh = parallel.make_mesh()

    def batches(start):
        i = start
        while True:
            j = (i % 8) * 64
            yield {"views": (x[j:j + 64],), "label": y[j:j + 64]}
            i += 1

    opt = presets.base_config("eval").optimizer
    opt.update(dict(name="sgd", base_lr=0.5, nesterov=True, weight_decay=0.0, warmup_epochs=0.0))
    cfg = ml_collections.ConfigDict(dict(epochs=30.0, batch_size=64, finetune=False, head_batchnorm=True,
                                         optimizer=opt, checkpoint_every_steps=100))
    pre = Pretrained(encoder=_FlattenEncoder(), variables={"params": {}, "batch_stats": {}}, heads={},
                     model_config=ml_collections.ConfigDict(), run={}, network="online")
    train = lambda d: supervised.train_classifier(pre, batches, steps_per_epoch=8, train_cfg=cfg, num_classes=2,
                                                  mesh=mesh, log=lambda *_: None, checkpoint_dir=str(d))
    whole = train(tmp_path / "whole")["head_variables"]

    stop_at = 50
    monkeypatch.setattr(preemption.PreemptionWatcher, "should_stop", lambda self, step: step == stop_at)
    with pytest.raises(preemption.Preempted):
        train(tmp_path / "cut")
    assert supervised.load_classifier(str(tmp_path / "cut"))["step"] == stop_at
    stop_at = -1
    resumed = train(tmp_path / "cut")["head_variables"]
    for a, b in zip(*(jax.tree.leaves(v) for v in (whole, resumed))):
        np.testing.assert_array_equal(a, b)
    saved = supervised.load_classifier(str(tmp_path / "cut"))
    assert saved["step"] == 240 and saved["encoder"] is None
    for a, b in zip(*(jax.tree.leaves(v) for v in (whole, saved["head"]))):
        np.testing.assert_array_equal(a, b)


def test_class_balanced_subset():
    labels = np.repeat(np.arange(5), [100, 100, 50, 20, 1])
    idx = pipeline.class_balanced_subset(labels, 0.1, seed=3)
    counts = np.bincount(labels[idx], minlength=5)
    np.testing.assert_array_equal(counts, [10, 10, 5, 2, 1])  # at least one per class
    assert np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, pipeline.class_balanced_subset(labels, 0.1, seed=3))
    assert not np.array_equal(idx, pipeline.class_balanced_subset(labels, 0.1, seed=4))
    with pytest.raises(ValueError, match="label fraction"):
        pipeline.class_balanced_subset(labels, 0.0, seed=0)


def test_topk_accuracy_matches_numpy_sort():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(200, 12)), rng.integers(0, 12, 200)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    acc = supervised.topk_accuracy(logits, labels)
    assert acc["top1"] == np.mean(top5[:, 0] == labels)
    assert acc["top5"] == np.mean(np.any(top5 == labels[:, None], axis=1))


def test_knn_memory_sharded_over_8_devices_matches_one_array():
    env = device_env(8)
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tests", "knn_sharded.py"),
                           "203", "50", "16", "5", "0"],  # 203 rows: 5 padding rows on 8 devices
                          env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["num_devices"] == 8 and info["shard_shapes"] == [[26, 16]]
    assert info["preds"][0] == info["preds"][1]
    assert info["max_score_diff"] < 1e-4


# ------------------------------------------------------------------ protocols on the demo run

def _eval_config(protocol, **overrides):
    """configs/eval/<protocol>.py:demo with top-level overrides."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        f"_eval_{protocol}", os.path.join(REPO_ROOT, "configs", "eval", f"{protocol}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config("demo")
    c.update(overrides)
    return c


def test_every_protocol_on_the_demo_run(demo_run, tmp_path):
    from ssl_jax.evaluate import run

    workdir, _ = demo_run
    out = str(tmp_path)  # results go to a fresh dir; the source is the demo run
    log = lambda *_: None
    knn = run.run(_eval_config("knn", source=str(workdir)), out, log=log)
    assert len(knn) == 4 * 2 * 2  # k x T x {top1, top5}
    # The same function and features as the end-of-training kNN: the same number.
    train_knn = results.select(results.read_records(str(workdir)), protocol="knn", network="online",
                               metric="top1")[0]
    ours = results.select(knn, setting=train_knn["setting"], metric="top1")[0]
    assert ours["value"] == pytest.approx(train_knn["value"], abs=1e-6)
    assert ours["step"] == 352 and ours["epochs"] == 32.0

    rand = run.run(_eval_config("knn", source=str(workdir), network="random_init"), out, log=log)
    assert results.select(rand, setting=ours["setting"], metric="top1")[0]["value"] < ours["value"] - 0.05

    said = []
    lin = run.run(_eval_config("linear", source=str(workdir)), out, log=lambda *a, **k: said.append(" ".join(a)))
    assert results.select(lin, metric="top1")[0]["value"] > 0.8, lin
    # Progress as pretraining's: a line per epoch (20) with images/s and the ETA.
    epochs = [line for line in said if line.startswith("  linear epoch ")]
    assert len(epochs) == 20 and epochs[-1].startswith("  linear epoch 20/20 step "), said
    assert all(re.search(r"\| elapsed \d\d:\d\d:\d\d \| [0-9.]+ img/s \| ETA \d\d:\d\d:\d\d$", line)
               for line in epochs), epochs
    assert epochs[-1].endswith("ETA 00:00:00")
    fine = run.run(_eval_config("finetune", source=str(workdir)), out, log=log)
    assert fine[0]["setting"] == "labels=10%" and results.select(fine, metric="top1")[0]["value"] > 0.6, fine
    assert os.path.exists(os.path.join(out, "label_subset_0.1_seed0.json"))
    clus = {r["metric"]: r["value"] for r in run.run(_eval_config("clustering", source=str(workdir)), out, log=log)}
    assert 0.3 < clus["nmi"] <= 1 and 0.2 < clus["acc"] <= clus["acc_many_to_one"] + 1e-9, clus
    mon = {r["metric"]: r["value"] for r in run.run(_eval_config("monitor", source=str(workdir)), out, log=log)}
    assert 0 < mon["collapse_std"] <= mon["collapse_std_reference"] and mon["effective_rank"] > 5, mon
    cfg = _eval_config("layer_probe", source=str(workdir))
    cfg.layer_probe.l2_grid = (1e-2,)
    layers = run.run(cfg, out, log=log)
    assert [r["setting"].split(",")[0] for r in layers if r["metric"] == "knn_top1"] == [
        "layer=stage1", "layer=stage2", "layer=stage3", "layer=stage4", "layer=pooled"]
    pooled = results.select(layers, metric="knn_top1")[-1]["value"]
    assert pooled == pytest.approx(results.select(knn, setting="k=20,T=0.07", metric="top1")[0]["value"])

    # Every record is merged into one results.json of the flat schema.
    merged = results.read_records(out)
    assert len(merged) == len(knn) + len(rand) + len(lin) + len(fine) + 5 + 5 + len(layers)
    assert all(set(r) == set(results.FIELDS) for r in merged)


def test_evaluate_cli_writes_results_and_reports_errors(demo_run, tmp_path):
    workdir, _ = demo_run
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO_ROOT)
    cmd = [sys.executable, "-m", "ssl_jax.evaluate", "--config=configs/eval/linear_cached.py:demo"]
    proc = subprocess.run(cmd + [f"--workdir={tmp_path}", f"--config.source={workdir}"], env=env,
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = results.read_records(str(tmp_path))
    assert {r["metric"] for r in recs} == {"top1", "top5", "l2"} and recs[0]["protocol"] == "linear_cached"
    # ... and to TensorBoard, under eval/ at the evaluated checkpoint's step.
    from tests.test_tensorboard import scalars

    tags = scalars(tmp_path / "tensorboard")
    assert sorted(tags) == ["eval/linear_cached/l2", "eval/linear_cached/top1", "eval/linear_cached/top5"]
    assert tags["eval/linear_cached/top1"] == [(352, pytest.approx(results.select(recs, metric="top1")[0]["value"]))]

    empty = tmp_path / "not_a_run"
    empty.mkdir()
    proc = subprocess.run(cmd + [f"--workdir={empty}"], env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("ssl_jax: error: ")
    assert "config.json" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------ eval configs

def _eval_presets():
    import glob
    import importlib.util

    for path in sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "eval", "*.py"))):
        spec = importlib.util.spec_from_file_location(f"_evalcfg_{os.path.basename(path)}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        for preset in mod.PRESETS:
            yield os.path.basename(path)[:-3], preset, mod


@pytest.mark.parametrize("name,preset,module", list(_eval_presets()),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_every_eval_preset_is_valid_and_documented(name, preset, module):
    from ssl_jax.data import augment
    from ssl_jax.evaluate import run
    from ssl_jax.train.optim import build_optimizer

    c = module.get_config(preset)
    assert c.protocol == name and name in run.PROTOCOLS
    assert preset in module.__doc__ and f"configs/eval/{name}.py" in module.__doc__
    for view in c.data.views:
        augment.check_view_cfg(view)
    if "train" in c:
        opt, schedule = build_optimizer(c.train.optimizer, global_batch_size=c.train.batch_size,
                                        steps_per_epoch=10, num_epochs=c.train.epochs)
        assert float(schedule(0)) >= 0
    with pytest.raises(ValueError, match="Unknown preset"):
        module.get_config("no_such_preset")
