"""The "heavy" augmentations of DSSL (Bai et al. 2022) as stateless TensorFlow ops for tf.data.

A policy is parsed from a spec string (``parse_policy``); grammar (whitespace ignored, names
case-insensitive):

* ``randaugment(N,M)`` / ``ra(N,M)``: N ops drawn uniformly WITH replacement from ``OPS``, all at
  magnitude M in [0, 30] (the DSSL code's RandAugment; N first, as there).
* ``jigsaw(N)``: the N x N tiles of the image, uniformly permuted. Tiles are H//N x W//N px; when
  a side is not divisible by N the remainder rows (bottom) / columns (right) stay in place.
* ``uniformaugment`` / ``ua``: 2 ops drawn uniformly with replacement, each applied with
  probability 0.5 at a magnitude ~ U[0, 30] (UniformAugment, LingChen et al. 2020).
* ``A+B+...``: A, then B, ... (the DSSL default is ``ra(2,5)+jigsaw(4)``); ``none`` parts are
  dropped and nested sequences flattened.
* ``choice(P1:A, P2:B, ...)``: exactly one of A, B, ... with probabilities P1, P2, ... (> 0,
  summing to 1), e.g. ``choice(0.9:ra(2,5), 0.1:jigsaw(4))`` (the DSSL ImageNet code).
* ``none``: the identity.

Ops and ranges (the DSSL code's ``rand_aug_custom.py``): magnitude m in [0, 30] maps to
v = m/30 * (max - min) + min.

==============  ==================  ===============================================================
op              v range             what it does (images uint8 [H, W, 3])
==============  ==================  ===============================================================
identity        -                   nothing
autocontrast    -                   per channel, [min, max] -> [0, 255] (PIL ImageOps.autocontrast)
equalize        -                   per-channel histogram equalisation (PIL ImageOps.equalize)
rotate          [0, 30] degrees     about the image centre, counter-clockwise for v > 0
solarize        [0, 256]            x >= v -> 255 - x (so m=0 inverts everything, m=30 is identity)
color           [0.1, 1.9]          blend(grayscale, image, v)
posterize       [0, 4]              keep the top max(1, int(v)) bits (m=0 keeps 1 bit)
contrast        [0.1, 1.9]          blend(mean of the grayscale image, image, v)
brightness      [0.1, 1.9]          blend(black, image, v)
sharpness       [0.1, 1.9]          blend(3x3 smoothed image, image, v)
shear_x         [0, 0.3]            input x = x + v*y
shear_y         [0, 0.3]            input y = y + v*x
translate_x     [0, 100] PIXELS     input x = x + v
translate_y     [0, 100] PIXELS     input y = y + v
cutout          [0, 40] px          an int(v)-px square at a uniform random centre pixel, filled
                                    with (125, 123, 114), clipped at the borders
invert          -                   255 - x
==============  ==================  ===============================================================

* The enhance ops (color, contrast, brightness, sharpness) are bit-exact PIL ImageEnhance: the
  blend d + v*(x - d) in float32, clipped to [0, 255] and truncated (PIL's Blend.c); grayscale is
  PIL's fixed-point luma (R*19595 + G*38470 + B*7471 + 2**15) >> 16 (= R*299/1000 + G*587/1000 +
  B*114/1000, rounded); contrast's constant is int(mean luma + 0.5); sharpness smooths with
  [[1,1,1],[1,5,1],[1,1,1]]/13, rounded, border pixels unchanged (PIL's SMOOTH filter). Their
  identity is v = 1 (m = 15): DSSL's m = 5 or 9 always reduces colour, contrast, etc.
* Translations are absolute pixels as in the DSSL code: on 32-px CIFAR images anything beyond
  m ~ 10 (33 px) moves the whole image out, leaving grey; the paper's CIFAR numbers used this.
* Geometric ops (rotate, shear_*, translate_*) get a random sign (p = 0.5), sample nearest
  neighbour and fill (128, 128, 128) outside the image. Coordinates are PIL's: continuous, origin
  at the top-left corner of the top-left pixel; output pixel (x, y) samples the input pixel that
  contains T(x + 1/2, y + 1/2), T being the map in the table (rotation about (W/2, H/2)).
  (Implemented with ``ImageProjectiveTransformV3``, whose float32 round-to-nearest can differ
  from exact arithmetic at a pixel boundary, i.e. on exact ties only.)

Randomness: every decision is ``tf.random.stateless_uniform`` of a seed derived from the example's
seed [2] with ``augment.fold_in``: sequence part i gets fold_in(seed, i), choice option j
fold_in(seed, j) (its pick uses the seed itself), RandAugment/UniformAugment op slot k
fold_in(seed, k); so parts are independent and the output is a pure function of (image, seed).

Speed, measured on the 2-core CPU shared with another job (load ~1), B=512 32x32 uint8,
``ra(2,5)+jigsaw(4)``: ``apply_policy_batch`` called directly, about 11.5k images/s (44 ms per
batch; ``benchmarks/heavy_augment_grid.py --time``); as a ``Dataset.map`` over batches
(parallel calls, intra-op parallelism 1 as the pipeline sets it), about 6-7k images/s;
``apply_policy`` per example in a parallel ``Dataset.map``, about 2.6-3k images/s. The batch
path draws the per-example decisions in a ``map_fn`` over the seeds (about 40% of its time: the
stateless RNG ops have no vectorised form, and XLA's Philox gives other numbers), then applies
each op once per batch to the examples that drew it (``dynamic_partition`` / ``dynamic_stitch``);
the per-example path runs only the drawn op (``switch_case``). Both call the same op functions,
which compute each example independently of the others with exact integer or elementwise float
arithmetic, so they agree bit for bit.
"""
import dataclasses
import functools
import math
import re
from typing import Dict, Tuple, Union

