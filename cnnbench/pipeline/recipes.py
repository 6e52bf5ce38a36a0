"""Named recipes (``alexnet``, ``vgg``, ``inception``, ``cifar`` ...: the papers' preprocessing as
spec strings), the normalisation a dataset gets, and the default recipe of a run."""

from __future__ import annotations

import re

from cnnbench.errors import UsageError
from cnnbench.pipeline.ops import OPS

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
