"""Summarise finished runs: a Markdown results table and training-curve plots.

Usage:
  python -m ssl_jax.report RUN_DIR [RUN_DIR ...] [--output_dir=DIR] [--no_plots] [--all_steps]

Prints (stdout) one Markdown table built from every run's DIR/results.json (see
ssl_jax/results.py): one row per (run, evaluated network, evaluation dataset) with the columns
run, method, backbone, dataset (the pretraining dataset; 'A → B' for a transfer evaluation on B),
epochs, then one column per (protocol, setting, metric) found in any run, e.g.
'kNN top-1 (k=20,T=0.07)', 'linear top-1', 'fine-tune 1% top-1', 'NMI', and 'train time' (h:mm:ss)
when the runs recorded it. Accuracies are percentages with one decimal, other numbers have three
significant digits, '–' marks a number a run does not have. Evaluations of the randomly initialised
network are rows of their own ('byol (random init)'), those of the EMA / teacher network too
('byol (target)'). Only each run's latest evaluated step is shown unless --all_steps is given.

Writes (unless --no_plots) PNG plots from every run's DIR/metrics.jsonl into --output_dir
(default ./report), one line per run:
  loss.png      training loss vs step;
  accuracy.png  online probe top-1 and periodic kNN top-1 vs step (one panel each);
  collapse.png  collapse_std vs step, with a dashed line at 1/sqrt(D) where the run logged
                collapse_std_reference.
A plot no run has data for is skipped with a note. Notes and the list of written files go to
stderr, so `python -m ssl_jax.report runs/* > results.md` keeps the table alone.

From Python: `markdown_table({run_name: records})` builds the table, `write_plots({run_name:
metrics.jsonl lines}, output_dir)` the plots (it returns the written paths).
"""
from __future__ import annotations

import json
import math
import os
import re
import sys

from absl import app, flags

from ssl_jax import cli
from ssl_jax import results as results_lib

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "report", "Directory the PNG plots are written to "
                                  "(created if missing).")
_NO_PLOTS = flags.DEFINE_bool("no_plots", False, "Print the table only; write no plots.")
_ALL_STEPS = flags.DEFINE_bool("all_steps", False, "One row per evaluated step, not only each run's "
                               "latest step.")

METRICS_FILENAME = "metrics.jsonl"
PROTOCOL_ORDER = ("knn", "linear", "linear_cached", "online_probe", "finetune", "clustering",
                  "layer_probe", "monitor")
_PROTOCOL_NAMES = {"knn": "kNN", "linear": "linear", "linear_cached": "linear (cached)",
                   "online_probe": "online probe", "finetune": "fine-tune", "clustering": "",
                   "layer_probe": "layer probe", "monitor": ""}
_METRIC_ORDER = ("top1", "top5", "nmi", "ari", "acc", "acc_many_to_one")
_METRIC_NAMES = {"top1": "top-1", "top5": "top-5", "nmi": "NMI", "ari": "ARI", "acc": "acc",
                 "acc_many_to_one": "acc (many-to-one)"}
_CLUSTER_METRIC_NAMES = {"acc": "cluster acc", "acc_many_to_one": "cluster acc (many-to-one)"}
ACCURACY_METRICS = frozenset({"top1", "top5", "acc", "acc_many_to_one"})
_INLINE_SETTINGS = ("labels", "layer")  # 'labels=1%' -> 'fine-tune 1% top-1'
_NETWORK_ORDER = {"online": 0, "target": 1, "random_init": 3}
_NETWORK_LABELS = {"online": "", "random_init": " (random init)"}
MISSING = "–"


# ----------------------------------------------------------------------------- table

def _natural_key(text: str):
    """'labels=10%' after 'labels=1%' and before 'labels=100%': digits compare as numbers."""
    return [(0, float(part), "") if re.fullmatch(r"\d+(\.\d+)?", part) else (1, 0.0, part)
            for part in re.split(r"(\d+(?:\.\d+)?)", text) if part]


def _column_sort_key(column: tuple[str, str, str]):
    protocol, setting, metric = column
    p = (PROTOCOL_ORDER.index(protocol), "") if protocol in PROTOCOL_ORDER else (len(PROTOCOL_ORDER), protocol)
    m = (_METRIC_ORDER.index(metric), "") if metric in _METRIC_ORDER else (len(_METRIC_ORDER), metric)
    return p, _natural_key(setting), m


