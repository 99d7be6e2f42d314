"""Summarise finished runs: Markdown results tables and training-curve plots.

Usage:
  python -m ssl_jax.report RUN_DIR [RUN_DIR ...] [--output_dir=DIR] [--no_plots] [--all_steps]
                           [--protocols=knn,linear_cached,...]
  python -m ssl_jax.report RUN_DIR [RUN_DIR ...] --summary [--knn_setting=k=200,T=0.1]

Prints (stdout) Markdown built from every run's DIR/results.json (see ssl_jax/results.py): one
section per protocol ('pretrain', 'knn', 'linear', 'linear_cached', 'online_probe', 'finetune',
'clustering', 'layer_probe', 'monitor'; --protocols picks and orders them), each a heading, a
line saying what was measured and in which unit, and a table with one row per (run, evaluated
network, evaluation dataset, setting) and a column per metric of that protocol only:

  run | method | backbone | dataset | epochs | setting | top-1 % | top-5 % | ...

One unit everywhere: accuracies, NMI and ARI in percent with one decimal (91.2, never 0.912);
hyper-parameters as a reader writes them (l2 1e-5); other numbers to three significant
digits; '–' a number the run does not have. A randomly initialised network's row ('byol
(random init)') sits under the trained network's row of the same setting; 'dataset' reads
'A → B' for a transfer evaluation on B. Only each run's latest evaluated step is shown unless
--all_steps is given.

Writes (unless --no_plots) PNG plots from every run's DIR/metrics.jsonl into --output_dir
(default ./report), one line per run:
  loss.png      training loss against step;
  accuracy.png  top-1 (%) against step on a fixed 0-100 % axis (no auto-zoom): the online probe
                (a linear classifier trained on the training batches, scored on them: augmented
                views, not the test split) and the periodic kNN on the test split, with the
                random-init network's kNN top-1 (results.json, same k and T) as a dashed line;
  collapse.png  the collapse monitors of the training batch: per-dimension std of L2-normalised
                features with its healthy value 1/sqrt(D), and the effective rank (RankMe) of
                the projector outputs with D, both axes from 0.
A plot no run has data for is skipped with a note. Notes and the list of written files go to
stderr, so `python -m ssl_jax.report runs/* > results.md` keeps the tables alone.

With --summary, one table instead, one row per run: method, backbone, epochs, train time, machine
(DIR/machine.json: CPU model, cores, 1-minute load at start and end), kNN and cached linear-probe
top-1 of the trained and of the random-init network, collapsed or not (`summary_table`); plus
knn_epoch.png, the periodic kNN against epoch (`knn_epoch_figure`).

From Python: `markdown_tables({run_name: records})` builds the tables, `write_plots({run_name:
metrics.jsonl lines}, output_dir)` the plots (it returns the written paths); `accuracy_figure`,
`collapse_figure` and `loss_figure` return the matplotlib figures themselves.
"""
from __future__ import annotations

import json
import math
import os
import re
import statistics
import sys

from absl import app, flags

from ssl_jax import cli
from ssl_jax import results as results_lib

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "report", "Directory the PNG plots are written to "
                                  "(created if missing).")
_NO_PLOTS = flags.DEFINE_bool("no_plots", False, "Print the tables only; write no plots.")
_ALL_STEPS = flags.DEFINE_bool("all_steps", False, "One row per evaluated step, not only each run's "
                               "latest step.")
_SUMMARY = flags.DEFINE_bool("summary", False, "One row per run (method, epochs, train time, machine, "
                             "kNN / linear top-1 against random init, collapsed) and knn_epoch.png.")
_KNN_SETTING = flags.DEFINE_string("knn_setting", None, "With --summary: the kNN setting of the kNN "
                                   "columns, e.g. k=200,T=0.1 (default: the only one the runs have).")
_PROTOCOLS = flags.DEFINE_list("protocols", [], "Tables to print, in this order (default: every "
                               "protocol the runs have), e.g. knn,linear_cached.")

METRICS_FILENAME = "metrics.jsonl"
PROTOCOL_ORDER = ("pretrain", "knn", "linear", "linear_cached", "online_probe", "finetune",
                  "clustering", "layer_probe", "monitor")
