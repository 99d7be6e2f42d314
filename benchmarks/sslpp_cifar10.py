"""SSL++ on CIFAR-10 at CPU scale (issue 20, seed 002): rotation alone and rotation + SSL++, per-block
kNN and NIN-block probes, the label-scheme ablation, and IIC's clustering accuracy on MNIST and CIFAR-10.

Commands (from the repository root; data: TFDS cifar10 and mnist in ../shared/tfds, or --data_dir):

    python benchmarks/sslpp_cifar10.py --plan                   # every entry, its recipe and changes
    python benchmarks/sslpp_cifar10.py --arm=iic --seed=0       # one entry (resumes its workdir)
    python benchmarks/sslpp_cifar10.py --all                    # every entry not yet done, seed-major
    python benchmarks/sslpp_cifar10.py --report                 # benchmarks/sslpp_cifar10/results.md
    python benchmarks/sslpp_cifar10.py --measure                # a few training steps' throughput
    python benchmarks/sslpp_cifar10.py --all --seeds=0 --smoke=/tmp/sslpp_smoke   # the whole path, 1k images

Entries (ENTRIES), each an ordinary resumable workdir benchmarks/sslpp_cifar10/runs/seed<S>/<entry>
(not committed), trained by `python -m ssl_jax.main`'s own code (ssl_jax.stages for SSL++):

* stage_a_iic  the IIC clusterer of SSL++'s stage A (configs/sslpp.py:cifar10's stage_a =
               configs/iic.py:sslpp, at the CPU scale below), trained once per seed; its clustering
               accuracy on the test split (the clustering protocol, configs/eval/clustering.py with
               assign 'auto': Hungarian accuracy of the main head's best sub-head, NMI, ARI) is
               IIC's CIFAR-10 number at this budget.
* iic_mnist    IIC on MNIST (configs/iic.py:mnist at the CPU scale below) and its clustering
               accuracy (the IIC paper: 99.2 %).
* proxy_only   rotation alone (configs/sslpp.py:cifar10_proxy_only: stage C without V₂).
* iic          rotation + SSL++ on IIC labels at the paper's λ = 0.05 (configs/sslpp.py:cifar10), its
               stage A the seed's stage_a_iic (config.stage_a_workdir): the paper's method.
* gt, random, kmeans   the label schemes of Table IX at the paper's λ (cifar10_gt, cifar10_random,
               cifar10_kmeans; no stage A).
* iic_lambda1  the iic arm at λ = 1. Why: configs/sslpp.py's demo measured that at λ = 0.05 V₂
               barely trains in a short run (pseudo-label agreement 0.21 after 176 steps; λ also
               scales V₂'s own gradient), and B4 then still falls below B3; at λ = 1 it reached 0.63
               and B4 rose. Stage C here is also short (a few epochs), so the paper's λ may show no
               effect for want of training, not of the method; this arm tells the two apart.

After stage C every SSL++ entry is evaluated by (1) stage C's own end of training: kNN (k=200, T=0.1,
solo-learn's setting, as benchmarks/cifar10_cpu.py) every epoch into metrics.jsonl and at the end,
with the cached-feature linear probe; (2) configs/eval/layer_probe.py:nin at CPU scale: per NIN
block B1-B4 plurality-vote kNN for the paper's K in {1, 3, 5, 10, 15, 20} (Tables V, VI), weighted
kNN (k=20, T=0.07) and a linear probe per block, and the NIN-block probes on B2, B3, B4 (Table
III). The random-init baseline (the same NIN, initialised with the seed of the first arm
evaluated: seed 0 in --all's seed-major order) is evaluated once by both
(runs/random_init_<backbone>_<fingerprint>/ and its _layers/, cifar10_cpu.baseline_dir) and stamped into every
arm's results.json, as cifar10_cpu.py does.

A finished entry's summary (results.json, metrics.jsonl, config.json, machine.json; an arm's
config.json is its stage C's, and sslpp_config.json its whole SSL++ config) is copied to
benchmarks/sslpp_cifar10/results/seed<S>/<entry>/ (committed); `--report` builds results.md from
those copies: the per-block table mean ± std over seeds, the paper's qualitative claims checked on
the means, the label-scheme ordering, IIC's clustering accuracy, the budget and the machine.

CPU-scale recipe (`derive_sslpp`, `derive_iic`; `--plan` prints every change per entry): the
presets are the paper's, with these changes and nothing else.

* Stage C backbone: RotNet's 4-block NIN at width NIN_WIDTH = 0.25 (48-channel blocks, B2-B4
  48x8x8, 48-d pooled features) instead of 1 (192). Float32 as the preset.
* Stage C epochs: C_EPOCHS = 6 instead of 200, the step-decay milestones (60, 120, 160) scaled by
  6/200 to (1.8, 3.6, 4.8): the schedule keeps its shape. Batch (128 images x 4 rotations), SGD
  0.1, Nesterov, weight decay, augmentation: the preset's.
* Stage A (the IIC clusterer, and IIC on MNIST): configs/iic.py's ResNet-34 (Sobel) / ResNet-18
  at width 1 become ResNet-18 (CIFAR stem) at width IIC_WIDTH = 0.125 (Sobel kept on CIFAR-10,
  SSL++'s S), float32; A_PASSES = 9 passes (3 of IIC's epochs: the head schedule A, B, B three
  times; MNIST's B, B, A) instead of 6000 (MNIST: 9600); and two changes from configs/iic.py:demo,
  measured there on this same width-1/8 ResNet-18: heads initialised with std 1 instead of 0.01 (the narrow network's
  features vary by ~0.03 across images, so 0.01-std heads give near-uniform outputs and no
  gradient signal), and Adam LR 4e-3 instead of 1e-4 (a short run: after 132 demo steps 1e-3
  reached 33 % and 4e-3 51 % accuracy). Batch (220 images x 4 views; MNIST 140 x 6), the heads
  (70 / 10 clusters; MNIST 50 / 10), 5 sub-heads and the augmentations: the presets'.
* Layer probes: configs/eval/layer_probe.py:nin with its NIN-block probes trained PROBE_EPOCHS
  = 6 epochs instead of 200, the decay milestones (100, 150) scaled to (3, 4.5).
* Evaluation of stage C: kNN k=200, T=0.1 every epoch and at the end, the cached linear probe,
  log / checkpoint every largest divisor of an epoch <= 50 steps (cifar10_cpu.log_every); the
  random-init baseline once (above), not each run's compare_random_init.
* Seeds: every seed of the preset (training, stage B's random / k-means labels) set to S.

Throughput (`--measure`: steps 5-15 of training, data pipeline included, no evaluation; measured
2026-12-07 on 2 cores of an AMD EPYC shared with another benchmark, 1-minute load 4.3-5.9, the
measuring process included):
  stage C, NIN x0.25, 128 images x 4 rotations: 123.8 img/s wall, 126.5 images per CPU-second:
    6.7 min per epoch at that load, 3.3 min on 2 idle cores (both fully used: a lower bound);
    6 epochs = 20 min (idle) to 40 min (that load).
  stage A, IIC ResNet-18 x0.125 + Sobel, 220 images x 4 views: 158.5 img/s wall, 171.3 per
    CPU-second: 5.3 min per pass at that load, 2.4 idle; 9 passes = 22 min (idle) to 47 min.
  IIC on MNIST, ResNet-18 x0.125, 140 images x 6 views at 24 px: 186.3 img/s wall, 201.7 per
    CPU-second: 5.4 min per pass at that load, 2.5 idle; 9 passes = 22 to 48 min.
  Why these widths / epochs: each training stage at ~20 min on 2 idle cores, under an hour even at
  the load measured; the evaluation of an arm (per-epoch kNN, 3 NIN-block probes of 6 epochs) comes
  on top (smoke below; not measured at full size). Width 0.5 was not measured: with ~4x the
  convolutions' FLOPs it would leave a few epochs in that budget (cifar10_cpu.py saw 1.7x, not 4x,
  per halving of a ResNet's width).

Smoke (`--smoke=DIR`): every entry on the first 1024 training and 500 test images (MNIST too), 1
epoch of stage C, 3 IIC passes and 1-epoch probes, in DIR: a check of the whole path, not a result.
Measured (2026-12-07, `--all --seeds=0 --smoke=DIR`, the same shared AMD EPYC, load 5.1-6.9): all 8
entries finished (exit 0) in 9 min 45 s wall, 6 min 41 s of user CPU; the numbers are chance-level
(8 training steps), as they should be.

machine.json of an entry: the CPU model, the cores, and per segment of the run its start / end time
and 1-minute load (cifar10_cpu.start_segment / end_segment): a load above the core count inflates
the wall time.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(ROOT, "benchmarks", "sslpp_cifar10")
RUNS_DIR = os.path.join(BENCH_DIR, "runs")  # workdirs: gitignored
RESULTS_DIR = os.path.join(BENCH_DIR, "results")  # committed summaries
DEFAULT_DATA_DIR = os.path.join(os.path.dirname(ROOT), "shared", "tfds")


def _load_cpu_benchmark():
    """benchmarks/cifar10_cpu.py as a module (its helpers: machine.json segments, log_every,
    _get / _set, the random-init baseline)."""
    spec = importlib.util.spec_from_file_location("cifar10_cpu", os.path.join(ROOT, "benchmarks", "cifar10_cpu.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cpu = _load_cpu_benchmark()

NIN_WIDTH = 0.25
C_EPOCHS = 6
IIC_WIDTH = 0.125
A_PASSES = 9
IIC_HEAD_STD = 1.0
IIC_LR = 4e-3
PROBE_EPOCHS = 6
SEEDS = (0, 1, 2)
KNN_K, KNN_T = cpu.KNN_K, cpu.KNN_T
SMOKE_SUBSET = cpu.SMOKE_SUBSET  # (training, test) images of --smoke
SMOKE_EPOCHS = dict(c_epochs=1, a_passes=3, probe_epochs=1)
SUMMARY_FILES = cpu.SUMMARY_FILES + ("sslpp_config.json",)  # an arm's config.json is stage C's
SSLPP_CONFIG = "sslpp_config.json"  # the arm's whole SSL++ config (stages A, B, C)
TRAIN_EXAMPLES = {"cifar10": 50_000, "mnist": 60_000}

# SSL++ arms: (configs/sslpp.py preset, {field: value}, why). Stage A of an arm whose labels come
# from IIC is the seed's shared stage_a_iic entry.
ARMS = {
    "proxy_only": ("cifar10_proxy_only", {}, "rotation alone (no V₂)"),
    "iic": ("cifar10", {}, "rotation + SSL++ on IIC labels, the paper's λ = 0.05"),
    "gt": ("cifar10_gt", {}, "the dataset's labels (Table IX)"),
    "random": ("cifar10_random", {}, "seeded uniform labels over C = 70 (Table IX)"),
    "kmeans": ("cifar10_kmeans", {}, "PCA + k-means on the pixels, K = 70 (Table IX)"),
    "iic_lambda1": ("cifar10", {"stage_c.sslpp.weight": 1.0},
                    "λ = 1: at the demo's scale λ = 0.05 barely trains V₂ (configs/sslpp.py); does a "
                    "short stage C need a larger λ to show SSL++'s effect?"),
}
# IIC entries: (configs/iic.py preset, what).
CLUSTERERS = {"stage_a_iic": ("sslpp", "SSL++'s stage A clusterer on CIFAR-10 (shared by the IIC arms)"),
              "iic_mnist": ("mnist", "IIC on MNIST (the IIC paper: 99.2 %)")}
ENTRIES = ("stage_a_iic",) + tuple(ARMS) + ("iic_mnist",)  # a seed's order (stage A first)
LABEL_SCHEMES = ("gt", "iic", "kmeans", "random")  # the paper's ordering, best first
BLOCKS = (1, 2, 3, 4)
PROBE_BLOCKS = (2, 3, 4)
PLURALITY_KS = (1, 3, 5, 10, 15, 20)
REPORT_K = 10  # the paper's Table V K


def seed_dir(root: str, seed: int) -> str:
    return os.path.join(root, f"seed{int(seed)}")


def entry_dir(entry: str, seed: int, root: str | None = None) -> str:
    return os.path.join(seed_dir(root or RUNS_DIR, seed), entry)


# ----------------------------------------------------------------------------- configs

def _scaled(values, factor) -> tuple:
    return tuple(round(float(v) * factor, 6) for v in values)


def _subset_splits(change, prefix: str, subset) -> int:
    """Smoke: the first images of each split; returns the training examples of an epoch."""
    for field, split in (("data.train_split", f"train[:{subset[0]}]"),
                         ("data.eval_train_split", f"train[:{subset[0]}]"),
                         ("data.test_split", f"test[:{subset[1]}]")):
        change(prefix + field, split, "--smoke: a check of the whole path on a few images")
    return subset[0]


def _iic_changes(change, prefix: str, c, *, passes: int, data_dir: str, seed: int, subset, sobel: bool) -> None:
    """The CPU-scale changes of an IIC config (stage A or the MNIST entry) at `prefix`."""
    why = "a CPU-scale clusterer: narrow enough for a pass in minutes on 2 cores"
    for field, value in (("model.name", "resnet18"), ("model.width", float(IIC_WIDTH)), ("model.cifar_stem", True),
                         ("model.sobel", sobel), ("model.dtype", "float32")):
        change(prefix + field, value, why)
    change(prefix + "num_epochs", int(passes), "CPU-scale budget (passes: the head schedule's, whole cycles)")
    change(prefix + "iic.head_init_std", float(IIC_HEAD_STD),
           "configs/iic.py:demo on this width-1/8 network: 0.01-std heads give no gradient signal")
    change(prefix + "optimizer.base_lr", float(IIC_LR), "configs/iic.py:demo: a short run needs a larger Adam LR")
    change(prefix + "data.data_dir", data_dir, "the offline TFDS copy")
    n = TRAIN_EXAMPLES[c.data.dataset]
    if subset:
        n = _subset_splits(change, prefix, subset)
    every = min(50, n // int(c.global_batch_size))
    change(prefix + "log_every_steps", every, "a stopped run loses at most 50 steps")
    change(prefix + "checkpoint.every_steps", every, "a checkpoint every log step")
    change(prefix + "eval.every_steps", 0, "kNN at the end only (the clusterer is scored by its heads)")
    change(prefix + "eval.compare_random_init", False, "not needed for a clusterer")
    change(prefix + "seed", int(seed), "the entry's seed")


def derive_iic(config, *, passes: int = A_PASSES, data_dir: str = DEFAULT_DATA_DIR, seed: int = 0,
               subset=None):
    """(config, changes) of an IIC preset (configs/iic.py:sslpp or :mnist) at CPU scale."""
    import ml_collections

    c = ml_collections.ConfigDict(config.to_dict())
    change = cpu.Changes(c)
    _iic_changes(change, "", c, passes=passes, data_dir=data_dir, seed=seed, subset=subset,
                 sobel=bool(c.model.sobel))
    return c, change.list


def derive_sslpp(config, *, c_epochs: int = C_EPOCHS, a_passes: int = A_PASSES, data_dir: str = DEFAULT_DATA_DIR,
                 seed: int = 0, stage_a_workdir: str = "", subset=None):
    """(config, changes) of a configs/sslpp.py preset at CPU scale (the module docstring)."""
    import ml_collections

    c = ml_collections.ConfigDict(config.to_dict())
    change = cpu.Changes(c)
    s = c.stage_c
    if s.data.dataset != "cifar10" or s.num_steps > 0 or s.model.name != "nin":
        raise ValueError("derive_sslpp: stage C of the preset is not an epoch-based NIN run on CIFAR-10.")
    change("stage_c.model.width", float(NIN_WIDTH), "a narrow NIN: a stage-C epoch in minutes on 2 cores")
    factor = c_epochs / float(s.num_epochs)
    change("stage_c.optimizer.decay_epochs", _scaled(s.optimizer.decay_epochs, factor),
           f"step-decay milestones scaled by {c_epochs}/{s.num_epochs:g}")
    change("stage_c.num_epochs", int(c_epochs), "CPU-scale budget")
    change("stage_c.data.data_dir", data_dir, "the offline TFDS copy")
    n = _subset_splits(change, "stage_c.", subset) if subset else TRAIN_EXAMPLES["cifar10"]
    spe = n // int(s.global_batch_size)
    cpu.evaluation_changes(change, "stage_c.", spe, seed)  # as every cifar10_cpu row
    if c.stage_b.source in ("random", "kmeans"):
        change("stage_b.seed", int(seed), "the entry's seed")
    if c.stage_b.source == "iic":
        # Stage A is the seed's stage_a_iic entry; the section is what that entry trains.
        _iic_changes(change, "stage_a.", c.stage_a, passes=a_passes, data_dir=data_dir, seed=seed, subset=subset,
                     sobel=bool(c.stage_a.model.sobel))
        change("stage_a_workdir", stage_a_workdir, "stage A trained once per seed (entry stage_a_iic)")
    return c, change.list


def entry_config(entry: str, seed: int = 0, *, root: str | None = None, **kwargs):
    """(config, changes) of an entry at `seed`: an arm's SSL++ config (with `kwargs` of
    derive_sslpp) or an IIC entry's config."""
    from ssl_jax import presets

    configs_dir = os.path.join(ROOT, "configs")
    a_passes = kwargs.get("a_passes", A_PASSES)
    common = {k: kwargs[k] for k in ("data_dir", "subset") if k in kwargs}
    if entry in CLUSTERERS:
        return derive_iic(presets.method_config(configs_dir, "iic", CLUSTERERS[entry][0]), passes=a_passes,
                          seed=seed, **common)
    preset, fields, why = ARMS[entry]
    base = presets.method_config(configs_dir, "sslpp", preset)
    stage_a = entry_dir("stage_a_iic", seed, root) if base.stage_b.source == "iic" else ""
    config, changes = derive_sslpp(base, c_epochs=kwargs.get("c_epochs", C_EPOCHS), a_passes=a_passes, seed=seed,
                                   stage_a_workdir=stage_a, **common)
    for field, value in fields.items():
        changes.append((field, cpu._get(config, field), value, why))
        cpu._set(config, field, value)
    return config, changes


