"""Every preset of every config builds its model and runs 2 train steps on tiny inputs.

The ImageNet-scale presets (ResNet-50, heads up to 3x8192) take ~30 s each to compile and
initialise on 2 CPU cores, more than the CI budget allows for all of them together; they
are marked slow and run with `python -m pytest -q tests --run-slow -m slow`."""
import glob
import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

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


def _scale(name, preset):
    """'imagenet', 'cifar10' or 'demo': the dataset preset a config preset builds on."""
    dataset = importlib.import_module(f"configs.{name}").get_config(preset).data.dataset
    return {"imagenet2012": "imagenet", "cifar10": "cifar10", "digits": "demo"}[dataset]


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


def test_cifar10_presets_run_two_steps():
    """Every cifar10-scale preset. (Every demo preset runs 2 steps, on 1 and on 8 devices,
    in tests/test_sharding.py.)"""
    _run_sweep([(n, p) for n in CONFIGS for p in _presets(n) if _scale(n, p) == "cifar10"])


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_imagenet_presets_run_two_steps(name):
    _run_sweep([(name, p) for p in _presets(name) if _scale(name, p) == "imagenet"])