# (heading, what the table measures and in which unit)
PROTOCOL_TITLES = {
    "pretrain": ("Pretraining", "Training time (h:mm:ss, every segment of a resumed run), images "
                 "seen, and whether the collapse monitors flagged a collapse."),
    "knn": ("kNN", "Weighted k-nearest-neighbour classifier on frozen features (memory: the "
            "training images; queries: the test split). Accuracy in %."),
    "linear": ("Linear evaluation", "A linear classifier trained on frozen features with "
               "augmentations; accuracy on the test split in %."),
    "linear_cached": ("Linear probe (cached features)", "L2-regularised logistic regression on "
                      "frozen features, l2 chosen on held-out training images; accuracy on the "
                      "test split in %."),
    "online_probe": ("Online probe", "The linear classifier trained alongside pretraining on the "
                     "training batches, scored on the test split; accuracy in %."),
    "finetune": ("Fine-tuning", "Encoder and classifier trained on the labels of the setting; "
                 "accuracy on the test split in %."),
    "clustering": ("Clustering", "k-means on frozen features against the classes: NMI, ARI and "
                   "cluster accuracy in % (×100)."),
    "layer_probe": ("Layer probe", "kNN and linear probe on the features of each stage; accuracy "
                    "in %."),
    "monitor": ("Representation monitors", "On augmented views: per-dimension std of "
                "L2-normalised features (0 = collapsed, healthy ≈ 1/√D), effective rank (RankMe), "
                "alignment and uniformity."),
}
_METRIC_ORDER = ("top1", "top5", "knn_top1", "linear_top1", "nmi", "ari", "acc", "acc_many_to_one",
                 "l2", "train_seconds", "examples_seen", "collapsed")
_METRIC_NAMES = {"top1": "top-1", "top5": "top-5", "nmi": "NMI", "ari": "ARI", "acc": "cluster acc",
                 "acc_many_to_one": "cluster acc (many-to-one)", "knn_top1": "kNN top-1",
                 "linear_top1": "linear top-1", "train_seconds": "train time",
                 "examples_seen": "images seen", "collapse_std_reference": "1/√D"}
# Scores in [0, 1] shown x100 with one decimal; the table says '%' once, in the header.
PERCENT_METRICS = frozenset({"top1", "top5", "acc", "acc_many_to_one", "nmi", "ari"})
HPARAM_METRICS = frozenset({"l2"})  # chosen hyper-parameters: written exactly, readably
_PRETRAIN_METRICS = ("train_seconds", "examples_seen", "collapsed")  # the rest: per-step curves
_NETWORK_ORDER = {"online": 0, "target": 1, "random_init": 3}
_NETWORK_LABELS = {"online": "", "random_init": " (random init)"}
MISSING = "–"


# ----------------------------------------------------------------------------- table

def _natural_key(text: str):
    """'labels=10%' after 'labels=1%' and before 'labels=100%': digits compare as numbers."""
    return [(0, float(part), "") if re.fullmatch(r"\d+(\.\d+)?", part) else (1, 0.0, part)
            for part in re.split(r"(\d+(?:\.\d+)?)", text) if part]


def is_percent(metric: str) -> bool:
    """Whether `metric` is a score in [0, 1] that the tables show in percent."""
    return metric in PERCENT_METRICS or metric.endswith(("_top1", "_top5"))


def metric_header(metric: str) -> str:
    """A column name with its unit, e.g. 'top1' -> 'top-1 %', 'l2' -> 'l2'."""
    name = _METRIC_NAMES.get(metric, metric.replace("_", " "))
    return f"{name} %" if is_percent(metric) else name


def format_value(metric: str, value) -> str:
    """A number in the unit of its column: percent with one decimal for scores in [0, 1],
    h:mm:ss for train_seconds, exact and readable for hyper-parameters (1e-5), an integer with
    thousands separators for counts, else 3 significant digits."""
    if value is None:
        return MISSING
    value = float(value)
    if not math.isfinite(value):
        return str(value)  # 'nan' / 'inf': a number the run did produce, shown as such
    if is_percent(metric):
        return f"{100 * value:.1f}"
    if metric == "train_seconds":
        return format_seconds(value)
    if metric == "examples_seen":
        return f"{int(round(value)):,}"
    if metric == "collapsed":
        return "yes" if value else "no"
    if metric in HPARAM_METRICS:
        return results_lib.format_number(value)
    return format_sig(value)


def format_sig(value: float, digits: int = 3) -> str:
    """`value` to `digits` significant digits, in plain notation between 1e-4 and 1e15 and as
    1.23e-5 (not 1.23e-05) outside."""
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    if magnitude < -4 or magnitude >= 15:
        return results_lib.format_number(value, digits)
    rounded = round(value, digits - 1 - magnitude)
    magnitude = math.floor(math.log10(abs(rounded)))  # 9.996 rounds to 10.0: one decimal fewer
    decimals = max(0, digits - 1 - magnitude)
    return f"{rounded:.{decimals}f}"