def layer_probe_config(probe_epochs: int = PROBE_EPOCHS):
    """configs/eval/layer_probe.py:nin with its NIN-block probes at `probe_epochs` (milestones
    scaled), and its changes."""
    from ssl_jax import presets

    c = presets.method_config(os.path.join(ROOT, "configs", "eval"), "layer_probe", "nin")
    change = cpu.Changes(c)
    t = c.layer_probe.probe_train
    factor = probe_epochs / float(t.epochs)
    change("layer_probe.probe_train.optimizer.decay_epochs", _scaled(t.optimizer.decay_epochs, factor),
           f"probe milestones scaled by {probe_epochs}/{t.epochs:g}")
    change("layer_probe.probe_train.epochs", float(probe_epochs), "CPU-scale NIN-block probes")
    return c, change.list


# ----------------------------------------------------------------------------- plan

def plan_text(seeds, **kwargs) -> str:
    probe_epochs = kwargs.pop("probe_epochs", PROBE_EPOCHS)
    lines = [f"SSL++ on CIFAR-10 at CPU scale: stage C NIN x{NIN_WIDTH:g}, {kwargs.get('c_epochs', C_EPOCHS)} epochs; "
             f"IIC ResNet-18 x{IIC_WIDTH:g}, {kwargs.get('a_passes', A_PASSES)} passes; NIN-block probes "
             f"{probe_epochs} epochs; seeds {', '.join(map(str, seeds))}.",
             f"Workdirs: {os.path.relpath(RUNS_DIR, ROOT)}/seed<S>/<entry>; summaries: "
             f"{os.path.relpath(RESULTS_DIR, ROOT)}/seed<S>/<entry>.",
             "One entry: nice -n 5 python benchmarks/sslpp_cifar10.py --arm=<entry> --seed=<S>",
             "Everything: nice -n 5 python benchmarks/sslpp_cifar10.py --all   (skips finished entries)",
             "Table:      python benchmarks/sslpp_cifar10.py --report", ""]
    _, probe_changes = layer_probe_config(probe_epochs)
    lines.append("layer probes (configs/eval/layer_probe.py:nin):")
    lines += [f"    {f}: {old!r} -> {new!r}" for f, old, new, _ in probe_changes]
    for entry in ENTRIES:
        config, changes = entry_config(entry, seeds[0], **kwargs)
        what = CLUSTERERS[entry][1] if entry in CLUSTERERS else ARMS[entry][2]
        done = [s for s in seeds if is_done(entry, s)]
        lines.append(f"{entry} ({what}) [done for seeds {done}]:" if done else f"{entry} ({what}):")
        lines += [f"    {f}: {old!r} -> {new!r}" for f, old, new, _ in changes if not f.endswith("data_dir")]
    return "\n".join(lines)