import numpy as np
from ssl_jax.data.tf_host import tf

from ssl_jax.data import augment

# ----------------------------------------------------------------------------------- policies

MAX_MAGNITUDE = 30.0
UA_NUM_OPS, UA_PROB = 2, 0.5
_EXAMPLE = "valid examples: 'ra(2,5)+jigsaw(4)', 'choice(0.9:ra(2,5), 0.1:jigsaw(4))', 'ua', 'none'"


@dataclasses.dataclass(frozen=True)
class Identity:
    """``none``: no heavy augmentation."""


@dataclasses.dataclass(frozen=True)
class RandAugment:
    """``ra(num_ops, magnitude)``."""
    num_ops: int
    magnitude: float

    def __post_init__(self):
        if isinstance(self.num_ops, bool) or not isinstance(self.num_ops, int) or self.num_ops < 1:
            raise ValueError(f"randaugment needs an integer number of ops >= 1, got {self.num_ops!r}")
        if not 0.0 <= self.magnitude <= MAX_MAGNITUDE:
            raise ValueError(f"randaugment magnitude must be in [0, 30], got {self.magnitude!r}")
        object.__setattr__(self, "magnitude", float(self.magnitude))


@dataclasses.dataclass(frozen=True)
class Jigsaw:
    """``jigsaw(grid)``: permute the grid x grid tiles."""
    grid: int

    def __post_init__(self):
        if isinstance(self.grid, bool) or not isinstance(self.grid, int) or self.grid < 1:
            raise ValueError(f"jigsaw needs an integer grid size >= 1, got {self.grid!r}")


@dataclasses.dataclass(frozen=True)
class UniformAugment:
    """``ua``: 2 ops, each with probability 0.5, at magnitudes ~ U[0, 30]."""


@dataclasses.dataclass(frozen=True)
class Compose:
    """``A+B+...``: the parts in order (at least two, none of them Compose or Identity)."""
    parts: tuple

    def __post_init__(self):
        if len(self.parts) < 2 or any(isinstance(p, (Compose, Identity)) for p in self.parts):
            raise ValueError("a sequence needs two or more parts, none of them 'none' or a sequence "
                             "(use compose() to build one)")


@dataclasses.dataclass(frozen=True)
class Choice:
    """``choice(p1:A, p2:B, ...)``: exactly one option, option j with probability probs[j]."""
    probs: Tuple[float, ...]
    options: tuple

    def __post_init__(self):
        if len(self.probs) != len(self.options) or len(self.options) < 1:
            raise ValueError("choice needs one probability per option and at least one option")
        if any(not p > 0 for p in self.probs) or abs(sum(self.probs) - 1.0) > 1e-6:
            raise ValueError(f"choice probabilities must be > 0 and sum to 1, got {list(self.probs)}")
        object.__setattr__(self, "probs", tuple(float(p) for p in self.probs))


Policy = Union[Identity, RandAugment, Jigsaw, UniformAugment, Compose, Choice]


