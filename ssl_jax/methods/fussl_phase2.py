"""FUSSL's phase 2 (Mohamadi et al.; seed 000, §3.3, §4.1.3): the block chosen after phase 1
(backbone + projector, from its phase-1 weights) trained on the pseudo-labelled, non-augmented
images with the soft-target cross-entropy (ssl_jax.losses.soft_cross_entropy) of its projector
output against the image's label. ssl_jax/fussl.py runs it twice, as two normal runs: all layers
for e2_full epochs (frozen_stages 0), then the stem through stage 3 frozen (frozen_stages 3).

Config section `fussl_phase2` (configs/fussl.py fills it; every key read here):
  projector     the phase-1 baseline's projector (the paper's shared 3 x 1000: Linear-BN-ReLU x 2 +
                Linear); its output dimension D is the number of pseudo-classes.
  predictor, momentum, per_view_bn, num_views  None, None, False, 1 (one view, no target).
  labels        path of the labels file (`write_labels`, made by ssl_jax/fussl.py): the compact
                labels (classes, weights) [N, m] in dataset-index order, the training set's
                fingerprint, the chosen block and every block's error. Checked against this run's
                training set; one error on a mismatch.
  temperature, normalize   the CE's T and whether the projector output is L2-normalised first
                (the paper gives neither: it normalises the latent of every baseline, so
                normalize=True, and T = 0.1, since logits in [-1, 1] at T = 1 give a near-uniform
                softmax).
  frozen_stages 0 or 3 (stem..stage 3 of the ResNet frozen: models.resnet's `frozen_stages`, their
                BatchNorm in inference mode); then config.optimizer.frozen_params must hold
                `frozen_param_prefixes(3)` (checked), so weight decay does not move them either.

The initial weights are the run's config.init_weights (ssl_jax.train.init_weights, a file of the
INIT_MODULES: encoder and projector params and BatchNorm statistics; '' = random init: tests, an
ablation): ssl_jax/fussl.py sets the chosen phase-1 block for the first sub-run, the first
sub-run's end for the second.

The labels are per-example state (rows = dataset index, sharded like DeepCluster's; saved in every
checkpoint), never refreshed: classes int32 and weights float32 [num_rows, m], m the ensemble size,
densified per batch. Metrics: pseudo_top1 (arg-max agreement with the labels' largest membership).
"""
import io

import jax.numpy as jnp
import numpy as np

from ssl_jax import losses, storage
from ssl_jax.data import pipeline
from ssl_jax.methods import sslpp
from ssl_jax.methods.dataset_targets import DatasetTargets
from ssl_jax.models.resnet import STAGE_SIZES
from ssl_jax.parallel import PER_EXAMPLE_KEY

LABELS_FORMAT = "ssl_jax.fussl.labels/1"
INIT_MODULES = ("encoder", "projector")


def frozen_param_prefixes(frozen_stages: int, model_name: str) -> tuple:
    """The optimizer.frozen_params prefixes of a ResNet's (`model_name`) stem and stages
    1..frozen_stages."""
    if frozen_stages <= 0:
        return ()
    sizes = STAGE_SIZES[int(model_name[len("resnet"):])]
    out = ["encoder/stem_conv", "encoder/stem_bn"]
    for s in range(frozen_stages):
        out += [f"encoder/stage{s + 1}_block{b + 1}" for b in range(sizes[s])]
    return tuple(out)


def write_labels(path: str, classes, weights, fingerprint: dict, *, chosen_block: int, block_errors,
                 config: dict) -> None:
    """The labels file, written atomically: classes int32 [N, m], weights float32 [N, m], the
    fingerprint, the chosen block, the mean error of every block [m], and the labelling settings
    (`config`: label_mode, membership, ... and the phase-1 step) that made it."""
    classes, weights = np.asarray(classes, np.int32), np.asarray(weights, np.float32)
    n = fingerprint["num_examples"]
    if classes.ndim != 2 or classes.shape != weights.shape or classes.shape[0] != n:
        raise ValueError(f"write_labels: classes {classes.shape}, weights {weights.shape} for {n} examples.")
    buf = io.BytesIO()
    np.savez(buf, format=np.str_(LABELS_FORMAT), classes=classes, weights=weights,
             chosen_block=np.int32(chosen_block), block_errors=np.asarray(block_errors, np.float64),
             settings=np.str_(repr(sorted(config.items()))), **sslpp.fingerprint_arrays(fingerprint))
    storage.write_file(path, buf.getvalue())


