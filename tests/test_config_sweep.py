"""Every preset of every config builds its model and runs 2 train steps on tiny inputs."""
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


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_every_preset_runs_two_steps(name):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO_ROOT)
    presets = _presets(name)
    out = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tests", "config_sweep.py"), name, *presets],
                         env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["preset"] for r in rows] == list(presets)
    for r in rows:
        assert r["step"] == 2 and np.all(np.isfinite(r["losses"])), r
        print(json.dumps(r))