def format_seconds(seconds) -> str:
    """h:mm:ss (hours unbounded), '–' for a missing or non-finite value."""
    if seconds is None or not math.isfinite(float(seconds)):
        return MISSING
    total = int(round(float(seconds)))
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


def _format_epochs(epochs) -> str:
    if epochs is None or not math.isfinite(float(epochs)):
        return MISSING
    epochs = round(float(epochs), 2)
    return str(int(epochs)) if epochs == int(epochs) else f"{epochs:g}"


def _step_of(record: dict) -> int:
    step = record.get("step")
    return int(step) if isinstance(step, (int, float)) and math.isfinite(step) else -1


def latest_step_records(records: list[dict]) -> list[dict]:
    """The records of the highest step in `records`."""
    if not records:
        return []
    last = max(_step_of(r) for r in records)
    return [r for r in records if _step_of(r) == last]


def _metric_sort_key(metric: str):
    return (_METRIC_ORDER.index(metric), "") if metric in _METRIC_ORDER else (len(_METRIC_ORDER), metric)


def _protocol_sort_key(protocol: str):
    return (PROTOCOL_ORDER.index(protocol), "") if protocol in PROTOCOL_ORDER else (len(PROTOCOL_ORDER), protocol)


def _render(header: list[str], body: list[list[str]], numeric_from: int, text_columns=()) -> str:
    """A Markdown table, text columns left-aligned, numbers (column numeric_from on, except the
    indices in text_columns) right-aligned."""
    table = [[str(cell).replace("|", "\\|") for cell in line] for line in [header] + body]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]

    def fmt(line):
        padded = [cell.rjust(w) if r else cell.ljust(w) for r, cell, w in zip(right, line, widths)]
        return "| " + " | ".join(padded) + " |"

    right = [i >= numeric_from and i not in text_columns for i in range(len(widths))]
    rule = "|" + "|".join("-" * (w + 1) + ":" if r else ":" + "-" * (w + 1) for r, w in zip(right, widths)) + "|"
    return "\n".join([fmt(table[0]), rule] + [fmt(line) for line in table[1:]]) + "\n"


def protocol_tables(records_by_run: dict[str, list[dict]], all_steps: bool = False) -> dict[str, str]:
    """{protocol: its Markdown table} of {run name: results.json records}, in PROTOCOL_ORDER.

    Rows: one per (run, step, eval_dataset, setting, network), each run's latest step only
    unless `all_steps`, the random-init row under the trained one; columns: run, method,
    backbone, dataset, epochs, 'setting' (where any row has one), then the protocol's metrics.
    The 'pretrain' table has train time, images seen and the collapse verdict only.
    """
    cells: dict[str, dict[tuple, dict]] = {}  # protocol -> row key -> {metric: record}
    info: dict[tuple, dict] = {}  # row key -> a record of the row (method, backbone, ...)
    for run_index, (run, records) in enumerate(records_by_run.items()):
        if not all_steps:
            records = latest_step_records(list(records))
        for rec in records:
            protocol, metric = str(rec.get("protocol", "")), str(rec.get("metric", ""))
            network = str(rec.get("network", ""))
            if protocol == "pretrain" and (metric not in _PRETRAIN_METRICS or network == "random_init"):
                continue
            dataset = str(rec.get("dataset", ""))
            eval_dataset = str(rec.get("eval_dataset") or dataset)
            setting = results_lib.clean_exponents(str(rec.get("setting") or ""))
            # A layer probe's 'pooled' output after its stages; labels=1% before 10% (natural order).
            order = tuple(_natural_key(setting.replace("pooled", "~pooled")))
            row = (run_index, _step_of(rec), eval_dataset != dataset, eval_dataset, order,
                   _NETWORK_ORDER.get(network, 2), network)
            info.setdefault(row, dict(rec, run=run, eval_dataset=eval_dataset, setting=setting))
            old = cells.setdefault(protocol, {}).setdefault(row, {}).get(metric)
            if old is None or str(rec.get("time", "")) >= str(old.get("time", "")):
                cells[protocol][row][metric] = rec

    tables = {}
    for protocol in sorted(cells, key=_protocol_sort_key):
        rows = cells[protocol]
        metrics = sorted({m for by_metric in rows.values() for m in by_metric}, key=_metric_sort_key)
        with_setting = any(info[row]["setting"] for row in rows)
        header = ["run", "method", "backbone", "dataset"] + (["setting"] if with_setting else []) + ["epochs"]
        body = []
        for row in sorted(rows):
            rec, network = info[row], row[-1]
            dataset = str(rec.get("dataset", ""))
            if rec["eval_dataset"] != dataset:
                dataset = f"{dataset} → {rec['eval_dataset']}"
            method = str(rec.get("method", "")) + _NETWORK_LABELS.get(network, f" ({network})")
            line = [rec["run"], method, str(rec.get("backbone", "")), dataset]
            line += [rec["setting"]] if with_setting else []
            line.append(_format_epochs(rec.get("epochs")))
            line += [MISSING if m not in rows[row] else format_value(m, rows[row][m].get("value"))
                     for m in metrics]
            body.append(line)
        tables[protocol] = _render(header + [metric_header(m) for m in metrics], body,
                                   numeric_from=len(header) - 1)  # epochs and the metrics: numbers
    return tables