def read_labels(path: str) -> dict:
    """A labels file as {'classes', 'weights', 'chosen_block', 'block_errors', 'settings', 'fingerprint'}."""
    if not storage.exists(path):
        raise FileNotFoundError(f"fussl_phase2.labels={path!r} does not exist: run configs/fussl.py (it labels "
                                "the training set after phase 1), or point the setting at its labels file.")
    with np.load(io.BytesIO(storage.read_bytes(path))) as f:
        out = {k: f[k] for k in f.files}
    if out.get("format", np.str_("")).item() != LABELS_FORMAT:
        raise ValueError(f"{path} is not a FUSSL labels file (format {LABELS_FORMAT!r}).")
    fingerprint = sslpp.fingerprint_of_file(out)
    out = {k: (v if v.ndim else v.item()) for k, v in out.items() if k not in fingerprint}
    out["fingerprint"] = fingerprint
    return out


def check_labels(stored: dict, fingerprint: dict, path: str) -> None:
    """One clear error when a labels file labels another training set than this run's."""
    saved = stored["fingerprint"]
    if saved != fingerprint:
        raise ValueError(
            f"The FUSSL labels in {path} are for {pipeline.describe_training_set(saved)}, but this run trains "
            f"on {pipeline.describe_training_set(fingerprint)}. Relabel with configs/fussl.py in a new --workdir, or "
            "set --config.data back to the one the labels were made for.")


class FusslPhase2(DatasetTargets):
    """One view, the projector's output trained towards the image's fixed soft pseudo-label."""

    name = "fussl_phase2"
    head_outputs = (("projector", "z"),)

    def __init__(self, config, total_steps, steps_per_epoch=None):
        super().__init__(config, total_steps, steps_per_epoch)
        cfg = self.cfg
        if self.num_views != 1 or self.momentum is not None or cfg.predictor:
            raise ValueError("config.fussl_phase2: phase 2 trains one view through encoder and projector "
                             "(num_views=1, momentum=None, predictor=None).")
        self.temperature, self.normalize = float(cfg.temperature), bool(cfg.normalize)
        self.num_classes = int(cfg.projector.output_dim)
        stored = read_labels(cfg.labels)
        check_labels(stored, pipeline.training_fingerprint(config.data), cfg.labels)
        classes = stored["classes"]
        if classes.min() < 0 or classes.max() >= self.num_classes:
            raise ValueError(f"The labels in {cfg.labels} name pseudo-classes up to {classes.max()}, but the "
                             f"projector has {self.num_classes} outputs: use the phase-1 baseline's projector "
                             "(configs/fussl.py copies it).")
        self.classes, self.weights = classes, stored["weights"]
        frozen = int(cfg.frozen_stages)
        if frozen:
            if not hasattr(self.encoder, "frozen_stages"):
                raise ValueError(f"fussl_phase2.frozen_stages={frozen} freezes ResNet stages; "
                                 f"config.model.name={config.model.name!r} is not a ResNet.")
            self.encoder = self.encoder.clone(frozen_stages=frozen)
            wanted = frozen_param_prefixes(frozen, config.model.name)
            missing = sorted(set(wanted) - set(config.optimizer.frozen_params))
            if missing:
                raise ValueError(f"fussl_phase2.frozen_stages={frozen} but config.optimizer.frozen_params lacks "
                                 f"{missing}: weight decay would still move them. Set it to "
                                 "fussl_phase2.frozen_param_prefixes (configs/fussl.py does).")

    def init_per_example(self, rng):
        del rng
        return {"classes": jnp.asarray(self.padded(self.classes, 0)),
                "weights": jnp.asarray(self.padded(self.weights, 0.0))}

    def refresh_due(self, epoch):
        del epoch
        return False  # the labels are fixed for the whole of phase 2

    def refresh(self, params, batch_stats, method_state, features, epoch):
        del batch_stats, features, epoch  # never due; a caller that runs it anyway changes nothing
        return params, method_state, (), {}

    def objective(self, out, target, method_state, rng, step, params):
        rows = method_state["batch_index"]
        per = method_state[PER_EXAMPLE_KEY]
        y = losses.dense_labels(per["classes"][rows], per["weights"][rows], self.num_classes)
        z = out["z"][0]
        loss = losses.soft_cross_entropy(z, y, self.temperature, self.normalize)
        top1 = jnp.mean((jnp.argmax(z, -1) == jnp.argmax(y, -1)).astype(jnp.float32))
        return loss, {"pseudo_top1": top1}, {}
