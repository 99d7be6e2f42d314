"""Builds presets of configs at tiny inputs and runs 2 train steps of each; prints JSON lines.

Used by tests/test_config_sweep.py in subprocesses (bounded memory, a fresh XLA cache).
Usage: python tests/config_sweep.py CONFIG_NAME:PRESET [CONFIG_NAME:PRESET ...]
"""
import importlib
import json
import sys
import time

import jax

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
from tests.tiny_run import tiny_image_size, train_steps  # noqa: E402

IMAGE_SIZE, BATCH = 32, 8


def run(config_name: str, preset: str) -> dict:
    t0 = time.perf_counter()
    config = importlib.import_module(f"configs.{config_name}").get_config(preset)
    # 8 images, or the preset's own whitening sub-batch for W-MSE (it must exceed the
    # embedding size, which the preset fixes).
    config.global_batch_size = config.wmse.w_size if config.method == "wmse" else BATCH
    config.mesh.fsdp = 1  # FSDP presets (fsdp=8) run here on however many devices there are
    state, losses = train_steps(config, image_size=tiny_image_size(config, IMAGE_SIZE), steps=2)
    return {"config": config_name, "preset": preset, "model": config.model.name, "losses": losses,
            "params": int(sum(x.size for x in jax.tree.leaves(state.params))), "step": int(state.step),
            "seconds": round(time.perf_counter() - t0, 1)}


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(json.dumps(run(*arg.split(":"))), flush=True)
