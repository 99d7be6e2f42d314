"""What ssl_jax.pretrained reads from a run's config.json without importing the methods."""
import json
import os

import ml_collections

from ssl_jax import presets
from ssl_jax import pretrained as pretrained_lib
from ssl_jax.methods import build_method
from ssl_jax.train import loop
from tests.conftest import REPO_ROOT


def test_config_json_carries_the_evaluated_network():
    """The loop writes each method's evaluated network; pretrained reads it back."""
    for name, expected in (("byol", "online"), ("dino", "target")):
        config = presets.method_config(os.path.join(REPO_ROOT, "configs"), name, "demo")
        method = build_method(config, total_steps=10, steps_per_epoch=5)
        record = ml_collections.ConfigDict(json.loads(loop.run_record(config, method)))
        assert record.evaluated_network == expected == pretrained_lib.default_network(record)


def test_default_network_of_an_older_config_json():
    """Files written before evaluated_network: DINO's teacher, every other method's online network."""
    old = lambda method: ml_collections.ConfigDict({"method": method})
    assert pretrained_lib.default_network(old("dino")) == "target"
    assert pretrained_lib.default_network(old("byol")) == "online"


def test_load_run_config_completes_an_older_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"method": "byol", "seed": 3}))
    config = pretrained_lib.load_run_config(str(tmp_path))
    assert config.seed == 3 and config.model.name == presets.base_config("byol").model.name
