"""Stateless tf.data augmentation ops for multi-view pretraining: two views (BYOL/SimCLR-style)
or multi-crop (SwAV/DINO: G global crops and L smaller local crops per image).

Every random op is a pure function of ``(image, seed)``; ``seed`` is an int32/int64 tensor of
shape [2] and all randomness is ``tf.random.stateless_uniform`` of that seed, so a pipeline is
reproducible from its seed alone. Images are float32 in [0, 1] between ops (uint8 comes in once,
at the crop).

Each op is split in two halves, and the public per-image op is exactly their composition:

* ``*_params_from_uniforms(u, ...)`` turns uniforms u ~ U[0, 1) into the op's decisions and
  strengths (vectorised over leading dims; ``should_apply`` is the one place an "apply with
  probability p" decision is made);
* ``apply_*(images, params)`` applies them to a batch [B, H, W, 3] with per-example params [B],
  as tensor ops with no per-op ``tf.cond``.

A view draws all its uniforms in one call, ``view_uniforms(seed)`` (one slice per op: crop,
flip, jitter, grayscale, blur, solarize), rather than splitting the seed per op: one RNG kernel
per example and view instead of a dozen, which is what makes the per-example stage cheap.
The input pipeline draws the uniforms per example and does everything else per batch
(``make_view_ops_fn``, XLA-compiled); ``augment_view`` runs the same functions on one image, so
tests of the per-image path test the pipeline's decisions too.

Choices where the papers leave room (BYOL, Grill et al. 2020; SimCLR, Chen et al. 2020):

* Crop: Inception-style, as torchvision's RandomResizedCrop: up to 10 attempts of area fraction
  ~ U[scale] and log-uniform aspect ratio; fallback: the largest centred window with the aspect
  ratio clamped into ``ratio`` (the whole image when in range). Own vectorised sampler rather
  than ``tf.image.stateless_sample_distorted_bounding_box``, so a batch's windows come from one
  set of tensor ops. Resize: BILINEAR, corner-aligned sampling (``tf.image.crop_and_resize``),
  no antialiasing, so a whole in-memory batch crops and resizes in one kernel straight from
  uint8; BYOL's code uses bicubic, which costs more for no reported gain.
* Brightness: additive delta ~ U[-b, b] (BYOL and SimCLR v1; SimCLR v2's code multiplies).
* Contrast: per-channel mean, (x - mean_c) * f + mean_c, f ~ U[max(0, 1-c), 1+c]
  (``tf.image.adjust_contrast``, used by both papers' TF code).
* Saturation and hue: as ``tf.image.adjust_saturation`` / ``adjust_hue`` (s *= f, clipped;
  h += delta mod 1), f ~ U[max(0, 1-s), 1+s], delta ~ U[-h, h]; computed without an HSV tensor
  (``_saturation_hue_rgb``: v and the chroma from max/min, the hue rotated), equal to the tf.image
  ops up to float rounding (tested against them).
* Jitter order: a uniformly random permutation of the four ops per example, clip to [0, 1] after
  every op (SimCLR's ``color_jitter_rand``). Vectorised exactly: saturation and hue commute in HSV
  and each leaves the other's channel alone, so every one of the 24 orders fits the fixed slot
  schedule HSV, RGB, HSV, RGB, HSV (``_JITTER_SLOTS``), unused slots being identities. Large
  images (the streaming path) instead run flip/jitter/grayscale per example with branches
  (``apply_pre_blur_example``): only the drawn ops, in cache; the same results.
* Gaussian blur: kernel 2*floor(S/20)+1 px (~10% of the side: 23 at 224 as BYOL, 3 at 32, none
  below 20 px), S being the side of the view itself (from the static shape of the batch it blurs:
  a 96-px local crop gets 9, a 224-px global crop 23), sigma ~ U[0.1, 2.0] px, REFLECT padding
  (the papers' code pads with zeros, which darkens the borders of every blurred view; reflection
  does not).
* Solarize: x if x < threshold else 1 - x (BYOL's definition).

View configs: a dict per view with exactly the keys ``VIEW_KEYS``, plus optionally ``size`` (int
pixels, ``OPTIONAL_VIEW_KEYS``): the output side of that view's random-resized crop, for
multi-crop's smaller local crops. Without it a view is ``data.image_size`` px (``view_size``).
"""
import functools
import itertools
from typing import Any, Mapping, Optional, Sequence, Tuple

import numpy as np

from ssl_jax.data.tf_host import tf

VIEW_KEYS = ("crop_scale", "crop_ratio", "flip_prob", "color_jitter_prob", "brightness",
             "contrast", "saturation", "hue", "grayscale_prob", "blur_prob", "blur_sigma",
             "solarize_prob", "solarize_threshold")
OPTIONAL_VIEW_KEYS = ("size",)  # absent (or None): the view is data.image_size px

_GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale's luma weights


# ----------------------------------------------------------------------------- seeds, decisions

