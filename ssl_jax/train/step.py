"""The generic pure train step, shared by every method.

train_step(state, batch) -> (state, metrics): method loss + online linear probe -> grads
-> optax -> the method's post-update (EMA, queue, centre). Compiled once by `compile_step`
with jax.jit over the mesh; schedules are evaluated inside from state.step.

An ensemble (config.ensemble.size > 1, ssl_jax.methods.ensemble) is the 1-block state stacked
and the 1-block step mapped over its blocks: the two hooks below.
"""
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from ssl_jax import parallel
from ssl_jax.methods import ensemble
from ssl_jax.monitors import collapse_std
from ssl_jax.train import init_weights
from ssl_jax.train.state import TrainState

PROBE = nn.Dense  # the online linear probe: one Dense layer on the frozen representation


def probe_loss(probe_params, features, labels, num_classes):
    """Cross-entropy and top-1 of a linear classifier on stop-gradient features.

    As in the BYOL implementation: trained alongside, its gradient never reaches the
    encoder, so it only reports how linearly separable the representation is.
    """
    logits = PROBE(num_classes).apply({"params": probe_params}, jax.lax.stop_gradient(features))
    logits = logits.astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    top1 = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
    return ce, top1


def init_key(rng: jax.Array) -> jax.Array:
    """An `rbg` PRNG key derived from a raw threefry key, for parameter initialisation only.

    Why: XLA compiles threefry's bit generation for the ~100 initialisers of a ResNet very
    slowly on CPU (13 s for a ResNet-18 init on 2 cores, against 3 s with `rbg`, which uses
    XLA's RngBitGenerator). The values stay a deterministic function of the seed.
    """
    return jax.random.wrap_key_data(jnp.concatenate([rng, rng]).astype(jnp.uint32), impl="rbg")


def create_state(method, optimizer: optax.GradientTransformation, rng: jax.Array,
                 sample_images: jax.Array, num_classes: int, initial_weights: dict | None = None) -> TrainState:
    """Initial state: method params/stats/state, the probe, optimizer state, step 0 (an
    ensemble: one block's, copied into every block). `initial_weights` (config.init_weights
    read by ssl_jax.train.init_weights.read) replace the modules they hold before the optimizer
    state is made (ssl_jax.train.init_weights.apply)."""
    if ensemble.num_blocks(method) > 1:
        one = create_state(ensemble.block_method(method), optimizer, rng, sample_images, num_classes,
                           initial_weights)
        return method.stack_state(one)
    init_rng, probe_rng, run_rng = jax.random.split(rng, 3)
    params, batch_stats, method_state = method.init(init_key(init_rng), sample_images)
    if initial_weights is not None:
        params, batch_stats, method_state = init_weights.apply(params, batch_stats, method_state, initial_weights)
    params["probe"] = PROBE(num_classes).init(
        probe_rng, jnp.zeros((1, method.encoder.feature_dim)))["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=optimizer.init(params), method_state=method_state, rng=run_rng)


def make_train_step(method, optimizer: optax.GradientTransformation,
                    lr_schedule: Callable[[Any], Any], num_classes: int):
    """The pure step function for `method` (not yet compiled; an ensemble's: its block's, mapped over the blocks)."""
    if ensemble.num_blocks(method) > 1:
        return method.map_step(make_train_step(ensemble.block_method(method), optimizer, lr_schedule,
                                                num_classes))

    def loss_fn(params, state: TrainState, batch, rng):
        loss, aux = method.loss(params, state.batch_stats, state.method_state, batch, rng, state.step)
        p_loss, p_top1 = probe_loss(params["probe"], aux["features"], batch["label"], num_classes)
        feats = jax.lax.stop_gradient(aux["features"])
        # The collapse monitor (SimSiam §4.1) of the encoder features, against its 1/sqrt(D)
        # reference: logged every step, so a collapse shows in metrics.jsonl as it happens.
        metrics = dict(aux["metrics"], loss=loss, probe_loss=p_loss, probe_top1=p_top1,
                       collapse_std=collapse_std(feats),
                       collapse_std_reference=1.0 / jnp.sqrt(jnp.float32(feats.shape[-1])))
        return loss + p_loss, (aux, metrics)

    def train_step(state: TrainState, batch) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        grads, (aux, metrics) = jax.grad(loss_fn, has_aux=True)(state.params, state, batch, rng)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        params, method_state, post_metrics = method.after_update(params, aux["method_state"], state.step)
        metrics = dict(metrics, **post_metrics, lr=lr_schedule(state.step),
                       grad_norm=optax.tree.norm(grads))
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=aux["batch_stats"],
                                  opt_state=opt_state, method_state=method_state)
        return new_state, metrics

    return train_step


def compile_step(train_step, state: TrainState, mesh: Mesh):
    """jax.jit of the step with NamedSharding for state (arrays or their shapes) and batch (every
    leaf split along its leading axis); the state is donated.

    The step is traced under the mesh (as an abstract mesh), so that code inside it can place
    a sharding constraint without being handed the mesh (ssl_jax.methods.base.rank_sample)."""
    state_sh = parallel.state_sharding(state, mesh)
    batch_sh = parallel.batch_sharding(mesh)  # a prefix of the whole batch tree

    def step_under_mesh(state, batch):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return train_step(state, batch)

    return jax.jit(step_under_mesh, in_shardings=(state_sh, batch_sh),
                   out_shardings=(state_sh, parallel.replicated(mesh)), donate_argnums=(0,))
