"""Ensembles (ssl_jax.methods.ensemble): a 3-block step is three 1-block steps on the same views
(per-block BatchNorm, LARS trust ratios and weight-decay masks, EMA targets); the block axis is
never sharded; size 1 is the program without the feature; an ensemble run checkpoints, resumes
exactly, and its workdir evaluates and exports its eval_block. 1-vs-8-device equality:
tests/test_sharding.py ('byol+ensemble3')."""
import os
import re
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from ssl_jax import parallel
from ssl_jax.methods import build_method, ensemble
from ssl_jax.train import loop
from ssl_jax.train import step as step_lib
from ssl_jax.train.state import TrainState
from tests.step_equivalence import tiny_config

M, BATCH, SIZE = 3, 16, 16
# The reference 1-block steps compile at XLA's optimisation level 0: half the compile time.
FAST = {"xla_backend_optimization_level": 0}


def _config(method: str, size: int = M, execution: str = "auto"):
    """The method's tiny config (ResNet-10 at width 1/8, 16 px, batch 16) as m blocks, trained with
    LARS and a weight decay large enough to matter (biases and BN excluded: masks per leaf).
    The equivalence test and the resume test build the same step program from it, so the second
    finds it in the persistent compilation cache."""
    config = tiny_config(method)
    config.global_batch_size = BATCH
    config.optimizer.update(dict(name="lars", weight_decay=1e-2, exclude_bias_and_bn_from_wd=True))
    config.ensemble.update(dict(size=size, execution=execution))
    config.update(dict(num_steps=4, log_every_steps=2))
    config.optimizer.warmup_epochs = 0.02  # 2 of the 4 steps (89 steps per epoch of the digits)
    config.checkpoint.update(dict(every_steps=2, keep=3, async_save=False))
    config.eval.update(dict(every_steps=0, linear_probe=False, compare_random_init=False))
    return config


def _build(config):
    """(method, optimizer, lr schedule, initial state, mesh) as the training loop builds them."""
    mesh = parallel.mesh_from_config(config.mesh)
    info, _, _, method, optimizer, lr = loop.build(config, mesh)
    state, _ = loop.init_state(config, method, optimizer, info, mesh)
    return method, optimizer, lr, state, mesh


def _batch(rng, num_views, mesh):
    return parallel.shard_batch({"views": tuple(rng.normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32)
                                                for _ in range(num_views)),
                                 "label": rng.integers(0, 10, BATCH).astype(np.int32),
                                 "index": np.arange(BATCH, dtype=np.int32)}, mesh)


def _leaves(tree):
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def _noise_momentum(name: str, block) -> bool:
    """The momentum of a head's hidden-layer bias: a BatchNorm follows it, so its true gradient
    is 0 and the momentum is float32 rounding noise (~1e-6) in either summation order. Nothing to
    compare (as tests/test_sharding.py's W-MSE exception); the bias itself is compared."""
    m = re.search(r"\['(projector|predictor)'\]\['dense(\d+)'\]\['bias'\]", name)
    if m is None or not name.startswith(".opt_state"):
        return False
    head = block.cfg[m.group(1)]
    return bool(head.hidden_bn) and int(m.group(2)) < int(head.num_layers) - 1


