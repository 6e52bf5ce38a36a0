"""Each layer's split over the ``model`` axis, decided once per model by :func:`plan`.

The rule is Krizhevsky et al.'s (2012, section 3.2 and Figure 2), generalised to every network:

- ``column``: a convolution or dense layer takes its whole input (the feature maps of every
  device, gathered where they were split) and computes its share of the output channels: each
  device owns ``1/M`` of the kernels and their biases. AlexNet's conv3, fc6 and fc7 ("take input
  from all kernel maps in layer 2", "the neurons in the fully-connected layers are connected to all
  neurons in the previous layer").
- ``tower``: a grouped convolution with as many groups as devices (AlexNet's conv2, conv4, conv5:
  "take input only from those kernel maps ... which reside on the same GPU") runs as one plain
  convolution per device on the maps that device holds: no communication.
- ``row``: a classifier (a dense layer producing the class scores) takes the split input as it is,
  each device multiplies its part by its rows of the kernel, and the partial scores are summed
  over the devices (AlexNet's fc8: 1000 outputs from both towers' fc7 neurons).
- a layer whose output channels do not divide over ``M`` devices stays whole (replicated).

Batch norm's scale, bias and statistics are split with the channels they normalise, so each
device computes the statistics of its own channels. Element-wise layers, pooling and LRN (which the
paper AlexNet normalises within each tower: :class:`cnnbench.archs.layers.LRN` ``groups``) keep
their input's split. The split is numerically the same network: only where sums are computed
changes (float32 rounding).

:func:`plan` writes the split into the model: each layer gets a :class:`Partition` (what it does
while traced: sharding constraints around its computation, or a ``shard_map``), and each
parameter's ``nnx.Variable`` gets its ``out_sharding`` (where :func:`cnnbench.parallel.mesh.place`
puts it, and with it the optimiser state built from it). Both are part of the model's graph, so a
compiled step can never run with a stale split.
"""

from __future__ import annotations

import dataclasses

import jax
from jax.sharding import Mesh, PartitionSpec

from cnnbench.errors import UsageError

#: the kinds of split a weight layer can have (see the module's docstring)
KINDS = ("column", "tower", "row")


@dataclasses.dataclass(frozen=True)
class Partition:
    """How one convolution or dense layer runs over the ``model`` axis of ``mesh`` (``ways``
    devices). ``mesh`` is None for an analysis (``cnnbench summary``): the layer then computes as
    on one device and only reports its split."""

    kind: str
    ways: int
    mesh: Mesh | None = None

    def run(self, local, whole, x, kernel, bias):
        """The layer's output, computed on the mesh as its split says: ``local(x, kernel, bias)``
        is the layer's own computation on the arrays one device holds (for ``tower`` and
        ``column`` a plain, ungrouped convolution or product with that device's output channels),
        run by ``shard_map`` over ``model`` with the only collectives the split needs: XLA gathers
        a split input before a ``column`` layer, and a ``row`` layer sums its partial products
        (``psum``) before its bias is added. ``kernel`` and ``bias`` are the layer's
        ``nnx.Variable``s (``bias`` may be None); ``whole(x)`` computes the layer on one device,
        which an analysis without a mesh does."""
        if self.mesh is None:
            return whole(x)
        split_in = self.kind in ("tower", "row")
        k = kernel[...]
        if self.kind == "row":
            def on_device(x, k):
                return jax.lax.psum(local(x, k, None), "model")

            y = jax.shard_map(on_device, mesh=self.mesh, in_specs=(_last(x.ndim), PartitionSpec("model")),
                              out_specs=PartitionSpec(), axis_names={"model"})(x, k)
            return y if bias is None else y + bias[...].astype(y.dtype)
        params = (k,) if bias is None else (k, bias[...])

        def on_device(x, k, b=None):
            if not split_in:  # the same whole input on every device: its gradient sums theirs
                x = jax.lax.pcast(x, "model", to="varying")
            return local(x, k, b)

        return jax.shard_map(on_device, mesh=self.mesh,
                             in_specs=(_last(x.ndim) if split_in else PartitionSpec(),
                                       *(_last(p.ndim) for p in params)),
                             out_specs=_last(x.ndim), axis_names={"model"})(x, *params)


def _last(ndim: int) -> PartitionSpec:
    """Split over ``model`` on the last axis (channels, a kernel's outputs)."""
    return PartitionSpec(*([None] * (ndim - 1)), "model")


def _split_last(variable) -> None:
    variable.set_metadata(out_sharding=(*([None] * (variable.ndim - 1)), "model"))


def plan(model, ways: int, mesh: Mesh | None = None):
    """Split ``model`` over ``ways`` devices (a mesh's ``model`` axis; ``mesh`` None for analysis
    only) by the rule of this module; returns the model. ``ways`` 1 leaves it as it is.

    A grouped convolution's towers cannot be cut across devices: its group count must equal
    ``ways`` (the paper AlexNet: ``--model-parallel 2``), else this is a usage error."""
    from flax import nnx

    if ways < 1:
        raise UsageError(f"--model-parallel {ways}: must be at least 1")
    if mesh is not None and int(mesh.shape.get("model", 1)) != ways:
        raise ValueError(f"mesh {dict(mesh.shape)} does not have {ways} devices on its model axis")
    model.model_parallel = ways
    if ways == 1:
        return model
    num_classes = getattr(model, "num_classes", None)
    for path, module in nnx.iter_modules(model):
        name = ".".join(map(str, path))
        if isinstance(module, nnx.Conv) and hasattr(module, "partition"):  # the layers that can split
            groups = module.feature_group_count
            if groups > 1 and groups != ways:
                raise UsageError(f"{name} is a grouped convolution of {groups} towers: it splits over "
                                 f"--model-parallel {groups} (or 1), not {ways}")
            if module.out_features % ways:
                continue
            module.partition = Partition("tower" if groups > 1 else "column", ways, mesh)
            _split_last(module.kernel)
            if module.bias is not None:
                _split_last(module.bias)
        elif isinstance(module, nnx.Linear) and hasattr(module, "partition"):
            if module.out_features == num_classes and module.in_features % ways == 0:
                module.partition = Partition("row", ways, mesh)
                module.kernel.set_metadata(out_sharding=("model", None))
            elif module.out_features % ways == 0:
                module.partition = Partition("column", ways, mesh)
                _split_last(module.kernel)
                if module.bias is not None:
                    _split_last(module.bias)
        elif isinstance(module, nnx.BatchNorm) and module.num_features % ways == 0:
            for variable in (module.scale, module.bias, module.mean, module.var):
                if variable is not None:
                    _split_last(variable)
    return model
