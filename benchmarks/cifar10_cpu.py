"""Every method on CIFAR-10 at CPU scale: one backbone, one epoch budget, one table (issue 25).

Commands (from the repository root; data: TFDS cifar10 in ../shared/tfds, or --data_dir):

    python benchmarks/cifar10_cpu.py --plan                 # the plan: backbone, epochs, every change
    python benchmarks/cifar10_cpu.py --method=byol          # one row (resumes its workdir if stopped)
    python benchmarks/cifar10_cpu.py --method=all           # every row not yet done, one at a time
    python benchmarks/cifar10_cpu.py --report               # the README table and the kNN-vs-epoch plot
    python benchmarks/cifar10_cpu.py --measure=0.25,0.5     # BYOL's training img/s at these widths
    python benchmarks/cifar10_cpu.py --method=byol --epochs=2 --smoke=/tmp/smoke   # the whole path, 1k images

Each row is an ordinary training workdir, benchmarks/cifar10_cpu/runs/<method> (not committed):
rerunning the same command resumes it from its last checkpoint (every log step) or, when it is
finished, only re-evaluates. A finished row's summary (results.json, metrics.jsonl, config.json,
machine.json) is copied to benchmarks/cifar10_cpu/results/<method>/, which is committed, and
`--report` builds benchmarks/cifar10_cpu/results.md (the table, by `ssl_jax.report`'s summary
table) and benchmarks/cifar10_cpu/knn_epoch.png from those copies. `--method=all` runs each
method in its own process (one failing method does not stop the others) and skips rows already
in results/ (--rerun trains them again in their workdir, which resumes).

Rows: every configs/<name>.py with a `cifar10` preset that is one training run, i.e. every method
of ssl_jax.methods.METHODS and the wrapped ones (dssl_byol, dssl_simclr, dssl_simsiam); FUSSL
and SSL++ are staged protocols over other methods, with their own CIFAR-10 comparisons
(benchmarks/fussl_cifar10.py, benchmarks/sslpp_cifar10.py). `--plan` lists why any other has none.

The recipe of a row is the method's own `cifar10` preset (configs/<method>.py:cifar10) with these
changes, the same for every method (`derive` applies them; `--plan` prints them per method):

* Backbone: ResNet-18 with the CIFAR stem at width WIDTH = 0.125 (8-64 channels), float32, no
  Sobel input layer, for every method. Why: one network for the whole table, so the rows compare
  methods, not backbones (the proxy-task presets use the 4-block NIN, IIC's ResNet-34 with Sobel,
  the others ResNet-18 at width 1); and narrow so that an epoch fits ~2 minutes on 2 CPU cores.
  Measured (`--measure`, BYOL at batch 256, steps 10-30, data pipeline included; 2026-12-06 on
  2 cores of an Intel Xeon shared with other jobs, 1-minute load 13-21): width 0.25: 71.8 images
  per CPU-second (12.2 img/s wall), 0.125: 122.4 per CPU-second (17.9 img/s wall). On 2 idle
  cores that is at best 5.8 and 3.4 minutes per epoch: no ResNet-18 width met the ~2 minutes
  aimed at (halving the width gave 1.7x, not the 4x of the convolutions' FLOPs: something else
  weighs, the tf.data augmentation being a candidate, not measured), so the narrowest reasonable
  one, 0.125 (the demos' width; 64-dimensional features), was chosen.
* Feature dimensions a method reduces to (DeepCluster's and DeeperCluster's PCA before k-means,
  FEATURE_DIM_FIELDS) are scaled by the width as the features are: 128 of ResNet-18's 512 become
  16 of the narrow network's 64, the preset's quarter. Why: PCA cannot keep more dimensions than
  the 64 there are (the first DeepCluster run stopped on that error); keeping all 64 would
  whiten the noisiest directions as much as the leading ones, so the ratio is kept instead.
* Epochs: EPOCHS = 5 for every method: 5 x 3.4 = 17 minutes on 2 idle cores, the 15-20 minute
  per-method budget (the presets' 200-6000 epochs take days on a CPU). The LR schedule (cosine,
  or step decay) runs over these epochs.
* LR warm-up: min(preset warm-up, 10 % of the run) epochs (0.5 epochs: ~97 steps at batch 256).
  Why: the presets' 10 warm-up epochs are twice the run; scaled by 5/1000 they would be one
  step. 10 % is a choice: a real warm-up, 90 % of the run left to the decay.
* Start-of-training freezes (SwAV's prototypes and DINO's last layer, frozen for the first
  epoch): min(preset, 10 % of the run) epochs, as the warm-up they go with (one of 5 epochs would
  be a fifth of the run; scaled by 5/1000 they would vanish).
* Other schedule positions given in epochs (step-decay milestones, DINO's teacher-temperature
  warm-up, CARL's / CARP's entropy-weight decay, SwAV's queue start)
  are scaled by EPOCHS / preset epochs, so the schedule keeps its shape; a negative milestone
  (counted from the end) is scaled the same way. Periods (DeepCluster's / DeeperCluster's
  reassign_epochs: re-cluster every N epochs) are not schedule positions and are kept.
* Evaluation: kNN top-1 (k=200, T=0.1, solo-learn's setting) on the test split every epoch into
  metrics.jsonl (the presets' every_steps of 1950 = 10 epochs of batch 256 is past the run's
  end); after training kNN and the cached-feature linear probe (eval.linear_probe, as in the
  presets). Log and checkpoint every largest divisor of an epoch that is <= 50 steps (the whole
  epoch if none is >= 10), so the per-epoch kNN lands on a log step and a stopped run loses at
  most that many steps.
* Random-init baseline: the same network (WIDTH, seed 0) at its initialisation, evaluated once
  per backbone and evaluation setting (eval_fingerprint) with the same kNN and linear probe
  (runs/random_init_<backbone>_<fingerprint>/results.json,
  reused by every row), instead of each run's own eval.compare_random_init; its records are
  copied into each row's results.json under that row's method, so the tables put it under the
  row.
* Variants (VARIANTS): a few extra rows, each a method's row with named fields changed to test a
  finding (e.g. swav_eps0.01_noqueue), run and reported like the others under their own name.
* Nothing else changes: batch size, optimizer, LR, weight decay, augmentations, heads,
  temperatures, momentum schedules are each method's `cifar10` recipe.

machine.json of a row: the CPU model (lscpu), the cores, and for every segment of the run
(a resumed run has several) its start and end time and the 1-minute load average at both (the
machine is shared: a load above the core count means the row's wall time is inflated).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(ROOT, "benchmarks", "cifar10_cpu")
RUNS_DIR = os.path.join(BENCH_DIR, "runs")  # workdirs: gitignored
RESULTS_DIR = os.path.join(BENCH_DIR, "results")  # committed summaries
DEFAULT_DATA_DIR = os.path.join(os.path.dirname(ROOT), "shared", "tfds")

BACKBONE = "resnet18"
WIDTH = 0.125
EPOCHS = 5
SEED = 0
KNN_K, KNN_T = 200, 0.1
WARMUP_FRACTION = 0.1
# Epoch-valued schedule positions scaled by EPOCHS / preset epochs (periods such as
# reassign_epochs are not among them).
SCALED_FIELDS = ("optimizer.warmup_epochs", "optimizer.decay_epochs", "optimizer.freeze_epochs",
                 "dino.warmup_teacher_temp_epochs", "carl.entropy_decay_epochs",
                 "carp.entropy_decay_epochs", "swav.queue_start_epoch")
# Dimensions of the backbone's features that a method reduces to (PCA before k-means), scaled by
# WIDTH / the preset's width as the features are (they must not exceed them).
FEATURE_DIM_FIELDS = ("deepcluster.pca_dim", "deepercluster.pca_dim")
SUMMARY_FILES = ("results.json", "metrics.jsonl", "config.json", "machine.json")
# Rows beside the methods' own: a method's row with a few of its recipe's fields changed, to test
# a finding (row name: (method, {field: value}, why)). Each is run, resumed and reported like a
# method's row, under its own name.
VARIANTS = {
    "swav_eps0.01_noqueue": (
        "swav", {"swav.sinkhorn_epsilon": 0.01, "swav.queue_length": 0},
        "the two departures of SwAV's demo that are not about grey digits (configs/swav.py): the paper's "
        "recipe ends at loss log 3000 (uniform predictions) at this scale, as the demo did with it"),
    "carl_lr1_wd1e-5": (
        "carl", {"optimizer.base_lr": 1.0, "optimizer.weight_decay": 1e-5},
        "the two departures of CARL's demo (configs/carl.py) that are not about grey digits: LARS LR 1.0 "
        "instead of 0.6, weight decay 1e-5 instead of 5e-4; the paper-style row's loss stayed near log 100 "
        "(uniform assignments) for ~250 steps and its kNN ended 1.9 points and its linear probe 0.3 over "
        "random init"),
    "carp_lambda_end1.5": (
        "carp", {"carp.entropy_weight_end": 1.5, "carp.entropy_decay_epochs": 2.5},
        "the departure of CARP's demo (configs/carp.py): λ_e decayed to CARL's 1.5 over half the run, not "
        "to 0.15; at 0.15 (reached here at step 146) the row's batch marginals left uniform (KL 7.8-9.1) "
        "and its kNN ended at random init"),
}
TRAIN_EXAMPLES = 50_000  # CIFAR-10 train split


STAGED = {"fussl": "benchmarks/fussl_cifar10.py", "sslpp": "benchmarks/sslpp_cifar10.py"}
# The staged protocols' rows, read from their comparison's committed results (their runners train
# them, STAGED) once those exist: the main arm at seed 0. Row name: (the result dirs under
# benchmarks/, the first holding the row's network, every one a training stage of it; the row's
# epochs; what they are). Their train time is every stage's.
STAGED_ROWS = {
    "fussl (simclr)": (("fussl_cifar10/results/seed0/fuzzy",), 6,
                       "FUSSL with fuzzy labels: 4 epochs of 3 SimCLR blocks (phase 1), 2 of phase 2 "
                       "(fussl_cifar10.E1 + E2)"),
    "sslpp (rotnet, iic labels)": (("sslpp_cifar10/results/seed0/iic", "sslpp_cifar10/results/seed0/stage_a_iic"), 6,
                                   "RotNet + SSL++'s semantic head at λ 0.05 on a NIN x0.25: 6 epochs of stage C "
                                   "(sslpp_cifar10.C_EPOCHS) after 3 of the IIC clusterer"),
}


def methods() -> tuple[list[str], dict[str, str]]:
    """(the rows: every configs/<name>.py whose PRESETS has 'cifar10' and whose run is one
    training, i.e. each method of ssl_jax.methods.METHODS and each wrapped one such as
    dssl_byol; {every other method or config: why it has no row})."""
    import importlib.util

    from ssl_jax.methods import METHODS

    rows, skipped = [], {}
    for name in sorted(METHODS):
        if not os.path.exists(os.path.join(ROOT, "configs", f"{name}.py")):
            skipped[name] = f"no configs/{name}.py, so no cifar10 preset to derive the row from"
    for file in sorted(os.listdir(os.path.join(ROOT, "configs"))):
        name, ext = os.path.splitext(file)
        if ext != ".py" or name.startswith("_"):
            continue
        spec = importlib.util.spec_from_file_location(f"configs_{name}", os.path.join(ROOT, "configs", file))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        presets_ = getattr(module, "PRESETS", ())
        method = module.get_config("cifar10").method if "cifar10" in presets_ else None
        if method in STAGED:
            skipped[name] = (f"a staged protocol over other methods, not one training run: its CIFAR-10 "
                             f"comparison is {STAGED[method]}")
        elif method is not None:
            rows.append(name)
        elif name in METHODS:
            skipped[name] = f"configs/{name}.py has no cifar10 preset"
    return rows, skipped


def log_every(steps_per_epoch: int, most: int = 50) -> int:
    """The largest divisor of an epoch's steps that is at most `most` (at least 10 steps), else
    the epoch itself: the per-epoch kNN must fall on a log step."""
    best = max(d for d in range(1, most + 1) if steps_per_epoch % d == 0)
    return best if best >= 10 else steps_per_epoch


def _get(c, dotted):
    node = c
    for part in dotted.split("."):
        if part not in node:
            return None
        node = node[part]
    return node


def _set(c, dotted, value):
    *parents, leaf = dotted.split(".")
    node = c
    for part in parents:
        node = node[part]
    node[leaf] = value


SMOKE_SUBSET = (1024, 500)  # --smoke: training and test images


class Changes:
    """Sets dotted fields of a config, recording (field, old value, new value, reason) of each
    real change in .list: how every benchmark derives its CPU-scale runs from the presets."""

    def __init__(self, config):
        self.config, self.list = config, []

    def __call__(self, field, value, reason):
        old = _get(self.config, field)
        if hasattr(old, "to_dict"):
            old = old.to_dict()
        if old != value:
            self.list.append((field, old, value, reason))
        _set(self.config, field, value)


def evaluation_changes(change, prefix: str, steps_per_epoch: int, seed: int) -> None:
    """The rows' shared logging and evaluation of the run at `prefix` (a config section, '' for
    the top level): log and checkpoint on a divisor of the epoch, kNN (KNN_K, KNN_T) every epoch,
    the cached linear probe, no per-run random-init baseline (once per backbone), `seed`."""
    every = log_every(steps_per_epoch)
    change(prefix + "log_every_steps", every, "a divisor of the epoch, so the per-epoch kNN falls on a log step")
    change(prefix + "eval.every_steps", steps_per_epoch, "kNN every epoch, for the kNN-vs-epoch plot")
    change(prefix + "checkpoint.every_steps", every, "a checkpoint every log step: a stopped run loses little")
    change(prefix + "eval.knn_k", KNN_K, "solo-learn's kNN setting")
    change(prefix + "eval.knn_temperature", KNN_T, "solo-learn's kNN setting")
    change(prefix + "eval.linear_probe", True, "the cached-feature linear probe for every row")
    change(prefix + "eval.compare_random_init", False, "the random-init baseline is computed once per backbone")
    change(prefix + "seed", int(seed), "the row's seed")


def derive(config, *, epochs: int = EPOCHS, width: float = WIDTH, data_dir: str = DEFAULT_DATA_DIR,
           subset: tuple[int, int] | None = None):
    """(the benchmark config, [(field, preset value, new value, reason)]) of a method's
    `cifar10` preset: the changes of the module docstring, nothing else. `subset` (n_train,
    n_test): the first images of each split only (--smoke, a check of the whole path)."""
    import ml_collections

    c = ml_collections.ConfigDict(config.to_dict())
    change = Changes(c)

    if c.data.dataset != "cifar10" or c.num_steps > 0:
        raise ValueError(f"{c.method}: its cifar10 preset is not an epoch-based CIFAR-10 run "
                         f"(dataset {c.data.dataset}, num_steps {c.num_steps}); fix the preset.")
    preset_epochs = float(c.num_epochs)
    factor = epochs / preset_epochs
    for field in FEATURE_DIM_FIELDS:
        if _get(c, field) is not None:
            change(field, max(1, round(_get(c, field) * width / float(c.model.width))),
                   f"a feature dimension, scaled by the width {width:g} / {c.model.width:g} as the features are")
    for field, value in (("model.name", BACKBONE), ("model.width", float(width)), ("model.cifar_stem", True),
                         ("model.sobel", False), ("model.dtype", "float32")):
        change(field, value, "one backbone for every row, narrow enough for a CPU epoch")
    change("num_epochs", int(epochs), "one CPU-scale budget for every row")
    change("data.data_dir", data_dir, "the offline TFDS copy")
    for field in SCALED_FIELDS:
        old = _get(c, field)
        if old is None:
            continue
        cap = WARMUP_FRACTION * epochs
        if field == "optimizer.warmup_epochs":
            change(field, min(float(old), cap), f"the preset's warm-up capped at {WARMUP_FRACTION:.0%} of the run")
        elif field == "optimizer.freeze_epochs":
            old = old.to_dict() if hasattr(old, "to_dict") else dict(old)
            new = {k: min(float(v), cap) for k, v in old.items()}
            if new != old:
                change(field, new, f"start-of-training freeze capped at {WARMUP_FRACTION:.0%} of the run, "
                                   "as the warm-up")
        elif isinstance(old, (tuple, list)):
            change(field, tuple(round(float(v) * factor, 6) for v in old),
                   f"schedule position scaled by {epochs}/{preset_epochs:g} epochs")
        else:
            change(field, round(float(old) * factor, 6),
                   f"schedule position scaled by {epochs}/{preset_epochs:g} epochs")
    train_examples = TRAIN_EXAMPLES
    if subset:
        train_examples = subset[0]
        for field, split in (("data.train_split", f"train[:{subset[0]}]"),
                             ("data.eval_train_split", f"train[:{subset[0]}]"),
                             ("data.test_split", f"test[:{subset[1]}]")):
            change(field, split, "--smoke: a check of the whole path on a few images")
    evaluation_changes(change, "", train_examples // int(c.global_batch_size), SEED)
    return c, change.list


def benchmark_config(row: str, **kwargs):
    """(config, changes) of a row: a method's name, or a name in VARIANTS (its method's row with
    the variant's fields changed too)."""
    from ssl_jax import presets

    method, fields, why = VARIANTS.get(row, (row, {}, ""))
    config, changes = derive(presets.method_config(os.path.join(ROOT, "configs"), method, "cifar10"), **kwargs)
    for field, value in fields.items():
        changes.append((field, _get(config, field), value, why))
        _set(config, field, value)
    return config, changes