def column_header(protocol: str, setting: str, metric: str) -> str:
    """A readable column name, e.g. ('knn', 'k=20,T=0.07', 'top1') -> 'kNN top-1 (k=20,T=0.07)'."""
    name = _PROTOCOL_NAMES.get(protocol, protocol.replace("_", " "))
    if protocol == "clustering":
        metric_name = _CLUSTER_METRIC_NAMES.get(metric, _METRIC_NAMES.get(metric, metric.replace("_", " ")))
    else:
        metric_name = _METRIC_NAMES.get(metric, metric.replace("_", " "))
    suffix = ""
    key, eq, value = setting.partition("=")
    if eq and key in _INLINE_SETTINGS and "," not in setting:
        name = f"{name} {value}".strip()
    elif setting:
        suffix = f" ({setting})"
    return f"{name} {metric_name}".strip() + suffix


def format_value(metric: str, value) -> str:
    """Accuracies (fractions) as percentages with one decimal; anything else to 3 significant digits."""
    if value is None:
        return MISSING
    value = float(value)
    if not math.isfinite(value):
        return str(value)  # 'nan' / 'inf': a number the run did produce, shown as such
    if metric in ACCURACY_METRICS:
        return f"{100 * value:.1f}"
    return format_sig(value)


def format_sig(value: float, digits: int = 3) -> str:
    """`value` to `digits` significant digits, in plain notation between 1e-4 and 1e15."""
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    if magnitude < -4 or magnitude >= 15:
        return f"{value:.{digits}g}"
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


