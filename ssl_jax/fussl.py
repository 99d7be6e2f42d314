"""FUSSL's staged run (configs/fussl.py; `ssl_jax.main` calls `run` when config.method == 'fussl'):

  phase 1   config.phase1 (the baseline's config with config.ensemble.size = m: m identically
            initialised blocks, each on its own views; ssl_jax.methods.ensemble) into DIR/phase1,
            a normal workdir (resumed as any run);
  labels    every training image (the evaluation view: no augmentation) through every block
            (ssl_jax.methods.ensemble.project: projector outputs [m, N, D]) in one feature pass
            (ssl_jax.train.features, as the clustering methods' refresh passes); per image the
            compact fuzzy label and every block's error (ssl_jax.losses.fuzzy); the block with the
            lowest mean error is chosen. Into DIR/<fussl.labels_file> with the training set's
            fingerprint, the chosen block, the per-block errors and the settings that made it,
            written atomically;
  phase 2a  config.phase2 (method fussl_phase2) for fussl.e2_full epochs, all layers, from the
            chosen block's phase-1 weights (DIR/phase2a_init.msgpack) into DIR/phase2a;
  phase 2b  the remaining phase-2 epochs with the stem through stage 3 frozen (fussl.freeze; their
            BatchNorm statistics fixed), from phase 2a's final weights (DIR/phase2b_init.msgpack),
            into DIR/phase2b: the FUSSL backbone, a normal workdir for evaluate and export.

Phase 2 is two runs (two compiled programs, each resumable) rather than one run that changes its
program at an epoch: a step whose frozen set depends on the epoch would compile both programs into
one or recompile mid-run. The second run starts a fresh Adam (its moments restart at the freeze).

The initial-weights files are ssl_jax.train.init_weights files (config.init_weights of the run
that starts from them: encoder and projector params and BatchNorm statistics).

fussl.schedule 'progressive' (Table 3, Case 3: "after each 200 epochs of phase 1, pseudo-labeling
is performed and applied to 100 epochs of phase 2, and so on. In each iteration of (phase 1) to
(phase 2), there is no fixed layer and pseudo-labeling is performed from scratch") repeats, for
cycle c = 1 .. fussl.cycles, in DIR/cycle<c>/:

  phase1    config.phase1 (config.phase1.num_epochs: one cycle's phase-1 epochs) into
            cycle<c>/phase1; cycle 1 from the random init, cycle c > 1 with every block from
            cycle c-1's final phase-2 encoder and projector (cycle<c>/phase1_init.msgpack);
  labels    as above, from this cycle's phase 1, into cycle<c>/<fussl.labels_file> (kept for
            every cycle; its settings include the cycle);
  phase2    config.phase2 (config.phase2.num_epochs: one cycle's phase-2 epochs), all layers, one
            run, from the chosen block (cycle<c>/phase2_init.msgpack) into cycle<c>/phase2.
            The last cycle's phase2 is the FUSSL backbone.

Choices where the paper is silent (seed 000 §1.7 lists them as unspecified):
  * cycles: fussl.cycles (4 in the presets: 4 x (200 + 100) = the sequential 800 + 400 epochs);
  * how phase 1 of cycle c+1 starts: every block from cycle c's phase-2 encoder + projector, one
    identical copy per block (as the sequential run's blocks share their init, so the pseudo-class
    indices stay aligned across blocks), so that what the labels taught feeds the next phase 1 --
    otherwise the cycles would be independent restarts. The baseline's other parts start as in a
    fresh run of config.seed (ssl_jax.train.init_weights): a predictor and SwAV's prototypes are
    newly initialised (phase 2 has none to hand over), a momentum target is a copy of the new
    online weights (not a stale one), a queue starts empty; the optimizer state is new and every
    run's LR / momentum schedules span its own epochs (each stage is an ordinary run);
  * cycle c's runs use seed config.seed + c - 1, so each cycle draws new views and a new order
    (the same seed would replay cycle 1's augmentations);
  * phase 2 of a cycle trains all layers ("no fixed layer"), so it is one run (fussl.freeze must be
    False and fussl.e2_full the phase-2 epochs: every phase-2 epoch trains all layers).

Rerunning the command continues where it stopped: a phase whose workdir holds results.json is done,
an unfinished one resumes from its checkpoint; the labels and init files are made once and reused
(a labels file made otherwise, by another phase-1 step, training set or labelling setting, is one
error and never overwritten); a kill while one is written leaves no partial file. The same holds
for every cycle of the progressive schedule.
"""
from __future__ import annotations

