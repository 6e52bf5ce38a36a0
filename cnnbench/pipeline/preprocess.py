"""Preprocessing as small registered ops composed by a spec string, big_vision style:

    "resize_shorter(256)|random_crop(227)|flip|lighting(0.1)|normalize(imagenet)"

Each op maps an HWC image (uint8 or float32, 0-255) to an image, given a per-op stateless random
seed, so the
result depends only on (seed, epoch, example) and never on threads or timing. Geometric ops keep
uint8 (a quarter of the memory traffic); the compiled spec returns float32. Eval ops that make
several views (``ten_crop``, ``multiscale``) add a leading crop axis; ops after them act per view.
Experiment files name a recipe (``alexnet``) or give a spec; both go through :func:`parse`.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import math
import re
from typing import Callable

import numpy as np

from cnnbench.errors import CnnbenchError, UsageError
from cnnbench.pipeline.tfenv import tf

# Per-channel statistics on the 0-255 scale.
NORMALIZATION = {
    "imagenet": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
    "cifar10": ((125.307, 122.950, 113.865), (62.993, 62.089, 66.705)),
    "mnist": ((33.32,), (78.57,)),
    "unit": ((0.0,), (255.0,)),
    # Caffe's VGG / Keras applications' "caffe" mode: mean subtraction only (given here in RGB order;
    # the BGR channel order those weights expect is folded into the imported first convolution)
    "caffe": ((123.68, 116.779, 103.939), (1.0, 1.0, 1.0)),
}
# AlexNet's PCA colour augmentation: eigenvalues / eigenvectors of ImageNet RGB covariance
# (pixel values in [0, 1]), as in fb.resnet.torch and torchvision's references.
PCA_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32)
PCA_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                       [-0.5808, -0.0045, -0.8140],
                       [-0.5836, -0.6948, 0.4203]], np.float32)

OPS: dict[str, Callable[..., Callable]] = {}


def op(fn):
    """Register ``fn(*args)`` returning ``apply(image, seed) -> image`` under ``fn.__name__``."""
    OPS[fn.__name__] = fn
    return fn


def _hw(image):
    shape = tf().shape(image)
    return shape[-3], shape[-2]


def _float(image):
    return tf().cast(image, "float32")


def _resize(image, h, w, antialias=True):
    return tf().image.resize(_float(image), tf().stack([h, w]), method="bilinear", antialias=antialias)


def _shorter_to(image, size, antialias=True):
    h, w = _hw(image)
    scale = tf().cast(size, "float32") / tf().cast(tf().minimum(h, w), "float32")
    new_h = tf().cast(tf().round(tf().cast(h, "float32") * scale), "int32")
    new_w = tf().cast(tf().round(tf().cast(w, "float32") * scale), "int32")
    return _resize(image, tf().maximum(new_h, size), tf().maximum(new_w, size), antialias)


def _crop(image, top, left, size):
    return image[..., top:top + size, left:left + size, :]


@op
def resize(height, width=None):
    """Resize to exactly ``height x width`` (MNIST-like data into LeNet's 32x32, or 224 for d2l)."""
    width = width or height
    return lambda image, seed: _resize(image, height, width)


@op
def resize_shorter(size, max_size=None, antialias=True):
    """Shorter side to ``size``; with ``max_size``, to a random size in [size, max_size]: VGG's
    scale jittering, S in [256, 512]. ``antialias=False`` samples bilinearly without widening the
    filter when shrinking (what the Flax and big_vision ImageNet pipelines do in training)."""
    if max_size is None:
        return lambda image, seed: _shorter_to(image, size, antialias)
    return lambda image, seed: _shorter_to(image, tf().random.stateless_uniform(
        (), seed, minval=size, maxval=max_size + 1, dtype="int32"), antialias)


@op
def center_crop(size):
    def apply(image, seed):
        h, w = _hw(image)
        return _crop(image, (h - size) // 2, (w - size) // 2, size)
    return apply


@op
def random_crop(size):
    """A random ``size x size`` window (AlexNet's 224/227 crops of 256x256 images)."""
    def apply(image, seed):
        h, w = _hw(image)
        top = tf().random.stateless_uniform((), seed, maxval=h - size + 1, dtype="int32")
        left = tf().random.stateless_uniform((), seed + 1, maxval=w - size + 1, dtype="int32")
        return _crop(image, top, left, size)
    return apply


@op
def pad_crop(size, pad=4):
    """Zero-pad by ``pad`` then take a random ``size`` crop (the CIFAR-10 recipe of He et al.)."""
    crop = random_crop(size)
    return lambda image, seed: crop(tf().pad(image, [[pad, pad], [pad, pad], [0, 0]]), seed)


@op
def random_resized_crop(size, min_area=0.08, max_area=1.0, antialias=True):
    """Inception-style crop (Szegedy et al. 2015): a random box of 8%-100% of the area and aspect
    ratio in [3/4, 4/3], resized to ``size``; the ResNet recipes' train augmentation."""
    def box(shape, seed):
        begin, box_size, _ = tf().image.stateless_sample_distorted_bounding_box(
            shape, tf().zeros([0, 0, 4], "float32"), seed=seed,
            area_range=(min_area, max_area), aspect_ratio_range=(3 / 4, 4 / 3),
            max_attempts=10, use_image_if_no_bounding_boxes=True)
        return begin, box_size

    def apply(image, seed):
        begin, box_size = box(tf().shape(image), seed)
        window = tf().slice(image, begin, box_size)
        window.set_shape([None, None, image.shape[-1]])  # a dynamic slice forgets the channel count
        return _resize(window, size, size, antialias)

    def from_jpeg(data, channels, seed):
        """The same crop, decoding only the box (the rest of the photo is never decompressed)."""
        h, w = _jpeg_hw(data)
        begin, box_size = box(tf().stack([h, w, channels]), seed)
        window = _jpeg_window(data, begin[:2], begin[:2] + box_size[:2], h, w, channels)
        return _resize(window, size, size, antialias)

    apply.from_jpeg = from_jpeg
    return apply


@op
def flip():
    """Random horizontal flip."""
    return lambda image, seed: tf().image.stateless_random_flip_left_right(image, seed)


@op
def random_erasing(p=0.25, smallest=0.02, largest=1 / 3, ratio=0.3):
    """Random erasing (Zhong et al. 2020): with probability ``p``, a rectangle covering
    ``smallest``-``largest`` of the image, of aspect ratio ``ratio``-``1/ratio``, is filled with
    uniform random pixel values (before normalisation, so noise on the image's own scale)."""
    def apply(image, seed):
        lib = tf()
        image = _float(image)
        h, w = _hw(image)
        hf, wf = lib.cast(h, "float32"), lib.cast(w, "float32")
        area = lib.random.stateless_uniform((), seed + 2, smallest, largest) * hf * wf
        aspect = lib.exp(lib.random.stateless_uniform((), seed + 3, math.log(ratio), -math.log(ratio)))
        eh = lib.clip_by_value(lib.cast(lib.round(lib.sqrt(area * aspect)), "int32"), 1, h)
        ew = lib.clip_by_value(lib.cast(lib.round(lib.sqrt(area / aspect)), "int32"), 1, w)
        top = lib.random.stateless_uniform((), seed + 4, maxval=h - eh + 1, dtype="int32")
        left = lib.random.stateless_uniform((), seed + 5, maxval=w - ew + 1, dtype="int32")
        rows, cols = lib.range(h)[:, None], lib.range(w)[None, :]
        box = (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)
        erase = lib.random.stateless_uniform((), seed + 6) < p
        noise = lib.random.stateless_uniform(lib.shape(image), seed + 7, 0.0, 255.0)
        return lib.where(lib.logical_and(erase, box)[:, :, None], noise, image)
    return apply


def _affine(image, matrix):
    """``image`` (H, W, C, float) under the projective ``matrix`` [a0 a1 a2 b0 b1 b2 c0 c1] that maps
    output to input coordinates, bilinear, empty space filled with mid-grey (128), as PIL's
    transforms in RandAugment's reference implementations."""
    lib = tf()
    h, w = _hw(image)
    out = lib.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=lib.reshape(lib.cast(matrix, "float32"), (1, 8)),
        output_shape=lib.stack([h, w]), fill_value=128.0, interpolation="BILINEAR", fill_mode="CONSTANT")
    return out[0]


def _grey(image):
    """ITU-R 601-2 luma (PIL's convert("L")), one channel."""
    return tf().reduce_sum(image * tf().constant([0.299, 0.587, 0.114]), -1, keepdims=True)


def _autocontrast(image):
    """Each channel stretched to 0-255 (PIL's ImageOps.autocontrast without cut-off)."""
    lib = tf()
    low, high = lib.reduce_min(image, (0, 1)), lib.reduce_max(image, (0, 1))
    return lib.clip_by_value((image - low) * 255.0 / lib.maximum(high - low, 1e-3), 0.0, 255.0)


def _blend(image, other, factor):
    return tf().clip_by_value(other + factor * (image - other), 0.0, 255.0)


def _equalize(image):
    """Histogram equalisation per channel (PIL's ImageOps.equalize)."""
    lib = tf()

    def channel(c):
        values = lib.cast(lib.clip_by_value(lib.round(c), 0, 255), "int32")
        hist = lib.math.bincount(lib.reshape(values, [-1]), minlength=256, maxlength=256)
        nonzero = lib.boolean_mask(hist, hist > 0)
        step = (lib.reduce_sum(nonzero) - nonzero[-1]) // 255
        lut = (lib.cumsum(hist) + step // 2) // lib.maximum(step, 1)
        lut = lib.clip_by_value(lib.concat([[0], lut[:-1]], 0), 0, 255)
        return lib.cast(lib.where(step > 0, lib.gather(lut, values), values), "float32")

    return lib.stack([channel(image[..., i]) for i in range(3)], -1)


RANDAUGMENT_OPS = ("identity", "autocontrast", "equalize", "rotate", "solarize", "color", "posterize", "contrast",
                   "brightness", "sharpness", "shear_x", "shear_y", "translate_x", "translate_y")


@op
def randaugment(n=2, m=9):
    """RandAugment (Cubuk et al. 2020): ``n`` ops drawn uniformly from :data:`RANDAUGMENT_OPS`, each
    at magnitude ``m`` of 10 (timm's scale: rotate 30 degrees, shear 0.3, translate 45% of the side,
    enhance factors 1 +- 0.9 m/10, solarize at 256 - 25.6 m, posterize to 8 - 0.4 m bits), with a
    random sign for the signed ones; stateless, so (seed, example) fix every draw. Colour images of
    0-255 values, before normalisation."""
    level = m / 10.0

    def apply(image, seed):
        lib = tf()
        image = _float(image)
        h, w = _hw(image)
        hf, wf = lib.cast(h, "float32"), lib.cast(w, "float32")
        for i in range(n):
            which = lib.random.stateless_uniform((), seed + 20 + 3 * i, maxval=len(RANDAUGMENT_OPS), dtype="int32")
            sign = lib.where(lib.random.stateless_uniform((), seed + 21 + 3 * i) < 0.5, -1.0, 1.0)
            image = lib.switch_case(which, [lambda f=f, x=image, s=sign: f(x, s) for f in (
                lambda x, s: x,
                lambda x, s: _autocontrast(x),
                lambda x, s: _equalize(x),
                lambda x, s: _affine(x, _rotation(s * level * 30.0, hf, wf)),
                lambda x, s: lib.where(x >= 256.0 - 25.6 * m, 255.0 - x, x),
                lambda x, s: _blend(x, _grey(x), 1.0 + s * 0.9 * level),
                lambda x, s: lib.cast(lib.bitwise.bitwise_and(lib.cast(x, "int32"),
                                                              -(2 ** (8 - max(8 - int(0.4 * m), 1)))), "float32"),
                lambda x, s: _blend(x, lib.reduce_mean(_grey(x)), 1.0 + s * 0.9 * level),
                lambda x, s: _blend(x, lib.zeros_like(x), 1.0 + s * 0.9 * level),
                lambda x, s: _blend(x, _smooth(x), 1.0 + s * 0.9 * level),
                lambda x, s: _affine(x, [1.0, s * 0.3 * level, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]),
                lambda x, s: _affine(x, [1.0, 0.0, 0.0, s * 0.3 * level, 1.0, 0.0, 0.0, 0.0]),
                lambda x, s: _affine(x, [1.0, 0.0, s * 0.45 * level * wf, 0.0, 1.0, 0.0, 0.0, 0.0]),
                lambda x, s: _affine(x, [1.0, 0.0, 0.0, 0.0, 1.0, s * 0.45 * level * hf, 0.0, 0.0]),
            )])
            image.set_shape([None, None, 3])
        return image
    return apply


def _rotation(degrees, h, w):
    """The projective matrix of a rotation by ``degrees`` about the image's centre."""
    lib = tf()
    a = degrees * math.pi / 180.0
    cos, sin = lib.cos(a), lib.sin(a)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    return lib.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])