def is_done(entry: str, seed: int) -> bool:
    return os.path.exists(os.path.join(entry_dir(entry, seed, RESULTS_DIR), "results.json"))


# ----------------------------------------------------------------------------- runs

def _console():
    from ssl_jax.train.logging import console
    return console


def run_entry(entry: str, seed: int, data_dir: str, scale: dict, subset=None) -> None:
    """Train (or resume) one entry, evaluate it, copy its summary to results/."""
    from ssl_jax import cli, xla_flags

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    xla_flags.set_cpu_defaults()
    cli.quiet_library_logs()
    with cli.user_errors("sslpp_cifar10"):  # one-line errors; SIGTERM: checkpoint, exit 75, rerun resumes
        if entry in CLUSTERERS:
            _run_clusterer(entry, seed, data_dir, scale, subset)
        else:
            _run_arm(entry, seed, data_dir, scale, subset)


def _shown(path: str) -> str:
    """A path relative to the repository when inside it."""
    return os.path.relpath(path, ROOT) if os.path.abspath(path).startswith(ROOT + os.sep) else path


def _segment(workdir, fn):
    os.makedirs(workdir, exist_ok=True)
    machine = cpu.start_segment(workdir)
    _console()(f"{_shown(workdir)}: load {machine['segments'][-1]['load1_start']} on "
               f"{machine['cores']} cores")
    try:
        return fn()
    finally:
        cpu.end_segment(workdir, machine)


