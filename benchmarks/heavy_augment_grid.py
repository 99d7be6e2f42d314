"""Visual check of the heavy augmentations (ssl_jax.data.heavy), and their batch throughput.

    python benchmarks/heavy_augment_grid.py --out=DIR [--data_dir=../shared/tfds] [--time]

Writes DIR/heavy_augment_grid.png: one image (the first CIFAR-10 train image, or sklearn's first
digit if the TFDS copy is absent) under every op (rows) at magnitudes 0, 5, ..., 30 (columns),
then rows for jigsaw(2), jigsaw(4), ra(2,5)+jigsaw(4) and ua at 7 seeds; x4 nearest, labelled.
Geometric ops and cutout use the same seed in every column, so one sign / centre per row.
``--time`` prints apply_policy_batch throughput for B=512 32x32 images, ra(2,5)+jigsaw(4).
"""
import argparse
import os
import time

import numpy as np
import tensorflow as tf

from ssl_jax.data import heavy

MAGNITUDES = (0, 5, 10, 15, 20, 25, 30)
POLICY_ROWS = ("jigsaw(2)", "jigsaw(4)", "ra(2,5)+jigsaw(4)", "ua")
SCALE = 4


def load_image(data_dir: str) -> np.ndarray:
    """uint8 [32, 32, 3]: CIFAR-10's first train image (accurate JPEG decode), else a digit."""
    try:
        import tensorflow_datasets as tfds

        @tfds.decode.make_decoder()
        def accurate(serialized, feature):
            return tf.io.decode_jpeg(serialized, channels=3, dct_method="INTEGER_ACCURATE")

        ds = tfds.load("cifar10", split="train[:1]", data_dir=data_dir, download=False,
                       decoders={"image": accurate()})
        return next(iter(ds))["image"].numpy()
    except Exception as e:  # the TFDS copy (or tensorflow_datasets) is absent
        print(f"CIFAR-10 not available ({type(e).__name__}: {e}); using sklearn's digits")
        from sklearn.datasets import load_digits
        digit = load_digits().images[0] / 16.0 * 255.0  # 8x8 in [0, 16]
        digit = np.kron(digit, np.ones((4, 4)))
        return np.repeat(digit[..., None], 3, axis=-1).astype(np.uint8)


def grid_rows(image: np.ndarray):
    """(label, [7 images]) per row."""
    img = tf.constant(image)
    rows = []
    for name in heavy.OPS:
        seed = tf.constant([0, 1], tf.int64)
        rows.append((name, [heavy.apply_op(name, img, float(m), seed).numpy() for m in MAGNITUDES]))
    for spec in POLICY_ROWS:
        policy = heavy.parse_policy(spec)
        rows.append((spec + " (seeds 0-6)",
                     [heavy.apply_policy(policy, img, tf.constant([s, 0], tf.int64)).numpy()
                      for s in range(len(MAGNITUDES))]))
    return rows


def save_grid(rows, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pad = 2
    side = rows[0][1][0].shape[0] * SCALE
    canvas = np.full((len(rows) * (side + pad), len(MAGNITUDES) * (side + pad), 3), 255, np.uint8)
    for r, (_, images) in enumerate(rows):
        for c, im in enumerate(images):
            big = np.kron(im, np.ones((SCALE, SCALE, 1), np.uint8))
            canvas[r * (side + pad):r * (side + pad) + side, c * (side + pad):c * (side + pad) + side] = big
    dpi = 100
    fig = plt.figure(figsize=(canvas.shape[1] / dpi + 2.2, canvas.shape[0] / dpi + 0.4), dpi=dpi)
    ax = fig.add_axes([2.2 / (canvas.shape[1] / dpi + 2.2), 0, canvas.shape[1] / dpi / (canvas.shape[1] / dpi + 2.2),
                       canvas.shape[0] / dpi / (canvas.shape[0] / dpi + 0.4)])
    ax.imshow(canvas, interpolation="nearest")
    ax.set_yticks([r * (side + pad) + side / 2 for r in range(len(rows))], [label for label, _ in rows])
    ax.set_xticks([c * (side + pad) + side / 2 for c in range(len(MAGNITUDES))],
                  [f"m={m}" for m in MAGNITUDES])
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def time_batch(repeats: int = 20) -> float:
    """Images/s of apply_policy_batch, B=512 32x32, ra(2,5)+jigsaw(4) (median of ``repeats``)."""
    rng = np.random.RandomState(0)
    images = tf.constant(rng.randint(0, 256, (512, 32, 32, 3)).astype(np.uint8))
    seeds = tf.constant(rng.randint(0, 2 ** 31, (512, 2)), tf.int64)
    policy = heavy.parse_policy("ra(2,5)+jigsaw(4)")
    heavy.apply_policy_batch(policy, images, seeds).numpy()  # trace
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        heavy.apply_policy_batch(policy, images, seeds).numpy()
        times.append(time.perf_counter() - start)
    return 512 / float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--data_dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "tfds"))
    parser.add_argument("--time", action="store_true", help="also print the batch throughput")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "heavy_augment_grid.png")
    save_grid(grid_rows(load_image(args.data_dir)), path)
    print(f"wrote {path}")
    if args.time:
        print(f"apply_policy_batch ra(2,5)+jigsaw(4), B=512 32x32: {time_batch():.0f} images/s")


if __name__ == "__main__":
    main()
