"""The training engine: above the methods, below evaluation (it never imports ssl_jax.evaluate).

  loop.py       the pretraining loop; its evaluation comes from above as `Evaluator` hooks
  resumable.py  the step loop shared with classifier training: resume, SIGTERM, finite check,
                checkpoint cadence
  step.py       the generic pure train step and its compilation over the mesh
  workdir.py    who owns a workdir (the run lock) and whether it can be one; no JAX, so the
                command line checks it before its heavy imports
  state.py, optim.py, checkpoint.py (every orbax call), preemption.py, logging.py
"""
