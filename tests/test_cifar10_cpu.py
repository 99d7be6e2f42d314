"""The CIFAR-10 CPU benchmark (benchmarks/cifar10_cpu.py): its config derivation and the summary
table / kNN-vs-epoch plot that ssl_jax.report builds from the runs' results.json files."""
import json
import os
import re

import numpy as np
import pytest

from tests.conftest import load_benchmark

from ssl_jax import report, results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("cifar10_cpu")


# ----------------------------------------------------------------------------- derivation

def test_derive_changes_only_the_listed_fields(bench):
    from ssl_jax import presets

    preset = presets.method_config(os.path.join(REPO, "configs"), "byol", "cifar10")
    derived, changes = bench.derive(preset, epochs=8, width=0.25, data_dir="/data")
    changed = {field for field, *_ in changes}
    flat = lambda c, p="": {k2: v2 for k, v in c.items() for k2, v2 in
                            (flat(v, p + k + ".").items() if isinstance(v, dict) else [(p + k, v)])}
    before, after = flat(preset.to_dict()), flat(derived.to_dict())
    assert {k for k in after if after[k] != before.get(k)} == changed
    # Every change is recorded with the preset's value and the new one.
    for field, old, new, reason in changes:
        assert before[field] == old and after[field] == new and reason
    assert derived.model.name == "resnet18" and derived.model.width == 0.25 and derived.num_epochs == 8
    assert derived.optimizer.warmup_epochs == pytest.approx(0.8)  # min(10, 10 % of 8)
    assert derived.global_batch_size == preset.global_batch_size  # the recipe's own batch
    assert derived.optimizer.base_lr == preset.optimizer.base_lr
    spe = 50_000 // 256
    assert derived.eval.every_steps == spe and derived.checkpoint.every_steps == derived.log_every_steps
    assert spe % derived.log_every_steps == 0  # the per-epoch kNN falls on a log step
    assert not derived.eval.compare_random_init and derived.eval.linear_probe


def test_rows_are_every_single_run_cifar10_config_and_staged_protocols_point_elsewhere(bench):
    from ssl_jax.methods import METHODS

    rows, skipped = bench.methods()
    configs = {f[:-3] for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith(".py")}
    assert {"byol", "iic", "dssl_byol", "dssl_simclr", "dssl_simsiam"} <= set(rows)
    assert set(rows) <= configs and not set(rows) & set(skipped)
    assert set(METHODS) <= set(rows) | set(skipped)  # every method has a row or a reason
    for staged, runner in (("fussl", "fussl_cifar10.py"), ("sslpp", "sslpp_cifar10.py")):
        assert runner in skipped[staged] and os.path.exists(os.path.join(REPO, "benchmarks", runner))


def test_a_variant_is_its_method_row_with_only_its_fields_changed(bench):
    for row, (method, fields, why) in bench.VARIANTS.items():
        base, base_changes = bench.benchmark_config(method)
        variant, changes = bench.benchmark_config(row)
        assert changes[:len(base_changes)] == base_changes and why
        assert [(f, old, new) for f, old, new, _ in changes[len(base_changes):]] == [
            (f, bench._get(base, f), v) for f, v in fields.items()]
        for field, value in fields.items():
            assert bench._get(base, field) != value and bench._get(variant, field) == value
            bench._set(base, field, value)
        assert base.to_dict() == variant.to_dict()


def test_derive_scales_schedule_positions_and_keeps_periods(bench):
    from ssl_jax import presets

    load = lambda m: presets.method_config(os.path.join(REPO, "configs"), m, "cifar10")
    rotnet, _ = bench.derive(load("rotnet"), epochs=8)
    assert rotnet.optimizer.decay_epochs == pytest.approx((60 * 8 / 200, 120 * 8 / 200, 160 * 8 / 200))
    iic, _ = bench.derive(load("iic"), epochs=8)  # ResNet-34 + Sobel in its preset: same backbone here
    assert (iic.model.name, iic.model.sobel) == ("resnet18", False)
    deepercluster = load("deepercluster")
    derived, _ = bench.derive(deepercluster, epochs=8)
    assert derived.deepercluster.reassign_epochs == deepercluster.deepercluster.reassign_epochs
    # PCA's dimension scales with the width as the features do (at most the 64 there are).
    assert derived.deepercluster.pca_dim == deepercluster.deepercluster.pca_dim * bench.WIDTH == 16
    assert bench.derive(load("deepcluster"), epochs=8, width=0.25)[0].deepcluster.pca_dim == 32
    dino, _ = bench.derive(load("dino"), epochs=8)
    assert dino.dino.warmup_teacher_temp_epochs == pytest.approx(50 * 8 / 1000)


