"""The shared skeleton of the pixel-level proxy tasks (colorization, context encoder, AET).

Each takes one augmented view per image from the input pipeline and makes its network input and
its target from it on device, inside the jitted step (so they shard like any step: every op is
per example). The method then says only:

  build_decoder()         its head V1 (a flax module)
  decoder_input(...)      what the head reads of an encoder pass (the pooled features or the map)
  head_init_input(...)    the head's input at init from decoder_input's (AET: two branches)
  task(params, batch_stats, x, rng, method_state, step) -> (loss, metrics, features,
                          new batch_stats, method_state updates): inputs, targets, encoder, head

Config section keys read here: num_views (1), per_view_bn (False), momentum (None), projector
(None), predictor (None): the keys every method section has (ssl_jax.methods.base), none used.

Where SSL++'s semantic head V2 attaches: a C-way classifier on `features` (the pooled backbone
features `task` returns, the same ones the online probe and kNN read) with L = L_s + λ·L_c;
each method's docstring names which of its inputs those features come from.
"""
import abc

import jax
import jax.numpy as jnp

from ssl_jax.methods import common
from ssl_jax.methods.base import JointEmbeddingMethod
from ssl_jax.models import decoders


class ProxyTask(JointEmbeddingMethod, abc.ABC):
    """Encoder + one decoder head; no projector, no momentum target."""

    head_outputs = ()

    def build_heads(self) -> dict:
        return {"decoder": self.build_decoder()}

    @abc.abstractmethod
    def build_decoder(self):
        """The task's head V1."""

    @abc.abstractmethod
    def decoder_input(self, pooled: jax.Array, feature_map: jax.Array) -> jax.Array:
        """What the head reads of one encoder pass (its pooled features or its last map)."""

    @abc.abstractmethod
    def task(self, params, batch_stats, x, rng, method_state, step):
        """(loss, metrics, features [N, D], new batch_stats, method_state updates) of a batch of
        normalised images x [N, H, W, 3] at train step `step`."""

    def head_init_input(self, head_in):
        """The head's input at init from `decoder_input`'s output (default: the same)."""
        return head_in

    def objective(self, out, target, method_state, rng, step, params):
        # Joint-embedding hook, not used: `loss` below builds the task's inputs and targets
        # from the pixels, which `objective` never sees.
        raise TypeError(f"{type(self).__name__} computes its loss in `task`, not `objective`.")

    def init(self, rng, images):
        k_enc, k_head = jax.random.split(rng)
        variables = self.encoder.init(k_enc, images, train=False)
        params = {"encoder": variables["params"]}
        batch_stats = {"encoder": variables.get("batch_stats", {})}
        # The head only needs its input's shape: no forward pass to compile.
        head_in = jax.eval_shape(lambda v, x: self.decoder_input(*decoders.encode_with_map(
            self.encoder, v["params"], v.get("batch_stats", {}), x, train=False)[:2]), variables,
            self.head_init_images(images))
        head_in = self.head_init_input(jnp.zeros(head_in.shape, jnp.float32))
        head_vars = self.heads["decoder"].init(k_head, head_in, train=False)
        params["decoder"] = head_vars["params"]
        batch_stats["decoder"] = head_vars.get("batch_stats", {})
        return params, batch_stats, self.init_extra_state(jax.random.fold_in(rng, 3))

    def head_init_images(self, images):
        """The encoder input whose features the head reads, for shapes at init (default: as is)."""
        return images

    def encode(self, params, batch_stats, x, rng):
        """(pooled, last map, new encoder batch_stats): one training-mode encoder pass."""
        return decoders.encode_with_map(self.encoder, params["encoder"], batch_stats["encoder"], x,
                                        rng=common.drop_path_rng(rng, 0))

    def decode(self, params, batch_stats, head_in):
        """The head in training mode: (output, new head batch_stats)."""
        return common.apply_train(self.heads["decoder"], params["decoder"], batch_stats["decoder"], head_in)

    def loss(self, params, batch_stats, method_state, batch, rng, step):
        loss, metrics, features, stats, updates = self.task(params, batch_stats, batch["views"][0], rng,
                                                            method_state, step)
        return loss, {"batch_stats": stats, "method_state": dict(method_state, **updates),
                      "metrics": dict(metrics, **{f"{self.name}_loss": loss}), "features": features}

    def pixels(self, x):
        """Normalised images -> sRGB in [0, 1] (the pipeline's (x − mean)/std undone)."""
        mean = jnp.asarray(self.config.data.mean, jnp.float32)
        std = jnp.asarray(self.config.data.std, jnp.float32)
        return jnp.clip(x.astype(jnp.float32) * std + mean, 0.0, 1.0)

    def normalise(self, rgb):
        """sRGB in [0, 1] -> the network's input space (x − mean)/std."""
        mean = jnp.asarray(self.config.data.mean, jnp.float32)
        std = jnp.asarray(self.config.data.std, jnp.float32)
        return (rgb - mean) / std
