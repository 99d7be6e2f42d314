"""ssl_jax.report: the Markdown table from results.json records and the plots from metrics.jsonl."""
import json
import os
import re
import subprocess
import sys

import pytest

from ssl_jax import report, results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG"


def _run(method="byol", step=1000, epochs=100.0, dataset="cifar10"):
    return {"method": method, "dataset": dataset, "backbone": "resnet18", "epochs": epochs, "step": step}


def _byol_records():
    run = _run()
    old = _run(step=500, epochs=50.0)
    recs = []
    # An earlier checkpoint: dropped unless all_steps.
    recs += results.make_records(old, protocol="knn", eval_dataset="cifar10", network="online",
                                 setting="k=20,T=0.07", metrics={"top1": 0.5})
    recs += results.make_records(run, protocol="knn", eval_dataset="cifar10", network="online",
                                 setting="k=20,T=0.07", metrics={"top1": 0.9123, "top5": 0.995})
    recs += results.make_records(run, protocol="knn", eval_dataset="cifar10", network="online",
                                 setting="k=200,T=0.07", metrics={"top1": 0.9051, "top5": 0.9961})
    recs += results.make_records(run, protocol="linear", eval_dataset="cifar10", network="online",
                                 metrics={"top1": 0.9234})
    recs += results.make_records(run, protocol="knn", eval_dataset="cifar10", network="random_init",
                                 setting="k=20,T=0.07", metrics={"top1": 0.3512, "top5": 0.8})
    recs += results.make_records(run, protocol="knn", eval_dataset="cifar10", network="random_init",
                                 setting="k=200,T=0.07", metrics={"top1": 0.3})
    recs += results.make_records(run, protocol="linear", eval_dataset="cifar10", network="random_init",
                                 metrics={"top1": 0.3901})
    recs += results.make_records(run, protocol="knn", eval_dataset="cifar100", network="online",
                                 setting="k=20,T=0.07", metrics={"top1": 0.6178})
    recs += results.make_records(run, protocol="clustering", eval_dataset="cifar10", network="online",
                                 metrics={"nmi": 0.71234, "ari": 0.0123456, "acc": 0.801})
    recs += results.make_records(run, protocol="linear_cached", eval_dataset="cifar10", network="online",
                                 metrics={"top1": 0.8889, "top5": 0.99, "l2": 1e-05})
    for layer, knn, linear in (("stage3", 0.5, 0.625), ("pooled", 0.7, 0.813)):
        recs += results.make_records(run, protocol="layer_probe", eval_dataset="cifar10", network="online",
                                     setting=f"layer={layer},k=20,T=0.07",
                                     metrics={"knn_top1": knn, "linear_top1": linear})
    recs += results.make_records(run, protocol="monitor", eval_dataset="cifar10", network="online",
                                 setting="n=5000", metrics={"effective_rank": 1234.5})
    recs += results.make_records(run, protocol="pretrain", eval_dataset="cifar10", network="online",
                                 metrics={"train_seconds": 3723.4, "examples_seen": 1024000, "loss": 0.1,
                                          "z_effective_rank": 9.0, "collapsed": 0.0})
    return recs


def _simclr_records():
    run = _run(method="simclr", step=200, epochs=20.0)
    return (results.make_records(run, protocol="finetune", eval_dataset="cifar10", network="online",
                                 setting="labels=1%", metrics={"top1": 0.456})
            + results.make_records(run, protocol="linear", eval_dataset="cifar10", network="online",
                                   metrics={"top1": 0.8}))


def _metrics_lines(n=5, with_collapse=True):
    lines = []
    for i in range(1, n + 1):
        line = {"step": 100 * i, "loss": 2.0 / i, "probe_top1": 0.1 * i, "lr": 0.1}
        if with_collapse:
            line["collapse_std"] = 0.04 + 0.001 * i
            line["collapse_std_reference"] = 1 / 512 ** 0.5
            line["z_effective_rank"] = 20.0 - i
            line["z_std_reference"] = 1 / 128 ** 0.5
        if i % 2 == 0:
            line["knn_top1"] = 0.15 * i
        lines.append(line)
    lines[2]["loss"] = float("nan")  # a non-finite point is skipped, not the whole line
    return lines