def _copy_summary(entry, seed, src_dir, machine_dir) -> None:
    out = entry_dir(entry, seed, RESULTS_DIR)
    os.makedirs(out, exist_ok=True)
    for name in SUMMARY_FILES:
        src = os.path.join(machine_dir if name == "machine.json" else src_dir, name)
        if os.path.exists(src):
            shutil.copy2(src, os.path.join(out, name))
    _console()(f"{entry} seed {seed}: summary in {_shown(out)}")


def _has(records, protocol) -> bool:
    return any(r.get("protocol") == protocol for r in records)


def _run_clusterer(entry, seed, data_dir, scale, subset) -> None:
    """An IIC entry: train (resume), then the clustering protocol into its results.json."""
    from ssl_jax import presets, results as results_lib
    from ssl_jax.evaluate import in_training, run as run_lib

    config, _ = entry_config(entry, seed, data_dir=data_dir, subset=subset, a_passes=scale["a_passes"])
    workdir = entry_dir(entry, seed)

    def work():
        if not results_lib.read_records(workdir):
            in_training.pretrain_and_evaluate(config, workdir)
        if not _has(results_lib.read_records(workdir), "clustering"):
            ev = presets.method_config(os.path.join(ROOT, "configs", "eval"), "clustering", "kmeans")
            ev.clustering.assign = "auto"  # an IIC run: its heads' own assignments
            run_lib.run(ev, workdir)
    _segment(workdir, work)
    _copy_summary(entry, seed, workdir, workdir)


