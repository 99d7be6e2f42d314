"""IIC: losses.iic against a float64 NumPy reference written here and its properties (bounds, the
closed forms ln C and 0, cluster permutations, symmetry, gradients at saturation); the method's
head schedule, pair layout and sub-head selection; the labelling function on a tiny real run."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import softmax

from ssl_jax import losses


def _reference_iic(p1, p2, eps=np.finfo(np.float64).eps):
    """IIC's −I(P) in float64 with explicit loops over the pairs and the C x C cells."""
    p1, p2 = np.asarray(p1, np.float64), np.asarray(p2, np.float64)
    n, c = p1.shape
    joint = np.zeros((c, c))
    for i in range(n):
        joint += np.outer(p1[i], p2[i])
    joint = (joint + joint.T) / 2
    joint /= joint.sum()
    rows, cols = joint.sum(1), joint.sum(0)
    total = 0.0
    for a in range(c):
        for b in range(c):
            pab, pa, pb = max(joint[a, b], eps), max(rows[a], eps), max(cols[b], eps)
            total += pab * (math.log(pab) - math.log(pa) - math.log(pb))
    return -total


def _softmax_pairs(seed, n=32, c=7, scale=3.0):
    rng = np.random.default_rng(seed)
    return (softmax(scale * rng.normal(size=(n, c)), -1).astype(np.float32),
            softmax(scale * rng.normal(size=(n, c)), -1).astype(np.float32))


def _one_hot(labels, c):
    return np.eye(c, dtype=np.float32)[labels]


@pytest.mark.parametrize("seed,n,c,scale", [(0, 32, 7, 3.0), (1, 5, 3, 1.0), (2, 64, 10, 10.0),
                                            (3, 16, 70, 30.0)])
