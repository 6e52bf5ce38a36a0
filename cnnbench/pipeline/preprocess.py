"""Preprocessing as small registered ops composed by a spec string, big_vision style:

    "resize_shorter(256)|random_crop(227)|flip|lighting(0.1)|normalize(imagenet)"

Each op maps a float32 HWC image (0-255) to an image, given a per-op stateless random seed, so the
result depends only on (seed, epoch, example) and never on threads or timing. Eval ops that make
several views (``ten_crop``, ``multiscale``) add a leading crop axis; ops after them act per view.
Experiment files name a recipe (``alexnet``) or give a spec; both go through :func:`parse`.
"""

from __future__ import annotations

import ast
import dataclasses
import re
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


def _resize(image, h, w):
    return tf().image.resize(image, tf().stack([h, w]), method="bilinear", antialias=True)


def _shorter_to(image, size):
    h, w = _hw(image)
    scale = tf().cast(size, "float32") / tf().cast(tf().minimum(h, w), "float32")
    new_h = tf().cast(tf().round(tf().cast(h, "float32") * scale), "int32")
    new_w = tf().cast(tf().round(tf().cast(w, "float32") * scale), "int32")
    return _resize(image, tf().maximum(new_h, size), tf().maximum(new_w, size))


def _crop(image, top, left, size):
    return image[..., top:top + size, left:left + size, :]


@op
def resize(height, width=None):
    """Resize to exactly ``height x width`` (MNIST-like data into LeNet's 32x32, or 224 for d2l)."""
    width = width or height
    return lambda image, seed: _resize(image, height, width)


@op
def resize_shorter(size, max_size=None):
    """Shorter side to ``size``; with ``max_size``, to a random size in [size, max_size]: VGG's
    scale jittering, S in [256, 512]."""
    if max_size is None:
        return lambda image, seed: _shorter_to(image, size)
    return lambda image, seed: _shorter_to(image, tf().random.stateless_uniform(
        (), seed, minval=size, maxval=max_size + 1, dtype="int32"))


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
def random_resized_crop(size, min_area=0.08, max_area=1.0):
    """Inception-style crop (Szegedy et al. 2015): a random box of 8%-100% of the area and aspect
    ratio in [3/4, 4/3], resized to ``size``; the ResNet recipes' train augmentation."""
    def apply(image, seed):
        begin, box_size, _ = tf().image.stateless_sample_distorted_bounding_box(
            tf().shape(image), tf().zeros([0, 0, 4], "float32"), seed=seed,
            area_range=(min_area, max_area), aspect_ratio_range=(3 / 4, 4 / 3),
            max_attempts=10, use_image_if_no_bounding_boxes=True)
        box = tf().slice(image, begin, box_size)
        box.set_shape([None, None, image.shape[-1]])  # a dynamic slice forgets the channel count
        return _resize(box, size, size)
    return apply


@op
def flip():
    """Random horizontal flip."""
    return lambda image, seed: tf().image.stateless_random_flip_left_right(image, seed)


@op
def lighting(std=0.1):
    """AlexNet's colour augmentation: add ``eigvec @ (alpha * eigval)``, alpha ~ N(0, std^2), to
    every pixel (Krizhevsky et al. 2012, section 4.1)."""
    def apply(image, seed):
        alpha = tf().random.stateless_normal((3,), seed, stddev=std)
        shift = tf().linalg.matvec(tf().constant(PCA_EIGVEC), alpha * tf().constant(PCA_EIGVAL))
        return image + 255.0 * shift
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
        return (image - m) / s
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
    "alexnet": "resize_shorter({resize})|random_crop({size})|flip|lighting(0.1)|normalize(imagenet)",
    "vgg": "resize_shorter(256, 512)|random_crop({size})|flip|normalize(imagenet)",
    "inception": "random_resized_crop({size})|flip|normalize(imagenet)",
    "cifar": "resize({size})|pad_crop({size}, 4)|flip|normalize({norm})",
    "small": "resize({size})|normalize({norm})",
    # eval
    "center": "resize_shorter({resize})|center_crop({size})|normalize({norm})",
    "ten_crop": "resize_shorter({resize})|ten_crop({size})|normalize({norm})",
    "multiscale": "multiscale(256, 384, 512, {size})|normalize({norm})",
}


def eval_resize(size: int) -> int:
    """The shorter side before the centre crop: 256 for 224 and 227 (the papers), else size/0.875."""
    return 256 if size in (224, 227) else int(round(size / 0.875))


def expand(recipe_or_spec: str, *, size: int, norm: str = "imagenet") -> str:
    """A recipe name (``alexnet``) or a spec string, with ``{size}``, ``{resize}``, ``{norm}`` filled."""
    spec = RECIPES.get(recipe_or_spec, recipe_or_spec)
    return spec.format(size=size, resize=eval_resize(size), norm=norm)


def default_recipe(source, *, train: bool, size: int, channels: int) -> str:
    """What a run uses when neither the command line nor the experiment file says: small datasets
    of fixed shape (MNIST, CIFAR, digits) are resized to the model's input (CIFAR-like colour images
    also get pad-and-crop + flip in training); natural images get the Inception-style crop for
    training and resize-256 + centre crop for evaluation."""
    shape = source.image_shape
    if source.name.startswith("cifar"):
        norm = "cifar10"
    else:
        norm = "imagenet" if channels == 3 else "mnist"
    if shape is not None and max(shape[:2]) <= 64:
        colour = shape[2] == 3 and not source.name.startswith("synthetic")
        return expand("cifar" if (train and colour) else "small", size=size, norm=norm)
    return expand("inception" if train else "center", size=size, norm=norm)


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    args: tuple


def parse(spec: str) -> list[Step]:
    steps = []
    for part in filter(None, (p.strip() for p in spec.split("|"))):
        match = re.fullmatch(r"([a-z_0-9]+)(?:\((.*)\))?", part)
        if not match or match.group(1) not in OPS:
            raise UsageError(f"unknown preprocessing op {part!r}; ops: {', '.join(OPS)}; "
                             f"recipes: {', '.join(RECIPES)}")
        args = tuple(_literal(a.strip()) for a in match.group(2).split(",")) if match.group(2) else ()
        steps.append(Step(match.group(1), args))
    return steps


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word such as imagenet


def compile_ops(spec: str) -> Callable:
    """``apply(image_float32, seed[2]) -> image`` running every op with its own derived seed."""
    steps = parse(spec)
    try:
        fns = [OPS[s.name](*s.args) for s in steps]
    except TypeError as e:
        raise UsageError(f"bad arguments in preprocessing spec {spec!r}: {e}") from None

    def apply(image, seed):
        seeds = tf().random.experimental.stateless_split(seed, num=max(len(fns), 1))
        for i, fn in enumerate(fns):
            image = fn(image, seeds[i])
        return image

    return apply


def decode(image, *, encoded: bool, channels: int):
    """Bytes (JPEG, PNG incl. PNG-in-JPEG, CMYK, grey, GIF, BMP) or uint8 arrays to float32 HWC with
    ``channels`` channels. Undecodable bytes raise, and the pipeline skips and counts them."""
    lib = tf()
    if encoded:
        image = lib.io.decode_image(image, channels=channels, expand_animations=False)
    elif image.shape[-1] != channels:
        image = lib.image.rgb_to_grayscale(image) if channels == 1 else lib.image.grayscale_to_rgb(image)
    return lib.cast(image, "float32")
