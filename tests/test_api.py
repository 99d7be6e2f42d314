"""The Python API (ssl_jax/__init__.py, ssl_jax/api.py): the README's "Use from Python" example
runs as printed, configs load by name, and importing the package changes nothing."""
import json
import os
import re
import subprocess
import sys

import pytest

from ssl_jax import presets, xla_flags
from tests.conftest import REPO_ROOT


def _readme_example() -> str:
    """The first ```python block of the README's "## Use from Python" section."""
    readme = open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8").read()
    section = readme.split("\n## Use from Python\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    # Exactly the README's code (so it cannot rot): BYOL's demo network, batch 16, 2 steps, on
    # random images; it saves and reloads an export in the working directory.
    monkeypatch.chdir(tmp_path)
    exec(compile(_readme_example(), "README.md: Use from Python", "exec"), {})
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines[:2]] == ["0", "1"]  # one loss line per step
    assert all(float(line.split()[1]) > 0 for line in lines[:2])
    assert os.path.isfile(tmp_path / "byol_api.msgpack")


def test_import_changes_nothing():
    # A fresh process: the environment before and after `import ssl_jax` (which once set
    # XLA_FLAGS), and nothing heavy imported until an API name is used.
    code = ("import json, os, sys; before = dict(os.environ); import ssl_jax; "
            "print(json.dumps([before == dict(os.environ), 'jax' in sys.modules, "
            "'tensorflow' in sys.modules, 'config' in dir(ssl_jax), sorted(ssl_jax.__all__)]))")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    unchanged, has_jax, has_tf, has_config, names = json.loads(proc.stdout.strip().splitlines()[-1])
    assert unchanged and not has_jax and not has_tf and has_config
    assert {"config", "build", "batches", "load_pretrained", "losses"} <= set(names)


def test_commands_still_set_the_xla_cpu_default():
    env = {}
    xla_flags.set_cpu_defaults(env)
    assert env["XLA_FLAGS"] == f"{xla_flags.YNN_FLAG}="
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    xla_flags.set_cpu_defaults(env)
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {xla_flags.YNN_FLAG}="
    env = {"XLA_FLAGS": f"{xla_flags.YNN_FLAG}=default"}  # the user's value wins
    xla_flags.set_cpu_defaults(env)
    assert env["XLA_FLAGS"] == f"{xla_flags.YNN_FLAG}=default"


def test_configs_by_name():
    import ssl_jax

    names = ssl_jax.config_names()
    assert {"byol", "simclr", "dino", "eval/knn", "eval/linear"} <= set(names)
    by_name = ssl_jax.config("byol", "demo")
    by_path = presets.load_config_file(os.path.join(REPO_ROOT, "configs", "byol.py") + ":demo")
    assert by_name.to_json() == by_path.to_json()
    assert ssl_jax.config("eval/knn", "demo").protocol == "knn"
    assert ssl_jax.config("simclr.py").to_json() == presets.load_config_file(
        os.path.join(REPO_ROOT, "configs", "simclr.py")).to_json()
    with pytest.raises(ValueError, match="Unknown config 'byl'; choose one of: .*byol"):
        ssl_jax.config("byl")
    with pytest.raises(ValueError, match="Unknown preset 'nope'"):
        ssl_jax.config("byol", "nope")


def test_bad_images_are_one_clear_error():
    import numpy as np

    from ssl_jax import api

    with pytest.raises(ValueError, match="NHWC"):
        api._as_uint8_rgb(np.zeros((2, 3, 8, 8, 1)))
    with pytest.raises(ValueError, match=r"uint8 or floats in \[0, 1\]"):
        api._as_uint8_rgb(np.full((2, 8, 8, 3), 255.0))
    gray = api._as_uint8_rgb(np.full((2, 8, 8), 0.5))
    assert gray.shape == (2, 8, 8, 3) and gray.dtype == np.uint8 and (gray == 128).all()
