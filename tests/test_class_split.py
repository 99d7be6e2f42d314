"""Class subsets of a labelled dataset (config.data.classes: ssl_jax.data.sources / pipeline),
CIFAR-100's cross-class split (ssl_jax.data.class_splits) and FUSSL's cross-class presets."""
import re
import types

import ml_collections
import numpy as np
import pytest

from ssl_jax.data import class_splits as CS
from ssl_jax.presets import eval_train_view
from ssl_jax.data import pipeline as P
from ssl_jax.data import sources as S

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
KEPT = (7, 2, 5)  # out of order on purpose: label k is class KEPT[k]


def _cfg(**kw):
    return dict(dict(dataset="digits", data_dir=None, train_split="train", image_size=16, mean=MEAN, std=STD,
                     shuffle_buffer=2000, views=[eval_train_view(crop_min=1.0, flip_prob=0.0)]), **kw)


def _eval_pass(cfg, split="train", batch=128):
    """(images, labels, indices) of one eval pass, padding dropped, in index order."""
    xs, ys, idx = [], [], []
    for b in P.eval_iterator(cfg, split, global_batch_size=batch, process_index=0, process_count=1):
        keep = b["mask"]
        xs.append(b["image"][keep]), ys.append(b["label"][keep]), idx.append(b["index"][keep])
    x, y, i = np.concatenate(xs), np.concatenate(ys), np.concatenate(idx)
    order = np.argsort(i)
    return x[order], y[order], i[order]