def _run_arm(entry, seed, data_dir, scale, subset) -> None:
    """An SSL++ arm: its stage A first if it needs one (the seed's stage_a_iic entry), stages B
    and C (ssl_jax.stages), the layer probes, the random-init baselines, the summary."""
    from ssl_jax import results as results_lib, stages
    from ssl_jax.evaluate import run as run_lib

    config, _ = entry_config(entry, seed, data_dir=data_dir, subset=subset, c_epochs=scale["c_epochs"],
                             a_passes=scale["a_passes"])
    if config.stage_b.source == "iic" and not is_done("stage_a_iic", seed):
        _run_clusterer("stage_a_iic", seed, data_dir, scale, subset)
    workdir = entry_dir(entry, seed)
    stage_c = os.path.join(workdir, "stage_c")
    probe_cfg, _ = layer_probe_config(scale["probe_epochs"])

    def work():
        if not results_lib.read_records(stage_c):
            stages.run(config, workdir)
        if not _has(results_lib.read_records(stage_c), "layer_probe"):
            run_lib.run(probe_cfg, stage_c)
    _segment(workdir, work)
    records = results_lib.read_records(stage_c)
    baseline = random_init_baselines(config.stage_c, stage_c, probe_cfg)
    # results.json of the summary: the arm's records and the baselines stamped with its run.
    summary = os.path.join(workdir, "summary")
    os.makedirs(summary, exist_ok=True)
    for name in ("metrics.jsonl", "config.json"):
        if os.path.exists(os.path.join(stage_c, name)):
            shutil.copy2(os.path.join(stage_c, name), os.path.join(summary, name))
    cpu.write_row(summary, records, baseline)
    cpu._write_json(os.path.join(summary, SSLPP_CONFIG), config.to_dict())
    _copy_summary(entry, seed, summary, workdir)


