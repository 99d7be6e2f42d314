"""The FUSSL CIFAR-10 comparison's runner (benchmarks/fussl_cifar10.py): the arms' configs (what they
share, what differs, the phase-2 split, the progressive budget) and its report."""
import os

import pytest

from tests.conftest import load_benchmark

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("fussl_cifar10")


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def _diff(a, b):
    fa, fb = _flat(a.to_dict()), _flat(b.to_dict())
    return {k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)}


@pytest.fixture(scope="module")
def arms(bench):
    return {arm: bench.arm_config(arm, 1)[0] for arm in bench.ARMS}


def test_every_fussl_arm_passes_the_staged_runs_checks(bench, arms):
    from ssl_jax import fussl

    for arm, config in arms.items():
        if config.method == "fussl":
            fussl._checked(config)
            assert config.phase1.seed == config.phase2.seed == 1


def test_arms_sharing_phase_1_differ_from_fuzzy_only_in_their_setting(bench, arms):
    fuzzy = arms["fuzzy"]
    for arm in bench.SHARE_PHASE1:  # their phase1/ is a copy of fuzzy's: it must be the same run
        assert _diff(arms[arm].phase1, fuzzy.phase1) == set()
        assert _diff(arms[arm].phase2, fuzzy.phase2) == set()
    assert _diff(arms["soft"], fuzzy) == {"fussl.label_mode"} == _diff(arms["hard"], fuzzy)
    assert _diff(arms["no_freeze"], fuzzy) == {"fussl.freeze"}


def test_every_arm_trains_the_cifar10_cpu_tables_network(bench, arms):
    simclr_row, _ = bench.C10.benchmark_config("simclr")
    for arm, config in arms.items():
        runs = [config] if config.method != "fussl" else [config.phase1, config.phase2]
        for run in runs:
            assert run.model.to_dict() == simclr_row.model.to_dict(), (arm, run.method)
            assert run.data.to_dict() == runs[0].data.to_dict() or run.method == "fussl_phase2"
            assert (run.eval.knn_k, run.eval.knn_temperature) == (simclr_row.eval.knn_k, simclr_row.eval.knn_temperature)
    # base_long: the phase-1 recipe (shared projector) for the phase-1 + phase-2 epochs
    base_long, phase1 = arms["base_long"], arms["fuzzy"].phase1
    assert base_long.num_epochs == bench.E1 + bench.E2 and phase1.num_epochs == bench.E1
    assert base_long.simclr.projector.to_dict() == phase1.simclr.projector.to_dict()
    assert phase1.ensemble.size == 3 and "ensemble" not in base_long or base_long.ensemble.size == 1


def test_phase_2_is_e2_epochs_of_steps_a_quarter_with_all_layers(bench, arms):
    from ssl_jax import fussl

    steps_per_epoch = 50_000 // arms["fuzzy"].phase2.global_batch_size
    full, frozen = fussl.phase2_configs(arms["fuzzy"], "labels.npz")
    assert full.num_steps + frozen.num_steps == bench.E2 * steps_per_epoch
    assert full.num_steps == round(bench.E2 * steps_per_epoch / 4)
    assert frozen.fussl_phase2.frozen_stages == fussl.FROZEN_STAGES
    _, unfrozen = fussl.phase2_configs(arms["no_freeze"], "labels.npz")
    assert unfrozen.fussl_phase2.frozen_stages == 0


def test_progressive_spends_the_sequential_epochs(bench, arms):
    p = arms["progressive"]
    assert p.fussl.cycles == bench.CYCLES and p.fussl.schedule == "progressive" and not p.fussl.freeze
    assert p.fussl.cycles * p.phase1.num_epochs == bench.E1 and p.fussl.cycles * p.phase2.num_epochs == bench.E2
    with pytest.raises(ValueError, match="multiples"):
        bench.arm_config("progressive", 0, e1=3)


def test_report_gives_mean_and_std_over_seeds_and_checks_the_claims_on_the_means(bench):
    import numpy as np

    summaries = [dict(arm="fuzzy", seed=s, knn_top1=k, linear_top1=k + 0.02) for s, k in enumerate((0.40, 0.42, 0.44))]
    summaries += [dict(arm="base", seed=s, knn_top1=k, linear_top1=k + 0.05) for s, k in enumerate((0.39, 0.43))]
    text = bench.report_text(summaries)
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert set(rows) == {"arm", "base", "fuzzy"} and list(rows).index("base") < list(rows).index("fuzzy")
    assert f"42.0 ± {100 * np.std([0.40, 0.42, 0.44], ddof=1):.1f} (n=3)" in rows["fuzzy"]
    # On the means over each arm's seeds, and paired per seed where both arms ran (seeds 0 and 1).
    assert ("FUSSL > Base (kNN): fuzzy - base = +1.0 points, holds on the means; "
            "per seed +1.0 / -1.0: holds at 1 of 2 seeds") in text
    assert ("FUSSL > Base (linear): fuzzy - base = -2.0 points, does not hold on the means; "
            "per seed -2.0 / -4.0: holds at 0 of 2 seeds") in text
    assert "soft" not in text


def test_report_reads_a_difference_that_prints_as_zero_as_a_tie(bench):
    # fuzzy trails soft by 0.04 points: printed +0.0 (never -0.0), which satisfies "fuzzy >= soft".
    summaries = [dict(arm=arm, seed=0, knn_top1=0.5 + shift, linear_top1=0.5 + shift)
                 for arm, shift in (("fuzzy", 0.0), ("soft", 0.0004))]
    text = bench.report_text(summaries)
    assert "fuzzy >= soft (kNN): fuzzy - soft = +0.0 points, holds on the means; per seed +0.0: holds at 1 of 1" in text
    assert "-0.0" not in text
