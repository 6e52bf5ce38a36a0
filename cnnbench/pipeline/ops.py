"""The per-image preprocessing ops, each registered in :data:`OPS` by name: ``op(*args)`` returns
``apply(image, seed) -> image`` on an HWC image (uint8 or float32, 0-255), given a per-op stateless
random seed, so the result depends only on (seed, epoch, example) and never on threads or timing.
Geometric ops keep uint8 (a quarter of the memory traffic). Eval ops that make several views
(``ten_crop``, ``multiscale``) add a leading crop axis; ops after them act per view. Spec strings
(:mod:`cnnbench.pipeline.spec`) compose them; :mod:`cnnbench.pipeline.preprocess` compiles them.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from cnnbench.errors import UsageError
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


def _norm_stats(mean="imagenet", std=None):
    return NORMALIZATION[mean] if isinstance(mean, str) else (mean, std)