def compose(*parts) -> Policy:
    """The sequence of ``parts``, flattened, without identities (a single part is itself)."""
    flat = []
    for p in parts:
        flat.extend(p.parts if isinstance(p, Compose) else [] if isinstance(p, Identity) else [p])
    return Identity() if not flat else flat[0] if len(flat) == 1 else Compose(tuple(flat))


class _SpecError(Exception):
    pass


class _Parser:
    """Recursive descent over the spec with whitespace removed and lower-cased."""
    _NUM = re.compile(r"\d+(?:\.\d*)?|\.\d+")
    _NAME = re.compile(r"[a-z_]+")

    def __init__(self, text):
        self.s, self.i = text, 0

    def fail(self, what):
        near = self.s[self.i:] or "the end"
        raise _SpecError(f"{what} at {near!r}")

    def eat(self, token):
        if not self.s.startswith(token, self.i):
            self.fail(f"expected {token!r}")
        self.i += len(token)

    def match(self, regex, what):
        m = regex.match(self.s, self.i)
        if not m:
            self.fail(f"expected {what}")
        self.i = m.end()
        return m.group()

    def int_(self, what):
        text = self.match(self._NUM, what)
        if not text.isdigit():
            raise _SpecError(f"{what} must be an integer, got {text!r}")
        return int(text)

    def sequence(self):
        parts = [self.item()]
        while self.s.startswith("+", self.i):
            self.i += 1
            parts.append(self.item())
        return compose(*parts)

    def item(self):
        start = self.i
        name = self.match(self._NAME, "a policy name (ra, randaugment, jigsaw, ua, uniformaugment, "
                                      "choice, none)")
        try:
            if name in ("ra", "randaugment"):
                self.eat("(")
                n = self.int_("the number of ops N of ra(N,M)")
                self.eat(",")
                m = float(self.match(self._NUM, "the magnitude M of ra(N,M)"))
                self.eat(")")
                return RandAugment(n, m)
            if name == "jigsaw":
                self.eat("(")
                n = self.int_("the grid size N of jigsaw(N)")
                self.eat(")")
                return Jigsaw(n)
            if name in ("ua", "uniformaugment"):
                return UniformAugment()
            if name == "none":
                return Identity()
            if name == "choice":
                self.eat("(")
                probs, options = [], []
                while True:
                    probs.append(float(self.match(self._NUM, "a probability P of choice(P:policy, ...)")))
                    self.eat(":")
                    options.append(self.sequence())
                    if self.s.startswith(")", self.i):
                        self.i += 1
                        return Choice(tuple(probs), tuple(options))
                    self.eat(",")
        except ValueError as e:  # a policy's own check (a range, the probabilities)
            raise _SpecError(f"{e} (in {self.s[start:self.i]!r})") from None
        self.i = start
        self.fail(f"unknown policy {name!r}")


def parse_policy(spec: str) -> Policy:
    """The policy of a spec string (grammar in the module docstring); ValueError if malformed."""
    text = re.sub(r"\s+", "", str(spec)).lower()
    try:
        parser = _Parser(text)
        policy = parser.sequence()
        if parser.i != len(text):
            parser.fail("unexpected text (a policy ends here; join policies with '+')")
    except _SpecError as e:
        raise ValueError(f"bad heavy augmentation policy {spec!r}: {e}; {_EXAMPLE}") from None
    return policy


def _num(x: float) -> str:
    text = repr(float(x))  # shortest text that reads back to the same float
    return text[:-2] if text.endswith(".0") else text


def policy_spec(policy: Policy) -> str:
    """The canonical spec of ``policy``: ``parse_policy(policy_spec(p)) == p``."""
    if isinstance(policy, Identity):
        return "none"
    if isinstance(policy, RandAugment):
        return f"ra({policy.num_ops},{_num(policy.magnitude)})"
    if isinstance(policy, Jigsaw):
        return f"jigsaw({policy.grid})"
    if isinstance(policy, UniformAugment):
        return "ua"
    if isinstance(policy, Compose):
        return "+".join(policy_spec(p) for p in policy.parts)
    if isinstance(policy, Choice):
        return "choice(" + ", ".join(f"{_num(p)}:{policy_spec(o)}"
                                     for p, o in zip(policy.probs, policy.options)) + ")"
    raise TypeError(f"not a heavy augmentation policy: {policy!r}")