def backbone_name(config) -> str:
    from ssl_jax import results as results_lib

    return results_lib.run_fields(config, 0, None)["backbone"]


def plan_text(names: list[str], skipped: dict[str, str] | None = None, **kwargs) -> str:
    """The plan every row follows, and each method's changes to its preset."""
    lines = [f"CIFAR-10 at CPU scale: {BACKBONE} x{kwargs.get('width', WIDTH):g} (CIFAR stem), "
             f"{kwargs.get('epochs', EPOCHS)} epochs for every method, kNN k={KNN_K} T={KNN_T:g} every epoch, "
             f"linear probe and random-init baseline at the end.",
             f"Workdirs: {os.path.relpath(RUNS_DIR, ROOT)}/<method> (resumed by rerunning); summaries: "
             f"{os.path.relpath(RESULTS_DIR, ROOT)}/<method>.",
             "One row:  nice -n 5 python benchmarks/cifar10_cpu.py --method=<method>",
             "All rows: nice -n 5 python benchmarks/cifar10_cpu.py --method=all   (skips finished rows)",
             "Table:    python benchmarks/cifar10_cpu.py --report", ""]
    for name in names:
        config, changes = benchmark_config(name, **kwargs)
        spe = (kwargs.get("subset") or (TRAIN_EXAMPLES,))[0] // config.global_batch_size
        done = "done" if os.path.exists(os.path.join(RESULTS_DIR, name, "results.json")) else "to run"
        lines.append(f"{name} [{done}]: batch {config.global_batch_size}, {spe} steps/epoch, "
                     f"{config.optimizer.name} base_lr {config.optimizer.base_lr:g}")
        for field, old, new, _ in changes:
            if field not in ("data.data_dir",):
                lines.append(f"    {field}: {old!r} -> {new!r}")
    for name, why in (skipped or {}).items():
        lines.append(f"{name} [no row]: {why}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- machine

def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def start_segment(workdir: str) -> dict:
    """Append this segment's start (time, 1-minute load) to WORKDIR/machine.json; returns it."""
    path = os.path.join(workdir, "machine.json")
    machine = {"cpu_model": cpu_model(), "cores": os.cpu_count(), "segments": []}
    if os.path.exists(path):
        with open(path) as f:
            machine["segments"] = json.load(f).get("segments", [])
    machine["segments"].append({"start": _now(), "load1_start": load1()})
    _write_json(path, machine)
    return machine


def end_segment(workdir: str, machine: dict) -> None:
    machine["segments"][-1].update(end=_now(), load1_end=load1())
    _write_json(os.path.join(workdir, "machine.json"), machine)


def _write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- runs

def eval_fingerprint(config) -> str:
    """A hash of what the random-init evaluation depends on: the encoder, the seed, the data's
    preprocessing (mean / std: RotNet's CIFAR statistics are not the others' ImageNet ones) and
    the protocols' settings; not the training views or the data's location. Rows share a
    baseline only where it is equal (it was once keyed by the backbone alone, and the rows run
    after RotNet's got a baseline under RotNet's normalisation)."""
    import hashlib

    from ssl_jax.evaluate import in_training

    data = config.data.to_dict()
    data.pop("views", None)
    data.pop("data_dir", None)
    key = json.dumps({"model": config.model.to_dict(), "data": data, "seed": config.seed,
                      "eval": in_training.eval_config(config).to_dict()}, sort_keys=True, default=str)
    return hashlib.sha1(key.encode()).hexdigest()[:8]


def baseline_dir(config, suffix: str = "") -> str:
    """The cache of config's random-init baseline (suffix: another evaluation of the same network,
    e.g. sslpp_cifar10's layer probes): one per backbone and evaluation setting."""
    return os.path.join(RUNS_DIR, f"random_init_{backbone_name(config)}_{eval_fingerprint(config)}{suffix}")


def random_init_records(config, log) -> list[dict]:
    """kNN and linear-probe records of config's encoder at random initialisation (seed
    config.seed), computed once per backbone and evaluation (eval_fingerprint) into
    runs/random_init_<backbone>_<fingerprint>/results.json."""
    from ssl_jax import results as results_lib

    workdir = baseline_dir(config)
    records = results_lib.read_records(workdir)
    if records:
        return records
    import ml_collections
    from ssl_jax import parallel, pretrained as pretrained_lib
    from ssl_jax.data import sources
    from ssl_jax.evaluate import in_training, run as run_lib
    from ssl_jax.models import build_encoder

    t0 = time.perf_counter()
    pre = pretrained_lib.of_run(config, build_encoder(config.model), {}, network="random_init", step=0, epochs=0.0)
    pre = pretrained_lib.random_init(pre, int(config.seed))
    data = ml_collections.ConfigDict(config.data.to_dict())
    data.train_split = config.data.eval_train_split
    mesh = parallel.mesh_from_config(config.mesh)
    info = sources.dataset_info(data.dataset, data.train_split, data.data_dir)
    ctx = run_lib.Context(in_training.eval_config(config), pre, data, mesh, info["num_classes"], workdir=None,
                          log=log)
    log(f"Random-init baseline of {backbone_name(config)} (kNN, linear probe), once for every row.")
    records = run_lib.timed_records(ctx, [run_lib.protocol_knn, run_lib.protocol_linear_cached])
    os.makedirs(workdir, exist_ok=True)
    results_lib.write_records(workdir, records)
    log(f"Random-init baseline in {time.perf_counter() - t0:.0f} s: " + ", ".join(
        f"{r['protocol']} {r['metric']} {r['value']:.4f}" for r in records if r["metric"] == "top1"))
    return records


def stamped(baseline: list[dict], trained: list[dict]) -> list[dict]:
    """The baseline records under the trained run's method, step and epochs (the run they are the
    baseline of), as eval.compare_random_init stamps them."""
    ref = next(r for r in trained if r["network"] != "random_init")
    fields = {k: ref[k] for k in ("method", "dataset", "backbone", "epochs", "step")}
    return [dict(r, **fields) for r in baseline]


def write_row(run_dir: str, records: list[dict], baseline: list[dict], name: str | None = None) -> None:
    """Replace run_dir/results.json with a row's records: the trained network's (renamed `name`
    if given: a variant's records carry its base method's name, and the table names a row by its
    records' method) and the random-init baseline stamped with them (any earlier one dropped)."""
    from ssl_jax import results as results_lib

    trained = [dict(r, method=name or r["method"]) for r in records if r["network"] != "random_init"]
    if os.path.exists(results_lib.path_of(run_dir)):
        os.remove(results_lib.path_of(run_dir))  # a merge would keep records under the old name
    results_lib.write_records(run_dir, trained + stamped(baseline, trained))


def run_one(method: str, data_dir: str, epochs: int, width: float, subset=None) -> None:
    """Train (or resume) one row, evaluate it, add the baseline, copy its summary to results/."""
    from ssl_jax import cli, xla_flags

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    xla_flags.set_cpu_defaults()  # before JAX starts, as the commands do
    cli.quiet_library_logs()
    with cli.user_errors("cifar10_cpu"):  # one-line errors; SIGTERM: checkpoint, exit 75, rerun resumes
        _run_one(method, data_dir, epochs, width, subset)


def _run_one(method, data_dir, epochs, width, subset) -> None:
    from ssl_jax import results as results_lib
    from ssl_jax.evaluate import in_training
    from ssl_jax.train.logging import console

    config, _ = benchmark_config(method, epochs=epochs, width=width, data_dir=data_dir, subset=subset)
    baseline = random_init_records(config, console)
    workdir = os.path.join(RUNS_DIR, method)
    os.makedirs(workdir, exist_ok=True)
    machine = start_segment(workdir)
    console(f"{method}: {config.num_epochs} epochs of {backbone_name(config)} in {workdir} "
            f"(load {machine['segments'][-1]['load1_start']} on {machine['cores']} cores)")
    try:
        in_training.pretrain_and_evaluate(config, workdir)  # its records go to workdir/results.json
    finally:
        end_segment(workdir, machine)
    write_row(workdir, results_lib.read_records(workdir), baseline, name=method if method in VARIANTS else None)
    out = os.path.join(RESULTS_DIR, method)
    os.makedirs(out, exist_ok=True)
    for name in SUMMARY_FILES:
        shutil.copy2(os.path.join(workdir, name), os.path.join(out, name))
    console(f"{method}: summary in {os.path.relpath(out, ROOT)}")


def measure(method: str, width: float, data_dir: str, steps: int = 30, first: int = 10) -> dict:
    """Training throughput of `method`'s benchmark config at `width` (measure_config)."""
    config, _ = benchmark_config(method, width=width, data_dir=data_dir)
    config.optimizer.warmup_epochs = 0.0
    return dict(measure_config(config, TRAIN_EXAMPLES, steps, first), method=method, width=width)


def measure_config(config, train_examples: int, steps: int = 30, first: int = 10) -> dict:
    """Training throughput of one training run's config (data pipeline included, no
    evaluation): images/s of wall time and images per CPU-second of this process (every
    thread: XLA's and tf.data's) between step `first` and step `steps`, and the minutes of an
    epoch of `train_examples` at each. On a shared machine the wall rate falls with the load;
    2 x the CPU rate is the rate of 2 idle cores if both were fully used, an upper bound."""
    import tempfile

    from ssl_jax.train import loop

    config.num_steps, config.log_every_steps = steps, first
    config.eval.every_steps, config.checkpoint.every_steps = 0, 10 * steps
    marks = {}
    evaluator = loop.Evaluator(during=lambda run, state, step: marks.setdefault(
        step, (time.perf_counter(), time.process_time(), load1())) and {}, after=lambda run, state: [])
    with tempfile.TemporaryDirectory() as workdir:
        loop.run(config, workdir, evaluator=evaluator)
    (w0, c0, l0), (w1, c1, l1) = marks[first], marks[steps]
    images = (steps - first) * config.global_batch_size
    return {"batch": config.global_batch_size, "images": images,
            "img_per_s_wall": round(images / (w1 - w0), 1), "img_per_cpu_s": round(images / (c1 - c0), 1),
            "epoch_minutes_wall": round(train_examples / (images / (w1 - w0)) / 60, 2),
            "epoch_minutes_2_idle_cores": round(train_examples / (2 * images / (c1 - c0)) / 60, 2),
            "load1": [l0, l1]}


def run_all(names, args) -> int:
    """Each row in its own process, one at a time; rows already in results/ skipped unless --rerun."""
    jobs = []
    for name in names:
        if os.path.exists(os.path.join(RESULTS_DIR, name, "results.json")) and not args.rerun:
            print(f"{name}: done (results/{name}); --rerun to train it again", flush=True)
            continue
        jobs.append((name, [sys.executable, os.path.abspath(__file__), f"--method={name}", f"--epochs={args.epochs}",
                            f"--width={args.width}", f"--data_dir={args.data_dir}"]
                     + ([f"--smoke={args.smoke}"] if args.smoke else [])))
    return run_queue(jobs)


def run_queue(jobs, stop_on_failure: bool = False) -> int:
    """Run [(name, command)] one at a time, each in its own process (one failing does not stop the
    others unless `stop_on_failure`); a preempted / SIGTERM-ed one stops the queue. 1 if any failed."""
    failed = []
    for name, cmd in jobs:
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        code = subprocess.call(cmd)
        if code:
            print(f"{name}: exit code {code}", flush=True)
            failed.append(name)
            if stop_on_failure or code in (75, -15, 143):  # preempted / SIGTERM: stop the whole queue
                break
    if failed:
        print(f"failed or stopped: {', '.join(failed)}; rerun to resume", flush=True)
    return 1 if failed else 0


def staged_row(name: str):
    """(records, machine) of a STAGED_ROWS row, or None before its runner has written them: the
    main arm's records under the row's name and epochs, with the train time of every stage
    (FUSSL's summary.json has it; otherwise the sum of the dirs' train_seconds)."""
    from ssl_jax import report as report_lib, results as results_lib

    dirs, epochs, _ = STAGED_ROWS[name]
    paths = [os.path.join(ROOT, "benchmarks", d) for d in dirs]
    if not all(os.path.exists(results_lib.path_of(p)) for p in paths):
        return None
    summary_path = os.path.join(paths[0], "summary.json")
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
        seconds, machine = summary["train_seconds"], summary["machine"]
    else:
        seconds = sum(report_lib.pick_value(results_lib.read_records(p), "pretrain", "train_seconds", False) or 0
                      for p in paths)
        machine = report_lib.read_machine(paths[0])
    records = []
    for r in results_lib.read_records(paths[0]):
        r = dict(r, method=name, epochs=epochs)
        if (r["protocol"], r["metric"], r["network"]) == ("pretrain", "train_seconds", "online"):
            r["value"] = seconds
        records.append(r)
    return records, machine


def report() -> None:
    """results.md (ssl_jax.report's summary table) and knn_epoch.png from the rows in results/."""
    from ssl_jax import report as report_lib

    dirs = sorted(os.path.join(RESULTS_DIR, d) for d in (os.listdir(RESULTS_DIR) if os.path.isdir(RESULTS_DIR)
                                                          else []) if os.path.isdir(os.path.join(RESULTS_DIR, d)))
    if not dirs:
        sys.exit(f"no finished rows in {RESULTS_DIR}: run python benchmarks/cifar10_cpu.py --method=<method> first")
    records, metrics, labels = report_lib.load_runs(dirs)
    machines = {name: report_lib.read_machine(d) for name, d in zip(report_lib.run_names(dirs), dirs)}
    for name in STAGED_ROWS:
        row = staged_row(name)
        if row is not None:
            records[name], machines[name] = row
    text = report_lib.summary_table(records, machines, knn_setting=f"k={KNN_K},T={KNN_T:g}")
    with open(os.path.join(BENCH_DIR, "results.md"), "w") as f:
        f.write(text)
    print(text, end="")
    fig = report_lib.knn_epoch_figure(metrics, records, labels)
    if fig is not None:
        path = os.path.join(BENCH_DIR, "knn_epoch.png")
        fig.savefig(path, dpi=110)
        print(f"wrote {os.path.relpath(path, ROOT)}", file=sys.stderr)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", help="a method name, or 'all'")
    parser.add_argument("--plan", action="store_true", help="print the plan and every change per method "
                        "(with --method, that method's), and train nothing")
    parser.add_argument("--report", action="store_true", help="write results.md and knn_epoch.png")
    parser.add_argument("--measure", default="", help="comma-separated widths: training throughput of "
                        "--method (default byol) at each, one JSON line per width")
    parser.add_argument("--rerun", action="store_true", help="with --method=all: also rows already done")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--width", type=float, default=WIDTH)
    parser.add_argument("--data_dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--smoke", default="", help="a directory: run the whole path there on the first "
                        f"{SMOKE_SUBSET[0]} training and {SMOKE_SUBSET[1]} test images (a check, not a row)")
    args = parser.parse_args(argv)
    if args.measure:
        from ssl_jax import xla_flags

        xla_flags.set_cpu_defaults()
        for width in args.measure.split(","):
            print(json.dumps(measure(args.method or "byol", float(width), args.data_dir)), flush=True)
        return 0
    if not (args.method or args.plan or args.report):
        parser.error("pass --plan, --method=<method>|all, --report or --measure=WIDTHS")
    global BENCH_DIR, RUNS_DIR, RESULTS_DIR
    if args.smoke:
        BENCH_DIR = os.path.abspath(args.smoke)
        RUNS_DIR, RESULTS_DIR = os.path.join(BENCH_DIR, "runs"), os.path.join(BENCH_DIR, "results")
    names, skipped = methods()
    names += sorted(VARIANTS)
    if args.method and args.method != "all" and args.method not in names:
        why = f" ({skipped[args.method]})" if args.method in skipped else ""
        parser.error(f"no CIFAR-10 row for method {args.method!r}{why}; valid: all, {', '.join(names)}")
    kwargs = dict(epochs=args.epochs, width=args.width, data_dir=args.data_dir,
                  subset=SMOKE_SUBSET if args.smoke else None)
    if args.plan or args.method == "all":
        every = args.method in (None, "all")
        print(plan_text(names if every else [args.method], skipped if every else None, **kwargs), flush=True)
    if args.plan:  # a plan only: trains nothing, whatever else is passed (with --method, its plan)
        return 0
    code = 0
    if args.method == "all":
        code = run_all(names, args)
    elif args.method:
        run_one(args.method, **kwargs)
    if args.report:
        report()
    return code


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    sys.exit(main())
