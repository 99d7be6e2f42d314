"""What ssl_jax.pretrained reads from a run's config.json without importing the methods."""
import json
import os

import ml_collections
import numpy as np

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


def test_an_export_without_newer_model_fields_loads_with_their_defaults(tmp_path):
    """An older Flax export whose model_config lacks fields added since (here conv_backend,
    zero_init_residual and the ViT keys) is completed against the base config on load."""
    import flax.serialization
    import jax
    import jax.numpy as jnp
    import ml_collections

    from ssl_jax import presets, pretrained
    from ssl_jax.models import build_encoder

    full = presets.base_config("byol").model
    full.update(dict(name="resnet18", width=0.125, cifar_stem=True, dtype="float32", conv_backend="xla"))
    variables = build_encoder(full).init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), train=False)
    old = {k: full[k] for k in ("name", "width", "cifar_stem", "dtype", "remat")}
    payload = {"format": pretrained.FLAX_FORMAT, "model_config": ml_collections.ConfigDict(old).to_json(),
               "run": "{}", "network": "online", "data": "{}", "variables": jax.device_get(dict(variables)),
               "heads": {}}
    path = tmp_path / "old.msgpack"
    path.write_bytes(flax.serialization.msgpack_serialize(payload))
    pre = pretrained.load_flax(str(path))
    assert pre.model_config.width == 0.125 and pre.model_config.zero_init_residual is True
    assert pre.model_config.conv_backend == presets.base_config("byol").model.conv_backend
    x = jnp.ones((2, 16, 16, 3))
    out = pre.encoder.apply(pre.variables, x, train=False)
    # The same function as the network it was exported from (only the summation order of the
    # convolution backend may differ).
    np.testing.assert_allclose(out, build_encoder(full).apply(variables, x, train=False), rtol=1e-4, atol=1e-5)