def markdown_table(records_by_run: dict[str, list[dict]], all_steps: bool = False) -> str:
    """The Markdown table of {run name: results.json records} ('' when there are no records).

    One row per (run, step, eval_dataset, network), keeping only each run's latest step unless
    `all_steps`; one column per (protocol, setting, metric) of any run ('pretrain' records only
    give the 'train time' column, from their 'train_seconds' metric).
    """
    cells: dict[tuple, dict] = {}  # row key -> {column: record}
    row_info: dict[tuple, dict] = {}  # row key -> a record of the row (method, backbone, ...)
    train_seconds: dict[tuple, dict] = {}  # (run, step) -> pretrain record
    columns: set[tuple[str, str, str]] = set()
    for run_index, (run, records) in enumerate(records_by_run.items()):
        if not all_steps:
            records = latest_step_records(list(records))
        for rec in records:
            protocol = str(rec.get("protocol", ""))
            network = str(rec.get("network", ""))
            dataset = str(rec.get("dataset", ""))
            eval_dataset = str(rec.get("eval_dataset") or dataset)
            step = _step_of(rec)
            if protocol == "pretrain":
                if rec.get("metric") == "train_seconds":
                    old = train_seconds.get((run, step))
                    if old is None or str(rec.get("time", "")) >= str(old.get("time", "")):
                        train_seconds[(run, step)] = rec
                if network == "random_init":
                    continue
            row = (run_index, step, eval_dataset != dataset, eval_dataset,
                   _NETWORK_ORDER.get(network, 2), network)
            row_info.setdefault(row, dict(rec, run=run, eval_dataset=eval_dataset))
            cells.setdefault(row, {})
            if protocol == "pretrain":
                continue
            column = (protocol, str(rec.get("setting") or ""), str(rec.get("metric", "")))
            columns.add(column)
            old = cells[row].get(column)
            if old is None or str(rec.get("time", "")) >= str(old.get("time", "")):
                cells[row][column] = rec
    if not row_info:
        return ""

    ordered_columns = sorted(columns, key=_column_sort_key)
    header = ["run", "method", "backbone", "dataset", "epochs"]
    header += [column_header(*c) for c in ordered_columns]
    with_time = bool(train_seconds)
    if with_time:
        header.append("train time")
    numeric_from = 4  # epochs and every later column are numbers: right-aligned

    body = []
    for row in sorted(row_info):
        info = row_info[row]
        network = row[-1]
        method = str(info.get("method", "")) + _NETWORK_LABELS.get(network, f" ({network})")
        dataset = str(info.get("dataset", ""))
        if info["eval_dataset"] != dataset:
            dataset = f"{dataset} → {info['eval_dataset']}"
        line = [info["run"], method, str(info.get("backbone", "")), dataset,
                _format_epochs(info.get("epochs"))]
        for column in ordered_columns:
            rec = cells[row].get(column)
            line.append(MISSING if rec is None else format_value(column[2], rec.get("value")))
        if with_time:
            rec = None if network == "random_init" else train_seconds.get((info["run"], row[1]))
            line.append(MISSING if rec is None else format_seconds(rec.get("value")))
        body.append(line)

    table = [header] + body
    table = [[str(cell).replace("|", "\\|") for cell in line] for line in table]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]

    def fmt(line):
        padded = [cell.rjust(w) if i >= numeric_from else cell.ljust(w)
                  for i, (cell, w) in enumerate(zip(line, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if i >= numeric_from else ":" + "-" * (w + 1)
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([fmt(table[0]), rule] + [fmt(line) for line in table[1:]]) + "\n"


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


def write_plots(metrics_by_run: dict[str, list[dict]], output_dir: str,
                labels: dict[str, str] | None = None) -> list[str]:
    """loss.png, accuracy.png and collapse.png from {run name: metrics.jsonl lines}.

    One line per run (labelled labels[run], default the run name); a plot whose series no run
    has is skipped with a note on stderr. Returns the paths written.
    """
    from matplotlib.figure import Figure  # Agg canvas, no pyplot state: safe headless

    labels = labels or {}
    os.makedirs(output_dir, exist_ok=True)
    written = []
    colors = {run: f"C{i % 10}" for i, run in enumerate(metrics_by_run)}

    def has(key):
        return any(series(lines, key)[0] for lines in metrics_by_run.values())

    def plot_lines(ax, key, scale=1.0, **style):
        for run, lines in metrics_by_run.items():
            steps, values = series(lines, key)
            if steps:
                if len(steps) == 1:  # a lone point is invisible as a line
                    style = {"marker": "o", "markersize": 3, **style}
                ax.plot(steps, [v * scale for v in values], color=colors[run],
                        label=labels.get(run, run), **style)

    def save(fig, name):
        path = os.path.join(output_dir, name)
        fig.savefig(path, dpi=110)
        written.append(path)

    if has("loss"):
        fig = Figure(figsize=(7, 4.5), layout="constrained")
        ax = fig.add_subplot()
        plot_lines(ax, "loss", linewidth=1.2)
        ax.set(xlabel="step", ylabel="training loss", title="Training loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        save(fig, "loss.png")
    else:
        _note("no run logged 'loss' in metrics.jsonl: loss.png not written")

    panels = [(key, title) for key, title in (("probe_top1", "Online probe top-1"),
                                              ("knn_top1", "kNN top-1")) if has(key)]
    if panels:
        fig = Figure(figsize=(6.5 * len(panels), 4.5), layout="constrained")
        for i, (key, title) in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), i + 1)
            style = {"marker": "o", "markersize": 3} if key == "knn_top1" else {"linewidth": 1.2}
            plot_lines(ax, key, scale=100.0, **style)
            ax.set(xlabel="step", ylabel="top-1 (%)", title=title)
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
        save(fig, "accuracy.png")
    else:
        _note("no run logged 'probe_top1' or 'knn_top1' in metrics.jsonl: accuracy.png not written")

    if has("collapse_std"):
        fig = Figure(figsize=(7, 4.5), layout="constrained")
        ax = fig.add_subplot()
        plot_lines(ax, "collapse_std", linewidth=1.2)
        references = {run: _reference(lines, "collapse_std_reference")
                      for run, lines in metrics_by_run.items() if series(lines, "collapse_std")[0]}
        references = {run: ref for run, ref in references.items() if ref is not None}
        for run, ref in references.items():
            label = "1/sqrt(D)" if len(references) == 1 else f"1/sqrt(D) ({labels.get(run, run)})"
            ax.axhline(ref, color=colors[run], linestyle="--", linewidth=1.0, label=label)
        ax.set(xlabel="step", ylabel="collapse std (0 = collapsed)",
               title="Std of L2-normalised embeddings")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        save(fig, "collapse.png")
    else:
        _note("no run logged 'collapse_std' in metrics.jsonl: collapse.png not written")
    return written


# ----------------------------------------------------------------------------- CLI

def _note(message: str) -> None:
    print(f"ssl_jax: note: {message}", file=sys.stderr)


def run_names(run_dirs: list[str]) -> list[str]:
    """Each directory's base name; the path as given where two base names are the same."""
    bases = [os.path.basename(os.path.abspath(d)) for d in run_dirs]
    return [b if bases.count(b) == 1 else os.path.normpath(d) for b, d in zip(bases, run_dirs)]


def _method_of(run_dir: str, records: list[dict]) -> str | None:
    for rec in records:
        if rec.get("method"):
            return str(rec["method"])
    try:  # a run without results yet: the config the training loop saved
        with open(os.path.join(run_dir, "config.json")) as f:
            method = json.load(f).get("method")
        return str(method) if method else None
    except (OSError, ValueError, AttributeError):
        return None


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
              "[--output_dir=DIR] [--no_plots] [--all_steps]", code=2)
    records_by_run, metrics_by_run, labels = load_runs(run_dirs)
    table = markdown_table(records_by_run, all_steps=_ALL_STEPS.value)
    if table:
        print(table, end="", flush=True)
    else:
        _note("no results.json records in these runs: no table (plots only)")
    if not _NO_PLOTS.value:
        for path in write_plots(metrics_by_run, _OUTPUT_DIR.value, labels):
            print(f"ssl_jax: wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
