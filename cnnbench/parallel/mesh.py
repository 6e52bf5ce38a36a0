"""The one device mesh of every command: ``data`` x ``model``.

``--model-parallel M`` splits the devices JAX sees (or the first ``--devices N``) into groups of M
neighbours: each group holds one copy of the network, split over its M devices (axis ``model``),
and the batch is sharded over the groups (axis ``data``). M = 1 is plain data parallelism: every
device holds every parameter.

Without ``--devices`` every command uses every device, but for one case: on the CPU devices the
`cnnbench` command makes, one per core (:func:`cnnbench.kernels.flags.use_cpu_devices`), a
training step uses one model group, since splitting it over the cores measured slower
(:func:`default_devices`).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cnnbench.errors import UsageError, setting

AXES = ("data", "model")


def check_model_parallel(model_parallel: int, devices: int) -> None:
    """One usage line when ``model_parallel`` cannot split ``devices`` devices into equal groups."""
    if model_parallel < 1:
        raise UsageError(f"{setting('model_parallel')} {model_parallel}: must be at least 1")
    if devices % model_parallel:
        raise UsageError(f"{setting('model_parallel')} {model_parallel} does not divide the {devices} device(s) in use; "
                         f"use a divisor of {devices} (or {setting('devices')})")


def default_devices(model_parallel: int = 1, *, training: bool = False, batch_size: int | None = None) -> int | None:
    """How many devices a mesh takes when none are named: all (None), except on the CPU devices the
    command split the processor into (:func:`cnnbench.kernels.flags.use_cpu_devices`). There
    training takes one model group (``model_parallel`` devices): a training step split over the
    cores ran 0.78-0.82x as fast for alexnet-owt, level for resnet18 and googlenet-bn
    (BENCHMARKS.md, issue 26). Inference takes them all, or, for a ``batch_size`` they do not
    divide, the most model groups that divide it."""
    from cnnbench.kernels import flags

    split = flags.split_cpu_devices()
    if (not split or model_parallel > split or jax.process_count() > 1 or jax.default_backend() != "cpu"
            or jax.device_count() != split):
        return None
    if training:
        return model_parallel
    if batch_size is None:
        return None
    groups = max(g for g in range(1, split // model_parallel + 1) if batch_size % g == 0)
    return groups * model_parallel


def make_mesh(devices: int | None = None, model_parallel: int = 1, *, training: bool = False,
              batch_size: int | None = None) -> Mesh:
    """The mesh over the first ``devices`` devices (by default all, or what :func:`default_devices`
    says for ``training`` or a ``batch_size``), shaped (devices / model_parallel, model_parallel);
    each model group is ``model_parallel`` consecutive devices (on a multi-GPU host, the neighbours
    with the fastest link)."""
    available = jax.devices()
    if devices is None:
        devices = default_devices(model_parallel, training=training, batch_size=batch_size)
    if devices is not None and not 1 <= devices <= len(available):
        raise UsageError(f"{setting('devices')} {devices}: JAX sees {len(available)} device(s)")
    chosen = available[:devices] if devices else available
    check_model_parallel(model_parallel, len(chosen))
    return Mesh(np.array(chosen).reshape(len(chosen) // model_parallel, model_parallel), AXES)


def over_batch(fn, state, mesh: Mesh | None = None):
    """``fn(state, *batch)`` jitted, as a function of ``*batch`` (arrays with one leading size) that
    splits each batch over ``mesh``'s ``data`` axis (default: every device; on a CPU the command's
    one per core) with ``state`` replicated on it once, and returns the outputs (arrays with the
    batch's leading axis) on the host. A batch the split does not divide is padded with copies of
    its last row, and the outputs are cut back: what feature extraction and the dataset-wide
    figures run, batch after batch."""
    mesh = make_mesh() if mesh is None else mesh
    ways, sharding = data_size(mesh), batch_sharding(mesh)
    state = jax.device_put(state, replicated(mesh))
    jitted = jax.jit(fn)

    def run(*batch):
        arrays = [np.asarray(a) for a in batch]
        n = len(arrays[0])
        if n % ways:
            arrays = [np.concatenate([a, np.repeat(a[-1:], ways - n % ways, axis=0)]) for a in arrays]
        out = jitted(state, *(jax.device_put(a, sharding) for a in arrays))
        return jax.tree.map(lambda o: np.asarray(o)[:n], out)

    return run


def data_size(mesh: Mesh) -> int:
    """How many ways a batch is split: the ``data`` axis (every device when the mesh has no ``model``)."""
    return int(mesh.shape.get("data", mesh.devices.size))


def model_size(mesh: Mesh | None) -> int:
    return int(mesh.shape.get("model", 1)) if mesh is not None else 1


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches: the leading axis sharded over ``data``, each model group holding its part whole."""
    return NamedSharding(mesh, PartitionSpec("data"))


def shardings(tree, mesh: Mesh):
    """A sharding per array of ``tree`` (``nnx.State`` trees, optimiser states, plain arrays): the
    split each ``nnx.Variable`` carries (:func:`cnnbench.parallel.partition.plan` writes it into
    the variables' ``out_sharding``; optimiser states built from the parameters inherit it), and
    replicated for everything else."""
    from flax import nnx

    return nnx.get_named_sharding(tree, mesh)


def place(tree, mesh: Mesh):
    """``tree`` on the mesh as :func:`shardings` says (orbax restores into the same shardings, so a
    checkpoint written on one mesh restores on any other)."""
    return jax.device_put(tree, shardings(tree, mesh))
