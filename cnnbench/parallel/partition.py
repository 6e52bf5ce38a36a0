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
- ``whole``: a layer whose output channels do not divide over ``M`` devices stays whole
  (replicated over ``model``).

Every weight layer of a model on a mesh of several devices, split or not, computes on the images
its device holds (``shard_map`` over ``data`` too): XLA's own partitioning of a batch-sharded
grouped convolution gathered the whole batch first (the paper AlexNet's conv2, conv4 and conv5
under plain data parallelism), and so did the CPU formulations' loops over chunks of the batch.

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

from cnnbench.errors import UsageError, setting

@dataclasses.dataclass(frozen=True)
class Partition:
    """How one convolution or dense layer runs over the ``model`` axis of ``mesh`` (``ways``
    devices). ``mesh`` is None for an analysis (``cnnbench summary``): the layer then computes as
    on one device and only reports its split."""

    kind: str  # "column", "tower", "row" or "whole" (not split): see the module's docstring
    ways: int
    mesh: Mesh | None = None

    def run(self, local, whole, x, kernel, bias):
        """The layer's output, computed on the mesh as its split says: ``local(x, kernel, bias)``
        is the layer's own computation on the arrays one device holds (a plain, ungrouped
        convolution or product: for ``tower`` and ``column`` with that device's output channels;
        for every kind on that device's images), run by ``shard_map`` over the mesh with the only
        collectives the split needs: XLA gathers a split input before a ``column`` layer, a
        ``row`` layer sums its partial products (``psum``) before its bias is added, and the
        weight gradients are summed over the ``data`` axis. ``kernel`` and ``bias`` are the
        layer's ``nnx.Variable``s (``bias`` may be None); ``whole(x)`` computes the layer as on one
        device, which an analysis without a mesh does."""
        if self.mesh is None:
            return whole(x)
        groups = int(self.mesh.shape["data"])
        data = "data" if groups > 1 and x.shape[0] % groups == 0 else None
        axes = ({"data"} if data else set()) | ({"model"} if self.ways > 1 else set())
        if not axes:
            return whole(x)
        split_in, split_out = self.kind in ("tower", "row"), self.kind in ("column", "tower")
        variables = [kernel] if bias is None or self.kind == "row" else [kernel, bias]
        specs = [PartitionSpec(*(v.get_metadata().get("out_sharding") or ())) for v in variables]

        def on_device(x, *params):
            if self.ways > 1 and not split_in:  # the same input on every device of a group
                x = jax.lax.pcast(x, "model", to="varying")
            if data:  # the same weights for every group's images: their gradient sums the groups'
                params = [jax.lax.pcast(p, "data", to="varying") for p in params]
            y = local(x, params[0], params[1] if len(params) > 1 else None)
            return jax.lax.psum(y, "model") if self.kind == "row" else y

        def batch(split: bool) -> PartitionSpec:
            return PartitionSpec(data, *([None] * (x.ndim - 2)), "model" if split else None)

        y = jax.shard_map(on_device, mesh=self.mesh, in_specs=(batch(split_in), *specs),
                          out_specs=batch(split_out), axis_names=axes)(x, *(v[...] for v in variables))
        return y + bias[...].astype(y.dtype) if self.kind == "row" and bias is not None else y


def _split_last(variable) -> None:
    variable.set_metadata(out_sharding=(*([None] * (variable.ndim - 1)), "model"))


def plan(model, ways: int, mesh: Mesh | None = None):
    """Split ``model`` over ``ways`` devices (a mesh's ``model`` axis; ``mesh`` None for analysis
    only) by the rule of this module; returns the model. On one device (or without a mesh, for
    ``ways`` 1) it leaves the model as it is; on a mesh of several devices every weight layer also
    computes on its own device's images.

    A grouped convolution's towers cannot be cut across devices: its group count must equal
    ``ways`` (the paper AlexNet: ``--model-parallel 2``), else this is a usage error."""
    from flax import nnx

    if ways < 1:
        raise UsageError(f"{setting('model_parallel')} {ways}: must be at least 1")
    if mesh is not None and int(mesh.shape.get("model", 1)) != ways:
        raise ValueError(f"mesh {dict(mesh.shape)} does not have {ways} devices on its model axis")
    model.model_parallel = ways
    if ways == 1 and (mesh is None or mesh.devices.size == 1):
        return model  # one device: the layers compute as they always do
    num_classes = getattr(model, "num_classes", None)
    for path, module in nnx.iter_modules(model):
        name = ".".join(map(str, path))
        if isinstance(module, nnx.Conv) and hasattr(module, "partition"):  # the layers that can split
            groups = module.feature_group_count
            if ways > 1 and groups > 1 and groups != ways:
                raise UsageError(f"{name} is a grouped convolution of {groups} towers: it splits over "
                                 f"{setting('model_parallel')} {groups} (or 1), not {ways}")
            kind = "whole" if ways == 1 or module.out_features % ways else "tower" if groups > 1 else "column"
            module.partition = Partition(kind, ways, mesh)
            if kind != "whole":
                _split_last(module.kernel)
                if module.bias is not None:
                    _split_last(module.bias)
        elif isinstance(module, nnx.Linear) and hasattr(module, "partition"):
            if ways > 1 and getattr(module, "transposed", False):
                raise ValueError(f"{name}: a dense kernel stored [out, in] (inference.transpose_dense) cannot split")
            if ways > 1 and module.out_features == num_classes and module.in_features % ways == 0:
                module.partition = Partition("row", ways, mesh)
                module.kernel.set_metadata(out_sharding=("model", None))
            elif ways > 1 and module.out_features % ways == 0:
                module.partition = Partition("column", ways, mesh)
                _split_last(module.kernel)
                if module.bias is not None:
                    _split_last(module.bias)
            else:
                module.partition = Partition("whole", ways, mesh)
        elif isinstance(module, nnx.BatchNorm) and ways > 1 and module.num_features % ways == 0:
            for variable in (module.scale, module.bias, module.mean, module.var):
                if variable is not None:
                    _split_last(variable)
    return model
