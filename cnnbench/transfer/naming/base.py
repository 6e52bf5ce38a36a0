"""What a family's published files call its tensors: one :class:`Torchvision` and one :class:`Keras`
description per architecture, registered by the family modules beside this one, read by the
generic conversion loops of :mod:`cnnbench.transfer.weights`."""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

#: cnnbench leaf -> torchvision's name for it
TORCH_LEAF = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean", "var": "running_var"}


@dataclasses.dataclass(frozen=True)
class Torchvision:
    """A torchvision state dict's names for one architecture."""

    #: (the tensor's module path below features/head, its first part, the abstract model) -> the
    #: state-dict key's prefix (the leaf is :data:`TORCH_LEAF`'s)
    prefix: Callable[[str, list[str], object], str]
    #: the classifier's weight, which every state dict of this architecture has
    head: str = "fc.weight"
    #: the dense kernel that reads PyTorch's flattened C,S,S map (cnnbench flattens S,S,C)
    flatten: str | None = None
    #: file entries with no place in the model, left out without a word
    ignore: str = r".*num_batches_tracked$"
    #: torchvision's ``transform_input`` (GoogLeNet's published weights expect it): a model option
    transform_input: bool = False

    def key(self, path: str, model) -> str:
        *module, leaf = path.split("/")
        return f"{self.prefix(module[0], module[1:], model)}.{TORCH_LEAF[leaf]}"


@dataclasses.dataclass(frozen=True)
class Keras:
    """A Keras applications weight file's names for one architecture."""

    #: cnnbench path -> (Keras layer name, index among that layer's weights)
    name: Callable[[str], tuple[str, int]]
    #: the first convolution's kernel, whose input channels go from BGR to RGB
    first_conv: str
    #: model options the file's network needs (ResNet50 v1: ``stride_in_1x1``)
    options: dict = dataclasses.field(default_factory=dict)
    #: one line for a file of this name that cannot be converted, else None
    refuse: Callable[[dict], str | None] = lambda layers: None
    #: a Keras 3 ``.weights.h5`` file's layer names to the applications' ones
    rename: Callable[[dict], dict] = lambda layers: layers
    #: (path, Keras layer, array, every layer, names used so far) -> the array cnnbench stores
    adjust: Callable[[str, str, np.ndarray, dict, set], np.ndarray] | None = None


TORCHVISION: dict[str, Torchvision] = {}
KERAS: dict[str, Keras] = {}


def torchvision(*archs: str, **names) -> None:
    for arch in archs:
        TORCHVISION[arch] = Torchvision(**names)


def keras(*archs: str, **names) -> None:
    for arch in archs:
        KERAS[arch] = Keras(**names)