def random_init_baselines(stage_c_config, source: str, probe_cfg) -> list[dict]:
    """kNN / linear (cifar10_cpu.random_init_records) and layer-probe records of the stage-C NIN
    at random initialisation, each computed once into runs/ (seeded with stage_c_config.seed and
    the source run's seed, both the first evaluated arm's: ssl_jax.pretrained.load_workdir)."""
    from ssl_jax import results as results_lib
    from ssl_jax.evaluate import run as run_lib

    cpu.RUNS_DIR = RUNS_DIR  # the baseline's workdir under this benchmark's runs/
    records = list(cpu.random_init_records(stage_c_config, _console()))
    layers = cpu.baseline_dir(stage_c_config, "_layers")
    if not _has(results_lib.read_records(layers), "layer_probe"):
        import ml_collections

        cfg = ml_collections.ConfigDict(probe_cfg.to_dict())
        cfg.source, cfg.network = source, "random_init"
        run_lib.run(cfg, layers)
    return records + [r for r in results_lib.read_records(layers) if r.get("protocol") == "layer_probe"]


def measure(data_dir: str, which: str) -> None:
    from ssl_jax import xla_flags

    xla_flags.set_cpu_defaults()
    for name in which.split(","):
        if name == "stage_c":
            config = entry_config("proxy_only", data_dir=data_dir)[0].stage_c
        else:
            config = entry_config(name, data_dir=data_dir)[0]
        rates = cpu.measure_config(config, TRAIN_EXAMPLES[config.data.dataset], steps=15, first=5)
        print(json.dumps(dict(rates, entry=name, method=config.method, cpu=cpu.cpu_model(),
                              model=f"{config.model.name} x{config.model.width:g}")), flush=True)


def run_all(seeds, args) -> int:
    """Every entry of every seed (seed-major), each in its own process; finished ones skipped."""
    jobs = []
    for seed in seeds:
        for entry in ENTRIES:
            if is_done(entry, seed) and not args.rerun:
                print(f"{entry} seed {seed}: done; --rerun to run it again", flush=True)
                continue
            jobs.append((f"{entry} seed {seed}", [sys.executable, os.path.abspath(__file__), f"--arm={entry}",
                                                  f"--seed={seed}", f"--data_dir={args.data_dir}"]
                         + ([f"--smoke={args.smoke}"] if args.smoke else [])))
    return cpu.run_queue(jobs)


# ----------------------------------------------------------------------------- report

def block_columns() -> list[tuple[str, str, str, str]]:
    """[(column, protocol, metric, setting)] of the per-block table."""
    cols = [(f"kNN B{b}", "layer_probe", "knn_top1", f"layer=block{b},k={REPORT_K},vote=plurality") for b in BLOCKS]
    cols += [(f"probe B{b}", "layer_probe", "nin_block_top1", f"layer=block{b},probe=nin_block") for b in PROBE_BLOCKS]
    cols += [(f"kNN k={KNN_K}", "knn", "top1", f"k={KNN_K},T={KNN_T:g}"), ("linear", "linear_cached", "top1", "")]
    return cols


def clustering_columns() -> list[tuple[str, str]]:
    return [("Hungarian acc", "acc"), ("NMI", "nmi"), ("ARI", "ari")]


def _clustering_value(records, metric):
    """The main head's (best sub-head's) clustering `metric` of an IIC entry, else None."""
    recs = [r for r in records if r.get("protocol") == "clustering" and r.get("metric") == metric
            and str(r.get("setting", "")).startswith("iic_head=main")]
    return recs[-1]["value"] if recs else None


def collect(results_dir: str) -> dict:
    """{entry: {seed: records}} of the summaries in results_dir/seed<S>/<entry>/results.json."""
    from ssl_jax import results as results_lib

    out = {}
    if not os.path.isdir(results_dir):
        return out
    for sd in sorted(os.listdir(results_dir)):
        if not sd.startswith("seed"):
            continue
        for entry in sorted(os.listdir(os.path.join(results_dir, sd))):
            records = results_lib.read_records(os.path.join(results_dir, sd, entry))
            if records:
                out.setdefault(entry, {})[int(sd[4:])] = records
    return out


