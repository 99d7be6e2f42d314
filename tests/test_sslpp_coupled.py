"""SSL++'s coupled ablation (ssl_jax.methods.sslpp.CoupledSemanticHead, Table XII): the refresh
clusters the backbone's features and resets V₂, the loss reads the per-example labels, the staged
run (slow). Its 1-vs-8-device equality ('rotnet+coupled') is in tests/test_sharding.py."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_sslpp import numpy_ce  # the NumPy reference of the semantic head's loss

CLASSES = 7


def coupled_config(num_classes=CLASSES, view="all_copies"):
    """configs/rotnet.py:demo at batch 16 with coupled SSL++ labels."""
    from configs import rotnet
    c = rotnet.get_config("demo")
    c.global_batch_size = 16
    c.model.conv_backend = "xla"
    c.sslpp.update(dict(labels="coupled", num_classes=num_classes, weight=0.5, view=view))
    return c


def test_coupled_refresh_clusters_the_features_and_the_loss_reads_them():
    """The refresh opening an epoch: labels = the clusters of the backbone's features (7 blobs,
    found up to a permutation), padded with -1 to the state's rows; V₂ re-initialised (and named
    for the optimizer reset); the same labels and head again for the same epoch, new ones for the
    next (its NMI to the previous logged). The loss then takes each image's label from that state:
    the proxy's loss + λ · a NumPy cross-entropy of V₂ on the rotated copies."""
    from sklearn.metrics import adjusted_rand_score

    from ssl_jax.methods import build_method, sslpp
    from ssl_jax.parallel import PER_EXAMPLE_KEY

    method = build_method(coupled_config(), total_steps=10, steps_per_epoch=5)
    assert isinstance(method, sslpp.CoupledSemanticHead) and method.refresh_due(0) and not method.samples
    params, stats, state = jax.jit(method.init)(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 3)))
    assert state[PER_EXAMPLE_KEY]["labels"].shape == (1440,) and int(state["refreshed_at"]) == -1
    dim = method.encoder.feature_dim
    rng = np.random.default_rng(0)
    truth = rng.integers(0, CLASSES, 1437)
    features = (10.0 * rng.normal(size=(CLASSES, dim)))[truth] + rng.normal(size=(1437, dim))
    host = jax.tree.map(np.asarray, state)
    new_params, new_state, reset, metrics = method.refresh(params, stats, host, features.astype(np.float32), 0)
    labels = new_state[PER_EXAMPLE_KEY]["labels"]
    assert reset == ("semantic_head",) and labels.shape == (1440,) and np.all(labels[1437:] == -1)
    assert adjusted_rand_score(truth, labels[:1437]) > 0.95, adjusted_rand_score(truth, labels[:1437])
    assert metrics["refresh_nonempty_clusters"] == CLASSES and "refresh_nmi_previous" not in metrics
    old, new = params["semantic_head"]["dense1"]["kernel"], new_params["semantic_head"]["dense1"]["kernel"]
    assert old.shape == new.shape and not np.allclose(old, new)
    again = method.refresh(params, stats, host, features.astype(np.float32), 0)
    np.testing.assert_array_equal(again[1][PER_EXAMPLE_KEY]["labels"], labels)
    np.testing.assert_array_equal(again[0]["semantic_head"]["dense1"]["kernel"], new)
    nxt = method.refresh(new_params, stats, new_state, features.astype(np.float32), 1)
    assert "refresh_nmi_previous" in nxt[3]
    assert not np.array_equal(nxt[0]["semantic_head"]["dense1"]["kernel"], new)

    index = rng.choice(1437, 16, replace=False).astype(np.int32)
    batch = {"views": (jnp.asarray(rng.normal(size=(16, 16, 16, 3)), jnp.float32),),
             "label": jnp.zeros(16, jnp.int32), "index": jnp.asarray(index)}
    key, step = jax.random.PRNGKey(2), jnp.int32(0)
    loss, aux = method.loss(new_params, stats, new_state, batch, key, step)
    proxy_loss, _, out = method.method.loss_and_outputs(new_params, stats, new_state, batch, key, step)
    dense = new_params["semantic_head"]["dense1"]
    logits = np.asarray(out["h"], np.float64) @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])
    z = np.broadcast_to(labels[index], logits.shape[:2])
    np.testing.assert_allclose(float(loss), float(proxy_loss) + 0.5 * numpy_ce(logits, z), rtol=1e-5)
    assert PER_EXAMPLE_KEY in aux["method_state"]  # carried through the step unchanged


def test_coupled_config_errors():
    from ssl_jax.methods import build_method

    config = coupled_config()
    config.sslpp.recluster_epochs = 0
    with pytest.raises(ValueError, match="recluster_epochs >= 1"):
        build_method(config, total_steps=10, steps_per_epoch=5)
    from configs import deepcluster
    config = deepcluster.get_config("demo")
    config.sslpp.update(dict(labels="coupled", weight=1.0))
    with pytest.raises(ValueError, match="already uses for its own targets"):
        build_method(config, total_steps=10, steps_per_epoch=5)


@pytest.mark.slow
def test_staged_coupled_run_reclusters_at_epoch_zero(tmp_path):
    """configs/sslpp.py:demo_coupled for 4 steps: no stage B file, the refresh opening epoch 0 is
    logged, the checkpoint's labels cover every image with C = 50 clusters. ~1 min on 2 cores."""
    import json

    from ssl_jax import stages
    from ssl_jax.train import checkpoint
    from tests.test_sslpp import staged_config

    workdir = str(tmp_path / "run")
    stages.run(staged_config("demo_coupled"), workdir)
    assert not os.path.exists(os.path.join(workdir, stages.LABELS_FILE))
    lines = [json.loads(line) for line in open(os.path.join(workdir, "stage_c", "metrics.jsonl"))]
    assert lines[0]["refresh_nonempty_clusters"] > 1 and "semantic_loss" in lines[0]
    state, step, meta = checkpoint.restore_raw(os.path.join(workdir, "stage_c"))
    labels = state["method_state"]["per_example"]["labels"]
    assert step == 4 and labels[:1437].min() >= 0 and labels.max() < 50
    assert meta["dataset_fingerprint"]["num_examples"] == 1437