def test_iic_matches_the_reference(seed, n, c, scale):
    p1, p2 = _softmax_pairs(seed, n, c, scale)
    # Pairs that agree a little, so I is neither ~0 nor at its bound.
    p2 = (0.5 * p1 + 0.5 * p2).astype(np.float32)
    ours = losses.iic(p1, p2)
    assert ours.dtype == jnp.float32 and ours.shape == ()
    np.testing.assert_allclose(float(ours), _reference_iic(p1, p2), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(float(jax.jit(losses.iic)(p1, p2)), float(ours), rtol=1e-6, atol=1e-7)
    # bfloat16 inputs: the math still runs in float32 (the result is the reference of the
    # rounded inputs, not a bfloat16 computation).
    b1, b2 = jnp.asarray(p1, jnp.bfloat16), jnp.asarray(p2, jnp.bfloat16)
    np.testing.assert_allclose(float(losses.iic(b1, b2)),
                               _reference_iic(np.asarray(b1, np.float32), np.asarray(b2, np.float32)),
                               rtol=2e-5, atol=1e-6)


def test_iic_is_bounded_by_zero_and_log_c():
    for seed in range(20):
        c = 2 + seed % 9
        p1, p2 = _softmax_pairs(seed, n=8 + seed, c=c, scale=0.5 + seed)
        if seed % 2:
            p2 = p1[np.random.default_rng(seed).permutation(len(p1))]
        mi = -float(losses.iic(p1, p2))
        assert -1e-6 <= mi <= math.log(c) + 1e-6, (seed, mi)


def test_iic_is_log_c_for_identical_uniform_one_hot_assignments():
    for c in (2, 10, 70):
        labels = np.tile(np.arange(c), 3)  # each cluster equally often
        p = _one_hot(np.random.default_rng(c).permutation(labels), c)
        np.testing.assert_allclose(-float(losses.iic(p, p)), math.log(c), rtol=1e-6)
    # Unbalanced identical assignments reach only the entropy of the cluster frequencies.
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    freq = np.array([0.6, 0.3, 0.1])
    np.testing.assert_allclose(-float(losses.iic(_one_hot(labels, 3), _one_hot(labels, 3))),
                               -np.sum(freq * np.log(freq)), rtol=1e-6)


def test_iic_is_zero_for_independent_assignments():
    # One view's output is the same distribution q for every image and the other view's
    # clusters have frequencies q: P = q qᵀ, a product (symmetrisation keeps it one).
    q = np.array([0.5, 0.3, 0.2], np.float32)
    p1 = np.tile(q, (10, 1))
    p2 = _one_hot(np.array([0] * 5 + [1] * 3 + [2] * 2), 3)
    assert abs(float(losses.iic(p1, p2))) < 1e-6
    # Every pair of clusters equally often: one-hot assignments, independent across views.
    c = 5
    a, b = np.meshgrid(np.arange(c), np.arange(c), indexing="ij")
    assert abs(float(losses.iic(_one_hot(a.ravel(), c), _one_hot(b.ravel(), c)))) < 1e-6


def test_iic_is_invariant_to_permuting_clusters_and_symmetric():
    p1, p2 = _softmax_pairs(5, n=24, c=9)
    base = float(losses.iic(p1, p2))
    perm = np.random.default_rng(5).permutation(9)
    np.testing.assert_allclose(float(losses.iic(p1[:, perm], p2[:, perm])), base, rtol=1e-6)
    np.testing.assert_allclose(float(losses.iic(p2, p1)), base, rtol=1e-6)
    # ... and to the order of the pairs; not to permuting one view's clusters only.
    order = np.random.default_rng(6).permutation(24)
    np.testing.assert_allclose(float(losses.iic(p1[order], p2[order])), base, rtol=1e-6)
    assert abs(float(losses.iic(p1, p1[:, perm])) - float(losses.iic(p1, p1))) > 1e-2


def test_iic_gradients_are_finite_at_saturation():
    # Exact one-hot softmax outputs: most cells of P are exactly 0 (clamped to eps).
    c = 6
    labels = np.array([0, 0, 1, 2, 2, 2, 5, 5])  # clusters 3 and 4 empty: zero marginals too
    p = jnp.asarray(_one_hot(labels, c))
    g1, g2 = jax.grad(losses.iic, argnums=(0, 1))(p, p)
    assert np.all(np.isfinite(g1)) and np.all(np.isfinite(g2))
    # Through a saturated softmax (logits of +-100) and through vmap over sub-heads.
    logits = jnp.asarray(200.0 * (_one_hot(labels, c) - 0.5))
    loss_of_logits = lambda z1, z2: losses.iic(jax.nn.softmax(z1), jax.nn.softmax(z2))
    g = jax.grad(loss_of_logits)(logits, logits[::-1])
    assert np.all(np.isfinite(g))
    stacked = jnp.stack([logits, logits * 0.01])
    per_head = jax.vmap(loss_of_logits)(stacked, stacked[:, ::-1])
    np.testing.assert_allclose(np.asarray(per_head), [float(loss_of_logits(logits, logits[::-1])),
                                                      float(loss_of_logits(logits * 0.01, logits[::-1] * 0.01))],
                               rtol=1e-6)


def test_iic_gradient_matches_finite_differences():
    p1, p2 = _softmax_pairs(7, n=6, c=4, scale=1.0)
    f = lambda z: losses.iic(jax.nn.softmax(z), jnp.asarray(p2))
    z = jnp.asarray(np.log(p1), jnp.float32)
    g = np.asarray(jax.grad(f)(z))
    h = 1e-3
    zz = np.log(p1).astype(np.float64)
    for i, j in [(0, 0), (2, 3), (5, 1)]:
        up, down = zz.copy(), zz.copy()
        up[i, j] += h
        down[i, j] -= h
        numeric = (_reference_iic(softmax(up, -1), p2) - _reference_iic(softmax(down, -1), p2)) / (2 * h)
        np.testing.assert_allclose(g[i, j], numeric, rtol=1e-2, atol=1e-5)


def test_iic_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        losses.iic(np.ones((4, 3)) / 3, np.ones((4, 5)) / 5)


# ---------------------------------------------------------------- the method

def _demo_config():
    import importlib

    return importlib.import_module("configs.iic").get_config("demo")


def test_head_schedule_is_a_function_of_the_epoch():
    from ssl_jax.methods import build_method

    config = _demo_config()
    config.iic.head_schedule = ("main", "main", "overcluster")
    method = build_method(config, total_steps=70, steps_per_epoch=7)
    trains = np.asarray(jax.jit(jax.vmap(method.trains_main))(jnp.arange(70)))
    expected = [(s // 7) % 3 != 2 for s in range(70)]  # B, B, A per epoch of 7 steps
    assert trains.tolist() == expected
    config.iic.head_schedule = ("overcluster", "main", "main")  # the CIFAR-10 order (A first)
    method = build_method(config, total_steps=70, steps_per_epoch=7)
    trains = np.asarray(jax.vmap(method.trains_main)(jnp.asarray([0, 6, 7, 20, 21])))
    assert trains.tolist() == [False, False, True, True, False]
    config.iic.head_schedule = ("main", "head_c")
    with pytest.raises(ValueError, match="head_schedule"):
        build_method(config, total_steps=70, steps_per_epoch=7)


def test_method_needs_one_view_config_per_view():
    from ssl_jax.methods import build_method

    config = _demo_config()
    config.iic.num_views = 6  # 5 repeats, but data.views still lists 1 + 3
    with pytest.raises(ValueError, match="one per view"):
        build_method(config, total_steps=10, steps_per_epoch=5)


def test_objective_pairs_view_zero_with_every_repeat_and_averages_sub_heads():
    """The objective on given head outputs against the reference: per head, the mean over
    sub-heads of IIC over the R·N pairs (view 0 of image n, view r of image n); the loss is the
    scheduled head's; the sub-head losses' moving average and its argmin."""
    from ssl_jax.methods import build_method

    config = _demo_config()
    r, n, s = 3, 6, config.iic.num_subheads
    method = build_method(config, total_steps=40, steps_per_epoch=4)
    rng = np.random.default_rng(0)
    out = {"overcluster": softmax(2 * rng.normal(size=(1 + r, n, s, config.iic.num_overclusters)), -1),
           "main": softmax(2 * rng.normal(size=(1 + r, n, s, config.iic.num_clusters)), -1)}
    out["main"][1:] = 0.7 * out["main"][:1] + 0.3 * out["main"][1:]  # views that agree: I > 0
    ref = {head: np.array([_reference_iic(np.concatenate([out[head][0, :, k]] * r),
                                          np.concatenate([out[head][v, :, k] for v in range(1, 1 + r)]))
                           for k in range(s)]) for head in out}
    previous = np.linspace(-1, -2, 2 * s).reshape(2, s).astype(np.float32)
    state = {"subhead_loss": jnp.asarray(previous)}
    for step, head in [(0, "main"), (4, "main"), (8, "overcluster"), (12, "main")]:
        loss, metrics, updates = method.objective({k: jnp.asarray(v, jnp.float32) for k, v in out.items()}, None,
                                                  state, None, jnp.int32(step), None)
        np.testing.assert_allclose(float(loss), ref[head].mean(), rtol=1e-5)
        assert float(metrics["iic_trains_main"]) == (head == "main")
    averaged = 0.99 * previous + 0.01 * np.stack([ref["overcluster"], ref["main"]])
    np.testing.assert_allclose(np.asarray(updates["subhead_loss"]), averaged, rtol=1e-5)
    assert int(metrics["iic_best_main_subhead"]) == int(np.argmin(averaged[1]))


# ---------------------------------------------------------------- a tiny run: labels and evaluation
# Marked slow: the run compiles a ResNet-18 train step (~1-3 min on 2 shared cores), beyond the CI
# budget; the step itself is in CI through tests/test_sharding.py.

@pytest.fixture(scope="module")
def tiny_iic_run(tmp_path_factory):
    """Two train steps of the demo preset (batch 16, 2 repeats), checkpointed: an IIC workdir."""
    from ssl_jax.train import loop

    config = _demo_config()
    config.global_batch_size = 16
    config.num_steps = 2
    config.iic.num_views = 3
    config.data.views = config.data.views[:3]
    config.checkpoint.update(dict(every_steps=2, async_save=False))
    config.eval.update(dict(every_steps=0, linear_probe=False, compare_random_init=False))
    workdir = str(tmp_path_factory.mktemp("iic_tiny"))
    loop.run(config, workdir)
    return workdir


@pytest.mark.slow
def test_label_dataset_gives_the_best_sub_heads_labels_in_index_order(tiny_iic_run):
    from ssl_jax import pretrained
    from ssl_jax.data import pipeline, sources
    from ssl_jax.evaluate import iic as iic_eval
    from ssl_jax.methods import iic

    pre = pretrained.load_workdir(tiny_iic_run)
    losses_ = np.asarray(pre.method_state["subhead_loss"])
    assert losses_.shape == (2, 5) and np.all(losses_ != 0)  # both heads' averages moved
    out = iic_eval.label_dataset(pre, head="main", batch_size=128)
    n = sources.dataset_info("digits", "train")["num_examples_total"]
    assert out["labels"].shape == (n,) and out["labels"].dtype == np.int32
    assert out["subhead"] == int(np.argmin(losses_[1])) and out["num_clusters"] == 10
    assert out["labels"].min() >= 0 and out["labels"].max() < 10
    # Direct: the first and last training images (by dataset index) through the network and
    # the chosen sub-head, outside the feature pass.
    images = next(pipeline.eval_iterator(pre.config.data, "train", global_batch_size=n))["image"]
    pick = np.array([0, 1, 2, n - 2, n - 1])
    h = pre.encoder.apply(pre.variables, images[pick], train=False)
    logits = iic.build_subheads(pre.config.iic, "main").apply({"params": pre.heads["main"]["params"]}, h)
    np.testing.assert_array_equal(out["labels"][pick], np.argmax(np.asarray(logits)[:, out["subhead"]], -1))
    over = iic_eval.label_dataset(pre, head="overcluster", split="test", batch_size=128)
    assert over["labels"].shape == (360,) and over["labels"].max() < 50 and over["split"] == "test"


@pytest.mark.slow
def test_clustering_protocol_scores_the_main_heads_best_sub_head(tiny_iic_run, tmp_path):
    import importlib

    from ssl_jax import pretrained
    from ssl_jax.evaluate import run as run_lib
    from ssl_jax.evaluate import iic as iic_eval
    from ssl_jax.evaluate.clustering import hungarian_accuracy
    from ssl_jax.methods import iic

    eval_cfg = importlib.import_module("configs.eval.clustering").get_config("demo")
    eval_cfg.source = tiny_iic_run
    records = run_lib.run(eval_cfg, str(tmp_path), log=lambda *_: None)
    pre = pretrained.load_workdir(tiny_iic_run)
    best = iic.best_subhead(pre.method_state, "main")
    acc = [r["value"] for r in records if r["metric"] == "acc" and r["setting"].startswith("iic_head=main")]
    test = iic_eval.label_dataset(pre, split="test", batch_size=360)
    y = np.asarray([lab for _, lab in iic_test_labels()])
    assert acc == [pytest.approx(hungarian_accuracy(y, test["labels"]))]
    assert {r["setting"] for r in records} == {f"iic_head=main,subhead={best},k=10",
                                               f"iic_head=overcluster,subhead={iic.best_subhead(pre.method_state, 'overcluster')},k=50"}
    eval_cfg.clustering.assign = "no_such"
    with pytest.raises(ValueError, match="assign"):
        run_lib.run(eval_cfg, str(tmp_path), log=lambda *_: None)


def iic_test_labels():
    from ssl_jax.data import sources

    ds, _, _ = sources.load_split("digits", "test")
    return [(int(ex["index"]), int(ex["label"])) for ex in ds.as_numpy_iterator()]
