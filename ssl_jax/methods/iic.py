"""IIC, Invariant Information Clustering (Ji, Henriques & Vedaldi, ICCV 2019): a network that
ends in softmax cluster assignments, trained to maximise the mutual information between the
assignments of two views of each image (losses.iic). SSL++ (seed 002) uses it as its clusterer.

Network: a backbone of the library (config.model; the presets: ResNet-34 with the Sobel layer
for CIFAR-10, the paper's ClusterNet5g being a ResNet-34 trunk on Sobel input; ResNet-18 for
MNIST, where the paper's ClusterNet6c is a 4-conv VGG-like net: configs/iic.py says why) and two
heads on its pooled output h, each `num_subheads` independent linear classifiers followed by a
softmax (weights N(0, head_init_std²), biases 0; the authors' std is 0.01):
  'overcluster'  head A, `num_overclusters` outputs (70 for CIFAR-10 and SSL++, 50 for MNIST);
  'main'         head B, `num_clusters` outputs, one per class: what is evaluated.
The loss of a head is the mean over its sub-heads of losses.iic.

Head schedule (`head_schedule`): the authors train one head per pass over the data; their
"epoch" is one pass per head in `head_schedule` order (CIFAR-10: `--head_A_first
--head_B_epochs 2`, i.e. A, B, B; MNIST: `--head_B_epochs 2`, i.e. B, B, A). Here an epoch is one
pass over the data and epoch e trains head_schedule[e mod len(head_schedule)], so the paper's E
epochs are E·len(head_schedule) of ours (the presets' num_epochs say so). The head is a pure
function of the step computed inside the step (epoch = step // steps_per_epoch), so a resumed
run trains the same head. Both heads are computed every step and the loss is the trained head's
(jnp.where): the other head's parameters get an exactly zero gradient, with which Adam still
moves them by its decaying first moment, as the authors' PyTorch Adam did with zeroed grads.

Pairs (`num_views` = 1 + R): view 0 is the authors' tf1 ("weak": crop [+ greyscale/Sobel]),
views 1..R are R independent draws of tf2 ("strong": crop, flip, colour jitter, ...); data.views
lists exactly 1 + R view configs ([tf1] + R·[tf2]). The pairs are (view 0, view r), r = 1..R: the
authors repeat each image R times in the batch (`num_dataloaders`), the same tf1 image paired
with R different tf2 images, so a global batch of B images holds B·R pairs (their `batch_sz` is
the number of pairs). The encoder runs once on view 0 and once on the R strong views together:
the authors' two forward passes (tf1 batch, tf2 batch), BN statistics per pass; their tf1 batch
is the same images R times over, whose BN mean and variance are those of the B distinct images,
so running view 0 once and repeating its outputs is exact. `per_view_bn` True instead gives each
strong view its own statistics.

Sub-head selection: the state keeps `subhead_loss` [2, num_subheads], an exponential moving
average (rate `subhead_loss_decay` per step, from 0) of every sub-head's loss on the training
batches, both heads every step; evaluation and labelling use the sub-head of lowest average
loss (the paper reports the sub-head with the lowest loss; the authors' code can also compute it
on a pass, `get_subhead_using_loss`). A moving average, not a separate pass: no extra data pass,
and it is checkpointed with the run, so a resumed run selects as an uninterrupted one.

Choices where the paper leaves room, documented: BN uses running statistics at evaluation (the
authors' CIFAR and MNIST runs track none and normalise test batches by their own statistics);
the MNIST tf2 has no ±25° rotation (the pipeline has no rotation op) and its crop side is drawn
from a range, not from {16, 20, 24} (see configs/iic.py).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import losses
from ssl_jax.methods import common
from ssl_jax.methods.base import JointEmbeddingMethod

HEADS = ("overcluster", "main")  # row order of the state's `subhead_loss`


class SubHeads(nn.Module):
    """`num_subheads` linear classifiers of `num_clusters` outputs on the same input, as one Dense:
    h [..., D] -> logits [..., num_subheads, num_clusters] (float32); weights N(0, init_std²),
    biases 0 (the authors' heads: init_std 0.01)."""

    num_subheads: int
    num_clusters: int
    init_std: float = 0.01

    @nn.compact
    def __call__(self, h, train: bool = False, bn_views: int = 1):
        del train, bn_views  # no BatchNorm, no dropout
        logits = nn.Dense(self.num_subheads * self.num_clusters, dtype=jnp.float32, name="dense",
                          kernel_init=nn.initializers.normal(self.init_std), bias_init=nn.initializers.zeros)(h)
        return logits.reshape(h.shape[:-1] + (self.num_subheads, self.num_clusters))


def build_subheads(section, head: str) -> SubHeads:
    """The SubHeads of `head` ('overcluster' or 'main') from an `iic` config section."""
    if head not in HEADS:
        raise ValueError(f"Unknown IIC head {head!r}; valid: {HEADS} (overcluster: head A, "
                         "num_overclusters outputs; main: head B, one output per class).")
    k = section["num_overclusters"] if head == "overcluster" else section["num_clusters"]
    return SubHeads(int(section["num_subheads"]), int(k), float(section["head_init_std"]))


def head_schedule_mask(schedule) -> tuple:
    """head_schedule as a tuple of bools, True where the epoch trains the main head."""
    schedule = tuple(schedule)
    bad = [h for h in schedule if h not in HEADS]
    if not schedule or bad:
        raise ValueError(f"iic.head_schedule={schedule!r}: needs at least one head and only the names "
                         f"{HEADS}; e.g. ('overcluster', 'main', 'main') (the paper's CIFAR-10 order).")
    return tuple(h == "main" for h in schedule)


class IIC(JointEmbeddingMethod):
    """Config section `iic`: num_clusters, num_overclusters, num_subheads, head_init_std, head_schedule,
    subhead_loss_decay, num_views (1 + repeats), per_view_bn, momentum (None), projector (None),
    predictor (None)."""

    name = "iic"
    head_outputs = (("overcluster", "a"), ("main", "b"))

    def __init__(self, config, total_steps, steps_per_epoch=None):
        super().__init__(config, total_steps, steps_per_epoch)
        if self.momentum is not None:
            raise ValueError("iic.momentum must be None: IIC trains one network, with no momentum target.")
        if self.num_views < 2:
            raise ValueError(f"iic.num_views={self.num_views}: IIC needs view 0 and at least one paired view "
                             "(num_views = 1 + the number of repeats).")
        num_view_cfgs = len(config.data.views)
        if num_view_cfgs != self.num_views:
            raise ValueError(f"iic.num_views={self.num_views} but data.views lists {num_view_cfgs} view configs; "
                             "IIC needs one per view, [tf1] + repeats x [tf2] (configs/iic.py: iic_views), "
                             "so that every paired view is an independent draw.")
        self.main_mask = head_schedule_mask(self.cfg.head_schedule)
        self.decay = float(self.cfg.subhead_loss_decay)
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"iic.subhead_loss_decay={self.decay} must be in [0, 1).")

    def build_heads(self):
        return {head: build_subheads(self.cfg, head) for head in HEADS}

    def init(self, rng, images):
        keys = jax.random.split(rng, 2 + len(HEADS))
        variables = self.encoder.init(keys[0], images, train=False)
        params = {"encoder": variables["params"]}
        batch_stats = {"encoder": variables.get("batch_stats", {})}
        h = jnp.zeros((images.shape[0], self.encoder.feature_dim), jnp.float32)
        for key, head in zip(keys[2:], HEADS):
            params[head] = self.heads[head].init(key, h)["params"]
            batch_stats[head] = {}
        return params, batch_stats, self.init_extra_state(keys[1])

    def init_extra_state(self, rng):
        del rng
        return {"subhead_loss": jnp.zeros((len(HEADS), int(self.cfg.num_subheads)), jnp.float32)}

    def trains_main(self, step) -> jax.Array:
        """Whether the step's epoch trains the main head (else the over-clustering head)."""
        phase = (step // self.steps_per_epoch) % len(self.main_mask)
        return jnp.asarray(self.main_mask)[phase]

    def forward_online(self, params, batch_stats, views, rng=None):
        """Encoder on view 0, then on the strong views 1..R together (the authors' two forward
        passes); both heads' softmax outputs. Returns ({'h', 'z' (= h, for the monitors),
        'overcluster', 'main' ([V, N, S, K])}, new BN statistics)."""
        key = lambda i: None if rng is None else jax.random.fold_in(rng, i)
        h0, s0 = common.apply_views(self.encoder, params["encoder"], batch_stats["encoder"], views[0][None],
                                    False, key(0))
        hr, sr = common.apply_views(self.encoder, params["encoder"], batch_stats["encoder"], jnp.stack(views[1:]),
                                    self.per_view_bn, key(1))
        h = jnp.concatenate([h0, hr], axis=0)
        out = {"h": h, "z": h}
        for head in HEADS:
            out[head] = jax.nn.softmax(self.heads[head].apply({"params": params[head]}, h), axis=-1)
        return out, {"encoder": common.tree_mean([s0, sr]), **{head: {} for head in HEADS}}

    def objective(self, out, target, method_state, rng, step, params):
        per_head = []
        for head in HEADS:
            probs = out[head]                                               # [1 + R, N, S, K]
            r, n = probs.shape[0] - 1, probs.shape[1]
            # Pairs (view 0, view r) example-major ([N, R] -> N·R rows), so the data-parallel
            # split of N survives the merge.
            p1 = jnp.repeat(probs[0], r, axis=0)
            p2 = jnp.swapaxes(probs[1:], 0, 1).reshape((n * r,) + probs.shape[2:])
            per_head.append(jax.vmap(losses.iic, in_axes=(1, 1))(p1, p2))  # [S]
        per_head = jnp.stack(per_head)                                      # [2, S]
        main = self.trains_main(step)
        loss = jnp.where(main, per_head[1].mean(), per_head[0].mean())
        observed = jax.lax.stop_gradient(per_head)
        averaged = self.decay * method_state["subhead_loss"] + (1.0 - self.decay) * observed
        metrics = {"iic_mi_overcluster": -observed[0].mean(), "iic_mi_main": -observed[1].mean(),
                   "iic_trains_main": main.astype(jnp.float32),
                   "iic_best_main_subhead": jnp.argmin(averaged[1]).astype(jnp.float32),
                   "iic_main_clusters_used": _clusters_used(out["main"][0, :, 0])}
        return loss, metrics, {"subhead_loss": averaged}


def _clusters_used(probs: jax.Array) -> jax.Array:
    """How many clusters are the argmax of at least one row of probs [N, K] (a collapse shows as 1)."""
    hits = jax.nn.one_hot(jnp.argmax(probs, -1), probs.shape[-1]).sum(0)
    return jnp.sum(hits > 0).astype(jnp.float32)


# ------------------------------------------------------------------ evaluation and labelling

def best_subhead(method_state: dict, head: str = "main") -> int:
    """The sub-head of `head` with the lowest moving-average training loss (the state's
    `subhead_loss`), from a restored or live method state."""
    if "subhead_loss" not in (method_state or {}):
        raise ValueError("This network carries no IIC sub-head losses (an export, or not an IIC run): "
                         "label with a workdir of an IIC run (configs/iic.py).")
    return int(np.argmin(np.asarray(method_state["subhead_loss"])[HEADS.index(head)]))
