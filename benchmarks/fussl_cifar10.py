"""FUSSL on CIFAR-10 at CPU scale, several seeds: the comparison of issue 21, one command per arm.

Commands (from the repository root; data: TFDS cifar10 in ../shared/tfds, or --data_dir):

    python benchmarks/fussl_cifar10.py --plan                    # arms, epochs, every change per run
    nice -n 5 python benchmarks/fussl_cifar10.py --arm=fuzzy --seed=0   # one arm (resumes if stopped)
    nice -n 5 python benchmarks/fussl_cifar10.py --all           # every arm not yet done, seed by seed
    python benchmarks/fussl_cifar10.py --report                  # results.md: mean ± std over seeds
    python benchmarks/fussl_cifar10.py --all --smoke=/tmp/fs     # the whole path on 1k images (a check)

The arms (seed 000, Tables 2-3; configs/fussl.py's presets at the scale below), each an ordinary
workdir benchmarks/fussl_cifar10/runs/seed<S>/<arm> that a rerun resumes:

  base         SimCLR alone for the phase-1 epochs: block 0 of `fuzzy`'s phase-1 ensemble, which
               trains exactly as the baseline does (ssl_jax.methods.ensemble), read from there
               rather than trained again (the paper's "Base", 800 epochs)
  fuzzy        FUSSL: phase 1 (3 SimCLR blocks), fuzzy labels, phase 2a (all layers) + 2b (stem ..
               stage 3 frozen)
  soft, hard   label_mode soft / hard (Table 3, Cases 2 / 1)
  no_freeze    phase 2b without frozen layers (the paper's "no fixed weights")
  base_long    SimCLR alone for the phase-1 + phase-2 epochs (the paper's compute-matched "1200 ep")
  progressive  CYCLES cycles of (phase 1, labels, phase 2 with all layers), the same epochs in all
               as the sequential run (Table 3, Case 3)

soft, hard and no_freeze share fuzzy's phase 1 (the same config and seed give the same network):
their phase1/ is a copy of fuzzy's finished one, so a seed trains one ensemble, not four. The
claims tested (paper): FUSSL > base and > base_long; fuzzy >= soft >= hard; freezing helps
(fuzzy > no_freeze); sequential > progressive.

Scale. Every run is the preset's recipe with benchmarks/cifar10_cpu.py's CPU-scale changes
(`derive`: ResNet-18 x0.125 with the CIFAR stem, float32, kNN k=200 T=0.1 every epoch, the
cached linear probe, warm-up capped at 10 % of a run, schedule positions scaled), so `base`
is comparable to that table's SimCLR row apart from FUSSL's shared 3 x 1000 projector. Epochs:
E1 = 4 for phase 1 and E2 = 2 for phase 2, the paper's 2 : 1 (800 : 400). Phase 2 keeps the
paper's split of its epochs, a quarter with all layers (100 of 400): it is given in steps,
E2 epochs of them, of which 2a takes 1/4 (ssl_jax.fussl.phase2_configs splits steps in the
ratio e2_full / phase-2 epochs, so the nominal phase-2 epochs are 4 with e2_full 1). progressive:
CYCLES = 2 cycles of E1 / 2 phase-1 and E2 / 2 phase-2 epochs (the paper's 4 x (200 + 100)
spends the sequential run's 1200 epochs; 2 cycles here keep each cycle's phase 1 at 2 epochs).
Budget. Measured (2026-12-07, seed 0, 2 AMD EPYC cores with nothing else running): phase 1
took 7.5 s per step (3 blocks x 256 images x 2 views), 24 min per epoch, ~2 h for E1 = 4 epochs.
That was XLA's CPU while loop over the blocks (ssl_jax.methods.ensemble.resolve_execution);
unrolled (the default on CPUs since), progressive's phase 1 ran at 46-92 img/s (2.8-5.6 s per
step) beside another training (SSL++), against 33 img/s alone before. base_long (6 one-block
epochs) took 33 min beside another training. Estimated: a seed is ~1 h of phase 1, ~4 x 10 min
of phase 2 and labels, ~35 min of base_long and ~1 h of progressive: ~3 h per seed on idle
cores, spread over several sessions (every arm resumes; finished arms are skipped).

Each finished arm's summary goes to benchmarks/fussl_cifar10/results/seed<S>/<arm>/ (committed):
results.json of the run that produced the arm's network (phase2b, the last cycle's phase2, or
the single run), and summary.json (kNN and linear top-1, training seconds of every stage,
the labels' statistics, machine). `--report` builds results.md from those.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(ROOT, "benchmarks", "fussl_cifar10")
RUNS_DIR = os.path.join(BENCH_DIR, "runs")
RESULTS_DIR = os.path.join(BENCH_DIR, "results")

ARMS = ("fuzzy", "soft", "hard", "no_freeze", "base_long", "progressive")  # the order --all runs them
REPORTED = ("base", "base_long", "fuzzy", "soft", "hard", "no_freeze", "progressive")  # the table's rows
PRESETS = {"fuzzy": "cifar10", "soft": "cifar10_soft", "hard": "cifar10_hard", "no_freeze": "cifar10_no_freeze",
           "base_long": "cifar10_base_long", "progressive": "cifar10_progressive"}
SHARE_PHASE1 = ("soft", "hard", "no_freeze")  # phase 1 is fuzzy's
E1, E2, CYCLES = 4, 2, 2
PHASE2_FULL_FRACTION = (1, 4)  # (e2_full, nominal phase-2 epochs): the paper's 100 of 400
SEEDS = (0, 1, 2)


def _cifar10_cpu():
    """benchmarks/cifar10_cpu.py as a module: its derive(), random-init baseline and machine log."""
    spec = importlib.util.spec_from_file_location("cifar10_cpu", os.path.join(ROOT, "benchmarks", "cifar10_cpu.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


C10 = _cifar10_cpu()


def arm_config(arm: str, seed: int, *, e1: int = E1, e2: int = E2, data_dir: str = C10.DEFAULT_DATA_DIR,
               subset: tuple[int, int] | None = None):
    """(the arm's config, {run: [(field, preset value, new value, reason)]}): configs/fussl.py's
    preset with each training run derived to CPU scale (module docstring) at `seed`."""
    from configs import fussl as fussl_config

    c = fussl_config.get_config(PRESETS[arm])
    kw = dict(data_dir=data_dir, subset=subset)
    if c.method != "fussl":  # base_long: the baseline alone
        c, changes = C10.derive(c, epochs=e1 + e2, **kw)
        c.seed = seed
        return c, {"run": changes}
    if arm == "progressive":
        if e1 % CYCLES or e2 % CYCLES:
            raise ValueError(f"--e1={e1} and --e2={e2} must be multiples of the {CYCLES} progressive cycles.")
        c.fussl.cycles = CYCLES
        phase1_epochs, phase2_epochs = e1 // CYCLES, e2 // CYCLES
        c.fussl.e2_full = phase2_epochs
    else:
        phase1_epochs, phase2_epochs = e1, PHASE2_FULL_FRACTION[1]
        c.fussl.e2_full = PHASE2_FULL_FRACTION[0]
    changes0 = [("e2_full", fussl_config.get_config(PRESETS[arm]).fussl.e2_full, c.fussl.e2_full,
                 "phase 2's all-layer part at this scale")]
    if arm == "progressive":
        changes0.append(("cycles", fussl_config.get_config(PRESETS[arm]).fussl.cycles, CYCLES,
                         f"{CYCLES} cycles keep each cycle's phase 1 at {phase1_epochs} epochs"))
    c.phase1, changes1 = C10.derive(c.phase1, epochs=phase1_epochs, **kw)
    c.phase2, changes2 = C10.derive(c.phase2, epochs=phase2_epochs, **kw)
    if arm != "progressive":  # e2 epochs of steps, of which 2a takes e2_full / the nominal epochs
        train = subset[0] if subset else C10.TRAIN_EXAMPLES
        c.phase2.num_steps = e2 * (train // int(c.phase2.global_batch_size))
        changes2.append(("num_steps", 0, c.phase2.num_steps, f"{e2} epochs, split 1 : 3 between phase 2a and 2b"))
    c.phase1.seed = c.phase2.seed = seed
    return c, {"fussl": changes0, "phase1": changes1, "phase2": changes2}


def workdir_of(arm: str, seed: int) -> str:
    return os.path.join(RUNS_DIR, f"seed{seed}", arm)


def network_dir(arm: str, workdir: str) -> str:
    """The run of an arm's workdir that holds the arm's network."""
    if arm == "base":
        return os.path.join(workdir, "phase1")
    if arm == "progressive":
        return os.path.join(workdir, f"cycle{CYCLES}", "phase2")
    if arm == "base_long":
        return workdir
    return os.path.join(workdir, "phase2b")


def stage_dirs(arm: str, workdir: str) -> list[str]:
    """Every training run of an arm, in order (their train_seconds add up to the arm's)."""
    if arm in ("base", "base_long"):
        return [network_dir(arm, workdir)]
    if arm == "progressive":
        return [os.path.join(workdir, f"cycle{c}", p) for c in range(1, CYCLES + 1) for p in ("phase1", "phase2")]
    return [os.path.join(workdir, p) for p in ("phase1", "phase2a", "phase2b")]


def labels_stats(path: str) -> dict | None:
    """Hard-label fraction, pseudo-classes used and the chosen block of a FUSSL labels file."""
    if not os.path.exists(path):
        return None
    import numpy as np
    from ssl_jax.methods import fussl_phase2

    stored = fussl_phase2.read_labels(path)
    weights, classes = stored["weights"], stored["classes"]
    return {"hard_fraction": float(np.mean(weights.max(1) == 1.0)),
            "classes_used": int(len(np.unique(classes[weights > 0]))),
            "chosen_block": int(stored["chosen_block"]),
            "block_errors": [float(e) for e in np.ravel(stored["block_errors"])]}


def summarize(arm: str, seed: int, workdir: str, machine: dict | None = None) -> dict:
    """summary.json of a finished arm: its network's kNN / linear top-1 (trained and random init),
    the training seconds of every stage, the labels' statistics."""
    from ssl_jax import report, results as results_lib

    records = results_lib.read_records(network_dir(arm, workdir))
    seconds = [report.pick_value(results_lib.read_records(d), "pretrain", "train_seconds", False)
               for d in stage_dirs(arm, workdir)]
    labels = os.path.join(workdir, f"cycle{CYCLES}" if arm == "progressive" else "", "fussl_labels.npz")
    return {"arm": arm, "seed": seed,
            "knn_top1": report.pick_value(records, "knn", "top1", False, f"k={C10.KNN_K},T={C10.KNN_T:g}"),
            "linear_top1": report.pick_value(records, "linear_cached", "top1", False),
            "train_seconds": sum(s for s in seconds if s is not None), "stage_train_seconds": seconds,
            "labels": None if arm in ("base", "base_long") else labels_stats(labels),
            "machine": machine}


def run_arm(arm: str, seed: int, **kwargs) -> None:
    """Train (or resume) one arm, then copy its summary (and `base`'s, from fuzzy) to results/."""
    from ssl_jax import cli, xla_flags

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    xla_flags.set_cpu_defaults()
    cli.quiet_library_logs()
    with cli.user_errors("fussl_cifar10"):  # SIGTERM: checkpoint, exit 75; rerunning resumes
        _run_arm(arm, seed, **kwargs)


def _run_arm(arm, seed, **kwargs) -> None:
    from ssl_jax import main as main_lib
    from ssl_jax.train.logging import console

    config, _ = arm_config(arm, seed, **kwargs)
    workdir = workdir_of(arm, seed)
    os.makedirs(workdir, exist_ok=True)
    if arm in SHARE_PHASE1 and not os.path.exists(os.path.join(workdir, "phase1", "results.json")):
        fuzzy_phase1 = os.path.join(workdir_of("fuzzy", seed), "phase1")
        if not os.path.exists(os.path.join(fuzzy_phase1, "results.json")):
            console(f"{arm} shares fuzzy's phase 1: running the fuzzy arm of seed {seed} first.")
            _run_arm("fuzzy", seed, **kwargs)
        shutil.rmtree(os.path.join(workdir, "phase1"), ignore_errors=True)  # a partial copy
        shutil.copytree(fuzzy_phase1, os.path.join(workdir, "phase1"))
        console(f"{arm}: phase 1 copied from {fuzzy_phase1}.")
    machine = C10.start_segment(workdir)
    console(f"FUSSL CIFAR-10 arm {arm}, seed {seed}, in {workdir}")
    try:
        main_lib.pretrain(config, workdir)
    finally:
        C10.end_segment(workdir, machine)
    publish(arm, seed, config)


def publish(arm: str, seed: int, config) -> None:
    """Copy a finished arm's summary (and `base`'s, from fuzzy) to results/: its network's
    results.json with the random-init baseline (cifar10_cpu's, the same ResNet) stamped in, as
    every CIFAR-10 CPU row has it, and summary.json."""
    from ssl_jax import results as results_lib
    from ssl_jax.train.logging import console

    workdir = workdir_of(arm, seed)
    baseline = C10.random_init_records(config.phase1 if config.method == "fussl" else config, console)
    with open(os.path.join(workdir, "machine.json")) as f:
        machine = json.load(f)
    for name in ("base", arm) if arm == "fuzzy" else (arm,):
        out = os.path.join(RESULTS_DIR, f"seed{seed}", name)
        os.makedirs(out, exist_ok=True)
        C10.write_row(out, results_lib.read_records(network_dir(name, workdir)), baseline)
        C10._write_json(os.path.join(out, "summary.json"), summarize(name, seed, workdir, machine))
        console(f"{name} (seed {seed}): summary in {os.path.relpath(out, ROOT)}")


def load_summaries(results_dir: str = RESULTS_DIR) -> list[dict]:
    out = []
    for seed_dir in sorted(os.listdir(results_dir)) if os.path.isdir(results_dir) else []:
        for arm in sorted(os.listdir(os.path.join(results_dir, seed_dir))):
            path = os.path.join(results_dir, seed_dir, arm, "summary.json")
            if os.path.exists(path):
                with open(path) as f:
                    out.append(json.load(f))
    return out


def _points(difference: float) -> float:
    """A difference of top-1 fractions in percentage points, at the report's 0.1 precision (never -0.0)."""
    return round(100 * difference, 1) + 0.0


def report_text(summaries: list[dict]) -> str:
    """The table (mean ± std over seeds per arm) and the paper's orderings, checked on the means."""
    from ssl_jax import report

    rows = {}
    for arm in REPORTED:
        mine = [s for s in summaries if s["arm"] == arm]
        if mine:
            rows[arm] = {"kNN top-1 %": [s["knn_top1"] for s in mine],
                         "linear top-1 %": [s["linear_top1"] for s in mine]}
    text = report.seeds_table(rows, ["kNN top-1 %", "linear top-1 %"])
    mean = {arm: {k: sum(v) / len(v) for k, v in cols.items() if v and None not in v} for arm, cols in rows.items()}
    by_seed = {(s["arm"], s["seed"]): s for s in summaries}
    seeds = sorted({s["seed"] for s in summaries})
    lines = []
    for a, b, claim in (("fuzzy", "base", "FUSSL > Base"), ("fuzzy", "base_long", "FUSSL > the same epochs of SimCLR"),
                        ("fuzzy", "soft", "fuzzy >= soft"), ("soft", "hard", "soft >= hard"),
                        ("fuzzy", "no_freeze", "freezing helps"), ("fuzzy", "progressive", "sequential > progressive")):
        # Compared at the printed precision, so that a difference shown as 0.0 is a tie.
        holds = lambda d, claim=claim: d > 0 or (d == 0 and ">=" in claim)
        both = [s for s in seeds if (a, s) in by_seed and (b, s) in by_seed]
        for metric, key in (("kNN top-1 %", "knn_top1"), ("linear top-1 %", "linear_top1")):
            if metric in mean.get(a, {}) and metric in mean.get(b, {}):
                d = _points(mean[a][metric] - mean[b][metric])
                # The arms of one seed share its phase 1 (and data order), so the per-seed differences
                # are paired: a claim that holds at every seed is read more safely than one on the means.
                paired = [_points(by_seed[a, s][key] - by_seed[b, s][key]) for s in both]
                lines.append(f"- {claim} ({metric.split()[0]}): {a} - {b} = {d:+.1f} points, "
                             f"{'holds' if holds(d) else 'does not hold'} on the means; per seed "
                             f"{' / '.join(f'{x:+.1f}' for x in paired)}: holds at "
                             f"{sum(map(holds, paired))} of {len(paired)} seeds")
    return text + ("\nThe paper's claims on the means:\n" + "\n".join(lines) + "\n" if lines else "")


def plan_text(seeds, **kwargs) -> str:
    lines = [f"FUSSL on CIFAR-10 at CPU scale: phase 1 {kwargs.get('e1', E1)} epochs, phase 2 {kwargs.get('e2', E2)} "
             f"epochs (a quarter all layers), progressive {CYCLES} cycles; seeds {', '.join(map(str, seeds))}.",
             f"Workdirs: {os.path.relpath(RUNS_DIR, ROOT)}/seed<S>/<arm>; summaries: "
             f"{os.path.relpath(RESULTS_DIR, ROOT)}/seed<S>/<arm>.", ""]
    for arm in ARMS:
        config, changes = arm_config(arm, seeds[0], **kwargs)
        done = [s for s in seeds if os.path.exists(os.path.join(RESULTS_DIR, f"seed{s}", arm, "summary.json"))]
        lines.append(f"{arm} [{PRESETS[arm]}; done for seeds {done or 'none'}]"
                     + (" (phase 1 copied from fuzzy's)" if arm in SHARE_PHASE1 else ""))
        for run, items in changes.items():
            for field, old, new, _ in items:
                if field != "data.data_dir":
                    lines.append(f"    {run}.{field}: {old!r} -> {new!r}")
    return "\n".join(lines)


def main(argv=None) -> int:
    global BENCH_DIR, RUNS_DIR, RESULTS_DIR
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arm", choices=ARMS)
    parser.add_argument("--seed", type=int, default=SEEDS[0])
    parser.add_argument("--all", action="store_true", help="every arm of every seed not yet done")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--plan", action="store_true")
    parser.add_argument("--report", action="store_true", help="write results.md from results/")
    parser.add_argument("--e1", type=int, default=E1)
    parser.add_argument("--e2", type=int, default=E2)
    parser.add_argument("--data_dir", default=C10.DEFAULT_DATA_DIR)
    parser.add_argument("--smoke", default="", help="a directory: the whole path on the first "
                        f"{C10.SMOKE_SUBSET[0]} training and {C10.SMOKE_SUBSET[1]} test images (a check)")
    args = parser.parse_args(argv)
    if not (args.arm or args.all or args.plan or args.report):
        parser.error("pass --plan, --arm=ARM [--seed=S], --all or --report")
    if args.smoke:
        BENCH_DIR = os.path.abspath(args.smoke)
        RUNS_DIR, RESULTS_DIR = os.path.join(BENCH_DIR, "runs"), os.path.join(BENCH_DIR, "results")
        C10.RUNS_DIR = os.path.join(BENCH_DIR, "cifar10_cpu_runs")  # its random-init baseline on the subset
    seeds = [int(s) for s in args.seeds.split(",")]
    kwargs = dict(e1=args.e1, e2=args.e2, data_dir=args.data_dir, subset=C10.SMOKE_SUBSET if args.smoke else None)
    if args.plan:  # a plan only: trains nothing, whatever else is passed
        print(plan_text(seeds, **kwargs), flush=True)
        return 0
    if args.arm:
        run_arm(args.arm, args.seed, **kwargs)
    if args.all:  # each arm in its own process; a failure or SIGTERM stops the queue
        jobs = [(f"{arm} seed {seed}", [sys.executable, os.path.abspath(__file__), f"--arm={arm}", f"--seed={seed}",
                                        f"--e1={args.e1}", f"--e2={args.e2}", f"--data_dir={args.data_dir}"]
                 + ([f"--smoke={args.smoke}"] if args.smoke else []))
                for seed in seeds for arm in ARMS
                if not os.path.exists(os.path.join(RESULTS_DIR, f"seed{seed}", arm, "summary.json"))]
        code = C10.run_queue(jobs, stop_on_failure=True)
        if code:
            return code
    if args.report:
        text = report_text(load_summaries(RESULTS_DIR))
        os.makedirs(BENCH_DIR, exist_ok=True)
        with open(os.path.join(BENCH_DIR, "results.md"), "w") as f:
            f.write(text)
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    sys.exit(main())
