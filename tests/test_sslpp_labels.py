"""SSL++'s stage-B label sources beyond ground truth and random (ssl_jax.stages): 'kmeans' (PCA +
k-means on the pixels, Table IX) against scikit-learn, and 'iic' (the clusterer's best sub-head)
through stage B on an IIC workdir, checked against the network applied directly."""
import json
import os

import jax
import numpy as np
import pytest

from ssl_jax import clustering, stages
from ssl_jax.methods import sslpp


def test_pca_project_matches_numpy_svd():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 12)) * np.linspace(3.0, 0.2, 12) + 5.0
    got = np.asarray(clustering.pca_project(x.astype(np.float32), 4))
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    ref = centred @ vt[:4].T
    # Components are defined up to sign; pca_project signs each by its largest-|value| entry.
    signs = np.sign(vt[:4][np.arange(4), np.argmax(np.abs(vt[:4]), axis=1)])
    np.testing.assert_allclose(got, ref * signs, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="dim must be in"):
        clustering.pca_project(x, 13)


def test_kmeans_labels_agree_with_scikit_learn_up_to_a_permutation():
    """Five blobs apart only along the 3 directions of largest variance, buried in 37 noisy
    ones of lower variance: PCA to 3 then k-means finds them exactly (as scikit-learn's PCA +
    KMeans does); a projection on the wrong components would cluster the noise."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(1)
    truth = np.repeat(np.arange(5), 60)
    centres = rng.normal(size=(5, 3)) * 6.0
    x = np.concatenate([centres[truth] + 0.3 * rng.normal(size=(300, 3)), 0.8 * rng.normal(size=(300, 37))], 1)
    x = x @ np.linalg.qr(rng.normal(size=(40, 40)))[0]  # the structure in no particular pixel
    result = stages.kmeans_labels(x.astype(np.float32), 5, pca_dim=3, seed=0)
    ours = np.asarray(result.assignments)
    ref = KMeans(5, n_init=10, random_state=0).fit_predict(PCA(3).fit_transform(x))
    assert adjusted_rand_score(ref, ours) == 1.0 and adjusted_rand_score(truth, ours) == 1.0
    with pytest.raises(ValueError, match="pca_dim=41 exceeds the 40 pixel values"):
        stages.kmeans_labels(x, 5, pca_dim=41)


def _inertia(x, labels):
    return sum(((x[labels == k] - x[labels == k].mean(0)) ** 2).sum() for k in np.unique(labels))


def test_stage_b_kmeans_labels_the_digits_in_dataset_index_order(tmp_path):
    """configs/sslpp.py:demo_kmeans's stage B: a 'kmeans' file with the fingerprint, the same bytes
    from a second run (a function of stage_b.seed), whose labels, read against the training images
    in dataset-index order, are a k-means solution as good as scikit-learn's (a file in another
    order, or from other pixels, would score far worse)."""
    from sklearn.cluster import KMeans

    from configs import sslpp as sslpp_config
    from ssl_jax.data import pipeline

    config = sslpp_config.get_config("demo_kmeans")
    path = str(tmp_path / "a.npz")
    assert stages.stage_b(config, None, path) == 50
    stored = sslpp.read_labels(path)
    assert stored["source"] == "kmeans" and stored["num_classes"] == 50 and stored["stage_a_step"] == -1
    assert stored["fingerprint"] == dict(dataset="digits", split="train", num_examples=1437)

    # The pixels gathered here in one batch, put in index order here: the same labels again.
    images = next(pipeline.eval_iterator(config.stage_c.data, "train", global_batch_size=1437))
    pixels = np.zeros((1437, 16 * 16 * 3), np.float32)
    pixels[images["index"]] = images["image"].reshape(1437, -1)
    again = stages.kmeans_labels(pixels, 50, pca_dim=256, seed=config.stage_b.seed)
    np.testing.assert_array_equal(np.asarray(again.assignments), stored["labels"])
    projected = np.asarray(clustering.pca_project(pixels, 256), np.float64)
    # The file records what made it; a rerun with other settings is one error, not a silent reuse.
    assert stored["settings"] == dict(seed=0, num_classes=50, pca_dim=256, whiten=False, kmeans_iters=300)
    config.stage_b.pca_dim = 64
    with pytest.raises(ValueError, match="made with config.stage_b"):
        stages.stage_b(config, None, path)
    ref = KMeans(50, n_init=1, random_state=0).fit(projected)
    ours = _inertia(projected, stored["labels"])
    assert ours <= 1.02 * ref.inertia_, (ours, ref.inertia_)
    assert _inertia(projected, np.random.default_rng(0).permutation(stored["labels"])) > 1.5 * ref.inertia_


def test_the_pixel_pass_polls_for_a_multi_process_sigterm_every_batch(monkeypatch):
    """k-means' pixel pass calls preemption.poll_pass once per batch (every process reads every
    batch), so a SIGTERM of a multi-process run stops stage B at the same batch on all processes;
    a poll that raises stops the pass there."""
    from configs import sslpp as sslpp_config
    from ssl_jax.train import preemption

    data = sslpp_config.get_config("demo_kmeans").stage_c.data
    polls = []
    monkeypatch.setattr(preemption, "poll_pass", lambda: polls.append(1))
    stages.training_pixels(data, 500)
    assert len(polls) == 3  # 1437 images in batches of 500

    def stop_at_second():
        polls.append(1)
        if len(polls) == 5:
            raise preemption.PreemptedPass("stage B (labelling)")
    monkeypatch.setattr(preemption, "poll_pass", stop_at_second)
    with pytest.raises(preemption.PreemptedPass):
        stages.training_pixels(data, 500)


def test_stage_b_iic_labels_are_the_best_sub_heads_argmax(tmp_path):
    """Stage B with source 'iic' on an IIC workdir (the demo preset on ResNet-10, its initial
    state saved with a sub-head loss average that makes over-clustering sub-head 3 the best): the
    file holds that sub-head's argmax for every training image in dataset-index order (checked on
    images through the network directly), C = 50, the clusterer's step; a rerun reads it back and
    a file of another source is one error."""
    import jax.numpy as jnp

    from configs import sslpp as sslpp_config
    from ssl_jax import pretrained
    from ssl_jax.data import pipeline
    from ssl_jax.methods import iic
    from ssl_jax.train import checkpoint, loop
    from ssl_jax import parallel

    config = sslpp_config.get_config("demo")
    iic_config = config.stage_a
    iic_config.model.name = "resnet10"  # one block per stage: the same labelling, less compiling
    iic_config.model.conv_backend = "xla"
    iic_config.global_batch_size = 16
    workdir = str(tmp_path / "stage_a")
    os.makedirs(workdir)
    mesh = parallel.make_mesh()
    info, _, _, method, optimizer, _ = loop.build(iic_config, mesh)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(loop.run_record(iic_config, method))
    state, _ = loop.init_state(iic_config, method, optimizer, info, mesh)
    averages = np.array([[5.0, 4.0, 3.0, 1.0, 2.0], [1.0, 2.0, 3.0, 4.0, 5.0]], np.float32)
    state = state.replace(method_state=dict(state.method_state, subhead_loss=jnp.asarray(averages)),
                          step=jnp.int32(7))
    manager = checkpoint.make_manager(workdir, keep=1, async_save=False)
    checkpoint.save(manager, state, {"step": 7})
    manager.wait_until_finished()

    path = str(tmp_path / stages.LABELS_FILE)
    assert stages.stage_b(config, workdir, path) == 50
    stored = sslpp.read_labels(path)
    assert stored["source"] == "iic" and stored["stage_a_step"] == 7 and stored["num_classes"] == 50
    labels = stored["labels"]
    assert labels.shape == (1437,) and labels.min() >= 0 and labels.max() < 50

    pre = pretrained.load_workdir(workdir, "online")
    batch = next(pipeline.eval_iterator(pre.config.data, "train", global_batch_size=64))
    h = pre.encoder.apply(pre.variables, batch["image"], train=False)
    logits = iic.build_subheads(pre.config.iic, "overcluster").apply(
        {"params": pre.heads["overcluster"]["params"]}, h)
    np.testing.assert_array_equal(labels[batch["index"]], np.argmax(np.asarray(logits)[:, 3], -1))
    assert not np.array_equal(labels[batch["index"]], np.argmax(np.asarray(logits)[:, 0], -1))

    assert stages.stage_b(config, workdir, path) == 50  # done: read back, not relabelled
    other = sslpp_config.get_config("demo_kmeans")
    with pytest.raises(ValueError, match="holds iic labels"):
        stages.stage_b(other, None, path)
