"""Named intermediate outputs of a model: the one way every visualisation looks inside a network.

A layer is named by its module path, as `cnnbench summary ARCH --all-layers` lists it
(``features.conv1``, ``features.layer3.2.relu``, ``head.fc7``); composite modules count too
(``features.layer2``, ``features.inception4e``, ``features`` itself). Inside a traced function
the model is merged from its state into a fresh copy whose requested modules are wrapped in a
:class:`_Tap`: the tap returns the module's output unchanged, plus an optional ``delta`` (zeros,
so the gradient with respect to ``delta`` is the gradient with respect to that output, what
Grad-CAM needs) and keeps it. Nothing in the architectures changes, and the model passed in is
never modified (every call works on its own merged copy).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from cnnbench.archs import trace
from cnnbench.archs.net import module_at, set_module
from cnnbench.errors import UsageError


class _Tap:
    """Stands in for a module: calls it, adds ``delta``, stores the result under ``name``."""

    def __init__(self, inner, name: str, store: dict, delta=None, on_output=None):
        self._inner, self._name, self._store, self._delta, self._on_output = inner, name, store, delta, on_output

    def __call__(self, x, *args, **kwargs):
        y = self._inner(x, *args, **kwargs)
        if self._delta is not None:
            y = y + self._delta
        self._store[self._name] = y
        if self._on_output is not None:
            self._on_output(self._name, y)
        return y

    def __getattr__(self, attr):  # parents may read attributes of their children
        return getattr(self._inner, attr)




@dataclasses.dataclass(frozen=True)
class LayerInfo:
    name: str
    shape: tuple[int, ...]      # output shape for one image, batch axis excluded
    geometry: trace.Geometry    # receptive field, effective stride and padding of one output unit


class Taps:
    """A model split into (graph, state) plus the names of the layers one can read out.

    ``apply(state, x, names)`` is pure and traceable: jit it inside each visualisation.
    """

    def __init__(self, model: nnx.Module, input_shape: tuple[int, int, int], arch: str = "the model"):
        self.graphdef, self._host_state = nnx.split(model)
        self.input_shape, self.arch = tuple(input_shape), arch
        self._all = [".".join(map(str, path)) for path, _ in nnx.iter_modules(model) if path]
        self.layers = self._trace()
        self.by_name = {layer.name: layer for layer in self.layers}

    @functools.cached_property
    def state(self):
        """The weights on the device, put there once, when first used (resolving a layer's name
        needs only the trace): restored weights are host arrays, and every jitted visualisation
        call would otherwise copy them again (244 MB for AlexNet, per chunk of occlusion)."""
        return jax.device_put(self._host_state)

    # ------------------------------------------------------------------ the forward pass

    def apply(self, state, x, names: Sequence[str] = (), *, deltas: dict | None = None,
              on_output=None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(logits, {name: output}) of a fresh copy of the model on ``x`` in evaluation mode."""
        model = nnx.merge(self.graphdef, state)
        if getattr(model, "chunk", None) is not None:
            model.chunk = None  # the outputs kept are the whole batch's, not a loop's pieces
        store: dict[str, jax.Array] = {}
        deltas = deltas or {}
        # Deepest first, so a parent wraps children that are already tapped.
        for name in sorted(set(names), key=lambda n: -n.count(".")):
            set_module(model, name, _Tap(module_at(model, name), name, store, deltas.get(name), on_output))
        logits = model(x, train=False)
        return logits, store

    def _trace(self) -> list[LayerInfo]:
        """Every module that runs in the forward pass, in the order its output appears, with its
        output shape and receptive-field geometry (traced abstractly, nothing computed)."""
        order: dict[str, LayerInfo] = {}

        def forward(state, x):
            with trace.recording({}) as recorder:
                def seen(name, y):
                    order.setdefault(name, LayerInfo(name, tuple(y.shape[1:]), recorder.geometry(y)))

                self.apply(state, x, self._all, on_output=seen)

        jax.eval_shape(forward, self._host_state, jax.ShapeDtypeStruct((1, *self.input_shape), jnp.float32))
        return list(order.values())

    # ------------------------------------------------------------------ names

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def resolve(self, name: str) -> str:
        """A full layer name from a full or short one (``conv5`` -> ``features.conv5``, ``fc7`` ->
        ``head.fc7``); anything else is one line listing the valid names."""
        names = self.names
        if name in names:
            return name
        for prefix in ("features.", "head."):
            if prefix + name in names:
                return prefix + name
        matches = [n for n in names if n.endswith("." + name)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UsageError(f"layer {name!r} of {self.arch} is ambiguous: {', '.join(matches[:12])}"
                             f"{' ...' if len(matches) > 12 else ''}; give the full name")
        shown = names if len(names) <= 60 else [n for n in names if n.count(".") <= 1]
        more = "" if len(shown) == len(names) else \
            f" (top-level ones shown; `cnnbench summary {self.arch} --all-layers` lists all {len(names)})"
        raise UsageError(f"{self.arch} has no layer {name!r}; layers: {', '.join(shown)}{more}")

    def resolve_all(self, names: Sequence[str]) -> list[str]:
        return [self.resolve(n) for n in names]

    def of_kind(self, types: tuple[type, ...]) -> list[str]:
        """Names of the layers whose module is an instance of ``types``, in forward order."""
        model = nnx.merge(self.graphdef, self._host_state)
        return [name for name in self.names if isinstance(module_at(model, name), types)]

    def module(self, name: str):
        return module_at(nnx.merge(self.graphdef, self._host_state), name)

    def spatial(self, name: str) -> bool:
        return len(self.by_name[name].shape) == 3

    def maps(self, name: str) -> bool:
        """Whether ``name`` outputs feature maps larger than 1x1."""
        shape = self.by_name[name].shape
        return len(shape) == 3 and shape[0] * shape[1] > 1

    def stages(self) -> list[str]:
        """The main sequence of the network with feature maps larger than 1x1, in forward order:
        the direct children of ``features`` and ``head`` that are non-linearities or blocks
        (Inception modules, residual stages), and convolutions not followed by a non-linearity.
        Pooling, normalisation and dropout are left out (they only resample what came before)."""
        from cnnbench.archs import layers as L

        passive = (L.MaxPool, L.AvgPool, L.AdaptiveAvgPool, L.GlobalAvgPool, L.Dropout, L.LRN,
                   L.BatchNorm, L.Flatten, L.ShortcutA)
        top = [n for n in self.names if n.count(".") == 1]
        out = []
        for i, name in enumerate(top):
            module = self.module(name)
            if isinstance(module, passive) or not self.maps(name):
                continue
            after = [self.module(n) for n in top[i + 1:]]
            following = next((m for m in after if not isinstance(m, L.BatchNorm)), None)
            if isinstance(module, L.Conv) and isinstance(following, L.Act):
                continue  # its output after the non-linearity is the one to look at
            out.append(name)
        return out