def block_rows(runs: dict) -> dict:
    """{row: {column: [a value per seed]}}: each arm's trained network, then 'random init'."""
    from ssl_jax.report import pick_value

    rows, baseline = {}, {}
    for entry in [e for e in ARMS if e in runs]:
        rows[entry] = {}
        for col, protocol, metric, setting in block_columns():
            for seed, records in sorted(runs[entry].items()):
                value = pick_value(records, protocol, metric, False, setting or None)
                if value is not None:
                    rows[entry].setdefault(col, []).append(value)
                rand = pick_value(records, protocol, metric, True, setting or None)
                if rand is not None and col not in baseline:
                    baseline[col] = [rand]  # one random-init network: one value, not one per arm
    if baseline:
        rows["random init"] = baseline
    return rows


def _mean(values):
    return sum(values) / len(values) if values else None


def claims(rows: dict) -> list[str]:
    """The paper's qualitative claims, each checked on the means over seeds."""
    m = lambda row, col: _mean(rows.get(row, {}).get(col, []))
    out = []
    b3, b4 = m("proxy_only", "kNN B3"), m("proxy_only", "kNN B4")
    if b3 is not None and b4 is not None:
        out.append(f"B4 below B3 for rotation alone (kNN K={REPORT_K}): {100 * b4:.1f} vs {100 * b3:.1f} -> "
                   f"{'holds' if b4 < b3 else 'does not hold'}.")
    for arm in ("iic", "iic_lambda1"):
        p4, s4, p2, s2 = (m("proxy_only", "kNN B4"), m(arm, "kNN B4"), m("proxy_only", "kNN B2"), m(arm, "kNN B2"))
        if None not in (p4, s4, p2, s2):
            out.append(f"the semantic head ({arm}) raises B4 and leaves B2 about the same: B4 {100 * p4:.1f} -> "
                       f"{100 * s4:.1f} ({'raised' if s4 > p4 else 'not raised'}), B2 {100 * p2:.1f} -> "
                       f"{100 * s2:.1f} ({100 * (s2 - p2):+.1f} points).")
    for column, what in ((f"kNN B{BLOCKS[-1]}", f"mean kNN B4 (K={REPORT_K})"), ("linear", "mean linear probe")):
        order = label_order(rows, column)
        # The paper's order among the schemes that have run: one scheme has no order yet.
        paper = [a for a in LABEL_SCHEMES if a in order]
        if len(order) > 1:
            so_far = "" if len(order) == len(LABEL_SCHEMES) else f", {len(order)} of {len(LABEL_SCHEMES)} schemes run"
            out.append(f"label schemes by {what}: {' > '.join(order)} (paper: gt > iic > kmeans >~ random) -> "
                       f"{'the same order' if order == paper else 'a different order'}{so_far}.")
    return out


def label_order(rows: dict, column: str = f"kNN B{BLOCKS[-1]}") -> list[str]:
    """The label-scheme arms present, best first by their mean of `column`."""
    have = [a for a in LABEL_SCHEMES if _mean(rows.get(a, {}).get(column, [])) is not None]
    return sorted(have, key=lambda a: -_mean(rows[a][column]))


def wall_minutes(machine: dict) -> tuple[float, int]:
    """(minutes between start and end of the segments of machine.json that ended (training +
    evaluation), the number of segments that did not: a killed process writes no end)."""
    import datetime

    total, unended = 0.0, 0
    for seg in machine.get("segments", []):
        if seg.get("start") and seg.get("end"):
            t0, t1 = (datetime.datetime.fromisoformat(seg[k]) for k in ("start", "end"))
            total += (t1 - t0).total_seconds() / 60
        else:
            unended += 1
    return total, unended


def budget_line(entry: str, seed: int, machine: dict, records: list) -> str:
    """One entry's budget: its training minutes (the runs' train_seconds, which resumes add up),
    the wall time of its ended segments and how many were cut off, CPU and load."""
    from ssl_jax.report import format_machine

    train_min = sum(r["value"] for r in records if r["protocol"] == "pretrain" and r["metric"] == "train_seconds") / 60
    wall, unended = wall_minutes(machine)
    cut = f" + {unended} segment(s) cut off (no end time)" if unended else ""
    return (f"* {entry} seed {seed}: {train_min:.1f} min of training; {wall:.1f} min wall in ended segments{cut}; "
            f"{format_machine(machine)}")


