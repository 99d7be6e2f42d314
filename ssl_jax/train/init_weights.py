"""Initial weights of a run from a file: `config.init_weights` (ssl_jax.presets.base_config; '' =
the method's own random initialisation).

The one hook by which a training run starts from other weights (FUSSL: phase 2 from the chosen
phase-1 block, phase 2b from phase 2a, a progressive cycle's phase 1 from the previous phase 2;
ssl_jax/fussl.py writes the files). ssl_jax.train.loop.init_state reads the file when it builds
the initial state, and ssl_jax.train.step.create_state puts it in (`apply`) after the method's
own initialisation and before the optimizer's: a resumed run restores its checkpoint over that
state, so the file only ever decides step 0.

What a file holds: params and BatchNorm statistics of some of the method's top-level modules
(e.g. 'encoder' and 'projector'). Each replaces the module of that name; the method's other parts
keep their fresh initialisation from config.seed (a predictor, SwAV's prototypes, the online
probe; a queue or centre in the method state), and where the method keeps a momentum target
holding that module (method_state['target'], ssl_jax.methods.base: BYOL, MoCo, DINO), the
target's copy is replaced too, so that the target starts equal to the online network as it does
after a random init. The optimizer state is built afterwards: a fresh one over the new params.
An ensemble (ssl_jax.methods.ensemble) puts the weights into its one block, then copies it into
every block: m identically initialised blocks.
"""
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp

from ssl_jax import storage

FORMAT = "ssl_jax.init_weights/1"
# The FUSSL-only name these files had before the hook was general (same layout): still read.
OLD_FORMATS = ("ssl_jax.fussl.init/1",)


def write(path: str, params: dict, batch_stats: dict, modules, source: str) -> None:
    """`path` holding the params and BatchNorm statistics of `modules` (top-level names) of a run,
    written atomically; `source` says where they come from (a workdir, a step, a block)."""
    payload = {"format": FORMAT, "source": source,
               "params": jax.device_get({k: params[k] for k in modules}),
               "batch_stats": jax.device_get({k: batch_stats.get(k, {}) for k in modules})}
    storage.write_file(path, flax.serialization.msgpack_serialize(payload))


def read(path: str) -> dict:
    """A weights file as {'format', 'source', 'params', 'batch_stats'} (host NumPy leaves)."""
    if not storage.exists(path):
        raise FileNotFoundError(f"config.init_weights={path!r} does not exist: point it at a weights file "
                                "(ssl_jax.train.init_weights.write; FUSSL's runs write them), or set it to '' "
                                "for the method's random initialisation.")
    payload = flax.serialization.msgpack_restore(storage.read_bytes(path))
    if not isinstance(payload, dict) or payload.get("format") not in (FORMAT,) + OLD_FORMATS:
        raise ValueError(f"{path} is not an initial-weights file (format {FORMAT!r}); "
                         "ssl_jax.train.init_weights.write makes them.")
    return payload


def apply(params: dict, batch_stats: dict, method_state: Any, weights: dict, path: str = "config.init_weights"):
    """(params, batch_stats, method_state) with every module of `weights` (`read`'s dict) put in,
    in the online network and in a momentum target that holds the module (module docstring).
    One error naming the module when its shapes differ from this run's; jit-able."""
    target = method_state.get("target") if isinstance(method_state, dict) else None
    params, batch_stats = dict(params), dict(batch_stats)
    if target is not None:
        target = {"params": dict(target["params"]), "batch_stats": dict(target["batch_stats"])}
    for name in weights["params"]:
        if name not in params:
            raise ValueError(f"{path} holds weights of a module {name!r} this run's method does not have (its "
                             f"modules: {sorted(params)}).")
        for what, tree in (("params", params), ("batch_stats", batch_stats)):
            new = weights[what].get(name, {})
            want = jax.tree.map(jnp.shape, tree.get(name, {}))
            got = jax.tree.map(jnp.shape, new)
            if jax.tree.structure(want) != jax.tree.structure(got) or want != got:
                raise ValueError(f"{path} holds {what} of another {name!r} than this run's (config.model and the "
                                 "method's head configs must be those of the run that wrote it).")
            loaded = jax.tree.map(lambda old, x: jnp.asarray(x, jnp.result_type(old)), tree.get(name, {}), new)
            tree[name] = loaded
            if target is not None and name in target[what]:
                target[what][name] = jax.tree.map(jnp.copy, loaded)
    if target is not None:
        method_state = dict(method_state, target=target)
    return params, batch_stats, method_state