# ------------------------------------------------------------------------------------------ ops
# Each op works on a batch x uint8 [k, H, W, 3] with per-example magnitudes m float32 [k] and
# uniforms u float32 [k, 3] (u[:, 0]: the sign of geometric ops, u[:, 1:]: cutout's centre y, x),
# and computes every example on its own, so any subset of a batch gives the same pixels.

_RANGES = {"rotate": (0.0, 30.0), "solarize": (0.0, 256.0), "color": (0.1, 1.9), "posterize": (0.0, 4.0),
           "contrast": (0.1, 1.9), "brightness": (0.1, 1.9), "sharpness": (0.1, 1.9), "shear_x": (0.0, 0.3),
           "shear_y": (0.0, 0.3), "translate_x": (0.0, 100.0), "translate_y": (0.0, 100.0),
           "cutout": (0.0, 40.0)}
_GEOMETRIC_FILL = 128.0
_CUTOUT_FILL = (125, 123, 114)


def _value(name, m):
    """v = m/30 * (max - min) + min, float32 [k]; in float64 first, as the Python of the DSSL
    code, so that e.g. the enhance factor is PIL's float32(v) exactly."""
    lo, hi = _RANGES[name]
    return tf.cast(tf.cast(m, tf.float64) / MAX_MAGNITUDE * (hi - lo) + lo, tf.float32)


def _b(v):
    """[k] -> [k, 1, 1, 1]."""
    return tf.reshape(v, [-1, 1, 1, 1])


def _signed(v, u):
    return tf.where(u[:, 0] < 0.5, -v, v)


def _luma(x):
    """PIL's RGB -> L: int32 [k, H, W, 1]."""
    x = tf.cast(x, tf.int32)
    weighted = x[..., 0:1] * 19595 + x[..., 1:2] * 38470 + x[..., 2:3] * 7471 + 0x8000
    return tf.bitwise.right_shift(weighted, 16)


def _blend(degenerate, x, factor):
    """PIL Image.blend(degenerate, x, factor): float32, clipped, truncated."""
    d = tf.cast(degenerate, tf.float32)
    out = d + _b(factor) * (tf.cast(x, tf.float32) - d)
    return tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8)


def _identity(x, m, u):
    return x


def _invert(x, m, u):
    return 255 - x


def _solarize(x, m, u):
    # x >= v <=> x >= ceil(v) for integer x; compared in uint8, v = 256 meaning "no pixel".
    t = tf.cast(tf.math.ceil(_value("solarize", m)), tf.int32)
    on = (x >= _b(tf.cast(tf.minimum(t, 255), tf.uint8))) & _b(t <= 255)
    return tf.where(on, 255 - x, x)


def _posterize(x, m, u):
    bits = tf.maximum(1, tf.cast(_value("posterize", m), tf.int32))
    mask = 255 - (tf.bitwise.left_shift(tf.ones_like(bits), 8 - bits) - 1)
    return tf.bitwise.bitwise_and(x, _b(tf.cast(mask, tf.uint8)))


def _lut_index(x):
    """Index of each pixel value into per-(example, channel) tables flattened from [k, 3, 256]."""
    k = tf.shape(x)[0]
    return tf.cast(x, tf.int32) + tf.reshape(tf.range(k * 3) * 256, [k, 1, 1, 3])


def _autocontrast(x, m, u):
    lo = tf.cast(tf.reduce_min(x, axis=[1, 2]), tf.float64)[..., None]  # [k, 3, 1]
    hi = tf.cast(tf.reduce_max(x, axis=[1, 2]), tf.float64)[..., None]
    # PIL's table, in float64 as PIL: int(i * scale + offset), offset = -lo * scale, clipped.
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    values = tf.range(256, dtype=tf.float64)
    lut = tf.clip_by_value(tf.floor(values * scale + (-lo * scale)), 0.0, 255.0)
    lut = tf.where(hi > lo, lut, values)  # a constant channel is left alone
    return tf.gather(tf.reshape(tf.cast(lut, tf.uint8), [-1]), _lut_index(x))