def _smooth(image):
    """PIL's SMOOTH filter (3x3, centre 5, others 1, /13), edges kept."""
    lib = tf()
    kernel = lib.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    kernel = lib.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = lib.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "SAME")[0]
    h, w = _hw(image)
    inner = lib.pad(lib.ones([h - 2, w - 2, 3]), [[1, 1], [1, 1], [0, 0]])
    return inner * smooth + (1 - inner) * image


@op
def lighting(std=0.1):
    """AlexNet's colour augmentation: add ``eigvec @ (alpha * eigval)``, alpha ~ N(0, std^2), to
    every pixel (Krizhevsky et al. 2012, section 4.1)."""
    def apply(image, seed):
        alpha = tf().random.stateless_normal((3,), seed, stddev=std)
        shift = tf().linalg.matvec(tf().constant(PCA_EIGVEC), alpha * tf().constant(PCA_EIGVAL))
        return _float(image) + 255.0 * shift
    return apply


@op
def normalize(mean="imagenet", std=None):
    """``(x - mean) / std`` per channel; ``mean`` may name a preset of :data:`NORMALIZATION`."""
    if isinstance(mean, str):
        if mean not in NORMALIZATION:
            raise UsageError(f"unknown normalization {mean!r}; presets: {', '.join(NORMALIZATION)}")
        mean, std = NORMALIZATION[mean]

    def apply(image, seed):
        channels = image.shape[-1]
        m = np.resize(np.asarray(mean, np.float32), channels)  # a grey preset on RGB repeats
        s = np.resize(np.asarray(std, np.float32), channels)
        return (_float(image) - m) / s
    return apply