def test_subset_yields_only_its_classes_remapped_with_numpy_counts():
    """Every count a run uses is the NumPy count of the kept classes on the raw labels; the subset's
    example i is the full split's i-th example of those classes, its label remapped to KEPT's order."""
    raw = S._digits_split("train")[1]
    rows = np.flatnonzero(np.isin(raw, KEPT))  # the kept examples in the split's order
    cfg = _cfg(classes=KEPT)
    info = P.split_info(cfg)
    assert info["num_examples_total"] == len(rows) and info["num_classes"] == 3 and info["classes"] == KEPT
    assert P.num_eval_examples(cfg, "train") == len(rows)
    assert P.num_eval_batches(cfg, "train", 128) == -(-len(rows) // 128)
    assert P.steps_per_epoch(cfg, 32, 1) == len(rows) // 32
    x, y, i = _eval_pass(cfg)
    np.testing.assert_array_equal(i, np.arange(len(rows)))
    np.testing.assert_array_equal(y, [KEPT.index(c) for c in raw[rows]])
    np.testing.assert_array_equal(np.bincount(y), [np.sum(raw == c) for c in KEPT])
    full_x, full_y, _ = _eval_pass(_cfg())
    np.testing.assert_array_equal(x, full_x[rows])  # the same pixels as the full split's examples
    np.testing.assert_array_equal(P.train_labels(cfg, 0, 1), y)
    batch = next(P.pretrain_iterator(cfg, global_batch_size=32, seed=0, num_views=1, process_index=0,
                                     process_count=1))
    assert set(batch["label"].tolist()) <= {0, 1, 2} and batch["index"].max() < len(rows)
    np.testing.assert_array_equal(batch["label"], y[batch["index"]])


def test_two_process_slices_of_a_subset_partition_it():
    """Filter first, then slice: the slices' indices and examples concatenate to the 1-process
    subset, and their sizes differ by at most one."""
    whole, n, _ = S.load_split("digits", "test", None, 0, 1, KEPT)
    whole = list(whole.as_numpy_iterator())
    sizes = S.slice_sizes("digits", "test", None, 2, KEPT)
    assert sum(sizes) == n == len(whole) and abs(sizes[0] - sizes[1]) <= 1
    parts = []
    for p in range(2):
        ds, m, _ = S.load_split("digits", "test", None, p, 2, KEPT)
        part = list(ds.as_numpy_iterator())
        assert m == len(part) == sizes[p]
        assert P.slice_range(_cfg(train_split="test", classes=KEPT), p, 2) == (sum(sizes[:p]), sizes[p])
        parts += part
    assert [e["index"] for e in parts] == list(range(n))
    for a, b in zip(parts, whole):
        np.testing.assert_array_equal(a["image"], b["image"])
        assert a["label"] == b["label"]


def test_cifar10_subset_matches_a_plain_tfds_read(shared_tfds_dir):
    """The first 4000 of CIFAR-10's test split (one shard: TFDS's plain read is the stored order):
    the subset of ('dog', 3) by name and id has the plain read's examples of dogs and cats, in
    order, labels dog -> 0, cat -> 1, over two process slices."""
    import tensorflow_datasets as tfds

    builder = tfds.builder("cifar10", data_dir=shared_tfds_dir)
    split = "test[:4000]"
    plain = list(builder.as_dataset(split=split, shuffle_files=False,
                                    decoders={"image": tfds.decode.SkipDecoding()}).as_numpy_iterator())
    labels = np.array([e["label"] for e in plain])
    rows = np.flatnonzero(np.isin(labels, [5, 3]))
    classes = ("dog", 3)
    info = S.dataset_info("cifar10", split, shared_tfds_dir, classes)
    assert info["num_examples_total"] == len(rows) and info["classes"] == (5, 3)
    got = []
    for p in range(2):
        ds, m, _ = S.load_split("cifar10", split, shared_tfds_dir, p, 2, classes)
        got += list(ds.as_numpy_iterator())
    assert [e["index"] for e in got] == list(range(len(rows)))
    assert [e["label"] for e in got] == [0 if labels[r] == 5 else 1 for r in rows]
    assert all(e["image"] == plain[r]["image"] for e, r in zip(got, rows))
    # Across a shard boundary (CIFAR-10's train shards hold 12,500 each) the subset keeps the stored
    # order (TFDS would interleave the two shards' records): the reference reads each shard's part alone.
    parts = ("train[12400:12500]", "train[12500:12600]")
    plain = [e for part in parts for e in builder.as_dataset(
        split=part, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}).as_numpy_iterator()]
    rows = [r for r, e in enumerate(plain) if e["label"] in (5, 3)]
    ds, m, _ = S.load_split("cifar10", "train[12400:12600]", shared_tfds_dir, 0, 1, classes)
    assert m == len(rows) and all(e["image"] == plain[r]["image"] for e, r in zip(ds.as_numpy_iterator(), rows))
    first = labels[:5]
    absent = int(np.setdiff1d(np.arange(10), first)[0])
    with pytest.raises(ValueError, match="no example of the classes"):
        S.dataset_info("cifar10", "test[:5]", shared_tfds_dir, (absent,))
    with pytest.raises(ValueError, match="one contiguous range of one split"):
        S.dataset_info("cifar10", "train+test", shared_tfds_dir, (1,))
    with pytest.raises(ValueError, match="not a class id"):
        S.dataset_info("cifar10", split, shared_tfds_dir, ("tiger",))


@pytest.mark.parametrize("classes, match", [((3, 3), "more than once"), ((10,), "outside the 10 classes"),
                                            ((-1,), "outside"), (("3",), "not a class id"),
                                            ((True,), "not a class id"), ((1.0,), "not a class id")])
def test_bad_classes_are_one_clear_error(classes, match):
    with pytest.raises(ValueError, match=match):
        P.split_info(_cfg(classes=classes))
    with pytest.raises(ValueError, match="must be a tuple of class ids"):
        P.classes(_cfg(classes="0,1"))


def test_a_dataset_without_labels_is_one_clear_error(monkeypatch):
    unlabelled = types.SimpleNamespace(info=types.SimpleNamespace(features={"image": None}))
    monkeypatch.setattr(S, "_builder", lambda dataset, data_dir: unlabelled)
    with pytest.raises(ValueError, match="has no 'label' feature"):
        S._resolve_classes("unlabelled_images", None, (0,))