def _equalize(x, m, u):
    k, h, w = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
    index = _lut_index(x)
    hist = tf.math.bincount(tf.reshape(index, [-1]), minlength=k * 768, maxlength=k * 768)
    hist = tf.reshape(hist, [k, 3, 256])
    # PIL: step = (count - count of the top value) // 255; lut[i] = (step // 2 + #pixels < i) // step.
    top = tf.gather(hist, tf.cast(tf.reduce_max(x, axis=[1, 2]), tf.int32), batch_dims=2)
    step = ((h * w - top) // 255)[..., None]
    below = tf.cumsum(hist, axis=2, exclusive=True)
    lut = tf.minimum((step // 2 + below) // tf.maximum(step, 1), 255)
    lut = tf.where(step > 0, lut, tf.range(256)[None, None])  # PIL: no step -> identity
    return tf.gather(tf.reshape(tf.cast(lut, tf.uint8), [-1]), index)


def _color(x, m, u):
    return _blend(_luma(x), x, _value("color", m))


def _contrast(x, m, u):
    luma = tf.cast(_luma(x), tf.float64)
    mean = tf.floor(tf.reduce_mean(luma, axis=[1, 2, 3]) + 0.5)  # PIL: int(mean + 0.5)
    return _blend(_b(mean), x, _value("contrast", m))


def _brightness(x, m, u):
    return _blend(tf.zeros([], tf.float32), x, _value("brightness", m))


_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32)[:, :, None, None]


def _sharpness(x, m, u):
    xf = tf.cast(x, tf.float32)
    # Sums of at most 13 * 255 are exact in float32 whatever the summation order; the rounding
    # only guards against a convolution algorithm with inexact intermediate terms.
    kernel = tf.constant(np.tile(_SMOOTH, [1, 1, 3, 1]))
    total = tf.round(tf.nn.depthwise_conv2d(xf, kernel, [1, 1, 1, 1], "SAME"))
    smooth = tf.floor((total + 6.0) / 13.0)  # round(total / 13); never a tie, 13 being odd
    h, w = tf.shape(x)[1], tf.shape(x)[2]
    ys, xs = tf.range(h)[:, None], tf.range(w)[None, :]
    border = (ys == 0) | (ys == h - 1) | (xs == 0) | (xs == w - 1)
    return _blend(tf.where(border[None, :, :, None], xf, smooth), x, _value("sharpness", m))


def _transform(x, rows):
    """Nearest-neighbour projective transform; rows: 6 tensors [k] (a0, a1, a2, b0, b1, b2)."""
    zero = tf.zeros_like(rows[0])
    transforms = tf.stack(list(rows) + [zero, zero], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x, transforms=transforms, output_shape=tf.shape(x)[1:3],
        fill_value=_GEOMETRIC_FILL, interpolation="NEAREST", fill_mode="CONSTANT")


# In pixel-index coordinates (pixel centres at integers) the maps of the docstring shift by 1/2.
def _rotate(x, m, u):
    theta = _signed(_value("rotate", m), u) * (math.pi / 180.0)
    cos, sin = tf.cos(theta), tf.sin(theta)
    hw = tf.cast(tf.shape(x)[1:3], tf.float32)
    cy, cx = (hw[0] - 1.0) / 2.0, (hw[1] - 1.0) / 2.0
    return _transform(x, (cos, -sin, cx - cos * cx + sin * cy,
                          sin, cos, cy - sin * cx - cos * cy))


def _shear_x(x, m, u):
    v = _signed(_value("shear_x", m), u)
    one, zero = tf.ones_like(v), tf.zeros_like(v)
    return _transform(x, (one, v, v / 2.0, zero, one, zero))


def _shear_y(x, m, u):
    v = _signed(_value("shear_y", m), u)
    one, zero = tf.ones_like(v), tf.zeros_like(v)
    return _transform(x, (one, zero, zero, v, one, v / 2.0))


def _translate_x(x, m, u):
    v = _signed(_value("translate_x", m), u)
    one, zero = tf.ones_like(v), tf.zeros_like(v)
    return _transform(x, (one, zero, v, zero, one, zero))


def _translate_y(x, m, u):
    v = _signed(_value("translate_y", m), u)
    one, zero = tf.ones_like(v), tf.zeros_like(v)
    return _transform(x, (one, zero, zero, zero, one, v))


def _cutout(x, m, u):
    side = tf.cast(_value("cutout", m), tf.int32)
    h, w = tf.shape(x)[1], tf.shape(x)[2]
    # Centre pixel uniform over the image; the square spans [c - side//2, c - side//2 + side).
    y0 = tf.cast(u[:, 1] * tf.cast(h, tf.float32), tf.int32) - side // 2
    x0 = tf.cast(u[:, 2] * tf.cast(w, tf.float32), tf.int32) - side // 2
    ys, xs = tf.range(h)[None, :, None, None], tf.range(w)[None, None, :, None]
    inside = ((ys >= _b(y0)) & (ys < _b(y0 + side)) & (xs >= _b(x0)) & (xs < _b(x0 + side)))
    return tf.where(inside, tf.constant(_CUTOUT_FILL, tf.uint8), x)


_OP_FNS = {"identity": _identity, "autocontrast": _autocontrast, "equalize": _equalize,
           "rotate": _rotate, "solarize": _solarize, "color": _color, "posterize": _posterize,
           "contrast": _contrast, "brightness": _brightness, "sharpness": _sharpness,
           "shear_x": _shear_x, "shear_y": _shear_y, "translate_x": _translate_x,
           "translate_y": _translate_y, "cutout": _cutout, "invert": _invert}
OPS = tuple(_OP_FNS)
NUM_OP_UNIFORMS = 3


def apply_op(name: str, image, magnitude, seed) -> tf.Tensor:
    """One op of ``OPS`` on uint8 [H, W, 3] at ``magnitude`` in [0, 30]; ``seed`` [2] draws only
    the sign of geometric ops and cutout's centre."""
    if name not in _OP_FNS:
        raise ValueError(f"unknown op {name!r}; the ops are {list(OPS)}")
    image = _check_image(image, 3)
    m = tf.reshape(tf.cast(magnitude, tf.float32), [1])
    u = augment.uniforms(seed, NUM_OP_UNIFORMS)[None]
    return tf.ensure_shape(_OP_FNS[name](image[None], m, u)[0], image.shape)


# ------------------------------------------------------------------------- sampling, applying

Params = Dict[str, tf.Tensor]


def _sample(policy, seed, path: str, out: Params) -> None:
    """Every random decision of ``policy`` for one example into ``out`` (keys prefixed ``path``)."""
    if isinstance(policy, (RandAugment, UniformAugment)):
        slots = []
        for k in range(policy.num_ops if isinstance(policy, RandAugment) else UA_NUM_OPS):
            # [op's own uniforms (3), op pick, UA apply decision, UA magnitude]
            slots.append(augment.uniforms(augment.fold_in(seed, k), NUM_OP_UNIFORMS + 3))
        u = tf.stack(slots)
        op = tf.minimum(tf.cast(u[:, 3] * len(OPS), tf.int32), len(OPS) - 1)
        if isinstance(policy, RandAugment):
            mag = tf.fill(tf.shape(op), policy.magnitude)
        else:
            op = tf.where(augment.should_apply(u[:, 4], UA_PROB), op, 0)  # 0: identity
            mag = u[:, 5] * MAX_MAGNITUDE
        out[path + "op"], out[path + "mag"], out[path + "u"] = op, mag, u[:, :NUM_OP_UNIFORMS]
    elif isinstance(policy, Jigsaw):
        out[path + "perm"] = tf.argsort(augment.uniforms(seed, policy.grid ** 2))
    elif isinstance(policy, Compose):
        for i, part in enumerate(policy.parts):
            _sample(part, augment.fold_in(seed, i), f"{path}{i}/", out)
    elif isinstance(policy, Choice):
        bounds = tf.constant(np.cumsum(policy.probs)[:-1], tf.float32)
        pick = tf.reduce_sum(tf.cast(augment.uniforms(seed, 1) >= bounds, tf.int32))
        out[path + "pick"] = pick
        for j, option in enumerate(policy.options):
            _sample(option, augment.fold_in(seed, j), f"{path}{j}/", out)


def _jigsaw(x, perm, n: int):
    """Tile perm[b, i] of image b goes to tile position i (row-major); remainders stay."""
    if n == 1:
        return x
    b, h, w = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
    th, tw = h // n, w // n
    core = x[:, :n * th, :n * tw]
    tiles = tf.reshape(tf.transpose(tf.reshape(core, [b, n, th, n, tw, 3]), [0, 1, 3, 2, 4, 5]),
                       [b, n * n, th, tw, 3])
    tiles = tf.gather(tiles, perm, batch_dims=1)
    core = tf.reshape(tf.transpose(tf.reshape(tiles, [b, n, n, th, tw, 3]), [0, 1, 3, 2, 4, 5]),
                      [b, n * th, n * tw, 3])
    top = tf.concat([core, x[:, :n * th, n * tw:]], axis=2)
    return tf.concat([top, x[:, n * th:]], axis=1)


def _partitioned(x, params: Params, pick, num: int, fns):
    """Example b through fns[pick[b]]: each fn runs once, on the examples that picked it."""
    parts = tf.dynamic_partition(x, pick, num)
    where = tf.dynamic_partition(tf.range(tf.shape(x)[0]), pick, num)
    split = {k: tf.dynamic_partition(v, pick, num) for k, v in params.items()}
    outs = [fn(parts[j], {k: v[j] for k, v in split.items()}) for j, fn in enumerate(fns)]
    out = tf.dynamic_stitch(where, outs)
    out.set_shape(x.shape)
    return out


def _select(x, params: Params, pick, num: int, fns, single: bool):
    """fns[pick[b]](x, params) per example: a branch for one example, partitions for a batch."""
    if single:
        return tf.switch_case(pick[0], [lambda fn=fn: fn(x, params) for fn in fns])
    return _partitioned(x, params, pick, num, fns)


def _apply(policy, x, params: Params, path: str, single: bool):
    """``policy`` on a batch x [B, H, W, 3] with the batched decisions ``params`` ([B, ...])."""
    if isinstance(policy, (RandAugment, UniformAugment)):
        op_fns = [lambda y, p, f=f: f(y, p["mag"], p["u"]) for f in _OP_FNS.values()]
        for k in range(params[path + "op"].shape[1]):
            slot = {"mag": params[path + "mag"][:, k], "u": params[path + "u"][:, k]}
            x = _select(x, slot, params[path + "op"][:, k], len(OPS), op_fns, single)
    elif isinstance(policy, Jigsaw):
        x = _jigsaw(x, params[path + "perm"], policy.grid)
    elif isinstance(policy, Compose):
        for i, part in enumerate(policy.parts):
            x = _apply(part, x, params, f"{path}{i}/", single)
    elif isinstance(policy, Choice):
        # Each option sees only its own decisions (keys under its path), re-keyed as they were.
        fns = [lambda y, p, j=j, o=o: _apply(o, y, p, f"{path}{j}/", single)
               for j, o in enumerate(policy.options)]
        own = {k: v for k, v in params.items() if k.startswith(path) and k != path + "pick"}
        x = _select(x, own, params[path + "pick"], len(fns), fns, single)
    return x


def _check_image(image, rank):
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8 or image.shape.rank != rank or image.shape[-1] != 3:
        kind = "[H, W, 3]" if rank == 3 else "[B, H, W, 3]"
        raise ValueError(f"heavy augmentations take uint8 {kind} images, got {image.dtype.name} "
                         f"{image.shape}")
    return image


def _as_policy(policy) -> Policy:
    return parse_policy(policy) if isinstance(policy, str) else policy


def apply_policy(policy, image, seed) -> tf.Tensor:
    """``policy`` (a parsed policy or a spec) on uint8 [H, W, 3] with seed [2] -> uint8 [H, W, 3]."""
    policy = _as_policy(policy)
    image = _check_image(image, 3)
    params: Params = {}
    _sample(policy, seed, "", params)
    params = {k: v[None] for k, v in params.items()}
    return tf.ensure_shape(_apply(policy, image[None], params, "", single=True)[0], image.shape)


def apply_policy_batch(policy, images, seeds, parallel_iterations: int = 16) -> tf.Tensor:
    """``apply_policy`` of every example: images uint8 [B, H, W, 3], seeds int [B, 2].

    Example i equals ``apply_policy(policy, images[i], seeds[i])`` bit for bit.
    """
    policy = _as_policy(policy)
    images = _check_image(images, 4)
    if isinstance(policy, Identity):
        return images
    return _batch_fn(policy, parallel_iterations)(images, tf.convert_to_tensor(seeds))


@functools.lru_cache(maxsize=None)
def _batch_fn(policy: Policy, parallel_iterations: int):
    """The batch path as a tf.function (a map_fn run eagerly would be op by op, ~10x slower)."""
    def sample(seed):
        out: Params = {}
        _sample(policy, seed, "", out)
        return out

    @tf.function(reduce_retracing=True)
    def fn(images, seeds):
        zero_seed = tf.zeros([2], seeds.dtype)
        signature = {k: tf.TensorSpec(v.shape, v.dtype) for k, v in sample(zero_seed).items()}
        params = tf.map_fn(sample, seeds, fn_output_signature=signature,
                           parallel_iterations=parallel_iterations)
        return tf.ensure_shape(_apply(policy, images, params, "", single=False), images.shape)

    return fn