def _write_metrics(run_dir, lines):
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")


@pytest.fixture
def runs(tmp_path):
    byol, simclr = tmp_path / "byol_c10", tmp_path / "simclr_c10"
    byol.mkdir()
    simclr.mkdir()
    results.write_records(str(byol), _byol_records())
    results.write_records(str(simclr), _simclr_records())
    _write_metrics(str(byol), _metrics_lines())
    (byol / "config.json").write_text(json.dumps({"method": "byol", "eval": {"knn_k": 20, "knn_temperature": 0.07}}))
    _write_metrics(str(simclr), _metrics_lines(3, with_collapse=False))
    return str(byol), str(simclr)


def _parse(table):
    lines = table.strip().splitlines()
    split = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    return split[0], split[2:]


def _sections(markdown):
    """{heading: (header, rows)} of the report's '## heading' sections."""
    out = {}
    for section in markdown.split("## ")[1:]:
        heading, _, rest = section.partition("\n")
        table = "\n".join(line for line in rest.splitlines() if line.startswith("|"))
        out[heading] = _parse(table)
    return out


def _column(header, rows, name):
    return [row[header.index(name)] for row in rows]


def test_one_table_per_protocol_with_its_own_columns():
    md = report.markdown_tables({"byol_c10": _byol_records(), "simclr_c10": _simclr_records()})
    sections = _sections(md)
    assert list(sections) == ["Pretraining", "kNN", "Linear evaluation", "Linear probe (cached features)",
                              "Fine-tuning", "Clustering", "Layer probe", "Representation monitors"]
    # Every section says what it measures and in which unit.
    assert "Accuracy in %." in md and "cluster accuracy in %" in md
    header, rows = sections["kNN"]
    assert header == ["run", "method", "backbone", "dataset", "setting", "epochs", "top-1 %", "top-5 %"]
    assert [row[:5] for row in rows] == [
        ["byol_c10", "byol", "resnet18", "cifar10", "k=20,T=0.07"],  # latest step, not step 500
        ["byol_c10", "byol (random init)", "resnet18", "cifar10", "k=20,T=0.07"],  # under its trained row
        ["byol_c10", "byol", "resnet18", "cifar10", "k=200,T=0.07"],
        ["byol_c10", "byol (random init)", "resnet18", "cifar10", "k=200,T=0.07"],
        ["byol_c10", "byol", "resnet18", "cifar10 → cifar100", "k=20,T=0.07"]]
    assert _column(header, rows, "top-1 %") == ["91.2", "35.1", "90.5", "30.0", "61.8"]
    assert _column(header, rows, "top-5 %") == ["99.5", "80.0", "99.6", "–", "–"]
    assert _column(header, rows, "epochs") == ["100"] * 5
    header, rows = sections["Linear evaluation"]  # no setting: no setting column
    assert header == ["run", "method", "backbone", "dataset", "epochs", "top-1 %"]
    assert rows == [["byol_c10", "byol", "resnet18", "cifar10", "100", "92.3"],
                    ["byol_c10", "byol (random init)", "resnet18", "cifar10", "100", "39.0"],
                    ["simclr_c10", "simclr", "resnet18", "cifar10", "20", "80.0"]]
    header, rows = sections["Linear probe (cached features)"]
    assert header[-3:] == ["top-1 %", "top-5 %", "l2"] and rows[0][-3:] == ["88.9", "99.0", "1e-5"]
    header, rows = sections["Fine-tuning"]
    assert rows == [["simclr_c10", "simclr", "resnet18", "cifar10", "labels=1%", "20", "45.6"]]
    header, rows = sections["Clustering"]  # NMI and ARI in the same unit as the accuracies
    assert header[-3:] == ["NMI %", "ARI %", "cluster acc %"] and rows[0][-3:] == ["71.2", "1.2", "80.1"]
    header, rows = sections["Layer probe"]
    assert header[-2:] == ["kNN top-1 %", "linear top-1 %"]
    assert [row[-3:] for row in rows] == [["100", "50.0", "62.5"], ["100", "70.0", "81.3"]]
    header, rows = sections["Representation monitors"]
    assert header[-1] == "effective rank" and rows[0][-1] == "1230"
    header, rows = sections["Pretraining"]
    assert header == ["run", "method", "backbone", "dataset", "epochs", "train time", "images seen", "collapsed"]
    assert rows == [["byol_c10", "byol", "resnet18", "cifar10", "100", "1:02:03", "1,024,000", "no"]]
    assert "loss" not in md
    # One unit: every percent cell has exactly one decimal, and no fraction anywhere.
    for heading, (header, rows) in sections.items():
        for name in (h for h in header if h.endswith("%")):
            assert all(re.fullmatch(r"\d+\.\d|–", cell) for cell in _column(header, rows, name)), heading
    assert not re.search(r"\| 0\.\d+ \|", md) and "e-05" not in md