def test_labels_files_of_a_subset_and_of_the_full_set_refuse_each_other(tmp_path):
    """sslpp and FUSSL labels files (and a checkpoint's per-example state) carry the subset in the
    fingerprint: a file of the subset is refused on the full set, on the reverse subset order and
    on the complementary subset (same size), and the reverse; the same subset is accepted."""
    from ssl_jax.methods import fussl_phase2, sslpp
    from ssl_jax.train import refresh

    full, sub = _cfg(), _cfg(classes=(0, 1, 2, 3, 4))
    fp_full, fp_sub = P.training_fingerprint(full), P.training_fingerprint(sub)
    assert fp_full == dict(dataset="digits", split="train", num_examples=1437)  # as files made before subsets
    assert fp_sub["data_classes"] == [0, 1, 2, 3, 4]
    others = [fp_full, P.training_fingerprint(_cfg(classes=(4, 3, 2, 1, 0)))]
    for fp, other_cfg in ((fp_sub, full), (fp_full, sub)):
        path = str(tmp_path / f"sslpp_{len(fp)}.npz")
        sslpp.write_labels(path, np.zeros(fp["num_examples"], np.int32), fp, num_classes=2, source="random")
        stored = sslpp.read_labels(path)["fingerprint"]
        assert stored == fp
        sslpp.check_fingerprint(stored, fp, path)
        with pytest.raises(ValueError, match="classes \\(0, 1, 2, 3, 4\\)"):
            sslpp.check_fingerprint(stored, P.training_fingerprint(other_cfg), path)
        fpath = str(tmp_path / f"fussl_{len(fp)}.npz")
        rows = np.zeros((fp["num_examples"], 3), np.int32)
        fussl_phase2.write_labels(fpath, rows, rows.astype(np.float32), fp, chosen_block=0, block_errors=[0.0] * 3,
                                  config={})
        fstored = fussl_phase2.read_labels(fpath)
        assert fstored["fingerprint"] == fp and fstored["classes"].shape == (fp["num_examples"], 3)
        with pytest.raises(ValueError, match="Relabel"):
            fussl_phase2.check_labels(fstored, P.training_fingerprint(other_cfg), fpath)
    for other in others:
        assert other != fp_sub
        with pytest.raises(ValueError, match="per-example state"):
            refresh.check_fingerprint({"dataset_fingerprint": fp_sub}, other, "ckpt")
    complement = P.training_fingerprint(_cfg(classes=(5, 6, 7, 8, 9)))
    assert complement != fp_sub


def test_cifar100_table_and_cross_class_split():
    table = np.asarray(CS.CIFAR100_FINE_TO_COARSE)
    assert table.shape == (100,) and sorted(np.bincount(table).tolist()) == [5] * 20
    pre, ev = CS.cifar100_cross_class_split()
    assert len(pre) == len(ev) == 50 and not set(pre) & set(ev) and set(pre) | set(ev) == set(range(100))
    for c in range(20):
        on_pre = int(np.sum(table[list(pre)] == c))
        assert on_pre == (3 if c < 10 else 2) and int(np.sum(table[list(ev)] == c)) == 5 - on_pre
    # The table of paired labels (as TFDS cifar100's 'label' / 'coarse_label') gives the table back.
    fine = np.random.default_rng(0).permutation(np.repeat(np.arange(100), 3))
    assert CS.fine_to_coarse_from_labels(fine, table[fine], 100) == CS.CIFAR100_FINE_TO_COARSE
    coarse = table[fine].copy()
    coarse[0] = (coarse[0] + 1) % 20
    with pytest.raises(ValueError, match=f"fine classes \\[{fine[0]}\\] have several superclasses"):
        CS.fine_to_coarse_from_labels(fine, coarse, 100)
    with pytest.raises(ValueError, match="never occur"):
        CS.fine_to_coarse_from_labels(fine[fine != 7], table[fine[fine != 7]], 100)
    with pytest.raises(ValueError, match="fewer than two"):
        CS.superclass_split([0, 0, 1])


def test_fine_to_coarse_from_data_needs_the_prepared_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="not prepared"):
        CS.fine_to_coarse_from_data("cifar100", data_dir=str(tmp_path))