def report_text(runs: dict, scale: dict | None = None) -> str:
    """results.md: the per-block table, the claims, IIC's clustering, the budget and machine;
    `scale` (c_epochs, a_passes, probe_epochs): the budget the entries ran at (default the recipe's)."""
    from ssl_jax import results as results_lib
    from ssl_jax.report import seeds_table

    scale = scale or dict(c_epochs=C_EPOCHS, a_passes=A_PASSES, probe_epochs=PROBE_EPOCHS)
    rows = block_rows(runs)
    cols = [c for c, *_ in block_columns()]
    lines = ["# SSL++ on CIFAR-10 at CPU scale (issue 20)", "",
             f"Stage C: rotation on RotNet's NIN x{NIN_WIDTH:g}, {scale['c_epochs']} epochs; stage A: IIC on "
             f"ResNet-18 x{IIC_WIDTH:g} (Sobel), {scale['a_passes']} passes; NIN-block probes "
             f"{scale['probe_epochs']} epochs (benchmarks/sslpp_cifar10.py's docstring has every change to the "
             "paper's recipe).", "",
             f"Per block: plurality kNN K={REPORT_K} on B1-B4, NIN-block probe on B2-B4, and the final features' "
             f"kNN (k={KNN_K}, T={KNN_T:g}) and cached linear probe; top-1 on the test split, mean ± std over "
             "seeds (%).", ""]
    lines.append(seeds_table(rows, cols).rstrip("\n") if rows else "(no finished arm)")
    lines += ["", "Claims of the paper, on the means:", ""] + [f"* {c}" for c in claims(rows)] + [""]
    crow = {}
    for entry, what in (("stage_a_iic", "IIC on CIFAR-10 (SSL++'s stage A)"), ("iic_mnist", "IIC on MNIST")):
        for seed, records in sorted(runs.get(entry, {}).items()):
            for col, metric in clustering_columns():
                value = _clustering_value(records, metric)
                if value is not None:
                    crow.setdefault(what, {}).setdefault(col, []).append(value)
    if crow:
        lines += ["IIC clustering of the test split (main head, best sub-head by training loss; Hungarian "
                  "accuracy in %, NMI and ARI x 100; the IIC paper's accuracy: MNIST 99.2 %, CIFAR-10 61.7 %):", "",
                  seeds_table(crow, [c for c, _ in clustering_columns()], first="clusterer").rstrip("\n"), ""]
    lines += ["Budget and machine (per entry and seed: training time, training + evaluation wall time, CPU, load):",
              ""]
    for entry in ENTRIES:
        for seed in sorted(runs.get(entry, {})):
            path = os.path.join(entry_dir(entry, seed, RESULTS_DIR), "machine.json")
            if os.path.exists(path):
                with open(path) as f:
                    machine = json.load(f)
                records = results_lib.read_records(entry_dir(entry, seed, RESULTS_DIR))
                lines.append(budget_line(entry, seed, machine, records))
    return "\n".join(lines) + "\n"


def report(scale: dict | None = None) -> str:
    runs = collect(RESULTS_DIR)
    if not runs:
        sys.exit(f"no finished entries in {RESULTS_DIR}: run python benchmarks/sslpp_cifar10.py --arm=... first")
    text = report_text(runs, scale)
    with open(os.path.join(BENCH_DIR, "results.md"), "w") as f:
        f.write(text)
    print(text, end="")
    return text


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arm", help=f"one entry: {', '.join(ENTRIES)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="--all / --plan: comma-separated seeds")
    parser.add_argument("--all", action="store_true", help="every entry of every seed not yet done")
    parser.add_argument("--plan", action="store_true")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--measure", nargs="?", const="stage_c,stage_a_iic,iic_mnist", default="",
                        help="training throughput of these (stage_c, stage_a_iic, iic_mnist)")
    parser.add_argument("--rerun", action="store_true")
    parser.add_argument("--data_dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--smoke", default="", help="a directory: the whole path there on the first "
                        f"{SMOKE_SUBSET[0]} training and {SMOKE_SUBSET[1]} test images, tiny epochs")
    args = parser.parse_args(argv)
    if args.measure:
        measure(args.data_dir, args.measure)
        return 0
    if not (args.arm or args.all or args.plan or args.report):
        parser.error("pass --plan, --arm=<entry> [--seed=S], --all, --report or --measure")
    if args.arm and args.arm not in ENTRIES:
        parser.error(f"unknown entry {args.arm!r}; valid: {', '.join(ENTRIES)}")
    global BENCH_DIR, RUNS_DIR, RESULTS_DIR
    scale = dict(c_epochs=C_EPOCHS, a_passes=A_PASSES, probe_epochs=PROBE_EPOCHS)
    subset = None
    if args.smoke:
        BENCH_DIR = os.path.abspath(args.smoke)
        RUNS_DIR, RESULTS_DIR = os.path.join(BENCH_DIR, "runs"), os.path.join(BENCH_DIR, "results")
        scale, subset = dict(SMOKE_EPOCHS), SMOKE_SUBSET
    os.makedirs(BENCH_DIR, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.plan:  # a plan only: trains nothing, whatever else is passed
        print(plan_text(seeds, data_dir=args.data_dir, subset=subset, **scale), flush=True)
        return 0
    code = 0
    if args.all:
        code = run_all(seeds, args)
    elif args.arm:
        run_entry(args.arm, args.seed, args.data_dir, scale, subset)
    if args.report:
        report(scale)
    return code


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    sys.exit(main())