def markdown_tables(records_by_run: dict[str, list[dict]], all_steps: bool = False,
                    protocols: list[str] | None = None) -> str:
    """The Markdown report: per protocol a heading, what it measures in which unit, its table
    ('' when there are no records). `protocols` picks and orders the tables; a name no run has
    is skipped (the CLI checks names)."""
    tables = protocol_tables(records_by_run, all_steps)
    chosen = [p for p in (protocols or tables) if p in tables]
    sections = []
    for protocol in chosen:
        title, what = PROTOCOL_TITLES.get(protocol, (protocol.replace("_", " "), ""))
        sections.append(f"## {title}\n\n" + (f"{what}\n\n" if what else "") + tables[protocol])
    return "\n".join(sections)


markdown_table = markdown_tables  # the name of earlier versions


# ----------------------------------------------------------------------------- summary

MACHINE_FILENAME = "machine.json"
SUMMARY_HEADER = ("method", "backbone", "epochs", "train time", "machine", "kNN top-1 %",
                  "linear top-1 %", "random-init kNN %", "random-init linear %", "collapsed")


def read_machine(run_dir: str) -> dict | None:
    """DIR/machine.json ({cpu_model, cores, segments: [{start, load1_start, end, load1_end}]}, as
    benchmarks/cifar10_cpu.py writes it), or None if absent or unreadable."""
    try:
        with open(os.path.join(run_dir, MACHINE_FILENAME)) as f:
            machine = json.load(f)
        return machine if isinstance(machine, dict) else None
    except (OSError, ValueError):
        return None


def format_machine(machine: dict | None) -> str:
    """'Intel Xeon, 2 cores, load 5.47→6.1' (1-minute load average at the start of the first
    segment and the end of the last; '(2 segments)' for a resumed run); '–' if unknown."""
    if not machine:
        return MISSING
    segments = machine.get("segments") or []
    text = f"{machine.get('cpu_model', '?')}, {machine.get('cores', '?')} cores"
    if segments:
        fmt = lambda v: f"{float(v):g}" if _is_number(v) else "?"
        text += f", load {fmt(segments[0].get('load1_start'))}→{fmt(segments[-1].get('load1_end'))}"
        if len(segments) > 1:
            text += f" ({len(segments)} segments)"
    return text


def pick_value(records: list[dict], protocol: str, metric: str, random_init: bool, setting: str | None = None):
    """The value of the latest record of (protocol, metric) on the pretraining dataset, of the
    random-init network or of a trained one ('online' first), at `setting` if given; else None."""
    recs = [r for r in records if r.get("protocol") == protocol and r.get("metric") == metric
            and (r.get("network") == "random_init") == random_init
            and (r.get("eval_dataset") or r.get("dataset")) == r.get("dataset")
            and (setting is None or str(r.get("setting") or "") == setting)]
    if not recs:
        return None
    best = max(recs, key=lambda r: (_step_of(r), r.get("network") == "online", str(r.get("time", ""))))
    return best.get("value")


