"""Throughput of the two-view BYOL input pipeline on the host CPU (run by hand, not in CI).

    python benchmarks/input_pipeline.py [--data_dir ../shared/tfds] [--seconds 20]

Prints ONE JSON line: images/s (each image = two augmented BYOL views, blur and solarize
included) in steady state, total and per CPU core (total / cores), and images per CPU-second
actually used by this process (the fairer per-core figure when other work shares the cores), at
  * 32 px: CIFAR-10 from TFDS in --data_dir (the digits upsampled to 32 px if it is absent),
    in-memory path;
  * 224 px: 512 synthetic 400x300 JPEGs held as encoded bytes, streaming path (each JPEG
    decoded once for both views).
Reference (a PyTorch peer measured on the same 2-core machine, per core, two views): 638 img/s
at 32 px and 88 img/s at 224 px. Numbers are noisy when other work shares the cores.
"""
import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ssl_jax.data import augment, pipeline  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_PER_CORE = {"32": 638.0, "224": 88.0}


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _rate(it, batch: int, seconds: float, warmup_batches: int) -> dict:
    """Steady-state images/s (wall) and images per CPU-second of this process (all its threads)."""
    for _ in range(warmup_batches):
        next(it)
    n, t0, c0 = 0, time.perf_counter(), _cpu_seconds()
    while time.perf_counter() - t0 < seconds:
        next(it)
        n += 1
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    return {"img_per_s": n * batch / wall, "img_per_cpu_s": n * batch / cpu,
            "cores_busy": cpu / wall}


def synthetic_jpegs(num: int = 512, height: int = 300, width: int = 400, seed: int = 0) -> list:
    """Photo-like JPEGs: smooth random colour fields plus mild noise, quality 90."""
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(num):
        low = rng.uniform(0, 255, (height // 25, width // 25, 3)).astype(np.float32)
        img = tf.image.resize(low[None], [height, width], method="bicubic")[0].numpy()
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        out.append(tf.io.encode_jpeg(img, quality=90).numpy())
    return out


def bench_32(data_dir: str, seconds: float, batch: int = 256) -> dict:
    views = list(augment.byol_view_configs())
    have_cifar = os.path.isdir(os.path.join(data_dir, "cifar10"))
    cfg = dict(dataset="cifar10" if have_cifar else "digits", data_dir=data_dir, train_split="train",
               image_size=32, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26), shuffle_buffer=50_000,
               views=views)
    it = pipeline.pretrain_iterator(cfg, global_batch_size=batch, seed=0, process_index=0, process_count=1)
    return {"dataset": cfg["dataset"], **_rate(it, batch, seconds, warmup_batches=20)}


def bench_224(seconds: float, batch: int = 64) -> dict:
    jpegs = synthetic_jpegs()
    n = len(jpegs)
    src = tf.data.Dataset.from_tensor_slices({"image": jpegs, "label": np.zeros(n, np.int64)})
    ds = pipeline.pretrain_dataset(
        src, {"is_jpeg": True, "image_shape": (None, None, 3)}, arrays=None,
        views=list(augment.byol_view_configs()), image_size=224, mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225), local_batch=batch, steps_per_epoch=n // batch, seed=0,
        shuffle_buffer=n)
    return _rate(ds.as_numpy_iterator(), batch, seconds, warmup_batches=6)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data_dir", default=os.path.join(REPO, "..", "shared", "tfds"))
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--only", choices=["32", "224"], default=None)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    result = {"cpu_count": os.cpu_count(), "cores_used": cores}
    for res, fn in (("32", lambda: bench_32(os.path.abspath(args.data_dir), args.seconds)),
                    ("224", lambda: bench_224(args.seconds))):
        if args.only not in (None, res):
            continue
        r = fn()
        per_core = r["img_per_s"] / cores
        result[f"px{res}"] = {**{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()},
                              "img_per_s_per_core": round(per_core, 1),
                              "vs_peer_per_core": round(per_core / PEER_PER_CORE[res], 2),
                              "vs_peer_per_cpu_s": round(r["img_per_cpu_s"] / PEER_PER_CORE[res], 2)}
    result["loadavg_1min"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
