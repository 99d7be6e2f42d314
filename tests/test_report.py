"""ssl_jax.report: the Markdown table from results.json records and the plots from metrics.jsonl."""
import json
import os
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
    recs += results.make_records(run, protocol="linear", eval_dataset="cifar10", network="random_init",
                                 metrics={"top1": 0.3901})
    recs += results.make_records(run, protocol="knn", eval_dataset="cifar100", network="online",
                                 setting="k=20,T=0.07", metrics={"top1": 0.6178})
    recs += results.make_records(run, protocol="clustering", eval_dataset="cifar10", network="online",
                                 metrics={"nmi": 0.71234, "ari": 0.0123456, "acc": 0.801})
    recs += results.make_records(run, protocol="monitor", eval_dataset="cifar10", network="online",
                                 metrics={"effective_rank": 1234.5})
    recs += results.make_records(run, protocol="pretrain", eval_dataset="cifar10", network="online",
                                 metrics={"train_seconds": 3723.4, "loss": 0.1})
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
    _write_metrics(str(simclr), _metrics_lines(3, with_collapse=False))
    return str(byol), str(simclr)


def _parse(table):
    lines = table.strip().splitlines()
    split = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    return split[0], split[2:]


def test_markdown_table_columns_rows_and_numbers():
    table = report.markdown_table({"byol_c10": _byol_records(), "simclr_c10": _simclr_records()})
    header, rows = _parse(table)
    assert header == ["run", "method", "backbone", "dataset", "epochs",
                      "kNN top-1 (k=20,T=0.07)", "kNN top-5 (k=20,T=0.07)",
                      "kNN top-1 (k=200,T=0.07)", "kNN top-5 (k=200,T=0.07)",
                      "linear top-1", "fine-tune 1% top-1", "NMI", "ARI", "cluster acc",
                      "effective rank", "train time"]
    # byol: cifar10 online, cifar10 random init, cifar10 -> cifar100 online; simclr: one row.
    assert len(rows) == 4
    col = {name: i for i, name in enumerate(header)}
    byol, rand, transfer, simclr = rows
    assert byol[:5] == ["byol_c10", "byol", "resnet18", "cifar10", "100"]
    assert byol[col["kNN top-1 (k=20,T=0.07)"]] == "91.2"  # latest step, not 0.5 of step 500
    assert byol[col["kNN top-5 (k=200,T=0.07)"]] == "99.6"
    assert byol[col["linear top-1"]] == "92.3"
    assert byol[col["NMI"]] == "0.712"
    assert byol[col["ARI"]] == "0.0123"
    assert byol[col["cluster acc"]] == "80.1"
    assert byol[col["effective rank"]] == "1230"
    assert byol[col["train time"]] == "1:02:03"
    assert byol[col["fine-tune 1% top-1"]] == "–"
    assert rand[1] == "byol (random init)" and rand[3] == "cifar10"
    assert rand[col["kNN top-1 (k=20,T=0.07)"]] == "35.1"
    assert rand[col["linear top-1"]] == "39.0"
    assert rand[col["kNN top-1 (k=200,T=0.07)"]] == "–"
    assert rand[col["train time"]] == "–"
    assert transfer[1] == "byol" and transfer[3] == "cifar10 → cifar100"
    assert transfer[col["kNN top-1 (k=20,T=0.07)"]] == "61.8"
    assert transfer[col["linear top-1"]] == "–"
    assert simclr[:5] == ["simclr_c10", "simclr", "resnet18", "cifar10", "20"]
    assert simclr[col["fine-tune 1% top-1"]] == "45.6"
    assert simclr[col["linear top-1"]] == "80.0"
    assert simclr[col["kNN top-1 (k=20,T=0.07)"]] == "–"
    assert simclr[col["train time"]] == "–"
    assert "pretrain" not in table and "loss" not in table


def test_markdown_table_all_steps_and_empty():
    table = report.markdown_table({"byol_c10": _byol_records()}, all_steps=True)
    header, rows = _parse(table)
    assert len(rows) == 4  # + the step-500 row
    assert rows[0][4] == "50" and rows[0][header.index("kNN top-1 (k=20,T=0.07)")] == "50.0"
    assert report.markdown_table({}) == ""
    assert report.markdown_table({"empty": []}) == ""


def test_formatting_helpers():
    assert report.format_value("top1", 0.9123) == "91.2"
    assert report.format_value("acc_many_to_one", 0.5) == "50.0"
    assert report.format_value("nmi", 0.5) == "0.500"
    assert report.format_value("nmi", 9.996) == "10.0"
    assert report.format_value("effective_rank", 42.123) == "42.1"
    assert report.format_value("nmi", float("nan")) == "nan"
    assert report.format_seconds(59.6) == "0:01:00"
    assert report.format_seconds(100000) == "27:46:40"
    assert report.column_header("online_probe", "", "top1") == "online probe top-1"
    assert report.column_header("linear_cached", "", "top1") == "linear (cached) top-1"
    assert report.column_header("layer_probe", "layer=stage3", "top1") == "layer probe stage3 top-1"
    assert report.column_header("zzz_new", "a=1", "score") == "zzz new score (a=1)"


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
    header, rows = _parse(proc.stdout)
    assert "kNN top-1 (k=20,T=0.07)" in header and len(rows) == 4
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