def _as_seed(seed) -> tf.Tensor:
    return tf.cast(tf.convert_to_tensor(seed), tf.int64)


def fold_in(seed, data) -> tf.Tensor:
    """A new seed [2] from ``seed`` and an integer (an epoch, an example position, a view id).

    Both elements of the result depend on both inputs. (TF's ``stateless_fold_in`` alone returns
    [hash(seed), data], whose first element ignores ``data``; so it is hashed once more.)
    """
    folded = tf.random.experimental.stateless_fold_in(_as_seed(seed), tf.cast(data, tf.int64))
    return tf.random.stateless_uniform([2], folded, minval=None, maxval=None, dtype=tf.int64)


def uniforms(seed, num: int) -> tf.Tensor:
    """``num`` uniforms in [0, 1) from ``seed`` [2]: all the randomness of one op or one view."""
    return tf.random.stateless_uniform([num], _as_seed(seed), dtype=tf.float32)


def should_apply(u, prob) -> tf.Tensor:
    """The "apply this op" decision: u < prob for u ~ U[0, 1). Every probabilistic op decides here."""
    return tf.convert_to_tensor(u) < float(prob)


def _expand(params: Mapping[str, Any]) -> dict:
    """Per-example params -> a batch of one."""
    return {k: tf.expand_dims(v, 0) for k, v in params.items()}


