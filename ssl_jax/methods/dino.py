"""DINO: self-distillation with no labels (Caron et al., ICCV 2021), with multi-crop.

Student: encoder -> DINO head (MLP, bottleneck, L2-normalisation, weight-normalised last
layer) on every crop; teacher: EMA of the student (τ 0.996 -> 1 on a cosine) on the global
crops only. Loss: dino over every (teacher crop t, student crop s ≠ t) pair with the
teacher's output centred (centre: EMA with momentum 0.9 of the global-batch mean of the
teacher outputs, in the method state) and sharpened (teacher temperature warmed up linearly
from warmup_teacher_temp to teacher_temp over warmup_teacher_temp_epochs, then constant;
student temperature 0.1). The last layer is frozen for the first epoch
(optimizer.freeze_epochs = {'head/last_layer': 1}).
The ViT student has stochastic depth (model.drop_path_rate, 0.1 in the ViT presets as the
authors' default); the teacher runs without it, as theirs (it is built with rate 0).
Choice: the centre is updated with the teacher outputs of the step, after the loss used the
previous centre, as in the authors' code.
"""
import jax.numpy as jnp

from ssl_jax import losses, schedules
from ssl_jax.methods.base import JointEmbeddingMethod
from ssl_jax.models import DINOHead


class DINO(JointEmbeddingMethod):
    """Config section `dino`: head (hidden_dim, bottleneck_dim, output_dim, num_layers,
    use_bn, norm_last_layer), momentum, num_views, num_global_crops, student_temp,
    teacher_temp, warmup_teacher_temp, warmup_teacher_temp_epochs, center_momentum."""

    name = "dino"
    head_outputs = (("head", "z"),)
    target_modules = ("encoder", "head")
    evaluated_network = "target"  # DINO reports and releases the teacher

    def __init__(self, config, total_steps, steps_per_epoch=None):
        super().__init__(config, total_steps, steps_per_epoch)
        self.target_views = tuple(range(self.cfg.num_global_crops))
        self.teacher_temp = schedules.linear_ramp(
            self.cfg.warmup_teacher_temp, self.cfg.teacher_temp,
            int(round(self.cfg.warmup_teacher_temp_epochs * self.steps_per_epoch)))

    def build_heads(self):
        return {"head": DINOHead(**self.cfg.head)}

    def init_extra_state(self, rng):
        return {"center": jnp.zeros((1, self.cfg.head.output_dim), jnp.float32)}

    def objective(self, out, target, method_state, rng, step, params):
        temp = self.teacher_temp(step)
        center = method_state["center"]
        loss = losses.dino(out["z"], target, center, student_temp=self.cfg.student_temp, teacher_temp=temp)
        m = self.cfg.center_momentum
        # A mean over the (view, batch) axes as they are: a reshape merging the view axis with the
        # sharded batch axis made XLA's partitioner all-gather the teacher outputs [Vt, N, K].
        batch_center = jnp.mean(target, axis=(0, 1))[None, :]
        return loss, {"teacher_temp": temp}, {"center": m * center + (1.0 - m) * batch_center}
