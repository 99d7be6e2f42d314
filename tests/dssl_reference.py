"""The numbers of one loss evaluation per (method, DSSL mode), for tests/test_dssl.py.

    PYTHONPATH=/path/to/checkout python tests/dssl_reference.py OUT.npz

Every two-view method that takes the four-view modes, in each mode of config.dssl ('none',
'heavy', 'repro', 'dssl' and 'dssl' with every weight of Eq. 6 non-zero), on its demo config with a
fixed tiny batch: the loss, its metrics, a fingerprint of every leaf of the gradient, of the new
BatchNorm statistics and method state, of the probe features, and of the state after
`after_update`. tests/data/dssl_reference.npz was written by this script from the code before
DSSL moved out of the method skeleton (commit 3c8d394); test_dssl.py recomputes the same numbers
with the code of the checkout and compares.
"""
import importlib
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

N, SIZE = 4, 8  # images per batch, pixels
METHODS = ("simsiam", "byol", "simclr", "moco_v2", "moco_v3", "barlow_twins", "vicreg")
ALL_WEIGHTS = dict(alpha=0.7, beta=0.5, gamma=0.9, delta=0.3, term_scale=0.5)
# MoCo v2 updates its queue in its loss: no second pair per step (no 'repro', β = 0); its online
# network sees only the standard view v (the query), so no term predicts from v' (δ = 0).
MOCO_V2_WEIGHTS = dict(alpha=0.7, gamma=0.9, term_scale=0.5)


def cases():
    """[(name, method, dssl overrides)]."""
    out = []
    for method in METHODS:
        variants = {"none": dict(mode="none"), "heavy": dict(mode="heavy"), "dssl": dict(mode="dssl")}
        if method == "moco_v2":
            variants["dssl_weights"] = dict(mode="dssl", **MOCO_V2_WEIGHTS)
        else:
            variants["repro"] = dict(mode="repro")
            variants["dssl_weights"] = dict(mode="dssl", **ALL_WEIGHTS)
        out += [(f"{method}/{v}", method, d) for v, d in variants.items()]
    return out


def build(method: str, dssl: dict):
    """(method object, params, batch_stats, method_state, batch) of the fixed tiny setting."""
    from ssl_jax.methods import build_method

    config = importlib.import_module(f"configs.{method}").get_config("demo")
    config.global_batch_size = N
    config.dssl.update(dssl)
    if method == "moco_v2":
        config.moco_v2.queue_size = 4 * N
    m = build_method(config, total_steps=10)
    params, stats, state = m.init(jax.random.key(0), jnp.zeros((2, SIZE, SIZE, 3)))
    views = tuple(jax.random.normal(jax.random.key(i + 1), (N, SIZE, SIZE, 3)) for i in range(m.num_views))
    return m, params, stats, state, {"views": views, "label": jnp.zeros((N,), jnp.int32)}


def fingerprint(tree) -> tuple:
    """(paths, [L, 3] array): per leaf, sum, sum of squares and sum weighted by cos(index) (the
    last is sensitive to where in the leaf a value sits)."""
    paths, rows = [], []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        x = np.asarray(leaf, np.float64).ravel()
        paths.append(jax.tree_util.keystr(path))
        rows.append([x.sum(), (x * x).sum(), (x * np.cos(np.arange(x.size))).sum()])
    return np.asarray(paths), np.asarray(rows, np.float64).reshape(-1, 3)


PARTS = ("grads", "batch_stats", "method_state", "features", "after_update")


def numbers(method: str, dssl: dict) -> dict:
    """Everything one loss evaluation and one after_update of this setting produce."""
    m, params, stats, state, batch = build(method, dssl)

    def loss_fn(p):
        return m.loss(p, stats, state, batch, jax.random.key(9), jnp.int32(2))

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    _, new_state, post = m.after_update(params, aux["method_state"], jnp.int32(2))
    metrics = {**aux["metrics"], **post}
    out = {"loss": np.asarray(loss, np.float64), "num_views": np.asarray(m.num_views),
           "view_plan": np.asarray(repr(tuple(m.view_plan))), "metric_names": np.asarray(sorted(metrics)),
           "metrics": np.asarray([metrics[k] for k in sorted(metrics)], np.float64)}
    for part, tree in zip(PARTS, (grads, aux["batch_stats"], aux["method_state"], aux["features"], new_state)):
        out[f"{part}_paths"], out[part] = fingerprint(tree)
    return out


def main(path: str) -> None:
    arrays = {}
    for name, method, dssl in cases():
        arrays.update({f"{name}/{k}": v for k, v in numbers(method, dssl).items()})
        print(name, float(arrays[f"{name}/loss"]), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez_compressed(path, **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