def summary_table(records_by_run: dict[str, list[dict]], machines: dict[str, dict | None] | None = None,
                  knn_setting: str | None = None) -> str:
    """One Markdown row per run (its latest step): method, backbone, epochs, train time, machine
    (`machines` {run: machine.json}, see format_machine), kNN top-1 (at `knn_setting`, e.g.
    'k=200,T=0.1'; None: the only one there is) and cached linear-probe top-1 of the trained
    network and of the random-init one, and the collapse verdict. Runs in the given order."""
    machines = machines or {}
    body = []
    for run, records in records_by_run.items():
        records = latest_step_records(list(records))
        if not records:
            continue
        first = next((r for r in records if r.get("network") != "random_init"), records[0])
        values = [pick_value(records, "knn", "top1", False, knn_setting),
                  pick_value(records, "linear_cached", "top1", False),
                  pick_value(records, "knn", "top1", True, knn_setting),
                  pick_value(records, "linear_cached", "top1", True)]
        collapsed = pick_value(records, "pretrain", "collapsed", False)
        body.append([str(first.get("method", run)), str(first.get("backbone", "")),
                     _format_epochs(first.get("epochs")),
                     format_value("train_seconds", pick_value(records, "pretrain", "train_seconds", False)),
                     format_machine(machines.get(run))]
                    + [format_value("top1", v) for v in values]
                    + [format_value("collapsed", collapsed)])
    machine = SUMMARY_HEADER.index("machine")
    return _render(list(SUMMARY_HEADER), body, numeric_from=2, text_columns=(machine,)) if body else ""


def mean_std(values) -> str:
    """A comparison cell over seeds: the mean ± the sample standard deviation of fractions, in
    percent, with the number of seeds, e.g. '51.1 ± 0.4 (n=3)'; one seed: '51.1 (n=1)'; none: '–'."""
    values = [float(v) for v in values if _is_number(v)]
    if not values:
        return "–"
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f} (n=1)"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f} (n={len(values)})"


def seeds_table(rows: dict[str, dict[str, list]], columns: list[str], first: str = "arm") -> str:
    """A Markdown table of a comparison over seeds: a row per {name: {column: [a value per seed]}}
    in the given order, each cell `mean_std` of its values (fractions)."""
    body = [[name] + [mean_std(values.get(c, [])) for c in columns] for name, values in rows.items()]
    return _render([first] + list(columns), body, numeric_from=1)


def knn_epoch_figure(metrics_by_run: dict[str, list[dict]], records_by_run: dict[str, list[dict]],
                     labels: dict[str, str] | None = None):
    """The periodic kNN top-1 (%) against pretraining epoch (step / the run's steps per epoch,
    from its results.json records' step and epochs), one line per run, on a fixed 0-100 % axis,
    with the random-init kNN (the same setting) dashed. None if no run has both."""
    labels = labels or {}
    converted, baselines = {}, {}
    for run, lines in metrics_by_run.items():
        spe = [r["step"] / r["epochs"] for r in records_by_run.get(run, [])
               if _is_number(r.get("step")) and _is_number(r.get("epochs")) and r["epochs"] > 0]
        if spe and series(lines, "knn_top1")[0]:
            converted[run] = [dict(line, step=line["step"] / spe[0]) for line in lines
                              if _is_number(line.get("step"))]
            baseline = random_init_knn(records_by_run.get(run, []))
            if baseline is not None:
                baselines[run] = baseline
    if not converted:
        return None
    fig, (ax,) = _new_figure(1)
    many = len(converted) > 8
    if many:
        fig.set_size_inches(10, 6)
    _plot_runs(ax, converted, "knn_top1", labels, scale=100.0, marker="o", markersize=3)
    colors = {run: f"C{i % 10}" for i, run in enumerate(converted)}
    by_value = {}  # runs sharing a baseline (one backbone, seed and machine) share its line
    for run, (value, _) in baselines.items():
        by_value.setdefault(value, []).append(run)
    for value, runs in by_value.items():
        if len(by_value) == 1:
            who, color = "", "black"
        elif len(runs) == 1:
            who, color = f", {labels.get(runs[0], runs[0])}", colors.get(runs[0], "black")
        else:
            who, color = f", {len(runs)} runs", "black"
        ax.axhline(100 * value, color=color, linestyle="--", linewidth=1.0,
                   label=f"random init{who}: {100 * value:.1f} %")
    ax.set_ylim(0, 100)
    _finish(ax, "pretraining epoch", "kNN top-1 on the test split (%), axis 0-100",
            "kNN top-1 during pretraining\ndashed: the same network at random init", legend_outside=many)
    return fig


# ----------------------------------------------------------------------------- plots