@pytest.mark.parametrize("method_name,execution", [("byol", "loop"), ("byol", "unrolled"), ("barlow_twins", "auto")])
def test_three_block_step_equals_three_one_block_steps(method_name, execution):
    """Two steps of a 3-block ensemble against the 1-block step run on each block's own views with
    that block's key fold_in(rng, k): params (probe included), BN statistics, optimizer state,
    method state (BYOL's EMA target) and per-block losses agree; the blocks start identical and
    end different (their views differ), so a step that mixed blocks or views would fail. Both
    ways of running the blocks (a while loop, unrolled) are held to it."""
    config = _config(method_name, execution=execution)
    method, optimizer, lr, state, mesh = _build(config)
    assert method.execution == ensemble.resolve_execution(execution)
    block = ensemble.block_method(method)
    assert isinstance(state, ensemble.EnsembleState) and method.num_views == M * block.num_views
    first = _leaves(ensemble.select_block(state, 0))
    for k in range(1, M):  # one initialisation, copied into every block
        for name, x in _leaves(ensemble.select_block(state, k)).items():
            np.testing.assert_array_equal(x, first[name], err_msg=name)
    refs = [ensemble.select_block(state, k).replace(rng=jax.random.fold_in(state.rng, k)) for k in range(M)]
    ens_step = None
    ref_step = jax.jit(step_lib.make_train_step(block, optimizer, lr, 10), compiler_options=FAST)
    rng = np.random.default_rng(0)
    v = block.num_views
    for _ in range(2):
        batch = _batch(rng, M * v, mesh)
        ref_metrics = []
        for k in range(M):
            refs[k], mk = ref_step(refs[k], dict(batch, views=batch["views"][k * v:(k + 1) * v]))
            ref_metrics.append(mk)
        # The loop's compiled step (state donated), as ssl_jax.train.loop runs it.
        ens_step = ens_step or step_lib.compile_step(step_lib.make_train_step(method, optimizer, lr, 10),
                                                     state, mesh)
        state, metrics = ens_step(state, batch)
        for k in range(M):
            np.testing.assert_allclose(metrics[f"loss_block{k}"], ref_metrics[k]["loss"], rtol=1e-5)
        np.testing.assert_allclose(metrics["loss"], np.mean([m["loss"] for m in ref_metrics]), rtol=1e-5)
        np.testing.assert_allclose(metrics["probe_loss"], np.mean([m["probe_loss"] for m in ref_metrics]),
                                   rtol=1e-5)
    assert int(state.step) == 2
    keys = None
    for k in range(M):
        got, want = _leaves(ensemble.select_block(state, k)), _leaves(refs[k])
        keys = keys or list(want)
        assert list(got) == list(want)
        for name in want:
            if name.startswith(".rng"):
                continue  # the ensemble keeps its one base key; each reference its block's key
            if _noise_momentum(name, block):
                continue
            # Float32 sums in another order (vmapped against not): errors relative to the leaf's
            # scale (Barlow Twins' BN-bias momenta reach ~60 beside entries of ~0.1).
            atol = 1e-5 * max(1.0, float(np.abs(want[name]).max()))
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=atol, err_msg=f"block {k} {name}")
    if method_name == "byol":
        assert any("target" in k for k in keys)
    assert any("opt_state" in k for k in keys)
    enc = _leaves(state.params["encoder"])
    assert any(np.abs(x[0] - x[1]).max() > 1e-4 for x in enc.values()), "blocks 0 and 1 did not diverge"
    if method_name != "byol":
        return
    # The inference-mode projections of every block: [m, N, D], block k's = its own network's.
    images = batch["views"][0]
    z = jax.jit(lambda p, s: ensemble.project(method, p, s, images), compiler_options=FAST)(
        state.params, state.batch_stats)
    assert z.shape == (M, BATCH, block.cfg.projector.output_dim)
    p1, s1 = ensemble.select_block(state.params, 1), ensemble.select_block(state.batch_stats, 1)
    h = block.encoder.apply({"params": p1["encoder"], "batch_stats": s1["encoder"]}, images, train=False)
    z1 = block.heads["projector"].apply({"params": p1["projector"], "batch_stats": s1["projector"]}, h, train=False)
    np.testing.assert_allclose(z[1], z1, rtol=1e-5, atol=1e-6)


def test_size_one_is_the_program_without_ensembles():
    """config.ensemble.size = 1 builds the plain method, and its step lowers to the same program
    (HLO text) as a config that has no ensemble section at all."""
    lowered = []
    for size in (1, None):
        config = _config("simclr", size=1)
        if size is None:
            del config["ensemble"]
        info, _, _, method, optimizer, lr = loop.build(config, parallel.mesh_from_config(config.mesh))
        state = jax.eval_shape(lambda r: step_lib.create_state(method, optimizer, r, jnp.zeros((2, SIZE, SIZE, 3)),
                                                               info["num_classes"]), jax.random.PRNGKey(0))
        assert not isinstance(method, ensemble.Ensemble) and type(state) is TrainState
        image = jax.ShapeDtypeStruct((BATCH, SIZE, SIZE, 3), jnp.float32)
        labels = jax.ShapeDtypeStruct((BATCH,), jnp.int32)
        batch = {"views": (image,) * method.num_views, "label": labels, "index": labels}
        lowered.append(jax.jit(step_lib.make_train_step(method, optimizer, lr, 10)).lower(state, batch).as_text())
    assert lowered[0] == lowered[1]


def test_project_reads_a_one_block_run_as_a_stack_of_one():
    """FUSSL's labelling pass at ensemble_size 1 stacks the plain method's trees: [1, N, D], the
    network's own inference-mode projections."""
    method, _, _, state, _ = _build(_config("simclr", size=1))
    images = jnp.asarray(np.random.default_rng(0).normal(size=(4, SIZE, SIZE, 3)), jnp.float32)
    z = ensemble.project(method, ensemble.stack(state.params, 1), ensemble.stack(state.batch_stats, 1), images)
    h = method.encoder.apply({"params": state.params["encoder"], "batch_stats": state.batch_stats["encoder"]},
                             images, train=False)
    want = method.heads["projector"].apply({"params": state.params["projector"],
                                            "batch_stats": state.batch_stats["projector"]}, h, train=False)
    assert z.shape == (1,) + want.shape
    np.testing.assert_allclose(z[0], want, rtol=1e-5, atol=1e-6)