import jax
import ml_collections
import numpy as np

from ssl_jax import losses, parallel, stages, storage
from ssl_jax.data import pipeline
from ssl_jax.methods import build_method, ensemble, fussl_phase2
from ssl_jax.train import checkpoint, init_weights, preemption
from ssl_jax.train import features as features_lib
from ssl_jax.train.logging import console, pass_reporter

KEYS = ("baseline", "ensemble_size", "label_mode", "membership", "membership_temperature", "block_error",
        "e2_full", "freeze", "labels_file", "label_batch_size", "schedule", "cycles")
SCHEDULES = ("sequential", "progressive")
FROZEN_STAGES = 3  # stem through stage 3: the paper's "first 41 layers" of ResNet-50 (§4.1.3)


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    """FUSSL into `workdir` as fussl.schedule says: phase 1, labels, phase 2a and 2b (sequential),
    or fussl.cycles cycles of phase 1, labels, phase 2 (progressive); the records of the last run."""
    f = _checked(config)
    storage.makedirs(workdir)
    if f.schedule == "progressive":
        return run_progressive(config, workdir)
    labels_path, k, init = _phase1_and_labels(
        config, config.phase1, workdir, f"1 (an ensemble of {f.ensemble_size} {f.baseline} blocks)",
        "phase2a_init.msgpack")
    full, frozen = phase2_configs(config, labels_path)
    full.init_weights = init
    phase2a = storage.join(workdir, "phase2a")
    stages.train_stage(full, phase2a, f"2a (block {k}, all layers, {full.num_epochs} epochs)", kind="Phase")
    frozen.init_weights = _init_file(storage.join(workdir, "phase2b_init.msgpack"), phase2a, None)
    what = "stem..stage 3 frozen" if f.freeze else "all layers (no freezing)"
    return stages.train_stage(frozen, storage.join(workdir, "phase2b"), f"2b ({what}, {frozen.num_epochs} epochs)",
                              kind="Phase")


