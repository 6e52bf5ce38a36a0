"""The one model shape every architecture shares: ``features`` (convolutional base) -> ``head``."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from cnnbench.errors import UsageError, setting


class Net(nnx.Module):
    """An image classifier split timm-style into a convolutional base and a classifier head.

    ``features`` and ``head`` are the only two children that carry the forward pass, so freezing
    the base, swapping the head, extracting features or computing CAMs works the same for every
    architecture. ``num_classes``, ``input_size`` and ``in_channels`` record what it was built for.
    """

    def __init__(self, features: nnx.Module, head: nnx.Module, *, num_classes: int,
                 input_size: int, in_channels: int):
        self.features = features
        self.head = head
        self.num_classes, self.input_size, self.in_channels = num_classes, input_size, in_channels
        #: ``(images, devices)``: the convolutional base takes each device's images so many at a
        #: time (an inference program's, :func:`cnnbench.archs.inference.inference_model`); None:
        #: the whole batch at once
        self.chunk = None

    def __call__(self, x, train: bool = False):
        return self.head(self._base(x, train), train=train)

    def _base(self, x, train: bool):
        """``features(x)``, in pieces where :attr:`chunk` says so and the batch divides: piece ``j``
        is the ``j``-th ``images`` of every device's share of the batch (so on a mesh each piece
        stays split over the devices as the batch is, with no data moved), the pieces one after
        another. The same values, computed piece by piece."""
        if self.chunk is None or train:
            return self.features(x, train=train)
        images, devices = self.chunk
        n = x.shape[0]
        if n <= images * devices or n % (images * devices):
            return self.features(x, train=train)
        k = n // (images * devices)
        pieces = x.reshape(devices, k, images, *x.shape[1:]).swapaxes(0, 1).reshape(k, devices * images, *x.shape[1:])
        out = jax.lax.map(lambda piece: self.features(piece, train=False), pieces)
        return out.reshape(k, devices, images, *out.shape[2:]).swapaxes(0, 1).reshape(n, *out.shape[2:])

    def forward_with_aux(self, x, train: bool = True) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        """Logits and the logits of any auxiliary classifiers (GoogLeNet's; none here)."""
        return self(x, train=train), ()


def infer_shape(module: nnx.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Output shape of ``module`` for an input of ``shape``, traced abstractly (no FLOPs spent)."""
    from cnnbench.kernels import fastops

    graphdef, state = nnx.split(module)
    with fastops.use(False):  # shapes only: the plain lax ops trace fastest
        out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x),
                             state, jax.ShapeDtypeStruct(shape, jnp.float32))
    if any(d <= 0 for d in out.shape):
        raise UsageError(f"input {shape[1]}x{shape[2]} is too small: the feature map shrinks to "
                         f"{tuple(out.shape[1:])}; use a larger {setting('input_size')}")
    return tuple(out.shape)


def feature_shape(features: nnx.Module, input_size: int, in_channels: int) -> tuple[int, ...]:
    """(H, W, C) of the convolutional base's output for one ``input_size`` image."""
    return infer_shape(features, (1, input_size, input_size, in_channels))[1:]


def flat_size(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def module_at(model: nnx.Module, name: str):
    """The submodule at a dotted layer name (``features.layer1.0.conv1``; list items by index)."""
    for part in name.split("."):
        model = model[int(part)] if isinstance(model, (list, tuple)) else getattr(model, part)
    return model


def set_module(model: nnx.Module, name: str, module) -> None:
    """Put ``module`` at the dotted layer ``name`` of ``model`` in place of what is there."""
    parent_name, _, key = name.rpartition(".")
    parent = module_at(model, parent_name) if parent_name else model
    if isinstance(parent, list):
        parent[int(key)] = module
    else:
        setattr(parent, key, module)