def test_cross_class_presets_pretrain_and_evaluate_on_disjoint_classes(tmp_path):
    """Every cross-class preset trains each phase on one class set and evaluates on the other,
    disjoint, together every class; hard / soft / base are Table 4's columns; the in-training
    evaluation reads the held-out classes and the evaluation command inherits them."""
    from configs import fussl as fussl_config
    from ssl_jax import pretrained as pretrained_lib
    from ssl_jax.evaluate import in_training, run as run_lib

    num = {"cifar100": 100, "cifar10": 10, "demo": 10}
    for scale in fussl_config.CROSS_CLASS_SCALES:
        for variant in fussl_config.CROSS_CLASS_VARIANTS:
            c = fussl_config.get_config(f"{scale}_{variant}")
            runs = [c] if variant.endswith("base") else [c.phase1, c.phase2]
            assert c.method == ("simclr" if variant.endswith("base") else "fussl")
            if c.method == "fussl":
                assert c.fussl.label_mode == {"hard": "hard", "soft": "soft"}.get(variant.split("_")[-1], "fuzzy")
            for r in runs:
                pre, ev = set(r.data.classes), set(r.data.eval_classes)
                assert len(pre) == len(ev) == num[scale] // 2 and not pre & ev and pre | ev == set(range(num[scale]))
                assert P.classes(in_training.eval_data(r)) == tuple(r.data.eval_classes)
                assert in_training.held_out_classes(r)
    c = fussl_config.get_config("cifar100_cross_class")
    assert c.phase1.data.dataset == "cifar100" and c.phase1.data.mean == fussl_config.CIFAR100_MEAN
    c.phase1.data.data_dir = str(tmp_path)  # no cifar100 there: the usual error, not a crash
    with pytest.raises(FileNotFoundError, match="not prepared"):
        P.split_info(c.phase1.data)
    # The evaluation command on a cross-class run's workdir: its held-out classes by default.
    base = fussl_config.get_config("demo_cross_class_base")
    pre = types.SimpleNamespace(data=pretrained_lib._data_fields(base))  # the data a checkpoint carries
    eval_cfg = ml_collections.ConfigDict({"data": dict(
        dataset="", data_dir=None, train_split="", test_split="", image_size=-1, mean=(), std=(), views=[],
        shuffle_buffer=10, classes=())})
    assert run_lib.resolve_data(eval_cfg, pre).classes == tuple(base.data.eval_classes)
    eval_cfg.data.classes = (1, 2)
    assert run_lib.resolve_data(eval_cfg, pre).classes == (1, 2)
    eval_cfg.data.update(dict(classes=(), dataset="cifar10"))  # transfer: every class
    assert run_lib.resolve_data(eval_cfg, pre).classes == ()
    plain = fussl_config.get_config("demo_base")
    assert not in_training.held_out_classes(plain) and P.classes(in_training.eval_data(plain)) == ()


def test_a_workdir_of_another_class_subset_is_another_run():
    from ssl_jax.train import workdir

    old = {"method": "simclr", "data": {"dataset": "digits", "classes": [0, 1]}}
    assert workdir.identity_differences(old, {"method": "simclr", "data": {"dataset": "digits", "classes": [2, 3]}})
    assert not workdir.identity_differences(old, old)


def test_records_name_the_class_subset_they_were_made_on():
    """Pretraining records carry the training subset, evaluation records the evaluated one, so a
    held-out-class number is never merged with or taken for a whole-dataset number."""
    from configs import fussl as fussl_config
    from ssl_jax import results
    from ssl_jax.evaluate import in_training

    c = fussl_config.get_config("demo_cross_class_base")
    run = results.run_fields(c, 10, 5)
    assert run["dataset"] == "digits[classes=0,1,2,3,4]"
    assert results.dataset_label(in_training.eval_data(c)) == "digits[classes=5,6,7,8,9]"
    assert results.run_fields(fussl_config.get_config("demo_base"), 10, 5)["dataset"] == "digits"
    many = results.dataset_label({"dataset": "cifar100", "classes": tuple(range(50))})
    assert re.fullmatch(r"cifar100\[50 classes #[0-9a-f]{8}\]", many)
    assert many != results.dataset_label({"dataset": "cifar100", "classes": tuple(range(1, 51))})
    recs = results.make_records(run, protocol="knn", eval_dataset=results.dataset_label(in_training.eval_data(c)),
                                network="online", metrics={"top1": 0.5})
    assert recs[0]["dataset"] != recs[0]["eval_dataset"]