def run_progressive(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    """The progressive schedule (module docstring) into `workdir`/cycle<c>; the records of the
    last cycle's phase 2 ([] when it was already done)."""
    f = config.fussl
    records, previous = [], None
    for c in range(1, int(f.cycles) + 1):
        cdir = storage.join(workdir, f"cycle{c}")
        storage.makedirs(cdir)
        p1 = cycle_phase1_config(config, c, "" if previous is None else _init_file(
            storage.join(cdir, "phase1_init.msgpack"), previous, None))
        start = "random init" if previous is None else f"cycle {c - 1}'s phase 2"
        labels_path, k, init = _phase1_and_labels(
            config, p1, cdir, f"1 of cycle {c}/{f.cycles} (an ensemble of {f.ensemble_size} {f.baseline} "
            f"blocks from {start})", "phase2_init.msgpack", cycle=c)
        p2 = cycle_phase2_config(config, c, labels_path, init)
        previous = storage.join(cdir, "phase2")
        records = stages.train_stage(p2, previous, f"2 of cycle {c}/{f.cycles} (block {k}, all layers, "
                                     f"{p2.num_epochs} epochs)", kind="Phase")
    return records


def _phase1_and_labels(config, phase1, workdir: str, what: str, init_name: str, cycle: int | None = None):
    """Phase 1 (`phase1`, the ensemble) into workdir/phase1, then its labels into
    workdir/<fussl.labels_file>: (labels path, chosen block, the phase-2 init file workdir/`init_name`
    holding that block's weights). The part of a pass that the sequential run and every progressive
    cycle share."""
    f = config.fussl
    phase1_dir = storage.join(workdir, "phase1")
    stages.train_stage(phase1, phase1_dir, what, kind="Phase")
    labels_path = storage.join(workdir, f.labels_file)
    k = int(label(config, phase1_dir, labels_path, cycle=cycle)["chosen_block"])
    init = _init_file(storage.join(workdir, init_name), phase1_dir, k if f.ensemble_size > 1 else None)
    return labels_path, k, init


def cycle_phase1_config(config, cycle: int, init: str) -> ml_collections.ConfigDict:
    """Phase 1 of progressive cycle `cycle` (1-based): config.phase1 at seed + cycle - 1, from the
    weights file `init` ('' = random init: cycle 1)."""
    c = config.phase1.copy_and_resolve_references()
    c.seed = int(config.phase1.seed) + cycle - 1
    c.init_weights = init
    if cycle > 1:  # its init is the previous cycle's weights: cycle 1 holds the random-init baseline
        c.eval.compare_random_init = False
    return c


def cycle_phase2_config(config, cycle: int, labels_path: str, init: str) -> ml_collections.ConfigDict:
    """Phase 2 of progressive cycle `cycle`: config.phase2 (all layers, all its epochs) on the
    cycle's labels at seed + cycle - 1, from the weights file `init` (the chosen phase-1 block)."""
    c = config.phase2.copy_and_resolve_references()
    c.seed = int(config.phase2.seed) + cycle - 1
    c.fussl_phase2.labels = str(labels_path)
    c.init_weights = init
    c.eval.compare_random_init = False  # as phase 2a's: the init is phase 1's, not a random one
    return c


def _checked(config) -> ml_collections.ConfigDict:
    f = config.fussl
    unknown, missing = set(f.keys()) - set(KEYS), set(KEYS) - set(f.keys())
    if unknown or missing:
        raise ValueError(f"config.fussl: unknown keys {sorted(unknown)}, missing {sorted(missing)}; it has "
                         f"exactly {list(KEYS)} (configs/fussl.py sets them).")
    if f.schedule not in SCHEDULES:
        raise ValueError(f"config.fussl.schedule={f.schedule!r}; choose one of {SCHEDULES}.")
    if not (float(f.cycles).is_integer() and int(f.cycles) >= 1):
        raise ValueError(f"config.fussl.cycles={f.cycles}: the number of (phase 1, labels, phase 2) cycles is a "
                         "whole number >= 1.")
    if f.schedule == "sequential" and int(f.cycles) != 1:
        raise ValueError(f"config.fussl.cycles={f.cycles} with schedule 'sequential' (one pass): cycles are the "
                         "progressive schedule's; set --config.fussl.schedule=progressive or cycles=1.")
    if f.schedule == "progressive" and (f.freeze or int(f.e2_full) != int(config.phase2.num_epochs)):
        raise ValueError(f"config.fussl.schedule='progressive' trains all layers in every phase 2 (the paper: "
                         f"\"there is no fixed layer\"), but freeze={f.freeze}, e2_full={f.e2_full} with "
                         f"{config.phase2.num_epochs} phase-2 epochs: set --config.fussl.freeze=False and "
                         "--config.fussl.e2_full to config.phase2.num_epochs.")
    for phase in ("phase1", "phase2"):
        if config[phase].init_weights:
            raise ValueError(f"config.{phase}.init_weights={config[phase].init_weights!r}: the staged run sets "
                             "each phase's initial weights itself; leave it ''.")
    if config.phase1.method != f.baseline:
        raise ValueError(f"config.phase1.method={config.phase1.method!r} but fussl.baseline={f.baseline!r}: "
                         "build both from one baseline (configs/fussl.py's phase1_config).")
    if int(config.phase1.ensemble.size) != int(f.ensemble_size):
        raise ValueError(f"config.phase1.ensemble.size={config.phase1.ensemble.size} but "
                         f"fussl.ensemble_size={f.ensemble_size}: set one value (--config.fussl.ensemble_size "
                         "with --config.phase1.ensemble.size).")
    if f.schedule == "sequential" and not (float(f.e2_full).is_integer()
                                           and 0 < int(f.e2_full) < int(config.phase2.num_epochs)):
        raise ValueError(f"fussl.e2_full={f.e2_full} must be a whole number strictly between 0 and the phase-2 epochs "
                         f"({config.phase2.num_epochs}): phase 2 trains all layers for e2_full epochs, then the rest.")
    for key in ("dataset", "train_split", "data_dir", "classes"):
        if config.phase1.data.get(key) != config.phase2.data.get(key):
            raise ValueError(f"config.phase1.data.{key}={config.phase1.data[key]!r} but config.phase2.data.{key}="
                             f"{config.phase2.data[key]!r}: both phases train on one training set.")
    return f


def phase2_configs(config, labels_path: str) -> tuple:
    """(phase 2a's config, phase 2b's config): config.phase2 split at fussl.e2_full epochs (whole
    epochs: the configs' num_epochs are integers)."""
    f = config.fussl
    full = config.phase2.copy_and_resolve_references()
    full.fussl_phase2.labels = str(labels_path)
    frozen = full.copy_and_resolve_references()
    # A phase-2 run's init is the previous phase's weights, so its 'random init' baseline would
    # measure those: phase 1's results hold the true random-init baseline.
    full.eval.compare_random_init = frozen.eval.compare_random_init = False
    epochs, e2_full = int(config.phase2.num_epochs), int(f.e2_full)
    full.num_epochs, frozen.num_epochs = e2_full, epochs - e2_full
    if config.phase2.num_steps > 0:  # phase 2 given in steps (short runs): split in the same ratio
        full.num_steps = int(round(config.phase2.num_steps * e2_full / epochs))
        frozen.num_steps = int(config.phase2.num_steps) - full.num_steps
    if f.freeze:
        frozen.fussl_phase2.frozen_stages = FROZEN_STAGES
        frozen.optimizer.frozen_params = tuple(frozen.optimizer.frozen_params) + tuple(
            fussl_phase2.frozen_param_prefixes(FROZEN_STAGES, frozen.model.name))
    return full, frozen


def _init_file(path: str, source_dir: str, block: int | None) -> str:
    """`path`, an ssl_jax.train.init_weights file holding the encoder and projector of
    `source_dir`'s last checkpoint (block `block` of an ensemble), written once."""
    if not storage.exists(path):
        state, step, _ = checkpoint.restore_raw(source_dir)
        params, stats = state["params"], state["batch_stats"]
        if block is not None:
            params, stats = ensemble.select_block(params, block), ensemble.select_block(stats, block)
        if jax.process_index() == 0:
            where = f"{source_dir} step {step}" + ("" if block is None else f" block {block}")
            init_weights.write(path, params, stats, fussl_phase2.INIT_MODULES, where)
        parallel.barrier("fussl init")  # every process reads the file next
    return str(path)


def label_settings(config, phase1_step: int, cycle: int | None = None) -> dict:
    """What a labels file depends on besides the training set (a file made otherwise is an error);
    `cycle`: the progressive schedule's cycle (None: the sequential run's one labelling)."""
    f, p2 = config.fussl, config.phase2.fussl_phase2
    out = dict(baseline=f.baseline, ensemble_size=int(f.ensemble_size), label_mode=f.label_mode,
               membership=f.membership, membership_temperature=float(f.membership_temperature),
               block_error=f.block_error, temperature=float(p2.temperature), normalize=bool(p2.normalize),
               phase1_step=int(phase1_step))
    if cycle is not None:
        out.update(schedule="progressive", cycle=int(cycle))
    return out


def label(config, phase1_dir: str, path: str, cycle: int | None = None) -> dict:
    """The labels file at `path` (made unless present for this run; `cycle`: label_settings'):
    read_labels' dict."""
    f = config.fussl
    data = config.phase1.data
    fingerprint = pipeline.training_fingerprint(data)
    state, step, _ = checkpoint.restore_raw(phase1_dir)
    settings = label_settings(config, step, cycle)
    if storage.exists(path):
        stored = fussl_phase2.read_labels(path)
        fussl_phase2.check_labels(stored, fingerprint, path)
        if stored["settings"] != repr(sorted(settings.items())):
            raise ValueError(f"{path} was made by other settings ({stored['settings']}) than this run's "
                             f"({sorted(settings.items())}). Use a new --workdir, or delete the file (and "
                             "every run trained after it: phase2a/ and phase2b/, or this cycle's phase2/ and the later "
                             "cycles) to relabel.")
        console(f"Labels: done ({path}; block {stored['chosen_block']}).", flush=True)
        return stored
    console(f"Labels ({f.label_mode}, membership {f.membership}) of {data.dataset}:{data.train_split} "
            f"into {path}.", flush=True)
    with preemption.sigterm_stops(lambda: preemption.PreemptedPass("the labelling pass")):
        rows = labelling_pass(config, state["params"], state["batch_stats"])
    errors = rows["errors"].astype(np.float64).mean(0)
    chosen = int(np.argmin(errors))
    classes, weights = rows["classes"], rows["weights"]
    hard = float(np.mean(weights.max(1) == 1.0))
    used = len(np.unique(classes[weights > 0]))
    console(f"Labels: {100 * hard:.1f}% hard, {used} of {config.phase2.fussl_phase2.projector.output_dim} "
            f"pseudo-classes used; block errors ({f.block_error}) {np.round(errors, 4).tolist()}; "
            f"block {chosen} continues.", flush=True)
    if jax.process_index() == 0:
        fussl_phase2.write_labels(path, classes, weights, fingerprint, chosen_block=chosen,
                                  block_errors=errors, config=settings)
    parallel.barrier("fussl labels")  # every process reads the file next
    return fussl_phase2.read_labels(path)


def labelling_pass(config, params, batch_stats) -> dict:
    """Per training image, in dataset-index order: classes and weights [N, m] of its label and
    errors [N, m] of every block on it (host NumPy), from phase 1's stacked params / statistics."""
    f, p1, p2 = config.fussl, config.phase1, config.phase2.fussl_phase2
    method = build_method(p1, total_steps=1, steps_per_epoch=1)
    m = ensemble.num_blocks(method)
    if m == 1:  # a 1-block run keeps unstacked trees
        params, batch_stats = ensemble.stack(params, 1), ensemble.stack(batch_stats, 1)

    def fn(params, batch_stats, images):
        out = ensemble.project(method, params, batch_stats, images)
        classes, weights = losses.fuzzy_labels(out, f.label_mode, f.membership, float(f.membership_temperature))
        errors = losses.block_errors(out, classes, weights, f.block_error, float(p2.temperature),
                                     bool(p2.normalize))
        return {"classes": classes, "weights": weights, "errors": errors}

    mesh = parallel.mesh_from_config(p1.mesh)
    batch = int(f.label_batch_size)
    data = p1.data
    report = pass_reporter(f"FUSSL labels of {data.dataset}:{data.train_split}",
                           pipeline.num_eval_batches(data, data.train_split, batch), batch)
    batches = pipeline.eval_iterator(data, data.train_split, global_batch_size=batch)
    params, batch_stats = jax.device_put((params, batch_stats), parallel.replicated(mesh))
    rows, _ = features_lib.extract_features(features_lib.make_feature_fn(fn, mesh), params, batch_stats,
                                            batches, mesh, report)
    # The pass gathers rows as float32: pseudo-class indices (< 2^24) are exact.
    return dict(rows, classes=np.rint(rows["classes"]).astype(np.int32))