def test_block_axis_is_never_sharded():
    """Under FSDP the rules apply to a stacked leaf without its block axis: a leaf whose only
    divisible dimension is the block axis stays whole, a small per-block leaf stays whole, a conv
    kernel splits its output channels; data parallelism replicates everything."""
    mesh = AbstractMesh((2, 4), parallel.BATCH_AXES)
    z = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
    state = ensemble.EnsembleState(step=z(), rng=z(2), params={"odd": z(4, 4099, 7), "small": z(4, 2048),
                                                               "conv": z(4, 3, 3, 64, 128)},
                                   batch_stats={}, opt_state={"mu": z(4, 3, 3, 64, 128)}, method_state={})
    spec = jax.tree.map(lambda s: s.spec, parallel.state_sharding(state, mesh))
    assert spec.params == {"odd": P(None), "small": P(None), "conv": P(None, None, None, None, "fsdp")}
    assert spec.opt_state["mu"] == P(None, None, None, None, "fsdp")
    assert spec.step == P() and spec.rng == P()
    dp = parallel.state_sharding(state, AbstractMesh((8, 1), parallel.BATCH_AXES))
    assert all(s.spec in (P(), P(None)) for s in jax.tree.leaves(dp))


def test_execution_follows_the_target_devices():
    """'auto' unrolls the blocks on CPUs (this host, 1 or 8 devices) and loops them on a TPU (a
    compile for a topology from this host passes the topology's devices); a fixed choice is
    kept; anything else is an error naming the choices."""
    tpu, cpu = types.SimpleNamespace(platform="tpu"), types.SimpleNamespace(platform="cpu")
    assert ensemble.resolve_execution("auto") == "unrolled"
    assert ensemble.resolve_execution("auto", devices=[cpu] * 8) == "unrolled"
    assert ensemble.resolve_execution("auto", devices=[tpu] * 4) == "loop"
    assert ensemble.resolve_execution("unrolled", devices=[tpu]) == "unrolled"
    assert ensemble.resolve_execution("loop") == "loop"
    with pytest.raises(ValueError, match="not one of"):
        ensemble.resolve_execution("vmap")
    config = _config("simclr")
    del config.ensemble["execution"]  # a config.json written before the key existed
    assert build_method(config, total_steps=10, steps_per_epoch=5).execution == "unrolled"


def test_bad_ensemble_settings_are_one_clear_error():
    config = _config("simclr")
    config.ensemble.eval_block = 3
    with pytest.raises(ValueError, match="eval_block=3"):
        build_method(config, total_steps=10, steps_per_epoch=5)
    with pytest.raises(ValueError, match="refreshes its targets"):
        build_method(_config("deepcluster"), total_steps=10, steps_per_epoch=5)
    config = _config("simclr")
    config.data.views = config.data.views[:1] + config.data.views  # 3 configs for 2 views
    config.data.views[0]["flip_prob"] = 0.25
    with pytest.raises(ValueError, match="do not repeat every 2 views"):
        build_method(config, total_steps=10, steps_per_epoch=5)


def test_ensemble_run_resumes_exactly_and_evaluates_its_eval_block(tmp_path):
    """Barlow Twins as 3 blocks for 4 steps (checkpoints at 2 and 4; the step program of the
    equivalence test above): with the step-4 checkpoint deleted, the rerun resumes at 2 and ends
    on the same state, bit for bit; the evaluation hooks get block eval_block = 1 as a 1-block
    run; the workdir loads (what evaluate and export read) as that block; the records name the
    ensemble."""
    from ssl_jax import pretrained
    from ssl_jax.train import checkpoint

    config = _config("barlow_twins")
    config.ensemble.eval_block = 1
    workdir = str(tmp_path / "run")
    seen = []
    evaluator = loop.Evaluator(during=lambda run, state, step: seen.append((run.method, state)) or {},
                               after=lambda run, state: seen.append((run.method, state)) or [])
    records = loop.run(config, workdir, evaluator)
    assert {r["method"] for r in records} == {"barlow_twins+ensemble3"}
    done, step, _ = checkpoint.restore_raw(workdir)
    assert step == 4 and np.shape(done["params"]["probe"]["kernel"])[0] == M
    block1 = _leaves(ensemble.select_block(done, 1))
    assert len(seen) == 3  # the log steps 2 and 4, then the final records
    for method, state in seen:
        assert type(state) is TrainState and not isinstance(method, ensemble.Ensemble)
    final = seen[-1][1]
    for name, x in _leaves({f: getattr(final, f) for f in ("step", "params", "batch_stats", "method_state")}).items():
        np.testing.assert_array_equal(x, block1[name], err_msg=name)

    shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
    loop.run(config, workdir)
    again, step, _ = checkpoint.restore_raw(workdir)
    assert step == 4
    want, got = _leaves(done), _leaves(again)
    assert list(want) == list(got)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)

    pre = pretrained.load_workdir(workdir)
    for name, x in _leaves(pre.variables["params"]).items():
        np.testing.assert_array_equal(x, block1["['params']['encoder']" + name], err_msg=name)
