"""Per-layer shape tracing: what `cnnbench summary` counts is recorded by the layers themselves.

While a :class:`Recorder` is active (inside ``jax.eval_shape``), every primitive layer of
``cnnbench.archs.layers`` reports its input and output shapes, kernel geometry, parameter count
and multiply-adds. Receptive fields are propagated per tensor (keyed by the identity of the traced
array), so branching blocks (Inception, residual) merge them correctly: a merge takes the largest
receptive field of its inputs. Depth (weight layers on the longest path) propagates the same way.
Outside a recording this module costs one context-variable lookup.

For a model split over devices (:func:`cnnbench.parallel.plan`), whether each tensor is split by
channel over the ``model`` axis propagates the same way, so each weight layer's record says what
crosses devices there: the split input it gathers (once per tensor: Inception's branches share one
gather) or the partial outputs it sums.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Any, Iterator

import numpy as np

#: the layers that count towards a network's depth ("8 layers" of AlexNet, "22" of GoogLeNet)
WEIGHT_LAYERS = frozenset({"conv", "dense"})
_ACTIVE: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar("cnnbench_trace", default=None)


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Receptive field of one output unit in input pixels, its stride (jump) and padding offset."""

    receptive_field: int = 1
    effective_stride: int = 1
    effective_padding: int = 0

    def then(self, kernel: int, stride: int, padding: int) -> Geometry:
        """Geometry after a window op (standard recurrence, e.g. Araujo et al., Distill 2019)."""
        return Geometry(
            self.receptive_field + (kernel - 1) * self.effective_stride,
            self.effective_stride * stride,
            self.effective_padding + padding * self.effective_stride,
        )


@dataclasses.dataclass
class LayerRecord:
    name: str
    kind: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int
    macs: int
    kernel: int | None
    stride: int | None
    padding: int | None
    geometry: Geometry
    itemsize: int
    #: weight layers (conv, dense) on the longest path from the input to this layer's output
    depth: int = 0
    #: split over a model axis: "column", "tower", "row", "whole" (a weight layer that does not
    #: split), "" (not a weight layer, or the model is not split)
    split: str = ""
    #: whether this layer's output is split by channel over the model axis
    split_output: bool = False
    #: bytes each device of a model group receives per image at this layer: the parts of a split
    #: input it gathers, or (ring all-reduce) the partial sums of a ``row`` layer's output
    moved_bytes: int = 0
    #: parameters one device of a model group holds
    device_params: int = 0
    #: connections (LeCun et al. 1998's count): multiply-adds plus one per bias use
    connections: int = 0
    #: the layer whose output is this layer's input (None: the network's input or a merge)
    source: str | None = None
    #: how many layers and merges take this layer's output (filled in as the trace goes on)
    uses: int = 0

    @property
    def activations(self) -> int:
        """Elements of this layer's output for one example (the batch axis excluded)."""
        return int(np.prod(self.output_shape[1:]))


class Recorder:
    def __init__(self, names: dict[int, str], ways: int = 1):
        self.names = names
        self.ways = ways  # devices the model is split over
        self.records: list[LayerRecord] = []
        self._geometry: dict[int, Geometry] = {}
        self._depth: dict[int, int] = {}
        self._split: dict[int, bool] = {}
        self._gathered: set[int] = set()
        self._alive: list[Any] = []  # keeps traced arrays alive so their ids are never reused
        self._made_by: dict[int, LayerRecord] = {}  # id of an output -> the record of its layer

    def used(self, x) -> LayerRecord | None:
        """Count one use of ``x``; the record of the layer that made it, if a layer did."""
        maker = self._made_by.get(id(x))
        if maker is not None:
            maker.uses += 1
        return maker

    def geometry(self, x) -> Geometry:
        return self._geometry.get(id(x), Geometry())

    def depth(self, x) -> int:
        return self._depth.get(id(x), 0)

    def split(self, x) -> bool:
        return self._split.get(id(x), False)

    def set_geometry(self, y, geometry: Geometry, depth: int, split: bool = False) -> None:
        self._geometry[id(y)] = geometry
        self._depth[id(y)] = depth
        self._split[id(y)] = split
        self._alive.append(y)

    def crossing(self, module, kind: str, x, y) -> tuple[str, bool, int]:
        """(split, output split, bytes received per device per image) of a layer."""
        split_in = self.split(x)
        if self.ways == 1:
            return "", False, 0
        if kind not in WEIGHT_LAYERS:
            return "", split_in, 0
        partition = getattr(module, "partition", None)
        how = partition.kind if partition is not None else "whole"
        per_image = lambda a: int(np.prod(a.shape[1:])) * np.dtype(a.dtype).itemsize  # noqa: E731
        moved = 0
        if how in ("column", "whole") and split_in and id(x) not in self._gathered:
            self._gathered.add(id(x))
            moved = per_image(x) * (self.ways - 1) // self.ways
        elif how == "row":
            moved = 2 * per_image(y) * (self.ways - 1) // self.ways
        return how, how in ("column", "tower"), moved