def test_log_every_divides_the_epoch(bench):
    for spe in (97, 195, 227, 390):
        every = bench.log_every(spe)
        assert spe % every == 0 and (10 <= every <= 50 or every == spe)
    assert bench.log_every(195) == 39 and bench.log_every(97) == 97


# ----------------------------------------------------------------------------- summary table

def _write_run(root, name, *, method, knn, linear, rand_knn, rand_linear, seconds, collapsed, loads,
               knn_curve, batch=256):
    run_dir = os.path.join(root, name)
    os.makedirs(run_dir)
    spe = 50_000 // batch
    epochs = len(knn_curve)
    run = {"method": method, "dataset": "cifar10", "backbone": "resnet18_w0.25", "epochs": float(epochs),
           "step": spe * epochs}
    recs = results.make_records(run, protocol="pretrain", eval_dataset="cifar10", network="online",
                                metrics={"train_seconds": seconds, "examples_seen": spe * epochs * batch,
                                         "collapsed": collapsed})
    recs += results.make_records(run, protocol="knn", eval_dataset="cifar10", network="online",
                                 setting="k=200,T=0.1", metrics={"top1": knn})
    recs += results.make_records(run, protocol="knn", eval_dataset="cifar10", network="online",
                                 setting="k=20,T=0.1", metrics={"top1": 0.01})  # another setting: not shown
    recs += results.make_records(run, protocol="linear_cached", eval_dataset="cifar10", network="online",
                                 metrics={"top1": linear, "l2": 1e-4})
    recs += results.make_records(run, protocol="knn", eval_dataset="cifar10", network="random_init",
                                 setting="k=200,T=0.1", metrics={"top1": rand_knn})
    recs += results.make_records(run, protocol="linear_cached", eval_dataset="cifar10", network="random_init",
                                 metrics={"top1": rand_linear})
    # An earlier evaluated checkpoint: the table shows the latest step only.
    recs += results.make_records(dict(run, step=spe, epochs=1.0), protocol="knn", eval_dataset="cifar10",
                                 network="online", setting="k=200,T=0.1", metrics={"top1": 0.99})
    results.write_records(run_dir, recs)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        for epoch, value in enumerate(knn_curve, 1):
            f.write(json.dumps({"step": spe * epoch - spe // 2, "loss": 1.0}) + "\n")  # a line without kNN
            f.write(json.dumps({"step": spe * epoch, "loss": 1.0, "knn_top1": value}) + "\n")
    machine = {"cpu_model": "Test CPU", "cores": 2,
               "segments": [{"start": "t0", "load1_start": a, "end": "t1", "load1_end": b} for a, b in loads]}
    with open(os.path.join(run_dir, "machine.json"), "w") as f:
        json.dump(machine, f)
    return run_dir


def _rows(markdown):
    lines = [line for line in markdown.strip().splitlines()]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert re.fullmatch(r"\|[-:|]+\|", lines[1])
    return header, [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


@pytest.fixture
def two_runs(tmp_path):
    dirs = [_write_run(tmp_path, "byol", method="byol", knn=0.41234, linear=0.5, rand_knn=0.28, rand_linear=0.3349,
                       seconds=1000.4, collapsed=0.0, loads=[(5.47, 6.1)], knn_curve=[0.3, 0.35, 0.41234]),
            _write_run(tmp_path, "simsiam", method="simsiam", knn=0.1, linear=0.105, rand_knn=0.28,
                       rand_linear=0.3349, seconds=3725, collapsed=1.0, loads=[(1.0, 2.0), (3.5, 4.25)],
                       knn_curve=[0.2, 0.1], batch=512)]
    return dirs


def test_summary_table_round_trips_the_numbers(two_runs):
    records, _, _ = report.load_runs(two_runs)
    machines = {name: report.read_machine(d) for name, d in zip(report.run_names(two_runs), two_runs)}
    markdown = report.summary_table(records, machines, knn_setting="k=200,T=0.1")
    header, rows = _rows(markdown)
    assert tuple(header) == report.SUMMARY_HEADER
    rule = markdown.splitlines()[1].strip("|").split("|")
    assert rule[0].startswith(":") and rule[4].startswith(":")  # text: left-aligned
    assert rule[2].endswith(":") and rule[5].endswith(":")  # numbers: right-aligned
    assert [r["method"] for r in rows] == ["byol", "simsiam"]
    byol, simsiam = rows
    assert byol == {"method": "byol", "backbone": "resnet18_w0.25", "epochs": "3", "train time": "0:16:40",
                    "machine": "Test CPU, 2 cores, load 5.47→6.1", "kNN top-1 %": "41.2",
                    "linear top-1 %": "50.0", "random-init kNN %": "28.0", "random-init linear %": "33.5",
                    "collapsed": "no"}
    assert simsiam["epochs"] == "2" and simsiam["train time"] == "1:02:05" and simsiam["collapsed"] == "yes"
    assert simsiam["machine"] == "Test CPU, 2 cores, load 1→4.25 (2 segments)"
    assert simsiam["kNN top-1 %"] == "10.0" and simsiam["linear top-1 %"] == "10.5"


def test_summary_table_missing_values_and_machine(two_runs):
    records, _, _ = report.load_runs(two_runs[:1])
    records["byol"] = [r for r in records["byol"] if r["protocol"] != "linear_cached"]
    _, (row,) = _rows(report.summary_table(records, {}, knn_setting="k=200,T=0.1"))
    assert row["linear top-1 %"] == row["random-init linear %"] == row["machine"] == report.MISSING
    assert row["kNN top-1 %"] == "41.2"


def test_knn_epoch_figure_plots_epochs_and_the_baseline(two_runs):
    records, metrics, labels = report.load_runs(two_runs)
    fig = report.knn_epoch_figure(metrics, records, labels)
    (ax,) = fig.axes
    assert ax.get_ylim() == (0, 100) and "epoch" in ax.get_xlabel()
    curves = {line.get_label(): line for line in ax.get_lines() if line.get_linestyle() != "--"}
    np.testing.assert_allclose(curves["byol"].get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(curves["byol"].get_ydata(), [30, 35, 41.234])
    np.testing.assert_allclose(curves["simsiam"].get_xdata(), [1, 2])
    (dashed,) = [line for line in ax.get_lines() if line.get_linestyle() == "--"]  # one shared baseline
    np.testing.assert_allclose(dashed.get_ydata(), [28, 28])
    assert report.knn_epoch_figure({"x": []}, {"x": []}) is None


def test_knn_epoch_figure_draws_one_baseline_line_per_value_and_styles_past_ten_runs(tmp_path, two_runs):
    third = _write_run(tmp_path, "moco", method="moco", knn=0.3, linear=0.3, rand_knn=0.3, rand_linear=0.3,
                       seconds=10, collapsed=0.0, loads=[(1.0, 1.0)], knn_curve=[0.25, 0.3])
    records, metrics, labels = report.load_runs(two_runs + [third])
    (ax,) = report.knn_epoch_figure(metrics, records, labels).axes
    dashed = {line.get_label(): round(line.get_ydata()[0], 6) for line in ax.get_lines()
              if line.get_linestyle() == "--"}
    assert dashed == {"random init, 2 runs: 28.0 %": 28.0, "random init, moco: 30.0 %": 30.0}
    # Past ten runs the colours repeat, so the line style and marker change.
    many = {f"r{i}": [{"step": 1, "knn_top1": 0.5}, {"step": 2, "knn_top1": 0.6}] for i in range(12)}
    recs = {run: [{"step": 2, "epochs": 2.0}] for run in many}
    lines = report.knn_epoch_figure(many, recs).axes[0].get_lines()
    assert (lines[0].get_color(), lines[0].get_linestyle()) != (lines[10].get_color(), lines[10].get_linestyle())
    assert lines[0].get_marker() != lines[10].get_marker()


# ----------------------------------------------------------------------------- committed rows

def test_every_committed_row_is_one_method_name(bench):
    """A row's results.json names one method (a variant's every record renamed, not a merge of
    renamed copies beside the base method's, which put the base name in the table)."""
    for row in sorted(os.listdir(bench.RESULTS_DIR)):
        methods = {r["method"] for r in results.read_records(os.path.join(bench.RESULTS_DIR, row))}
        assert methods == ({row} if row in bench.VARIANTS else methods) and len(methods) == 1, (row, methods)


def test_staged_rows_epochs_match_their_runners(bench):
    fussl, sslpp = load_benchmark("fussl_cifar10"), load_benchmark("sslpp_cifar10")
    assert bench.STAGED_ROWS["fussl (simclr)"][1] == fussl.E1 + fussl.E2
    assert bench.STAGED_ROWS["sslpp (rotnet, iic labels)"][1] == sslpp.C_EPOCHS
    for dirs, _, what in bench.STAGED_ROWS.values():
        runners = {f"benchmarks/{d.split('/')[0]}.py" for d in dirs}
        assert what and len(runners) == 1 and runners <= set(bench.STAGED.values())


def test_staged_row_takes_the_main_arm_with_every_stages_train_time(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "ROOT", str(tmp_path))
    root = tmp_path / "benchmarks"
    for name in bench.STAGED_ROWS:
        assert bench.staged_row(name) is None  # not run yet: no row
    # SSL++: stage C's records under the row's name, its train time plus stage A's.
    iic_dir = _write_run(str(root / "sslpp_cifar10/results/seed0"), "iic", method="rotnet+sslpp", knn=0.4,
                         linear=0.45, rand_knn=0.2, rand_linear=0.25, seconds=600.0, collapsed=0.0,
                         loads=[(1.0, 2.0)], knn_curve=[0.3, 0.4])
    assert bench.staged_row("sslpp (rotnet, iic labels)") is None  # stage A's summary missing
    _write_run(str(root / "sslpp_cifar10/results/seed0"), "stage_a_iic", method="iic", knn=0.3, linear=0.3,
               rand_knn=0.2, rand_linear=0.25, seconds=300.0, collapsed=0.0, loads=[(1.0, 2.0)], knn_curve=[0.3])
    records, machine = bench.staged_row("sslpp (rotnet, iic labels)")
    assert machine == report.read_machine(iic_dir)
    _, (row,) = _rows(report.summary_table({"sslpp": records}, {"sslpp": machine}, knn_setting="k=200,T=0.1"))
    assert (row["method"], row["epochs"], row["train time"]) == ("sslpp (rotnet, iic labels)", "6", "0:15:00")
    assert (row["kNN top-1 %"], row["random-init linear %"]) == ("40.0", "25.0")
    # FUSSL: the train time of every stage from its summary.json, the machine from there too.
    fussl_dir = _write_run(str(root / "fussl_cifar10/results/seed0"), "fuzzy", method="fussl_phase2", knn=0.5,
                           linear=0.55, rand_knn=0.2, rand_linear=0.25, seconds=100.0, collapsed=0.0,
                           loads=[(1.0, 2.0)], knn_curve=[0.5])
    summary_machine = {"cpu_model": "Other CPU", "cores": 2, "segments": [
        {"start": "t0", "load1_start": 0.5, "end": "t1", "load1_end": 1.5}]}
    with open(os.path.join(fussl_dir, "summary.json"), "w") as f:
        json.dump({"train_seconds": 4000.0, "machine": summary_machine}, f)
    records, machine = bench.staged_row("fussl (simclr)")
    _, (row,) = _rows(report.summary_table({"f": records}, {"f": machine}, knn_setting="k=200,T=0.1"))
    assert (row["method"], row["epochs"], row["train time"]) == ("fussl (simclr)", "6", "1:06:40")
    assert row["machine"] == "Other CPU, 2 cores, load 0.5→1.5" and row["linear top-1 %"] == "55.0"


@pytest.mark.parametrize("runner, train_function, args", [
    ("cifar10_cpu", "run_one", ["--plan", "--method=byol"]),
    ("cifar10_cpu", "run_all", ["--plan", "--method=all"]),
    ("fussl_cifar10", "run_arm", ["--plan", "--arm=fuzzy", "--all"]),
    ("sslpp_cifar10", "run_entry", ["--plan", "--arm=iic"]),
    ("sslpp_cifar10", "run_all", ["--plan", "--all"])])
def test_plan_trains_nothing(runner, train_function, args, monkeypatch, capsys):
    """--plan beside training arguments prints the plan and stops (it once trained the method)."""
    module = load_benchmark(runner)

    def refuse(*a, **k):
        raise AssertionError(f"{runner} --plan started training")

    monkeypatch.setattr(module, train_function, refuse)
    assert module.main(args) == 0
    assert capsys.readouterr().out.strip()


def test_random_init_baseline_is_shared_only_under_the_same_evaluation(bench):
    """RotNet normalises with CIFAR-10's statistics: its random-init baseline is not the others'
    (one cache per backbone once gave the rows run after RotNet's its baseline)."""
    simclr, byol, rotnet = (bench.benchmark_config(m)[0] for m in ("simclr", "byol", "rotnet"))
    assert bench.eval_fingerprint(simclr) == bench.eval_fingerprint(byol)
    assert bench.eval_fingerprint(rotnet) != bench.eval_fingerprint(simclr)
    moved = bench.benchmark_config("simclr", data_dir="/elsewhere")[0]
    moved.data.views = moved.data.views[:1]
    assert bench.eval_fingerprint(moved) == bench.eval_fingerprint(simclr)  # not training views or location
    moved.seed = 1
    assert bench.eval_fingerprint(moved) != bench.eval_fingerprint(simclr)
