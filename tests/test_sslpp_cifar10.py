"""The SSL++ CIFAR-10 CPU benchmark (benchmarks/sslpp_cifar10.py): its config derivation (only
the documented fields change), the stage A the IIC arms share, and the report's aggregation over
seeds. No training."""
import os

import pytest

from ssl_jax import results
from tests.conftest import load_benchmark

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("sslpp_cifar10")


def flat(c, prefix=""):
    c = c.to_dict() if hasattr(c, "to_dict") else c
    out = {}
    for k, v in c.items():
        if isinstance(v, dict):
            out.update(flat(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def preset(method, name, subdir=""):
    from ssl_jax import presets

    return presets.method_config(os.path.join(REPO, "configs", subdir), method, name)


# The fields the module docstring says the CPU-scale recipe changes (a subset per entry).
STAGE_C_FIELDS = {"model.width", "optimizer.decay_epochs", "num_epochs", "data.data_dir", "log_every_steps",
                  "checkpoint.every_steps", "eval.every_steps", "eval.knn_k", "eval.knn_temperature",
                  "eval.linear_probe", "eval.compare_random_init", "seed"}
IIC_FIELDS = {"model.name", "model.width", "model.cifar_stem", "model.sobel", "model.dtype", "num_epochs",
              "iic.head_init_std", "optimizer.base_lr", "data.data_dir", "log_every_steps",
              "checkpoint.every_steps", "eval.every_steps", "eval.compare_random_init", "seed"}


def changed_fields(before, after):
    b, a = flat(before), flat(after)
    return {k for k in set(a) | set(b) if a.get(k) != b.get(k)}


@pytest.mark.parametrize("arm", ["proxy_only", "iic", "gt", "random", "kmeans"])
def test_an_arm_changes_only_the_documented_fields(bench, arm):
    name = bench.ARMS[arm][0]
    base = preset("sslpp", name)
    derived, changes = bench.entry_config(arm, seed=2, data_dir="/data")
    changed = changed_fields(base, derived)
    assert changed == {field for field, *_ in changes}
    b, a = flat(base), flat(derived)
    for field, old, new, reason in changes:  # every change recorded with the old and new value
        assert b.get(field) == old and a[field] == new and reason
    allowed = {"stage_c." + f for f in STAGE_C_FIELDS} | {"stage_b.seed"}
    if base.stage_b.source == "iic":
        allowed |= {"stage_a." + f for f in IIC_FIELDS} | {"stage_a_workdir"}
    assert changed <= allowed, changed - allowed
    s = derived.stage_c
    assert s.model.width == bench.NIN_WIDTH and s.num_epochs == bench.C_EPOCHS and s.seed == 2
    factor = bench.C_EPOCHS / 200
    assert s.optimizer.decay_epochs == pytest.approx(tuple(v * factor for v in (60, 120, 160)))
    # Unchanged recipe: batch, optimizer, λ, the labels' source.
    assert s.global_batch_size == base.stage_c.global_batch_size
    assert s.optimizer.base_lr == base.stage_c.optimizer.base_lr
    assert s.sslpp.weight == base.stage_c.sslpp.weight
    assert derived.stage_b.source == base.stage_b.source
    spe = 50_000 // s.global_batch_size
    assert s.eval.every_steps == spe and spe % s.log_every_steps == 0
    if base.stage_b.source in ("random", "kmeans"):
        assert derived.stage_b.seed == 2


def test_iic_lambda1_is_the_iic_arm_with_lambda_1(bench):
    iic, _ = bench.entry_config("iic", seed=1)
    lam1, _ = bench.entry_config("iic_lambda1", seed=1)
    assert iic.stage_c.sslpp.weight == pytest.approx(0.05) and lam1.stage_c.sslpp.weight == 1.0
    assert changed_fields(iic, lam1) == {"stage_c.sslpp.weight"}


def test_the_iic_arms_share_the_seeds_stage_a(bench):
    for seed in (0, 1):
        shared = bench.entry_dir("stage_a_iic", seed)
        clusterer, _ = bench.entry_config("stage_a_iic", seed=seed)
        for arm in ("iic", "iic_lambda1"):
            config, _ = bench.entry_config(arm, seed=seed)
            assert config.stage_b.source == "iic" and config.stage_a_workdir == shared
            # The section the arm would train is the shared entry's config: one clusterer per seed.
            assert config.stage_a.to_dict() == clusterer.to_dict()
        for arm in ("proxy_only", "gt", "random", "kmeans"):
            config, _ = bench.entry_config(arm, seed=seed)
            assert config.stage_b.source != "iic" and not config.stage_a_workdir
    assert bench.entry_dir("stage_a_iic", 0) != bench.entry_dir("stage_a_iic", 1)
    assert bench.ENTRIES.index("stage_a_iic") < min(bench.ENTRIES.index(a) for a in ("iic", "iic_lambda1"))


def test_the_iic_entries_change_only_the_documented_fields(bench):
    for entry, name in (("stage_a_iic", "sslpp"), ("iic_mnist", "mnist")):
        base = preset("iic", name)
        derived, changes = bench.entry_config(entry, seed=3)
        changed = changed_fields(base, derived)
        assert changed == {f for f, *_ in changes} and changed <= IIC_FIELDS, changed - IIC_FIELDS
        assert derived.model.width == bench.IIC_WIDTH and derived.num_epochs == bench.A_PASSES
        assert derived.num_epochs % len(base.iic.head_schedule) == 0  # whole head-schedule cycles
        assert derived.global_batch_size == base.global_batch_size and derived.seed == 3
        assert derived.data.dataset == base.data.dataset and derived.model.sobel == base.model.sobel


def test_smoke_subset_trains_stage_a_and_c_on_the_same_images(bench):
    config, _ = bench.entry_config("iic", subset=(1024, 500), c_epochs=1, a_passes=3)
    for section in (config.stage_a, config.stage_c):
        assert (section.data.train_split, section.data.test_split) == ("train[:1024]", "test[:500]")
    assert config.stage_c.num_epochs == 1 and config.stage_a.num_epochs == 3


def test_layer_probe_config_shortens_only_the_probes(bench):
    base = preset("layer_probe", "nin", "eval")
    derived, changes = bench.layer_probe_config(8)
    assert changed_fields(base, derived) == {"layer_probe.probe_train.epochs",
                                             "layer_probe.probe_train.optimizer.decay_epochs"}
    assert derived.layer_probe.probe_train.optimizer.decay_epochs == pytest.approx((4.0, 6.0))
    assert tuple(derived.layer_probe.plurality_ks) == (1, 3, 5, 10, 15, 20)
    assert tuple(derived.layer_probe.probe_blocks) == (2, 3, 4)


# ----------------------------------------------------------------------------- report

def _record(protocol, metric, value, setting="", network="online", step=100):
    return dict(method="rotnet", dataset="cifar10", backbone="nin_w0.25", epochs=6.0, step=step, protocol=protocol,
                eval_dataset="cifar10", network=network, setting=setting, metric=metric, value=float(value),
                wall_seconds=1.0, time="2026-12-07T00:00:00+00:00")


def _arm_records(b, probe, knn, linear, random_b4=None):
    """Records of one arm: plurality kNN K=10 per block b (a list of 4), probes (3), final kNN and linear."""
    recs = [_record("layer_probe", "knn_top1", v, f"layer=block{i + 1},k=10,vote=plurality") for i, v in enumerate(b)]
    recs += [_record("layer_probe", "knn_top1", 0.01, f"layer=block{i + 1},k=1,vote=plurality") for i in range(4)]
    recs += [_record("layer_probe", "nin_block_top1", v, f"layer=block{i + 2},probe=nin_block")
             for i, v in enumerate(probe)]
    recs += [_record("knn", "top1", knn, "k=200,T=0.1"), _record("linear_cached", "top1", linear)]
    if random_b4 is not None:
        recs.append(_record("layer_probe", "knn_top1", random_b4, "layer=block4,k=10,vote=plurality",
                            network="random_init"))
    return recs


def test_report_aggregates_seeds_into_mean_and_std(bench, tmp_path):
    # Seeds 0 and 1; B4 for the label schemes ordered gt > iic > kmeans > random.
    b4 = {"proxy_only": (0.20, 0.30), "iic": (0.60, 0.70), "gt": (0.80, 0.90), "kmeans": (0.40, 0.50),
          "random": (0.30, 0.36)}
    for seed in (0, 1):
        for arm, values in b4.items():
            d = tmp_path / f"seed{seed}" / arm
            d.mkdir(parents=True)
            results.write_records(str(d), _arm_records([0.5, 0.7 + 0.02 * seed, 0.6, values[seed]],
                                                       [0.8, 0.7, 0.5], 0.4 + 0.1 * seed, 0.45, random_b4=0.33))
        d = tmp_path / f"seed{seed}" / "iic_mnist"
        d.mkdir(parents=True)
        results.write_records(str(d), [
            _record("clustering", "acc", 0.9 + 0.02 * seed, "iic_head=main,subhead=2,k=10"),
            _record("clustering", "acc", 0.1, "iic_head=overcluster,subhead=0,k=50"),
            _record("clustering", "nmi", 0.8, "iic_head=main,subhead=2,k=10")])
    runs = bench.collect(str(tmp_path))
    assert set(runs) == set(b4) | {"iic_mnist"} and set(runs["iic"]) == {0, 1}
    rows = bench.block_rows(runs)
    assert rows["iic"]["kNN B4"] == pytest.approx([0.6, 0.7])
    assert rows["random init"] == {"kNN B4": [0.33]}  # once, not once per arm and seed
    text = bench.report_text(runs)
    table = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
             for line in text.splitlines() if line.startswith("|")}
    header = table["arm"]
    iic = dict(zip(header, table["iic"]))
    assert iic["kNN B4"] == "65.0 ± 7.1 (n=2)"
    assert iic["kNN B2"] == "71.0 ± 1.4 (n=2)"
    assert iic["kNN k=200"] == "45.0 ± 7.1 (n=2)"
    assert iic["probe B3"] == "70.0 ± 0.0 (n=2)"
    assert dict(zip(header, table["random init"]))["kNN B4"] == "33.0 (n=1)"
    assert bench.label_order(rows) == ["gt", "iic", "kmeans", "random"]
    assert "gt > iic > kmeans > random" in text and "the same order" in text
    assert "25.0 vs 60.0 -> holds" in text  # rotation alone: B4 (mean 25) below B3 (60)
    assert "B4 25.0 -> 65.0 (raised)" in text
    mnist = dict(zip(table["clusterer"], table["IIC on MNIST"]))
    assert mnist["Hungarian acc"] == "91.0 ± 1.4 (n=2)" and mnist["NMI"] == "80.0 ± 0.0 (n=2)"


def test_report_says_when_the_ordering_differs(bench, tmp_path):
    for arm, value in (("gt", 0.3), ("iic", 0.5), ("random", 0.4)):
        d = tmp_path / "seed0" / arm
        d.mkdir(parents=True)
        results.write_records(str(d), _arm_records([0.5, 0.5, 0.5, value], [0.5] * 3, 0.5, 0.5))
    rows = bench.block_rows(bench.collect(str(tmp_path)))
    assert bench.label_order(rows) == ["iic", "random", "gt"]
    assert any("a different order, 3 of 4 schemes run" in c for c in bench.claims(rows))


def test_report_reads_an_order_only_among_the_schemes_run(bench, tmp_path):
    """One scheme has no order; two in the paper's relative order are the same order so far."""
    def claims(arms):
        for arm, value in arms:
            d = tmp_path / "seed0" / arm
            d.mkdir(parents=True, exist_ok=True)
            results.write_records(str(d), _arm_records([0.5, 0.5, 0.5, value], [0.5] * 3, 0.5, 0.5))
        return [c for c in bench.claims(bench.block_rows(bench.collect(str(tmp_path)))) if "label schemes" in c]

    assert claims([("iic", 0.5)]) == []
    assert all("the same order, 2 of 4 schemes run" in c for c in claims([("gt", 0.6)]))


def test_budget_counts_resumed_training_and_says_which_segments_were_cut_off(bench):
    """A run killed twice and resumed: its training minutes are the records' train_seconds summed
    (what resumes add up), not the one segment that wrote an end time, and the cut-off segments
    are said."""
    machine = {"cpu_model": "AMD EPYC", "cores": 2, "segments": [
        {"start": "2026-12-07T11:00:00+00:00", "load1_start": 2.0},
        {"start": "2026-12-07T12:00:00+00:00", "load1_start": 2.0,
         "end": "2026-12-07T12:20:00+00:00", "load1_end": 3.0}]}
    records = [{"protocol": "pretrain", "metric": "train_seconds", "value": 3600.0},
               {"protocol": "pretrain", "metric": "train_seconds", "value": 600.0},
               {"protocol": "knn", "metric": "train_seconds", "value": 999.0}]
    line = bench.budget_line("stage_a_iic", 0, machine, records)
    assert "70.0 min of training" in line and "20.0 min wall in ended segments" in line
    assert "1 segment(s) cut off" in line
    assert bench.wall_minutes(machine) == (20.0, 1)