def read_metrics(run_dir: str) -> list[dict]:
    """The lines of DIR/metrics.jsonl as dicts ([] if there is none); unreadable lines are skipped
    (a run killed mid-write can leave a partial last line)."""
    path = os.path.join(run_dir, METRICS_FILENAME)
    if not os.path.exists(path):
        return []
    lines, bad = [], 0
    with open(path) as f:
        for text in f:
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(obj, dict) and "step" in obj:
                lines.append(obj)
            else:
                bad += 1
    if bad:
        _note(f"skipped {bad} unreadable line(s) of {path}")
    return lines


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def series(lines: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of `key` over the lines that have a finite value for it, by step."""
    points = sorted((line["step"], line[key]) for line in lines
                    if _is_number(line.get("step")) and _is_number(line.get(key)))
    return [p[0] for p in points], [p[1] for p in points]


def _reference(lines: list[dict], key: str) -> float | None:
    values = series(lines, key)[1]
    return values[-1] if values else None


def knn_setting(config: dict | None) -> str | None:
    """The setting of the periodic kNN of a run's config.json ('k=20,T=0.1'), as its records name it."""
    try:
        ev = config["eval"]
        return f"k={int(ev['knn_k'])},T={float(ev['knn_temperature']):g}"
    except (TypeError, KeyError, ValueError):
        return None


def random_init_knn(records: list[dict], setting: str | None = None) -> tuple[float, str] | None:
    """(top-1 fraction, setting) of the random-init network's kNN on the pretraining dataset:
    at `setting` (the periodic kNN's), or the only setting there is; None if neither exists."""
    recs = [r for r in records if r.get("protocol") == "knn" and r.get("network") == "random_init"
            and r.get("metric") == "top1" and (r.get("eval_dataset") or r.get("dataset")) == r.get("dataset")
            and _is_number(r.get("value"))]
    settings = {str(r.get("setting") or "") for r in recs}
    if setting is None and len(settings) == 1:
        setting = settings.pop()
    recs = [r for r in recs if str(r.get("setting") or "") == setting]
    if not recs:
        return None
    latest = max(recs, key=lambda r: (_step_of(r), str(r.get("time", ""))))
    return float(latest["value"]), setting


def _new_figure(panels: int):
    from matplotlib.figure import Figure  # Agg canvas, no pyplot state: safe headless

    fig = Figure(figsize=(6.5 * panels, 4.5), layout="constrained")
    return fig, [fig.add_subplot(1, panels, i + 1) for i in range(panels)]


LINESTYLES, MARKERS = ("-", "-.", ":"), ("o", "s", "^")  # per group of ten runs (the ten colours)


def _plot_runs(ax, metrics_by_run, key, labels, scale=1.0, **style):
    for i, (run, lines) in enumerate(metrics_by_run.items()):
        steps, values = series(lines, key)
        if steps:
            run_style = dict(style, linestyle=LINESTYLES[i // 10 % 3])
            if "marker" in style or len(steps) == 1:  # a lone point is invisible as a line
                run_style = {"markersize": 3, **run_style, "marker": MARKERS[i // 10 % 3]}
            ax.plot(steps, [v * scale for v in values], color=f"C{i % 10}", label=labels.get(run, run),
                    **run_style)


def _has(metrics_by_run, key) -> bool:
    return any(series(lines, key)[0] for lines in metrics_by_run.values())


def _finish(ax, xlabel, ylabel, title, legend_outside: bool = False):
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if legend_outside:  # many runs: a legend inside would cover the lines
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize="small")


def loss_figure(metrics_by_run: dict[str, list[dict]], labels: dict[str, str] | None = None):
    """The training loss against step, or None if no run logged it."""
    if not _has(metrics_by_run, "loss"):
        return None
    fig, (ax,) = _new_figure(1)
    _plot_runs(ax, metrics_by_run, "loss", labels or {}, linewidth=1.2)
    _finish(ax, "pretraining step", "training loss", "Training loss (per log step)")
    return fig


def _panels(metrics_by_run: dict[str, list[dict]], keys: tuple[str, ...]):
    """(figure, [(axis, key)] one panel per key some run logged, {run: colour}), or None when
    no run logged any of `keys`."""
    keys = [k for k in keys if _has(metrics_by_run, k)]
    if not keys:
        return None
    fig, axes = _new_figure(len(keys))
    return fig, list(zip(axes, keys)), {run: f"C{i % 10}" for i, run in enumerate(metrics_by_run)}


def accuracy_figure(metrics_by_run: dict[str, list[dict]], labels: dict[str, str] | None = None,
                    baselines: dict[str, tuple[float, str]] | None = None):
    """Online-probe and periodic-kNN top-1 (%) against step on a fixed 0-100 % axis, one panel
    each; `baselines` {run: (random-init kNN top-1 fraction, setting)} drawn as dashed lines on
    the kNN panel. None if no run logged either."""
    labels, baselines = labels or {}, baselines or {}
    panels = _panels(metrics_by_run, ("probe_top1", "knn_top1"))
    if panels is None:
        return None
    fig, axes_keys, colors = panels
    for ax, key in axes_keys:
        if key == "probe_top1":
            _plot_runs(ax, metrics_by_run, key, labels, scale=100.0, linewidth=1.2)
            title = "Online linear probe top-1 on training batches\n(augmented views, not the test split)"
        else:
            _plot_runs(ax, metrics_by_run, key, labels, scale=100.0, marker="o", markersize=3)
            settings = {setting for _, setting in baselines.values()}
            at = f" ({settings.pop()})" if len(settings) == 1 else ""
            title = f"kNN top-1 on the test split during training{at}\ndashed: the same network at random init"
            for run, value in _reference_lines({r: v for r, (v, _) in baselines.items()}).items():
                who = "" if run is None else f", {labels.get(run, run)}"
                ax.axhline(100 * value, color=colors.get(run, "black"), linestyle="--", linewidth=1.0,
                           label=f"random init{who}: {100 * value:.1f} %")
        # A fixed axis: an auto-zoomed 77-82 % makes a 5-point change look like a leap.
        ax.set_ylim(0, 100)
        _finish(ax, "pretraining step", "top-1 accuracy (%), axis 0-100", title)
    return fig


def _reference_lines(values: dict[str, float]) -> dict[str | None, float]:
    """{run: value} of per-run reference lines, or {None: value} when every run has the same
    one (the same seed gives every method the same random init): one line, not one per run."""
    distinct = set(values.values())
    return {None: distinct.pop()} if len(distinct) == 1 else dict(values)


def collapse_figure(metrics_by_run: dict[str, list[dict]], labels: dict[str, str] | None = None):
    """The training-batch collapse monitors against step, one panel each where logged:
    collapse_std with 1/sqrt(D), z_effective_rank with D (both from 0). None if neither."""
    labels = labels or {}
    panels = _panels(metrics_by_run, ("collapse_std", "z_effective_rank"))
    if panels is None:
        return None
    fig, axes_keys, colors = panels
    for ax, key in axes_keys:
        _plot_runs(ax, metrics_by_run, key, labels, linewidth=1.2)
        ref_key = "collapse_std_reference" if key == "collapse_std" else "z_std_reference"
        refs = {run: _reference(lines, ref_key) for run, lines in metrics_by_run.items()
                if series(lines, key)[0]}
        refs = {run: ref for run, ref in refs.items() if ref}
        top = 0.0
        for run, ref in _reference_lines(refs).items():
            who = "" if run is None else f" ({labels.get(run, run)})"
            if key == "collapse_std":
                y, label = ref, f"1/√D{who}"
            else:  # the rank of D-dimensional outputs is at most D
                y = round(1.0 / ref ** 2)
                label = f"D = {y}{who}"
            ax.axhline(y, color=colors.get(run, "black"), linestyle="--", linewidth=1.0, label=label)
            top = max(top, y)
        ax.set_ylim(0, max(ax.get_ylim()[1], 1.08 * top))  # from 0, the reference in view
        if key == "collapse_std":
            _finish(ax, "pretraining step", "per-dimension std (0 = collapsed)",
                    "Std of L2-normalised encoder features\n(training batch)")
        else:
            _finish(ax, "pretraining step", "effective rank (RankMe)",
                    "Effective rank of the projector outputs\n(training batch)")
    return fig


def write_plots(metrics_by_run: dict[str, list[dict]], output_dir: str,
                labels: dict[str, str] | None = None,
                baselines: dict[str, tuple[float, str]] | None = None) -> list[str]:
    """loss.png, accuracy.png and collapse.png from {run name: metrics.jsonl lines} (see
    accuracy_figure for `baselines`). A plot whose series no run has is skipped with a note on
    stderr. Returns the paths written."""
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for name, fig, missing in (
            ("loss.png", loss_figure(metrics_by_run, labels), "'loss'"),
            ("accuracy.png", accuracy_figure(metrics_by_run, labels, baselines), "'probe_top1' or 'knn_top1'"),
            ("collapse.png", collapse_figure(metrics_by_run, labels), "'collapse_std' or 'z_effective_rank'")):
        if fig is None:
            _note(f"no run logged {missing} in metrics.jsonl: {name} not written")
            continue
        path = os.path.join(output_dir, name)
        fig.savefig(path, dpi=110)
        written.append(path)
    return written


# ----------------------------------------------------------------------------- CLI

def _note(message: str) -> None:
    print(f"ssl_jax: note: {message}", file=sys.stderr)


def run_names(run_dirs: list[str]) -> list[str]:
    """Each directory's base name; the path as given where two base names are the same."""
    bases = [os.path.basename(os.path.abspath(d)) for d in run_dirs]
    return [b if bases.count(b) == 1 else os.path.normpath(d) for b, d in zip(bases, run_dirs)]


def _config_of(run_dir: str) -> dict | None:
    """The config.json the training loop saved (None if absent or unreadable)."""
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            config = json.load(f)
        return config if isinstance(config, dict) else None
    except (OSError, ValueError):
        return None


def _method_of(run_dir: str, records: list[dict]) -> str | None:
    for rec in records:
        if rec.get("method"):
            return str(rec["method"])
    method = (_config_of(run_dir) or {}).get("method")  # a run without results yet
    return str(method) if method else None


def baselines_of(run_dirs: list[str], records_by_run: dict[str, list[dict]]) -> dict[str, tuple[float, str]]:
    """{run name: (random-init kNN top-1, setting)} for the runs whose results.json has one at
    the setting of their periodic kNN (config.json's eval.knn_k, eval.knn_temperature)."""
    out = {}
    for run_dir, name in zip(run_dirs, run_names(run_dirs)):
        baseline = random_init_knn(records_by_run.get(name, []), knn_setting(_config_of(run_dir)))
        if baseline is not None:
            out[name] = baseline
    return out


def load_runs(run_dirs: list[str]):
    """({name: records}, {name: metrics lines}, {name: plot label}); exits 2 on a non-run dir."""
    records_by_run, metrics_by_run, labels = {}, {}, {}
    for run_dir, name in zip(run_dirs, run_names(run_dirs)):
        if not os.path.isdir(run_dir):
            cli.fail(f"{run_dir} is not a directory: pass run directories (the --workdir of training).", code=2)
        has_results = os.path.exists(results_lib.path_of(run_dir))
        has_metrics = os.path.exists(os.path.join(run_dir, METRICS_FILENAME))
        if not has_results and not has_metrics:
            cli.fail(f"{run_dir} has neither results.json nor metrics.jsonl: is it a run directory?", code=2)
        records = []
        if has_results:
            try:
                records = results_lib.read_records(run_dir)
            except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
                _note(f"skipping {results_lib.path_of(run_dir)}: {e}")
        records_by_run[name] = records
        metrics_by_run[name] = read_metrics(run_dir)
        method = _method_of(run_dir, records)
        labels[name] = f"{name} ({method})" if method and method != name else name
    return records_by_run, metrics_by_run, labels


def main(argv):
    run_dirs = argv[1:]
    if not run_dirs:
        cli.fail("pass one or more run directories: python -m ssl_jax.report RUN_DIR [RUN_DIR ...] "
                 "[--output_dir=DIR] [--no_plots] [--all_steps] [--protocols=knn,...]", code=2)
    unknown = [p for p in _PROTOCOLS.value if p not in PROTOCOL_ORDER]
    if unknown:
        cli.fail(f"--protocols: unknown protocol(s) {', '.join(unknown)}; valid: {','.join(PROTOCOL_ORDER)}.",
                 code=2)
    records_by_run, metrics_by_run, labels = load_runs(run_dirs)
    if _SUMMARY.value:
        machines = {name: read_machine(d) for name, d in zip(run_names(run_dirs), run_dirs)}
        print(summary_table(records_by_run, machines, _KNN_SETTING.value), end="", flush=True)
        fig = None if _NO_PLOTS.value else knn_epoch_figure(metrics_by_run, records_by_run, labels)
        if fig is not None:
            os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
            path = os.path.join(_OUTPUT_DIR.value, "knn_epoch.png")
            fig.savefig(path, dpi=110)
            print(f"ssl_jax: wrote {path}", file=sys.stderr)
        return
    tables = markdown_tables(records_by_run, all_steps=_ALL_STEPS.value, protocols=_PROTOCOLS.value or None)
    if tables:
        print(tables, end="", flush=True)
    elif _PROTOCOLS.value and any(records_by_run.values()):
        _note(f"these runs have no records of {','.join(_PROTOCOLS.value)}: no table")
    else:
        _note("no results.json records in these runs: no table (plots only)")
    if not _NO_PLOTS.value:
        baselines = baselines_of(run_dirs, records_by_run)
        for path in write_plots(metrics_by_run, _OUTPUT_DIR.value, labels, baselines):
            print(f"ssl_jax: wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