def test_markdown_tables_all_steps_chosen_protocols_and_empty():
    sections = _sections(report.markdown_tables({"byol_c10": _byol_records()}, all_steps=True))
    header, rows = sections["kNN"]
    assert len(rows) == 6 and rows[0][header.index("epochs")] == "50" and rows[0][-2] == "50.0"
    md = report.markdown_tables({"byol_c10": _byol_records()}, protocols=["linear", "knn", "finetune"])
    assert list(_sections(md)) == ["Linear evaluation", "kNN"]
    assert report.markdown_tables({}) == ""
    assert report.markdown_tables({"empty": []}) == ""


def test_formatting_helpers():
    assert report.format_value("top1", 0.9123) == "91.2"
    assert report.format_value("acc_many_to_one", 0.5) == "50.0"
    assert report.format_value("nmi", 0.5) == "50.0"
    assert report.format_value("linear_top1", 1.0) == "100.0"
    assert report.format_value("inertia", 9.996) == "10.0"
    assert report.format_value("effective_rank", 42.123) == "42.1"
    assert report.format_value("alignment", 1.23456e-5) == "1.23e-5"
    assert report.format_value("nmi", float("nan")) == "nan"
    assert [report.format_value("l2", v) for v in (1e-5, 5e-4, 1e-3, 0.1)] == ["1e-5", "5e-4", "0.001", "0.1"]
    assert report.format_value("train_seconds", 59.6) == "0:01:00"
    assert report.format_seconds(100000) == "27:46:40"
    assert results.format_number(1e-05) == "1e-5" and results.format_number(2.5e20) == "2.5e20"
    assert report.metric_header("top1") == "top-1 %" and report.metric_header("l2") == "l2"
    assert report.metric_header("acc_many_to_one") == "cluster acc (many-to-one) %"


def test_series_skips_non_finite_points():
    steps, values = report.series(_metrics_lines(), "loss")
    assert steps == [100, 200, 400, 500] and values[0] == 2.0
    assert report.series(_metrics_lines(), "knn_top1")[0] == [200, 400]


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "ssl_jax.report", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_cli_table_and_plots(runs, tmp_path):
    out = tmp_path / "plots"
    proc = _cli(*runs, f"--output_dir={out}")
    assert proc.returncode == 0, proc.stderr
    sections = _sections(proc.stdout)
    assert list(sections)[:2] == ["Pretraining", "kNN"] and len(sections["kNN"][1]) == 5
    assert "cifar10 → cifar100" in proc.stdout
    for name in ("loss.png", "accuracy.png", "collapse.png"):
        path = out / name
        assert path.exists(), proc.stderr
        assert path.read_bytes()[:4] == PNG_MAGIC
        assert str(path) in proc.stderr


def test_cli_no_plots_and_skipped_plot(runs, tmp_path):
    out = tmp_path / "none"
    proc = _cli(*runs, f"--output_dir={out}", "--no_plots")
    assert proc.returncode == 0, proc.stderr
    assert "| byol_c10" in proc.stdout and not out.exists()
    proc = _cli(*runs, "--no_plots", "--protocols=linear")
    assert proc.returncode == 0 and list(_sections(proc.stdout)) == ["Linear evaluation"], proc.stderr
    # Only the simclr run, which logged no collapse_std: collapse.png is skipped with a note.
    out = tmp_path / "some"
    proc = _cli(runs[1], f"--output_dir={out}")
    assert proc.returncode == 0, proc.stderr
    assert (out / "loss.png").exists() and not (out / "collapse.png").exists()
    assert "collapse.png not written" in proc.stderr