@op
def ten_crop(size):
    """ILSVRC 10-crop: the four corners and the centre, then the same five flipped, stacked on a
    new leading crop axis: (10, size, size, C)."""
    def apply(image, seed):
        h, w = _hw(image)
        corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size),
                   ((h - size) // 2, (w - size) // 2)]
        crops = tf().stack([_crop(image, t, s, size) for t, s in corners])
        return tf().concat([crops, tf().reverse(crops, axis=[2])], axis=0)
    return apply


@op
def multiscale(*sizes):
    """Multi-scale evaluation: shorter side to each of ``sizes[:-1]``, centre crop ``sizes[-1]``,
    each with its flip: (2 * scales, crop, crop, C). (VGG evaluated densely; these are the centre
    views of the same scales.)"""
    *scales, crop = sizes
    if not scales:
        raise UsageError("multiscale needs scales and a crop size, e.g. multiscale(256, 384, 512, 224)")
    centre = center_crop(crop)

    def apply(image, seed):
        views = [centre(_shorter_to(image, s), seed) for s in scales]
        views = tf().stack(views)
        return tf().concat([views, tf().reverse(views, axis=[2])], axis=0)
    return apply


RECIPES = {
    # train
    # (training crops resample without antialiasing, as the Flax and big_vision ImageNet pipelines
    # do: a third cheaper, and the augmentation hides the difference; evaluation keeps it)
    "alexnet": "resize_shorter({resize}, antialias=False)|random_crop({size})|flip|lighting(0.1)|normalize({norm})",
    "vgg": "resize_shorter(256, 512, antialias=False)|random_crop({size})|flip|normalize({norm})",
    "inception": "random_resized_crop({size}, antialias=False)|flip|normalize({norm})",
    "cifar": "resize({size})|pad_crop({size}, 4)|flip|normalize({norm})",
    "small": "resize({size})|normalize({norm})",
    "shift": "resize({size})|pad_crop({size}, {pad})|normalize({norm})",  # small grey images: +-10% shifts
    # eval
    "center": "resize_shorter({resize})|center_crop({size})|normalize({norm})",
    "ten_crop": "resize_shorter({resize})|ten_crop({size})|normalize({norm})",
    "multiscale": "multiscale(256, 384, 512, {size})|normalize({norm})",
}


def eval_resize(size: int) -> int:
    """The shorter side before the centre crop: 256 for 224 and 227 (the papers), else size/0.875."""
    return 256 if size in (224, 227) else int(round(size / 0.875))


def expand(recipe_or_spec: str, *, size: int, norm: str = "imagenet") -> str:
    """A recipe name (``alexnet``) or a spec string, with ``{size}``, ``{resize}``, ``{norm}`` filled;
    a recipe name inside a spec (``cifar|mixup(0.2)``) stands for its ops."""
    spec = RECIPES.get(recipe_or_spec) or "|".join(
        RECIPES[part.strip()] if part.strip() in RECIPES and part.strip() not in OPS else part
        for part in recipe_or_spec.split("|"))
    return spec.format(size=size, resize=eval_resize(size), norm=norm, pad=max(size // 10, 1))


def normalization(source, channels: int) -> str:
    """The one answer to "how are this dataset's images normalised for a model of ``channels``
    input channels" (a :data:`NORMALIZATION` preset): every recipe of a run, for training and for
    evaluation, fills its ``{norm}`` from here, so the two can never differ. CIFAR's own
    statistics for CIFAR; ImageNet's for colour input, MNIST's for grey."""
    if source.name.startswith("cifar"):
        return "cifar10"
    return "imagenet" if channels == 3 else "mnist"


#: ops on a whole training batch (images and labels), applied in the training step, not per image
BATCH_OPS = ("mixup", "cutmix")


def batch_mixing(spec: str, *, train: bool = True) -> tuple[str, tuple]:
    """``spec`` without its batch ops (``mixup(alpha)``, ``cutmix(alpha)``), and those ops as
    ``((name, alpha), ...)`` for :func:`cnnbench.train.step.mix_batch`."""
    kept, mixing = [], []
    for part in filter(None, (p.strip() for p in spec.split("|"))):
        match = re.fullmatch(r"(mixup|cutmix)\((.*)\)", part)
        if not match:
            kept.append(part)
            continue
        if not train:
            raise UsageError(f"{match.group(1)} mixes training batches; it has no place in an evaluation spec")
        try:
            alpha = float(match.group(2))
        except ValueError:
            raise UsageError(f"{part}: the argument is the Beta distribution's alpha, e.g. {match.group(1)}(0.2)") from None
        if alpha <= 0:
            raise UsageError(f"{part}: alpha must be positive")
        mixing.append((match.group(1), alpha))
    if len({name for name, _ in mixing}) < len(mixing):
        raise UsageError(f"{spec}: each of mixup and cutmix at most once")
    return "|".join(kept), tuple(mixing)


def recipe_for(source, ops: str | None, *, train: bool, size: int, channels: int) -> str:
    """The spec a run applies to ``source``: ``ops`` (a recipe name or a spec, as the command line
    or the experiment file gave it) with the dataset's :func:`normalization`, else the
    :func:`default_recipe`. (A spec that names its own ``normalize(...)`` keeps it.)"""
    if ops:
        return expand(ops, size=size, norm=normalization(source, channels))
    return default_recipe(source, train=train, size=size, channels=channels)


def default_recipe(source, *, train: bool, size: int, channels: int) -> str:
    """What a run uses when neither the command line nor the experiment file says: small datasets
    of fixed shape (MNIST, CIFAR, digits) are resized to the model's input; in training, colour
    ones (CIFAR) also get pad-and-crop + flip, grey ones (digits, MNIST) random shifts of up to 10%
    without flips (a mirrored 2 is no 2). Natural images get the Inception-style crop for training
    and resize-256 + centre crop for evaluation."""
    shape = source.image_shape
    norm = normalization(source, channels)
    if shape is not None and max(shape[:2]) <= 64:
        if not train or source.name.startswith("synthetic"):
            return expand("small", size=size, norm=norm)
        return expand("cifar" if shape[2] == 3 else "shift", size=size, norm=norm)
    return expand("inception" if train else "center", size=size, norm=norm)


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    args: tuple
    kwargs: tuple = ()  # (name, value) pairs: ``resize_shorter(256, antialias=False)``

    def build(self, *extra) -> Callable:
        return OPS[self.name](*extra, *self.args, **dict(self.kwargs))


def parse(spec: str) -> list[Step]:
    steps = []
    for part in filter(None, (p.strip() for p in spec.split("|"))):
        match = re.fullmatch(r"([a-z_0-9]+)(?:\((.*)\))?", part)
        if not match or match.group(1) not in OPS:
            raise UsageError(f"unknown preprocessing op {part!r}; ops: {', '.join(OPS)}; "
                             f"recipes: {', '.join(RECIPES)}")
        args, kwargs = [], []
        for part in filter(None, (a.strip() for a in (match.group(2) or "").split(","))):
            key, eq, value = part.partition("=")
            if eq and key.strip().isidentifier():
                kwargs.append((key.strip(), _literal(value.strip())))
            elif kwargs:
                raise UsageError(f"in {spec!r}: positional argument {part!r} after a keyword one")
            else:
                args.append(_literal(part))
        steps.append(Step(match.group(1), tuple(args), tuple(kwargs)))
    return steps


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word such as imagenet


def _shorter_side_crop(crop, random, size, max_size=None, antialias=True):
    """``resize_shorter(size[, max_size])`` then a ``crop x crop`` window (random or centred), and
    given a third seed (plain bilinear only) the ``flip`` after them, in one op. The same result as
    the ops as written up to float rounding (a test pins this); on uint8 images, one of the two grey
    levels nearest to it.

    - Antialiased (the Inception-style recipes): ``scale_and_translate``, the kernel behind
      ``tf.image.resize``, evaluates the resized image only inside the window, and from JPEG bytes
      (``apply.from_jpeg``) only the source window is decoded at all.
    - Plain bilinear (the AlexNet and VGG recipes): OpenCV (:func:`_bilinear_crop`). One thread,
      500x375 JPEGs: the AlexNet recipe's host work fell from 1.9 to 1.6 ms per image, VGG's from
      2.4 to 1.7 (BENCHMARKS.md). The whole photo is decoded: from JPEG bytes the window path's
      checks (JPEG? CMYK?) are ``tf.cond`` branches, and with them it measured 0.25 ms slower."""
    def placed(h, w, seed, crop_seed):
        """(new_h, new_w, top, left): the resized photo's size and the crop's corner in it."""
        lib = tf()
        target = size if max_size is None else lib.random.stateless_uniform(
            (), seed, minval=size, maxval=max_size + 1, dtype="int32")
        scale = lib.cast(target, "float32") / lib.cast(lib.minimum(h, w), "float32")
        new_h = lib.maximum(lib.cast(lib.round(lib.cast(h, "float32") * scale), "int32"), target)
        new_w = lib.maximum(lib.cast(lib.round(lib.cast(w, "float32") * scale), "int32"), target)
        if random:
            top = lib.random.stateless_uniform((), crop_seed, maxval=new_h - crop + 1, dtype="int32")
            left = lib.random.stateless_uniform((), crop_seed + 1, maxval=new_w - crop + 1, dtype="int32")
        else:
            top, left = (new_h - crop) // 2, (new_w - crop) // 2
        return new_h, new_w, top, left

    def plan(h, w, seed, crop_seed):
        """(first, last) source rows/columns the crop samples, the scale and the crop offset."""
        lib = tf()
        new_h, new_w, top, left = placed(h, w, seed, crop_seed)
        ratio = lib.stack([lib.cast(new_h, "float32") / lib.cast(h, "float32"),
                           lib.cast(new_w, "float32") / lib.cast(w, "float32")])
        # Only the source window the crop samples (plus the kernel's reach, 1/ratio + 1 pixels)
        # is converted and resampled, not the whole photo.
        offset = lib.cast(lib.stack([top, left]), "float32")
        first = lib.cast(lib.floor(offset / ratio), "int32") - lib.cast(lib.math.ceil(1 / ratio), "int32") - 1
        last = lib.cast(lib.math.ceil((offset + crop) / ratio), "int32") + lib.cast(lib.math.ceil(1 / ratio), "int32") + 1
        return lib.maximum(first, 0), lib.minimum(last, lib.stack([h, w])), ratio, offset

    def smooth(window, first, ratio, offset, channels):
        out = tf().raw_ops.ScaleAndTranslate(
            images=tf().cast(window, "float32")[None], size=[crop, crop], scale=ratio,
            translation=tf().cast(first, "float32") * ratio - offset, kernel_type="triangle",
            antialias=True)[0]
        out.set_shape([crop, crop, channels])
        return out

    if not antialias:
        _cv2()  # a missing OpenCV fails here, in one line, not image by image in tf.data

        def bilinear(image, seed, crop_seed, flip_seed=None):  # the seeds the ops would get unfused
            lib = tf()
            h, w = _hw(image)
            new_h, new_w, top, left = placed(h, w, seed, crop_seed)
            # TensorFlow's flip: mirror when a uniform draw from the flip's seed is below 1/2
            mirror = 0 if flip_seed is None else lib.cast(
                lib.random.stateless_uniform([], flip_seed, minval=0, maxval=1.0) < 0.5, "int32")
            params = lib.stack([h, w, new_h, new_w, top, left, mirror])
            out = lib.numpy_function(functools.partial(_bilinear_crop, crop=crop), [image, params], image.dtype,
                                     stateful=False)
            out.set_shape([crop, crop, image.shape[-1]])
            return out
        return bilinear

    def apply(image, seed, crop_seed):  # the seeds the two ops would get unfused
        h, w = _hw(image)
        first, last, ratio, offset = plan(h, w, seed, crop_seed)
        return smooth(image[first[0]:last[0], first[1]:last[1], :], first, ratio, offset, image.shape[-1])

    def from_jpeg(data, channels, seed, crop_seed):
        h, w = _jpeg_hw(data)
        first, last, ratio, offset = plan(h, w, seed, crop_seed)
        return smooth(_jpeg_window(data, first, last, h, w, channels), first, ratio, offset, channels)

    apply.from_jpeg = from_jpeg
    return apply


@functools.cache
def _cv2():
    try:
        import cv2
    except ImportError:  # inside tf.data every image would fail and be skipped as undecodable
        raise CnnbenchError("the alexnet and vgg recipes' bilinear crops need OpenCV: "
                            "pip install opencv-python-headless") from None
    cv2.setNumThreads(1)  # tf.data already runs one call per core
    return cv2


#: :func:`_bilinear_crop` resizes the whole photo while the resized photo is at most this many
#: crops in area, else samples the crop alone: the break-even point on a 500x375 photo and 224
#: crops, one thread (resize 208 us at 1.7 crops, 314 at 3.1, 534 at 7; the crop alone 306-344)
RESIZE_AREA = 3.0


def _bilinear_crop(image, params, crop: int):
    """Bilinear resizing (half-pixel centres, clamped at the border) of the photo to (new_h, new_w),
    then its ``crop x crop`` window at (top, left), mirrored left-right when asked. ``params``:
    h, w, new_h, new_w, top, left, mirror. Either ``cv2.resize`` of the whole photo and a slice,
    or, for a large resized photo, ``cv2.warpAffine`` sampling only the window: output (i, j) reads
    the photo at ((top + i + 0.5) * h / new_h - 0.5, (left + j + 0.5) * w / new_w - 0.5), and
    ``BORDER_REPLICATE`` clamps as the resize kernels do."""
    cv2 = _cv2()
    h, w, new_h, new_w, top, left, mirror = (int(v) for v in params)
    channels = image.shape[-1]
    if new_h * new_w <= RESIZE_AREA * crop * crop:
        out = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR).reshape(new_h, new_w, channels)
        out = out[top:top + crop, left:left + crop]
        # cv2.flip: NumPy's copy of a reversed view took 320 us per 224x224x3 crop, this 9
        return (cv2.flip(out, 1) if mirror else np.ascontiguousarray(out)).reshape(crop, crop, channels)
    sy, sx = h / new_h, w / new_w
    oy, ox = (top + 0.5) * sy - 0.5, (left + 0.5) * sx - 0.5
    # Only the rows and columns the samples read (one more each side), in float32: warpAffine's
    # float path, conversions included, took 316 us where its uint8 path took 379.
    y0, x0 = max(math.floor(oy) - 1, 0), max(math.floor(ox) - 1, 0)
    y1, x1 = min(math.ceil(oy + (crop - 1) * sy) + 2, h), min(math.ceil(ox + (crop - 1) * sx) + 2, w)
    window = image[y0:y1, x0:x1].astype(np.float32)
    oy, ox = oy - y0, ox - x0
    if mirror:
        ox, sx = ox + (crop - 1) * sx, -sx
    out = cv2.warpAffine(window, np.array([[sx, 0.0, ox], [0.0, sy, oy]]), (crop, crop),
                         flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    # to the nearest grey level (the values are not negative), or back to the photo's float type
    out = cv2.convertScaleAbs(out) if image.dtype == np.uint8 else out.astype(image.dtype, copy=False)
    return out.reshape(crop, crop, channels)


def _jpeg_window(data, first, last, h, w, channels, margin: int = 16):
    """Rows/columns [first, last) of a JPEG, decoding only around them. The decoded window
    reaches ``margin`` pixels further (one 16-pixel MCU), so chroma upsampling at its edge sees the
    same neighbours as in a full decode and the pixels kept are identical."""
    lib = tf()
    lo = lib.maximum(first - margin, 0)
    hi = lib.minimum(last + margin, lib.stack([h, w]))
    window = lib.image.decode_and_crop_jpeg(data, lib.concat([lo, hi - lo], 0), channels=channels)
    inner = first - lo
    return window[inner[0]:inner[0] + last[0] - first[0], inner[1]:inner[1] + last[1] - first[1], :]


def _jpeg_hw(data):
    """Height and width from a JPEG's header, without decoding it."""
    shape = tf().image.extract_jpeg_shape(data)
    return shape[0], shape[1]


def _fuse(steps: list[Step]) -> list[tuple[Callable, int]]:
    """(op, number of spec steps it covers); fused ops keep the seeds of the steps they replace."""
    fns, i = [], 0
    while i < len(steps):
        step, nxt = steps[i], steps[i + 1] if i + 1 < len(steps) else None
        if step.name == "resize_shorter" and nxt is not None and nxt.name in ("random_crop", "center_crop"):
            kwargs = dict(step.kwargs)
            # a flip right after a plain bilinear crop is a mirrored sampling of the same window
            mirror = i + 2 < len(steps) and steps[i + 2].name == "flip" and not steps[i + 2].args \
                and kwargs.get("antialias", True) is False
            fns.append((_shorter_side_crop(nxt.args[0], nxt.name == "random_crop", *step.args, **kwargs),
                        3 if mirror else 2))
            i += 3 if mirror else 2
        else:
            fns.append((step.build(), 1))
            i += 1
    return fns


def compile_ops(spec: str, *, fuse: bool = True, seed_count: int | None = None, encoded: bool | None = None,
                channels: int = 3, as_float: bool = True) -> Callable:
    """``apply(image, seed[2]) -> float32 image`` running every op with its own derived seed (the
    k-th step of the spec always gets the k-th seed). ``fuse`` computes ``resize_shorter`` + crop
    (+ ``flip``) in one pass (same result, see :func:`_shorter_side_crop`); ``fuse=False`` runs them
    as written. ``as_float=False`` returns the last op's dtype (uint8 where every op kept it).

    ``encoded=None``: ``image`` is decoded already. Otherwise ``image`` is what a source yields
    (encoded bytes when ``encoded``, else a uint8 array) and is decoded to ``channels`` here: a
    JPEG whose first op is a crop decodes only the window that crop needs (the same pixels)."""
    steps = parse(spec)
    try:
        fns = _fuse(steps) if fuse else [(s.build(), 1) for s in steps]
    except TypeError as e:
        raise UsageError(f"bad arguments in preprocessing spec {spec!r}: {e}") from None
    windowed = bool(encoded) and bool(fns) and hasattr(fns[0][0], "from_jpeg")

    def apply(image, seed):
        lib = tf()
        seeds = lib.random.experimental.stateless_split(seed, num=max(seed_count or len(steps), 1))
        rest, k = fns, 0
        if windowed:
            (first, covered), rest, k = fns[0], fns[1:], fns[0][1]
            own = [seeds[j] for j in range(covered)]
            data = image

            def whole():
                return first(decode(data, encoded=True, channels=channels), *own)

            def jpeg():  # CMYK (4-channel) JPEGs take the general path: libjpeg cannot crop-convert them
                colours = lib.image.extract_jpeg_shape(data)[2]
                return lib.cond(colours < 4, lambda: first.from_jpeg(data, channels, *own), whole)

            image = lib.cond(lib.io.is_jpeg(data), jpeg, whole)
        elif encoded is not None:
            image = decode(image, encoded=encoded, channels=channels)
        for fn, covered in rest:
            image = fn(image, *(seeds[k + j] for j in range(covered)))
            k += covered
        return _float(image) if as_float else image

    return apply


DEFERRABLE = ("lighting", "normalize")


@dataclasses.dataclass(frozen=True)
class Finish:
    """The per-pixel tail of a spec (``lighting`` then ``normalize``), applied where the batch lands,
    normally inside the jitted step on the accelerator: the host then ships uint8 images (a quarter
    of the bytes) plus one colour shift per image, and skips two float passes over every pixel."""

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __call__(self, images, shift, xp=np):
        """``images`` uint8 (B, ..., C), ``shift`` float32 (B, C) -> float32, with NumPy or jax.numpy."""
        channels = images.shape[-1]
        shift = xp.reshape(shift, (shift.shape[0],) + (1,) * (images.ndim - 2) + (channels,))
        mean = np.resize(np.asarray(self.mean, np.float32), channels)
        std = np.resize(np.asarray(self.std, np.float32), channels)
        return (images.astype(xp.float32) + shift - mean) / std


def split_spec(spec: str) -> tuple[list[Step], list[Step]]:
    """(host steps, deferred steps): the trailing ``lighting`` / ``normalize`` steps, in that order."""
    steps = parse(spec)
    cut = len(steps)
    while cut and steps[cut - 1].name in DEFERRABLE:
        cut -= 1
    tail = steps[cut:]
    if [t.name for t in tail] not in ([], ["lighting"], ["normalize"], ["lighting", "normalize"]):
        return steps, []  # an unusual order: run everything on the host, as written
    return steps[:cut], tail


def compile_host(spec: str, *, encoded: bool | None = None, channels: int = 3) -> tuple[Callable, Finish]:
    """``apply(image, seed) -> (uint8 image, float32 shift[C])`` and the :class:`Finish` completing
    it: ``finish(*apply(x, seed))`` equals ``compile_ops(spec)(x, seed)`` up to the rounding of the
    host part to uint8 (at most half a grey level)."""
    host, tail = split_spec(spec)
    if not tail:
        full = compile_ops(spec, encoded=encoded, channels=channels)
        return (lambda image, seed: (full(image, seed), None)), None
    steps = len(host) + len(tail)
    run = compile_ops("|".join(unparse(s) for s in host), seed_count=steps, encoded=encoded,
                      channels=channels, as_float=False) if host else None
    names = [t.name for t in tail]
    std_light = next((t.args[0] if t.args else 0.1 for t in tail if t.name == "lighting"), None)
    norm = next((t for t in tail if t.name == "normalize"), None)
    mean, std = ((0.0,), (1.0,)) if norm is None else _norm_stats(*norm.args)

    def apply(image, seed):
        lib = tf()
        # The same per-step seeds the full spec would use (the lighting step keeps its own).
        seeds = lib.random.experimental.stateless_split(seed, num=max(steps, 1))
        if host:
            out = run(image, seed)
        else:
            out = image if encoded is None else decode(image, encoded=encoded, channels=channels)
        if out.dtype != "uint8":  # geometric ops on uint8 images stay uint8: nothing to round
            out = lib.cast(lib.clip_by_value(lib.round(_float(out)), 0, 255), "uint8")
        shift = lib.zeros([out.shape[-1] if out.shape[-1] is not None else channels], "float32")
        if std_light is not None:
            k = len(host) + names.index("lighting")
            alpha = lib.random.stateless_normal((3,), seeds[k], stddev=std_light)
            shift = 255.0 * lib.linalg.matvec(lib.constant(PCA_EIGVEC), alpha * lib.constant(PCA_EIGVAL))
        return out, shift

    return apply, Finish(tuple(float(m) for m in mean), tuple(float(s) for s in std))


def _norm_stats(mean="imagenet", std=None):
    return NORMALIZATION[mean] if isinstance(mean, str) else (mean, std)


def unparse(step: Step) -> str:
    args = [repr(a) for a in step.args] + [f"{k}={v!r}" for k, v in step.kwargs]
    return step.name + (f"({', '.join(args)})" if args else "")


def decode(image, *, encoded: bool, channels: int):
    """Bytes (JPEG, PNG incl. PNG-in-JPEG, CMYK, grey, GIF, BMP) or uint8 arrays to uint8 HWC with
    ``channels`` channels. Undecodable bytes raise, and the pipeline skips and counts them."""
    lib = tf()
    if encoded and channels == 1:
        data = image

        def cmyk():  # libjpeg converts CMYK to RGB but not to grey: go through RGB
            return lib.cond(lib.image.extract_jpeg_shape(data)[2] == 4, lambda: lib.image.rgb_to_grayscale(
                lib.io.decode_jpeg(data, channels=3)), lambda: lib.io.decode_jpeg(data, channels=1))

        image = lib.cond(lib.io.is_jpeg(data), cmyk,
                         lambda: lib.io.decode_image(data, channels=1, expand_animations=False))
        image.set_shape([None, None, 1])
    elif encoded:
        image = lib.io.decode_image(image, channels=channels, expand_animations=False)
    elif image.shape[-1] != channels:
        image = lib.image.rgb_to_grayscale(image) if channels == 1 else lib.image.grayscale_to_rgb(image)
    return image