@contextlib.contextmanager
def recording(names: dict[int, str], ways: int = 1) -> Iterator[Recorder]:
    from cnnbench.kernels import fastops  # shapes only: the plain lax ops trace fastest

    recorder = Recorder(names, ways)
    token = _ACTIVE.set(recorder)
    try:
        with fastops.use(False):
            yield recorder
    finally:
        _ACTIVE.reset(token)


def record(module, x, y, *, kind: str, kernel: int | None = None, stride: int | None = None,
           padding: int = 0, macs: int = 0, params: int | None = None, connections: int | None = None) -> None:
    """Called by every primitive layer after computing ``y = layer(x)``."""
    recorder = _ACTIVE.get()
    if recorder is None:
        return
    geometry = recorder.geometry(x)
    if kernel is not None:
        geometry = geometry.then(kernel, stride or 1, padding)
    depth = recorder.depth(x) + (kind in WEIGHT_LAYERS)
    split, split_output, moved = recorder.crossing(module, kind, x, y)
    recorder.set_geometry(y, geometry, depth, split_output)
    if params is None:
        params = count_params(module)
    if connections is None:  # a weight layer's bias is one more connection per output value
        connections = int(macs) + (int(np.prod(y.shape[1:])) if getattr(module, "bias", None) is not None
                                   and kind in WEIGHT_LAYERS else 0)
    maker = recorder.used(x)
    recorder.records.append(LayerRecord(
        name=recorder.names.get(id(module), type(module).__name__),
        kind=kind,
        input_shape=tuple(x.shape),
        output_shape=tuple(y.shape),
        params=params,
        macs=int(macs),
        kernel=kernel,
        stride=stride if kernel is not None else None,
        padding=padding if kernel is not None else None,
        geometry=geometry,
        itemsize=np.dtype(y.dtype).itemsize,
        connections=int(connections),
        depth=depth,
        split=split,
        split_output=split_output,
        moved_bytes=moved,
        device_params=count_params(module, per_device_of=recorder.ways) if params else 0,
        source=maker.name if maker is not None else None,
    ))
    recorder._made_by[id(y)] = recorder.records[-1]


def merge(inputs, y) -> None:
    """Called by parameter-free merges (add, concat): y sees what its widest input sees, and is as
    deep as its deepest input."""
    recorder = _ACTIVE.get()
    if recorder is None:
        return
    for x in inputs:
        recorder.used(x)
    widest = max((recorder.geometry(x) for x in inputs), key=lambda g: g.receptive_field)
    recorder.set_geometry(y, widest, max(recorder.depth(x) for x in inputs),
                          any(recorder.split(x) for x in inputs))


def count_params(module, *, per_device_of: int = 1) -> int:
    """Trainable parameters (``nnx.Param``) of a module; batch-norm statistics are not parameters.
    ``per_device_of``: of a model split over that many devices, those one device holds (a
    parameter split over the ``model`` axis counts a share)."""
    import jax
    from flax import nnx

    def held(variable) -> int:
        size = int(np.prod(variable.shape))
        split = "model" in (variable.get_metadata().get("out_sharding") or ())
        return size // per_device_of if split else size

    return sum(held(v) for v in jax.tree.leaves(nnx.state(module, nnx.Param),
                                                is_leaf=lambda v: isinstance(v, nnx.Variable)))


def trace_model(model, input_shape: tuple[int, ...], *, train: bool = False) -> list[LayerRecord]:
    """Per-layer records of one forward pass of ``model`` on a batch of one ``input_shape`` (HWC)
    image, traced with ``jax.eval_shape``: no parameters are read and no FLOPs spent."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(model)
    records: list[LayerRecord] = []

    def forward(state, x):
        m = nnx.merge(graphdef, state)
        names = {id(module): ".".join(map(str, path)) for path, module in nnx.iter_modules(m)}
        with recording(names, getattr(model, "model_parallel", 1)) as recorder:
            m(x, train=train)
        records.extend(recorder.records)

    jax.eval_shape(forward, state, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
    return records