def test_cli_not_a_run_dir(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _cli(str(empty), "--no_plots")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"ssl_jax: error: {empty} has neither results.json nor "
                                   "metrics.jsonl: is it a run directory?")
    assert proc.stdout == ""


def test_cli_unknown_protocol(runs):
    proc = _cli(*runs, "--protocols=knn,lineer")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == ("ssl_jax: error: --protocols: unknown protocol(s) lineer; valid: "
                                   + ",".join(report.PROTOCOL_ORDER) + ".")


def _dashed(ax):
    return [line for line in ax.get_lines() if line.get_linestyle() == "--"]


def test_random_init_baseline_is_the_periodic_knn_setting(runs):
    records = {"byol_c10": _byol_records(), "simclr_c10": _simclr_records()}
    assert report.baselines_of(list(runs), records) == {"byol_c10": (0.3512, "k=20,T=0.07")}
    # Two random-init settings and no config to choose: no baseline rather than the wrong one.
    assert report.random_init_knn(_byol_records()) is None
    assert report.random_init_knn(_byol_records(), "k=200,T=0.07") == (0.3, "k=200,T=0.07")


def test_accuracy_figure_fixed_axis_baseline_and_honest_titles():
    metrics = {"byol_c10": _metrics_lines(), "simclr_c10": _metrics_lines(3, with_collapse=False)}
    fig = report.accuracy_figure(metrics, baselines={"byol_c10": (0.3512, "k=20,T=0.07")})
    probe, knn = fig.axes
    for ax in (probe, knn):  # 0-100 %, whatever the data (here 10-60 %)
        assert ax.get_ylim() == (0.0, 100.0)
        assert ax.get_xlabel() == "pretraining step" and "top-1 accuracy (%)" in ax.get_ylabel()
    assert "training batches" in probe.get_title() and "not the test split" in probe.get_title()
    assert "test split" in knn.get_title() and "k=20,T=0.07" in knn.get_title()
    (line,) = _dashed(knn)
    assert line.get_ydata() == pytest.approx([35.12, 35.12]) and line.get_label() == "random init: 35.1 %"
    assert not _dashed(probe)  # no kNN baseline under another protocol's curve
    curve = next(l for l in knn.get_lines() if l.get_label() == "byol_c10")
    assert curve.get_ydata() == pytest.approx([30.0, 60.0])  # percent, not fractions
    assert report.accuracy_figure({"x": [{"step": 1, "loss": 1.0}]}) is None


def test_collapse_figure_plots_the_effective_rank():
    fig = report.collapse_figure({"byol_c10": _metrics_lines()})
    std, rank = fig.axes
    assert "effective rank" in rank.get_ylabel() and rank.get_ylim()[0] == 0
    curve = next(l for l in rank.get_lines() if l.get_label() == "byol_c10")
    assert list(curve.get_ydata()) == [19.0, 18.0, 17.0, 16.0, 15.0]
    assert [l.get_label() for l in _dashed(rank)] == ["D = 128"] and rank.get_ylim()[1] >= 128
    assert [l.get_label() for l in _dashed(std)] == ["1/√D"] and std.get_ylim()[0] == 0
    rank_only = [{"step": 1, "z_effective_rank": 3.0}]
    assert len(report.collapse_figure({"r": rank_only}).axes) == 1


def test_seeds_table_cells_are_mean_and_sample_std_in_percent():
    import numpy as np

    values = [0.512, 0.498, 0.530]
    mean, std = 100 * np.mean(values), 100 * np.std(values, ddof=1)
    assert report.mean_std(values) == f"{mean:.1f} ± {std:.1f} (n=3)"
    assert report.mean_std([0.4, None]) == "40.0 (n=1)" and report.mean_std([]) == "–"
    table = report.seeds_table({"fussl": {"kNN": values}, "base": {}}, ["kNN", "linear"])
    lines = table.splitlines()
    assert lines[0].split("|")[1].strip() == "arm" and len(lines) == 4
    assert f"{mean:.1f} ± {std:.1f} (n=3)" in lines[2] and lines[3].count("–") == 2