def _bcast(v: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    """[B] -> [B, 1, 1, 1] to broadcast against images [B, H, W, C]."""
    return tf.reshape(v, [-1, 1, 1, 1])


# ----------------------------------------------------------------------------------- cropping

CROP_ATTEMPTS = 10
NUM_CROP_UNIFORMS = 2 * CROP_ATTEMPTS + 2


def crop_window_from_uniforms(u, image_hw, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tf.Tensor:
    """Inception-style crop windows int32 [..., 4] = (y, x, h, w) from uniforms [..., 22].

    Vectorised over leading dims. Up to 10 attempts: area fraction ~ U[scale], aspect ratio w/h
    log-uniform in ``ratio``, w = round(sqrt(area * ratio)), h = round(sqrt(area / ratio)); the
    first attempt that fits the image wins and its position is uniform. If none fits: the largest
    centred window whose aspect ratio is clamped into ``ratio`` (the whole image when in range).
    """
    u = tf.convert_to_tensor(u, tf.float32)
    hw = tf.cast(tf.convert_to_tensor(image_hw), tf.float32)
    hw = tf.broadcast_to(hw, tf.concat([tf.shape(u)[:-1], [2]], 0))
    big_h, big_w = hw[..., 0], hw[..., 1]
    n = CROP_ATTEMPTS
    area = (big_h * big_w)[..., None] * (scale[0] + u[..., :n] * (scale[1] - scale[0]))
    log_r0, log_r1 = float(np.log(ratio[0])), float(np.log(ratio[1]))
    aspect = tf.exp(log_r0 + u[..., n:2 * n] * (log_r1 - log_r0))
    w = tf.round(tf.sqrt(area * aspect))
    h = tf.round(tf.sqrt(area / aspect))
    fits = (w >= 1.0) & (h >= 1.0) & (w <= big_w[..., None]) & (h <= big_h[..., None])
    first = fits & tf.equal(tf.cumsum(tf.cast(fits, tf.int32), axis=-1), 1)
    found = tf.reduce_any(fits, axis=-1)
    h = tf.reduce_sum(tf.where(first, h, 0.0), axis=-1)
    w = tf.reduce_sum(tf.where(first, w, 0.0), axis=-1)
    in_ratio = big_w / big_h
    fh = tf.where(in_ratio < ratio[0], tf.minimum(tf.round(big_w / ratio[0]), big_h), big_h)
    fw = tf.where(in_ratio > ratio[1], tf.minimum(tf.round(big_h * ratio[1]), big_w), big_w)
    h, w = tf.where(found, h, tf.maximum(fh, 1.0)), tf.where(found, w, tf.maximum(fw, 1.0))
    y = tf.where(found, tf.floor(u[..., 2 * n] * (big_h - h + 1.0)), tf.floor((big_h - h) / 2.0))
    x = tf.where(found, tf.floor(u[..., 2 * n + 1] * (big_w - w + 1.0)), tf.floor((big_w - w) / 2.0))
    return tf.cast(tf.stack([y, x, h, w], axis=-1), tf.int32)


def sample_crop_window(seed, image_shape, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tf.Tensor:
    """Random-resized-crop window int32 [4] = (y, x, h, w) for an image of ``image_shape`` [H, W(, C)]."""
    shape = tf.convert_to_tensor(image_shape)[:2]
    return crop_window_from_uniforms(uniforms(seed, NUM_CROP_UNIFORMS), shape, scale, ratio)


def crop_boxes(windows: tf.Tensor, image_hw) -> tf.Tensor:
    """Windows int [..., 4] (y, x, h, w) -> ``crop_and_resize`` boxes float [..., 4].

    The box spans the centres of the first and last pixel of the window (corner-aligned).
    """
    hw = tf.cast(tf.convert_to_tensor(image_hw), tf.float32)
    hm1 = tf.maximum(hw[..., 0] - 1.0, 1.0)
    wm1 = tf.maximum(hw[..., 1] - 1.0, 1.0)
    y, x, h, w = [tf.cast(v, tf.float32) for v in tf.unstack(windows, axis=-1)]
    return tf.stack([y / hm1, x / wm1, (y + h - 1.0) / hm1, (x + w - 1.0) / wm1], axis=-1)


def crop_and_resize(images: tf.Tensor, windows: tf.Tensor, size: int,
                    box_indices: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Bilinear crop+resize of windows [N, 4] from images [B, H, W, C] -> float32 [N, S, S, C] in [0,1].

    ``box_indices`` [N] says which image each window is cut from (default: window i from image i),
    so N crops can be taken straight from a large uint8 array without gathering it first.
    """
    windows = tf.convert_to_tensor(windows)
    if box_indices is None:
        box_indices = tf.range(tf.shape(windows)[0])
    boxes = crop_boxes(windows, tf.shape(images)[1:3])
    out = tf.image.crop_and_resize(images, boxes, tf.cast(box_indices, tf.int32), [size, size],
                                   method="bilinear")
    return out * (1.0 / 255.0) if images.dtype == tf.uint8 else out


def random_resized_crop(image, seed, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tf.Tensor:
    """Inception-style random crop of ``image`` [H, W, 3] resized (bilinear) to float32 [size, size, 3]."""
    image = tf.convert_to_tensor(image)
    window = sample_crop_window(seed, tf.shape(image), scale, ratio)
    return crop_and_resize(image[None], window[None], size)[0]


def decode_and_random_crop_jpeg(encoded_bytes, seed, size: int, scale=(0.08, 1.0),
                                ratio=(3 / 4, 4 / 3)) -> tf.Tensor:
    """Fused JPEG decode of only the sampled crop window, resized (bilinear) to [size, size, 3]."""
    window = sample_crop_window(seed, tf.image.extract_jpeg_shape(encoded_bytes), scale, ratio)
    return resize_decoded_crop(decode_jpeg_window(encoded_bytes, window), size)


def decode_jpeg_window(encoded_bytes, window) -> tf.Tensor:
    """uint8 [h, w, 3]: only window (y, x, h, w) of a JPEG decoded, accurate IDCT; equal to decoding
    the whole image and slicing.

    libjpeg's fancy chroma upsampling (4:2:0 JPEGs) lacks horizontal context at a window's edge
    columns, so one more column is decoded on each side the image has, and then dropped.
    """
    y, x, h, w = tf.unstack(tf.cast(window, tf.int32))
    width = tf.image.extract_jpeg_shape(encoded_bytes)[1]
    left = tf.cast(x > 0, tf.int32)
    right = tf.cast(x + w < width, tf.int32)
    crop = tf.image.decode_and_crop_jpeg(encoded_bytes, tf.stack([y, x - left, h, w + left + right]),
                                         channels=3, dct_method="INTEGER_ACCURATE")
    return crop[:, left:left + w]


def resize_decoded_crop(crop: tf.Tensor, size: int) -> tf.Tensor:
    """A decoded crop [h, w, 3] -> float32 [size, size, 3] in [0, 1].

    Corner-aligned bilinear, the same sampling as ``crop_and_resize`` of the whole window (bit for
    bit), through the faster ``ResizeBilinear`` kernel.
    """
    out = tf.raw_ops.ResizeBilinear(images=crop[None], size=[size, size], align_corners=True,
                                    half_pixel_centers=False)[0]
    return out * (1.0 / 255.0) if crop.dtype == tf.uint8 else out


# ---------------------------------------------------------------------------------------- flip

def flip_params_from_uniforms(u, prob=0.5) -> dict:
    return {"flip": should_apply(u[..., 0], prob)}


def apply_flip(images: tf.Tensor, params: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """Horizontal flip of the examples whose ``params['flip']`` is set; images [B, H, W, C]."""
    return tf.where(_bcast(params["flip"], images), tf.reverse(images, axis=[2]), images)


def random_flip(image, seed, prob=0.5) -> tf.Tensor:
    """Left-right flip of [H, W, C] with probability ``prob``."""
    params = flip_params_from_uniforms(uniforms(seed, 1), prob)
    return apply_flip(tf.convert_to_tensor(image)[None], _expand(params))[0]


# -------------------------------------------------------------------------------- colour jitter

_BRIGHT, _CONTRAST, _SAT, _HUE = range(4)
_HSV_OPS = (_SAT, _HUE)
_JITTER_SLOTS = ("hsv", "rgb", "hsv", "rgb", "hsv")
JITTER_ORDERS = tuple(itertools.permutations(range(4)))  # 'jitter_order' indexes this; 0..3 = B, C, S, H


def _slot_table() -> np.ndarray:
    """For each of the 24 op orders, the slot of _JITTER_SLOTS that runs each op.

    Ops are placed greedily in order: an RGB op needs its own later RGB slot; an HSV op takes the
    next HSV slot, sharing it with an HSV op placed just before it (they commute).
    """
    table = np.zeros((len(JITTER_ORDERS), 4), np.int32)
    for i, order in enumerate(JITTER_ORDERS):
        p, used = 0, set()
        for op in order:
            kind = "hsv" if op in _HSV_OPS else "rgb"
            while _JITTER_SLOTS[p] != kind or (kind == "rgb" and p in used):
                p += 1
            used.add(p)
            table[i, op] = p
    return table


_SLOT_TABLE = _slot_table()
NUM_JITTER_UNIFORMS = 6


def color_jitter_params_from_uniforms(u, brightness, contrast, saturation, hue, prob=1.0) -> dict:
    """Decision, op order (index into JITTER_ORDERS) and strengths, from uniforms [..., 6]."""
    def factor(v, strength):
        lo = max(0.0, 1.0 - strength)
        return lo + v * (1.0 + strength - lo)

    return {
        "jitter": should_apply(u[..., 0], prob),
        "jitter_order": tf.minimum(tf.cast(u[..., 1] * len(JITTER_ORDERS), tf.int32), len(JITTER_ORDERS) - 1),
        "jitter_values": tf.stack([(2.0 * u[..., 2] - 1.0) * brightness, factor(u[..., 3], contrast),
                                   factor(u[..., 4], saturation), (2.0 * u[..., 5] - 1.0) * hue], axis=-1),
    }


def _saturation_hue_rgb(r, g, b, sat_factor, hue_delta):
    """``tf.image.adjust_saturation`` then ``adjust_hue`` on channel planes, without leaving RGB.

    In HSV, v = max(r, g, b), the chroma C = v - min(r, g, b) = v * s, and each channel is
    v - C * (1 - k_c(h)) with k_c a fixed piecewise-linear function of the hue. Saturation
    scales s (clipped to 1), i.e. C' = min(C * f, v), and leaves h and v alone; hue rotates h and
    leaves C and v alone. So the pair is: h from (r, g, b) as ``rgb_to_hsv`` computes it, h' = h +
    delta mod 1, then the channels from (v, C', h') as ``hsv_to_rgb`` does: equal to the two tf.image
    ops up to float rounding, for a fraction of their cost (no s, no v / s round trip, no
    [.., 3] stack/unstack). ``sat_factor`` 1 and ``hue_delta`` 0 reproduce the input (to rounding).
    """
    mx = tf.maximum(tf.maximum(r, g), b)
    chroma = mx - tf.minimum(tf.minimum(r, g), b)
    inv = 1.0 / tf.where(chroma > 0.0, chroma, 1.0)
    h6 = tf.where(tf.equal(r, mx), (g - b) * inv,                      # 6 * hue, in [-1, 5)
                  tf.where(tf.equal(g, mx), (b - r) * inv + 2.0, (r - g) * inv + 4.0))
    h6 = h6 + 6.0 * hue_delta
    h6 = h6 - 6.0 * tf.floor(h6 * (1.0 / 6.0))                         # mod 6 (floormod is slow under XLA)
    c2 = tf.minimum(chroma * sat_factor, mx)
    lo = mx - c2
    return (lo + c2 * tf.clip_by_value(tf.abs(h6 - 3.0) - 1.0, 0.0, 1.0),
            lo + c2 * tf.clip_by_value(2.0 - tf.abs(h6 - 2.0), 0.0, 1.0),
            lo + c2 * tf.clip_by_value(2.0 - tf.abs(h6 - 4.0), 0.0, 1.0))


def apply_color_jitter(images: tf.Tensor, params: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """Brightness, contrast, saturation, hue in each example's random order, clip after each op.

    Works on the three channel planes (no HSV tensor): saturation and hue through
    ``_saturation_hue_rgb``, brightness and contrast as per-channel affine maps. A slot no op of
    an example uses passes its input through unchanged (exactly).
    """
    slots = tf.gather(tf.constant(_SLOT_TABLE), params["jitter_order"])  # [B, 4]
    b, c, s, h = tf.unstack(tf.cast(params["jitter_values"], tf.float32), axis=-1)
    per = lambda v: tf.reshape(v, [-1, 1, 1])
    planes = tf.unstack(tf.convert_to_tensor(images, tf.float32), axis=-1)
    for p, kind in enumerate(_JITTER_SLOTS):
        here = lambda op: tf.equal(slots[:, op], p)
        if kind == "rgb":  # at most one of the two is not an identity in this slot
            cf, bd = per(tf.where(here(_CONTRAST), c, 1.0)), per(tf.where(here(_BRIGHT), b, 0.0))
            planes = [tf.clip_by_value((x - m) * cf + m + bd, 0.0, 1.0)
                      for x, m in ((x, tf.reduce_mean(x, axis=[1, 2], keepdims=True)) for x in planes)]
        else:
            used = per(here(_SAT) | here(_HUE))
            new = _saturation_hue_rgb(*planes, per(tf.where(here(_SAT), s, 1.0)),
                                      per(tf.where(here(_HUE), h, 0.0)))
            planes = [tf.where(used, tf.clip_by_value(n, 0.0, 1.0), x) for n, x in zip(new, planes)]
    return tf.where(_bcast(params["jitter"], images), tf.stack(planes, axis=-1), images)


def color_jitter(image, seed, brightness, contrast, saturation, hue, prob=1.0) -> tf.Tensor:
    """SimCLR/BYOL colour jitter of one image [H, W, 3] in [0, 1]; see the module docstring."""
    params = color_jitter_params_from_uniforms(uniforms(seed, NUM_JITTER_UNIFORMS), brightness,
                                               contrast, saturation, hue, prob)
    return apply_color_jitter(tf.convert_to_tensor(image, tf.float32)[None], _expand(params))[0]


# ----------------------------------------------------------------------------------- grayscale

def grayscale_params_from_uniforms(u, prob) -> dict:
    return {"gray": should_apply(u[..., 0], prob)}


def apply_grayscale(images, params) -> tf.Tensor:
    luma = tf.reduce_sum(images * tf.constant(_GRAY_WEIGHTS, images.dtype), axis=-1, keepdims=True)
    return tf.where(_bcast(params["gray"], images), tf.broadcast_to(luma, tf.shape(images)), images)


def random_grayscale(image, seed, prob) -> tf.Tensor:
    """Luma grayscale with probability ``prob``, kept as 3 equal channels."""
    params = grayscale_params_from_uniforms(uniforms(seed, 1), prob)
    return apply_grayscale(tf.convert_to_tensor(image, tf.float32)[None], _expand(params))[0]


# -------------------------------------------------------------------------------- gaussian blur

def blur_kernel_size(image_size: int) -> int:
    """2 * floor(size / 20) + 1, about 10% of the side: 23 at 224 (BYOL), 3 at 32, 1 (no blur) below 20."""
    return 2 * (int(image_size) // 20) + 1


def blur_params_from_uniforms(u, prob, sigma=(0.1, 2.0)) -> dict:
    return {"blur": should_apply(u[..., 0], prob), "blur_sigma": sigma[0] + u[..., 1] * (sigma[1] - sigma[0])}


def _blur_matrices(sigma: tf.Tensor, size: int, kernel_size: int) -> tf.Tensor:
    """Per-example [B, size, size] matrices M with (M @ x) = 1-D Gaussian blur of x, REFLECT padding.

    Folding the padding into a banded matrix turns the separable blur into two batched matmuls,
    which run faster on CPU than depthwise convolutions with per-example kernels.
    """
    r = kernel_size // 2
    taps = np.arange(-r, r + 1)
    src = np.arange(size)[:, None] + taps[None, :]              # [size, k] source index per tap
    period = max(2 * (size - 1), 1)
    src = np.mod(src, period)
    src = np.where(src > size - 1, period - src, src)           # reflect without repeating the edge
    onehot = np.zeros((kernel_size, size, size), np.float32)
    for t in range(kernel_size):
        onehot[t, np.arange(size), src[:, t]] = 1.0
    weights = tf.exp(-tf.constant(taps.astype(np.float32) ** 2)[None, :]
                     / (2.0 * tf.reshape(tf.cast(sigma, tf.float32), [-1, 1]) ** 2))
    weights /= tf.reduce_sum(weights, axis=1, keepdims=True)    # [B, k]
    return tf.einsum("bt,tij->bij", weights, tf.constant(onehot))


def gaussian_blur_images(images: tf.Tensor, sigma: tf.Tensor, kernel_size: int) -> tf.Tensor:
    """Separable Gaussian blur of square images [B, S, S, C] with per-example sigma [B] (pixels)."""
    b, size, width, c = images.shape
    if size is None or width != size or c is None:
        raise ValueError(f"gaussian blur needs static square images, got shape {images.shape}")
    if kernel_size <= 1:
        return images
    b = tf.shape(images)[0]
    m = _blur_matrices(sigma, size, kernel_size)                        # [B, S, S]
    x = tf.matmul(m, tf.reshape(images, [b, size, size * c]))           # along H
    x = tf.transpose(tf.reshape(x, [b, size, size, c]), [0, 1, 3, 2])   # [B, H, C, W]
    x = tf.matmul(tf.reshape(x, [b, size * c, size]), m, transpose_b=True)  # along W
    return tf.transpose(tf.reshape(x, [b, size, c, size]), [0, 1, 3, 2])


def apply_gaussian_blur(images, params, kernel_size: Optional[int] = None) -> tf.Tensor:
    """Blur the examples whose ``params['blur']`` is set (computes all; XLA-friendly)."""
    kernel_size = blur_kernel_size(images.shape[1]) if kernel_size is None else int(kernel_size)
    blurred = gaussian_blur_images(images, params["blur_sigma"], kernel_size)
    return tf.where(_bcast(params["blur"], images), blurred, images)


def apply_gaussian_blur_subset(images, params, kernel_size: Optional[int] = None) -> tf.Tensor:
    """As ``apply_gaussian_blur`` but computes only the selected examples (dynamic shapes, no XLA)."""
    kernel_size = blur_kernel_size(images.shape[1]) if kernel_size is None else int(kernel_size)
    idx = tf.where(params["blur"])                               # [n, 1]
    blurred = gaussian_blur_images(tf.gather_nd(images, idx), tf.gather_nd(params["blur_sigma"], idx),
                                   kernel_size)
    return tf.tensor_scatter_nd_update(images, idx, blurred)


def gaussian_blur(image, seed, prob, sigma=(0.1, 2.0), kernel_size: Optional[int] = None) -> tf.Tensor:
    """Gaussian blur of a square image [S, S, C] with probability ``prob``, sigma ~ U[sigma] px."""
    image = tf.convert_to_tensor(image, tf.float32)
    params = blur_params_from_uniforms(uniforms(seed, 2), prob, sigma)
    return apply_gaussian_blur(image[None], _expand(params), kernel_size)[0]


# ------------------------------------------------------------------------------------ solarize

def solarize_params_from_uniforms(u, prob) -> dict:
    return {"solarize": should_apply(u[..., 0], prob)}


def apply_solarize(images, params, threshold=0.5) -> tf.Tensor:
    on = tf.logical_and(_bcast(params["solarize"], images), images >= threshold)
    return tf.where(on, 1.0 - images, images)


def solarize(image, seed, prob, threshold=0.5) -> tf.Tensor:
    """x -> 1 - x for pixels >= threshold, with probability ``prob``."""
    image = tf.convert_to_tensor(image, tf.float32)
    params = solarize_params_from_uniforms(uniforms(seed, 1), prob)
    return apply_solarize(image[None], _expand(params), threshold)[0]


def normalize(image, mean, std) -> tf.Tensor:
    """(image - mean) / std per channel."""
    image = tf.convert_to_tensor(image, tf.float32)
    return (image - tf.constant(mean, tf.float32)) * tf.constant(1.0 / np.asarray(std, np.float32))


# ------------------------------------------------------------------------------- composed view

# Where each op's uniforms sit in a view's uniform vector.
_VIEW_LAYOUT = {"crop": (0, NUM_CROP_UNIFORMS)}
for _name, _k in (("flip", 1), ("jitter", NUM_JITTER_UNIFORMS), ("gray", 1), ("blur", 2), ("solarize", 1)):
    _start = max(end for _, end in _VIEW_LAYOUT.values())
    _VIEW_LAYOUT[_name] = (_start, _start + _k)
NUM_VIEW_UNIFORMS = max(end for _, end in _VIEW_LAYOUT.values())


def check_view_cfg(view_cfg: Mapping[str, Any]) -> None:
    """Raise ValueError naming missing or unknown keys of one view's config, or a bad ``size``."""
    keys = set(view_cfg.keys())
    missing, unknown = set(VIEW_KEYS) - keys, keys - set(VIEW_KEYS) - set(OPTIONAL_VIEW_KEYS)
    if missing or unknown:
        raise ValueError(f"view config must have exactly the keys {list(VIEW_KEYS)} "
                         f"(and optionally {list(OPTIONAL_VIEW_KEYS)}); "
                         f"missing {sorted(missing)}, unknown {sorted(unknown)} "
                         "(see ssl_jax.data.augment.byol_view_configs()).")
    size = view_cfg.get("size")
    if size is not None and (isinstance(size, (bool, np.bool_)) or not isinstance(size, (int, np.integer))
                             or size < 1):
        raise ValueError(f"view config key 'size' must be a positive int (the side in pixels of the "
                         f"view's crop, e.g. size=96 for a multi-crop local view), got {size!r}; "
                         "fix it in config.data.views, or remove 'size' to use data.image_size.")


def view_size(view_cfg: Mapping[str, Any], image_size: int) -> int:
    """The output side of a view: its config's ``size`` if set, else ``image_size`` (data.image_size)."""
    size = view_cfg.get("size")
    return int(image_size) if size is None else int(size)


def view_uniforms(seed) -> tf.Tensor:
    """All the randomness of one view of one example: ``NUM_VIEW_UNIFORMS`` uniforms from ``seed``."""
    return uniforms(seed, NUM_VIEW_UNIFORMS)


def view_params_from_uniforms(u, view_cfg: Mapping[str, Any], image_hw=None) -> dict:
    """Every decision of a view from its uniforms [..., NUM_VIEW_UNIFORMS] (vectorised).

    Includes the crop window iff ``image_hw`` (source [H, W], or [..., 2]) is given.
    """
    c = view_cfg
    part = lambda name: u[..., _VIEW_LAYOUT[name][0]:_VIEW_LAYOUT[name][1]]
    params = {}
    if image_hw is not None:
        params["crop"] = view_crop_window(u, c, image_hw)
    params.update(flip_params_from_uniforms(part("flip"), c["flip_prob"]))
    params.update(color_jitter_params_from_uniforms(part("jitter"), c["brightness"], c["contrast"],
                                                    c["saturation"], c["hue"], c["color_jitter_prob"]))
    params.update(grayscale_params_from_uniforms(part("gray"), c["grayscale_prob"]))
    params.update(blur_params_from_uniforms(part("blur"), c["blur_prob"], tuple(c["blur_sigma"])))
    params.update(solarize_params_from_uniforms(part("solarize"), c["solarize_prob"]))
    return params


def view_crop_window(u, view_cfg: Mapping[str, Any], image_hw) -> tf.Tensor:
    """The crop window (y, x, h, w) of a view from its uniforms (``view_params_from_uniforms``'s)."""
    lo, hi = _VIEW_LAYOUT["crop"]
    return crop_window_from_uniforms(u[..., lo:hi], image_hw, tuple(view_cfg["crop_scale"]),
                                     tuple(view_cfg["crop_ratio"]))


def sample_view_params(seed, view_cfg: Mapping[str, Any], image_shape=None) -> dict:
    """Every random decision of one view of one example, from its seed (what ``augment_view`` uses)."""
    hw = None if image_shape is None else tf.convert_to_tensor(image_shape)[:2]
    return view_params_from_uniforms(view_uniforms(seed), view_cfg, hw)


def _pre_blur(images, params, c):
    x = images
    if c["flip_prob"] > 0:
        x = apply_flip(x, params)
    if c["color_jitter_prob"] > 0:
        x = apply_color_jitter(x, params)
    if c["grayscale_prob"] > 0:
        x = apply_grayscale(x, params)
    return x


def _post_blur(images, params, c, mean, std):
    x = images
    if c["solarize_prob"] > 0:
        x = apply_solarize(x, params, c["solarize_threshold"])
    if mean is not None:
        x = normalize(x, mean, std)
    return x


def apply_view_ops(images: tf.Tensor, params: Mapping[str, tf.Tensor], view_cfg: Mapping[str, Any],
                   mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> tf.Tensor:
    """Everything after the crop, on a batch [B, S, S, 3] in [0, 1] with per-example params [B].

    flip -> colour jitter -> grayscale -> blur -> solarize -> normalize (if mean/std given).
    Ops whose probability is 0 in ``view_cfg`` are left out of the graph.
    """
    x = _pre_blur(images, params, view_cfg)
    if view_cfg["blur_prob"] > 0:
        x = apply_gaussian_blur(x, params)
    return _post_blur(x, params, view_cfg, mean, std)


def _blur_and_post(images, params, c, mean, std):
    x = images
    if c["blur_prob"] > 0:
        x = apply_gaussian_blur(x, params)
    return _post_blur(x, params, c, mean, std)


def _checked(view_cfg: Mapping[str, Any]) -> dict:
    c = dict(view_cfg)
    check_view_cfg(c)
    return c


def _blurs_sometimes(c: Mapping[str, Any]) -> bool:
    """0 < blur_prob < 1: only then is the blur split out to run on the selected examples only."""
    return 0 < c["blur_prob"] < 1


def _maybe_jit(fn, jit: bool):
    return tf.function(fn, jit_compile=True) if jit else fn


def make_view_post_fn(view_cfg: Mapping[str, Any], mean=None, std=None, jit: bool = True):
    """Blur -> solarize -> normalize of ``apply_view_ops`` as a batch function ``(images, params)``.

    With ``jit``, XLA-compiled. A view that always blurs is one compiled function (the blur's two
    batched matmuls included); a view that blurs sometimes blurs the selected examples only, then
    runs the compiled rest.
    """
    c = _checked(view_cfg)
    if not (jit and _blurs_sometimes(c)):
        return _maybe_jit(lambda x, p: _blur_and_post(x, p, c, mean, std), jit)
    post = tf.function(lambda x, p: _post_blur(x, p, c, mean, std), jit_compile=True)

    def fn(x, p):
        if blur_kernel_size(x.shape[1]) > 1:
            x = apply_gaussian_blur_subset(x, p)
        return post(x, p)

    return fn


def make_view_ops_fn(view_cfg: Mapping[str, Any], mean=None, std=None, jit: bool = True):
    """``apply_view_ops`` for one view config as a fast batch function ``(images, params) -> images``.

    With ``jit``, the ops are XLA-compiled, fusing their many elementwise passes (see
    ``make_view_post_fn`` for the blur).
    """
    c = _checked(view_cfg)
    if not (jit and _blurs_sometimes(c)):
        return _maybe_jit(lambda x, p: apply_view_ops(x, p, c, mean, std), jit)
    pre = tf.function(lambda x, p: _pre_blur(x, p, c), jit_compile=True)
    post = make_view_post_fn(c, mean, std, jit=True)
    return lambda x, p: post(pre(x, p), p)


# ------------------------------------------------------------------ per-example ops (large images)

_ORDER_TABLE = np.asarray(JITTER_ORDERS, np.int32)  # [24, 4]: the op at each position


def _jitter_op_planes(op: int, planes, values):
    """One colour-jitter op on channel planes of one image, clipped; ``values`` = (b, c, s, h)."""
    b, c, s, h = values
    clip = lambda q: tf.clip_by_value(q, 0.0, 1.0)
    if op == _BRIGHT:
        return [clip(q + b) for q in planes]
    if op == _CONTRAST:
        return [clip((q - m) * c + m) for q, m in ((q, tf.reduce_mean(q)) for q in planes)]
    sat, hue = (s, 0.0) if op == _SAT else (1.0, h)
    return [clip(q) for q in _saturation_hue_rgb(*planes, sat, hue)]


def apply_pre_blur_example(image: tf.Tensor, params: Mapping[str, tf.Tensor],
                           view_cfg: Mapping[str, Any]) -> tf.Tensor:
    """Flip -> colour jitter -> grayscale of ONE image [S, S, 3] with scalar params.

    The same ops as the batch path (``apply_view_ops``), but with branches instead of selects:
    an example computes only the ops it draws (its four jitter ops in its order, one
    ``switch_case`` per position), on an image small enough to stay in cache. For large images
    this is about twice as fast as the vectorised batch, which computes every slot for everyone.
    """
    c = view_cfg
    x = tf.convert_to_tensor(image, tf.float32)
    if c["flip_prob"] > 0:
        x = tf.cond(params["flip"], lambda: tf.reverse(x, axis=[1]), lambda: x)
    if c["color_jitter_prob"] > 0:
        def jitter():
            values = tf.unstack(tf.cast(params["jitter_values"], tf.float32))
            order = tf.gather(tf.constant(_ORDER_TABLE), params["jitter_order"])
            planes = tf.unstack(x, axis=-1)
            for k in range(4):
                planes = tf.switch_case(order[k], [functools.partial(_jitter_op_planes, op, planes, values)
                                                   for op in range(4)])
            return tf.stack(planes, axis=-1)

        x = tf.cond(params["jitter"], jitter, lambda: x)
    if c["grayscale_prob"] > 0:
        def gray():
            luma = tf.reduce_sum(x * tf.constant(_GRAY_WEIGHTS, x.dtype), axis=-1, keepdims=True)
            return tf.broadcast_to(luma, tf.shape(x))

        x = tf.cond(params["gray"], gray, lambda: x)
    return x


def make_example_pre_blur_fn(view_cfg: Mapping[str, Any], jit: bool = True):
    """``apply_pre_blur_example`` for one view config, XLA-compiled with ``jit``: ``(image, params)``."""
    c = dict(view_cfg)
    check_view_cfg(c)
    fn = lambda x, p: apply_pre_blur_example(x, p, c)
    return tf.function(fn, jit_compile=True) if jit else fn


def augment_view(image_or_bytes, seed, view_cfg: Mapping[str, Any], image_size: int,
                 is_jpeg_bytes: bool = False, *, mean=None, std=None) -> tf.Tensor:
    """One augmented view float32 [S, S, 3]: crop -> flip -> jitter -> gray -> blur -> solarize -> normalize.

    ``image_or_bytes``: uint8 [H, W, 3] (or float in [0, 1]), or a JPEG string when
    ``is_jpeg_bytes`` (then only the crop window is decoded). Normalised iff ``mean``/``std`` given.
    S = ``view_size(view_cfg, image_size)``: the view's own ``size`` if it has one, as in the pipeline.
    """
    check_view_cfg(view_cfg)
    image_size = view_size(view_cfg, image_size)
    if is_jpeg_bytes:
        params = sample_view_params(seed, view_cfg, tf.image.extract_jpeg_shape(image_or_bytes))
        image = resize_decoded_crop(decode_jpeg_window(image_or_bytes, params["crop"]), image_size)
    else:
        image = tf.convert_to_tensor(image_or_bytes)
        params = sample_view_params(seed, view_cfg, tf.shape(image))
        image = crop_and_resize(image[None], params["crop"][None], image_size)[0]
    image = tf.ensure_shape(image, [image_size, image_size, 3])
    params = _expand({k: v for k, v in params.items() if k != "crop"})
    return apply_view_ops(image[None], params, view_cfg, mean, std)[0]


def byol_view_configs() -> Tuple[dict, dict]:
    """The two asymmetric BYOL views (Grill et al. 2020, Table 6)."""
    common = dict(crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), flip_prob=0.5,
                  color_jitter_prob=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1,
                  grayscale_prob=0.2, blur_sigma=(0.1, 2.0), solarize_threshold=0.5)
    return (dict(common, blur_prob=1.0, solarize_prob=0.0),
            dict(common, blur_prob=0.1, solarize_prob=0.2))
