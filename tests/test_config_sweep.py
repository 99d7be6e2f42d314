"""Every preset of every config builds its model and runs 2 train steps on tiny inputs.

In CI every preset builds its method, optimizer and state and traces its whole train step
(jax.eval_shape: every module, shape and config key is exercised, nothing is compiled), and
every demo preset runs 2 real steps on 1 and on 8 devices (tests/test_sharding.py).
Compiling and running 2 steps of the cifar10- and ImageNet-scale presets (ResNet-50, heads
up to 3x8192, ViT-B) takes 20-120 s each on 2 CPU cores, beyond the CI budget for all 30 of
them: those tests are marked slow (`python -m pytest -q tests --run-slow -m slow`)."""
import glob
import importlib
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.methods import METHODS
from tests.conftest import REPO_ROOT
from tests.tiny_run import tiny_image_size, trace_step

CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO_ROOT, "configs", "*.py")))


def _presets(name):
    return importlib.import_module(f"configs.{name}").PRESETS


def test_every_config_lists_its_presets_and_rejects_unknown_ones():
    assert {"byol", "simclr", "moco_v2", "moco_v3", "simsiam", "barlow_twins", "vicreg", "wmse"} <= set(CONFIGS)
    for name in CONFIGS:
        module = importlib.import_module(f"configs.{name}")
        assert module.__doc__.lstrip().split("\n")[0], name
        assert {"cifar10", "demo"} <= set(module.PRESETS), name
        assert module.get_config("").to_dict() == module.get_config(module.PRESETS[0]).to_dict()
        with pytest.raises(ValueError, match="Unknown preset"):
            module.get_config("no_such_preset")


def _staged(config) -> bool:
    """SSL++'s staged run (configs/sslpp.py): its stages are configs/iic.py's and a proxy's presets;
    FUSSL's (configs/fussl.py): a baseline's preset as an ensemble, then phase 2 on its labels."""
    return config.method in ("sslpp", "fussl")


def _scale(name, preset):
    """'imagenet', 'cifar10' or 'demo': the dataset preset a config preset builds on."""
    config = importlib.import_module(f"configs.{name}").get_config(preset)
    dataset = ({"sslpp": config.get("stage_c"), "fussl": config.get("phase2")}.get(config.method)
               or config).data.dataset
    return {"imagenet2012": "imagenet", "cifar10": "cifar10", "cifar100": "cifar10", "mnist": "cifar10",
            "digits": "demo"}[dataset]


def _run_sweep(pairs):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO_ROOT)
    out = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tests", "config_sweep.py"),
                          *[f"{n}:{p}" for n, p in pairs]],
                         env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=3000)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [(r["config"], r["preset"]) for r in rows] == list(pairs)
    for r in rows:
        assert r["step"] == 2 and np.all(np.isfinite(r["losses"])), r
        print(json.dumps(r))


def test_every_preset_is_imagenet_cifar10_or_demo_scale():
    for name in CONFIGS:
        for preset in _presets(name):
            assert _scale(name, preset) in ("imagenet", "cifar10", "demo")


@pytest.mark.parametrize("name", CONFIGS)
def test_every_preset_builds_and_traces_its_train_step(name):
    for preset in _presets(name):
        if name == "fussl" and (preset not in importlib.import_module("configs.fussl").SCALES or preset == "cifar100"):
            # A variant: labelling / phase-2 settings or a baseline control, whose network and step
            # are its scale's phase 1 (traced below); tests/test_fussl.py builds the variants.
            # FUSSL's cifar100 is cifar10's network and step on other data (tests/test_class_split.py).
            continue
        config = importlib.import_module(f"configs.{name}").get_config(preset)
        if config.method == "sslpp":  # its stage configs build here; tests/test_sslpp.py runs the stages
            assert config.stage_a.method == "iic" and config.stage_c.method in METHODS, preset
            continue
        if config.method == "fussl":  # tests/test_fussl.py runs the phases (phase 2 needs a labels file)
            assert config.phase1.method in METHODS and config.phase2.method == "fussl_phase2", preset
            config = config.phase1
        # 8 images (W-MSE: its whitening sub-batch, which must exceed the embedding size).
        config.global_batch_size = config.wmse.w_size if config.method == "wmse" else 8
        metrics = trace_step(config, image_size=tiny_image_size(config, 32))
        assert metrics["loss"].shape == () and metrics["loss"].dtype == jnp.float32, preset
        assert {"lr", "grad_norm", "probe_top1"} <= set(metrics), preset


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_presets_run_two_steps(name):
    """cifar10- and ImageNet-scale presets, compiled and run (demo presets: test_sharding)."""
    pairs = [(name, p) for p in _presets(name) if _scale(name, p) != "demo"]
    if _staged(importlib.import_module(f"configs.{name}").get_config(pairs[0][1])):
        pytest.skip("a staged run: its stages are presets of other configs (configs/iic.py and the "
                    "proxies; FUSSL's baselines) or need a labels file (tests/test_fussl.py)")
    _run_sweep(pairs)
