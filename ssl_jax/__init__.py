"""ssl_jax: self-supervised visual representation learning in JAX/Flax.

The package is in layers; a module imports only from its own layer or below
(tests/test_layout.py checks it):

  pure array code   losses (the loss contract), monitors, schedules, native
  models, data      models, data, parallel (the mesh and sharding rules), presets (the base
                    config: the one source of defaults), results
  methods           methods (one module per method; dssl wraps a method's pair objective)
  training engine   train (loop, resumable step loop, step, optim, checkpoint)
  evaluation        evaluate, pretrained, export, report, cli
  entry points      main (python -m ssl_jax.main), evaluate/__main__
"""
import os

# CPU default, measured (benchmarks/RESULTS_train_step.md, 2-core x86 CPU, jaxlib 0.10.2): with
# XLA's YNNPACK fusion switched off, the BYOL ResNet-18 step runs 12.4-12.8 images/s instead of
# 10.0-10.3 and needs 842 MB instead of 1139 MB. It only changes the CPU backend, and only if the
# user has not set the flag: any XLA_FLAGS value for it (even the default) wins. It must be in
# the environment before JAX creates its CPU client, hence here.
_YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
if _YNN_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_YNN_FLAG}=".strip()
