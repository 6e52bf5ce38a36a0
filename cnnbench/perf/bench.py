"""`cnnbench bench`: how fast an architecture trains and infers here, on synthetic data.

What is timed is what `cnnbench train` runs: the jitted step of :mod:`cnnbench.train.step` with the
default optimiser (SGD with momentum 0.9 and weight decay, as the papers), sharded over the same
mesh, on a batch that already lives on the devices (no input pipeline, no TensorFlow). Inference is
the forward pass of the inference model (batch norm folded into its convolution, no dropout, as
`cnnbench eval` runs it) returning logits.

Every measurement: compile (timed on its own), ``warmup`` untimed steps, then ``steps`` timed
steps, each ended by ``block_until_ready``; the step time is their median. Achieved FLOP/s count
2 FLOPs per multiply-add of the model (convolutions and dense layers, as `cnnbench summary` counts
them), times 3 for a training step (forward, input gradient, weight gradient), and utilisation
compares them with the peak of a large matrix multiplication measured in the same process.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from typing import Callable

from cnnbench.errors import CnnbenchError, UsageError, setting
from cnnbench.progress import SILENT, Progress

MODES = ("train", "infer")
PRECISIONS = ("fp32", "bf16")


class OutOfMemory(CnnbenchError):
    """A batch that does not fit; ``--auto-batch`` halves it and tries again."""


def _dtype(precision: str):
    import jax.numpy as jnp

    return jnp.bfloat16 if precision == "bf16" else jnp.float32


def matmul_peak(mesh, precision: str = "fp32", size: int | None = None, repeats: int = 5) -> float:
    """FLOP/s of the best of ``repeats`` large square matrix multiplications, one per device.

    This is the ceiling a convolution network's step can approach here: convolutions and dense
    layers are matrix multiplications at heart. 2048 is the size that ran fastest on a 2-core CPU;
    accelerators need larger matrices to be busy.
    """
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from cnnbench.kernels.products import product

    n_dev = mesh.devices.size
    if size is None:
        size = 2048 if mesh.devices.flat[0].platform == "cpu" else 8192
    sharding = NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))  # one matrix per device
    dtype = _dtype(precision)
    make = jax.jit(lambda k: jax.random.normal(k, (n_dev, size, size), dtype), out_shardings=sharding)
    a, b = make(jax.random.key(1)), make(jax.random.key(2))
    # ``highest`` keeps float32 float32 on accelerators that would otherwise round to TF32/bf16;
    # bf16 sums in float32, as every bf16 product of the models does (cnnbench.kernels.products)
    if precision == "fp32":
        matmul = jax.jit(lambda a, b: jnp.matmul(a, b, precision="highest"), out_shardings=sharding)
    else:
        matmul = jax.jit(lambda a, b: product(a, b, (((2,), (1,)), ((0,), (0,)))), out_shardings=sharding)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * size ** 3 * n_dev / best


def _is_oom(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, MemoryError) or "resource_exhausted" in text or "out of memory" in text


def _available_bytes(device) -> int | None:
    """Free memory for one more program on ``device``: its allocator's limit, or the host's."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _check_fits(compiled, mesh, label: str) -> None:
    """Refuse a program whose buffers exceed free memory before running it: on a CPU the kernel's
    OOM killer would end the process without a word."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # not every backend reports it
        return
    if stats is None:
        return
    device = mesh.devices.flat[0]
    per_device = stats.temp_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
    needed = per_device * (mesh.devices.size if device.platform == "cpu" else 1)  # CPU devices share RAM
    available = _available_bytes(device)
    if available is not None and needed > 0.9 * available:
        raise OutOfMemory(f"{label} needs {needed / 2**30:.1f} GiB of working memory, "
                          f"{available / 2**30:.1f} GiB are free")


def _workload(arch: str, mode: str, batch_size: int, size: int | None, precision: str, mesh):
    """(jitted step, its arguments, a function from outputs to next arguments, facts about the model)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from cnnbench import parallel
    from cnnbench.archs import create_model, get_arch
    from cnnbench.archs.trace import count_params, trace_model
    from cnnbench.parallel.mesh import model_size
    from cnnbench.runs.config import TrainConfig
    from cnnbench.train.optim import optimizer
    from cnnbench.train.step import inference_program, jit_train_step, make_steps, precision_plan, train_state

    info = get_arch(arch)
    size = size or info.input_size
    model = create_model(arch, input_size=size, seed=0)
    shape = (size, size, model.in_channels)
    facts = {"input_size": size, "params": count_params(model),
             "macs": sum(r.macs for r in trace_model(model, shape))}
    if mode == "infer":  # what evaluation runs: the inference program (batch norm folded, ...)
        model, plan = inference_program(model, mesh, precision, shape)
    else:
        plan = precision_plan(precision, mesh.devices.flat[0].platform)
        plan.apply(model)
        parallel.plan(model, model_size(mesh), mesh)
    facts.update(products=plan.products, precision_note=plan.note)
    dtype = plan.compute
    replicated, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    # Made on the devices, already sharded: the host never holds the batch.
    images = jax.jit(lambda k: jax.random.normal(k, (batch_size, *shape), jnp.float32),
                     out_shardings=data)(jax.random.key(0))
    labels = jax.jit(lambda k: jax.random.randint(k, (batch_size,), 0, model.num_classes),
                     out_shardings=data)(jax.random.key(1))
    if mode == "train":
        # The defaults of `cnnbench train`: SGD, momentum 0.9, weight decay 5e-4, cosine schedule.
        tx, _ = optimizer(TrainConfig(arch=arch, batch_size=batch_size, epochs=1), steps_per_epoch=1000)
        graphdef, state, other = train_state(model, tx, mesh)
        train_step, _ = make_steps(graphdef, other, tx, seed=0, finish=None, dtype=dtype)
        step = jit_train_step(plan.step(train_step), state, mesh)
        batch = {"image": images, "label": labels}
        return step, (state, batch), lambda out: (out[0], batch), facts

    graphdef, params, batch_stats, other = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    other = jax.device_put(other, replicated)

    def forward(state, images):
        model = nnx.merge(graphdef, state["params"], state["batch_stats"], jax.tree.map(lambda v: v, other))
        return model(images.astype(dtype), train=False)

    state = parallel.place({"params": params, "batch_stats": batch_stats}, mesh)
    step = jax.jit(plan.step(forward), out_shardings=replicated)
    return step, (state, images), lambda out: (state, images), facts


class Prepared:
    """One compiled workload, ready to be timed any number of times (the peer benchmark interleaves
    such runs with PyTorch's). Raises :class:`OutOfMemory` when it does not fit."""

    def __init__(self, arch: str, mode: str, batch_size: int, *, input_size: int | None = None,
                 precision: str = "fp32", mesh=None, compiler_options: dict | None = None):
        from cnnbench.parallel import make_mesh

        # (by default the devices the command would use: on a CPU's per-core devices, one for training)
        self.mesh = mesh if mesh is not None else make_mesh(training=mode == "train", batch_size=batch_size)
        self.arch, self.mode, self.batch_size, self.precision = arch, mode, batch_size, precision
        self.label = f"{arch} {mode} batch {batch_size}"
        with self._oom_as_error():
            step, self.args, self.advance, self.facts = _workload(arch, mode, batch_size, input_size,
                                                                  precision, self.mesh)
            t = time.perf_counter()
            # ``compiler_options``: XLA debug options for this program only (``XLA_FLAGS`` names without
            # the dashes), so benchmarks can compare options inside one process.
            self.compiled = step.lower(*self.args).compile(compiler_options=compiler_options)
            self.compile_s = time.perf_counter() - t
            _check_fits(self.compiled, self.mesh, self.label)

    def _oom_as_error(self):
        import contextlib

        @contextlib.contextmanager
        def guard():
            try:
                yield
            except OutOfMemory:
                raise
            except Exception as e:
                if _is_oom(e):
                    raise OutOfMemory(f"{self.label} does not fit in memory "
                                      f"({str(e).splitlines()[0][:160]})") from None
                raise
        return guard()

    def run(self, steps: int, advance: Callable[[], None] = lambda: None) -> list[float]:
        """Seconds of each of ``steps`` steps, each ended by ``block_until_ready``."""
        import jax

        times = []
        with self._oom_as_error():
            for _ in range(steps):
                t = time.perf_counter()
                out = jax.block_until_ready(self.compiled(*self.args))
                times.append(time.perf_counter() - t)
                self.args = self.advance(out)
                del out  # the last step's outputs are the next step's inputs, or garbage
                advance()
        return times

    @property
    def collectives(self) -> dict[str, dict[str, int]]:
        """Count and bytes of each kind of collective in the compiled step."""
        from cnnbench.parallel.collectives import totals

        return totals(self.compiled.as_text())

    @property
    def flops_per_step(self) -> int:
        return 2 * self.facts["macs"] * self.batch_size * (3 if self.mode == "train" else 1)


def measure(arch: str, mode: str, batch_size: int, *, input_size: int | None = None,
            precision: str = "fp32", steps: int = 10, warmup: int = 2, mesh=None,
            progress: Progress = SILENT) -> dict:
    """One workload: compile, warm up, time (a stage of warm-up + timed steps). Raises
    :class:`OutOfMemory` when it does not fit."""
    work = Prepared(arch, mode, batch_size, input_size=input_size, precision=precision, mesh=mesh)
    progress.start(work.label, warmup + steps)
    work.run(warmup, progress.advance)
    times = work.run(steps, progress.advance)
    step_s = statistics.median(times)
    result = {"arch": arch, "mode": mode, "batch_size": batch_size, "input_size": work.facts["input_size"],
              "precision": precision, "devices": int(work.mesh.devices.size),
              "platform": work.mesh.devices.flat[0].platform,
              "model_parallel": int(work.mesh.shape["model"]), "steps": steps,
              "compile_s": work.compile_s, "step_time_ms": 1e3 * step_s,
              "step_time_ms_min": 1e3 * min(times), "samples_per_sec": batch_size / step_s,
              "params": work.facts["params"], "macs": work.facts["macs"],
              "products": work.facts["products"], "precision_note": work.facts["precision_note"],
              "flops_per_step": work.flops_per_step, "flops_per_sec": work.flops_per_step / step_s,
              "collectives": work.collectives, **_memory(work.mesh)}
    del work
    return result


def _memory(mesh) -> dict:
    """Peak resident memory of this process so far, and the devices' peak where they report it."""
    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in mesh.devices.flat]
    return {"host_peak_bytes": host, "device_peak_bytes": max(peaks) if all(p is not None for p in peaks) else None}


def run(archs: list[str], *, modes: tuple[str, ...] = ("train",), batch_size: int = 32,
        input_size: int | None = None, precision: str = "fp32", steps: int = 10, warmup: int = 2,
        auto_batch: bool = False, devices: int | None = None, model_parallel: int = 1,
        progress: Progress = SILENT) -> list[dict]:
    """Every (arch, mode) workload in order, plus the matmul peak they are compared with."""
    from cnnbench.archs import get_arch

    for arch in archs:
        get_arch(arch)  # unknown names fail before anything is compiled
    for mode in modes:
        if mode not in MODES:
            raise UsageError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if batch_size < 1 or steps < 1 or warmup < 0:
        raise UsageError(f"{setting('batch_size')} and {setting('steps')} must be at least 1, {setting('warmup')} at least 0")
    if input_size is not None and input_size < 1:
        raise UsageError(f"{setting('input_size')} must be at least 1")
    from cnnbench.parallel import make_mesh
    from cnnbench.parallel.mesh import data_size

    meshes = {mode: make_mesh(devices, model_parallel, training=mode == "train", batch_size=batch_size)
              for mode in modes}
    for mesh in meshes.values():
        n_dev = data_size(mesh)  # the batch is split over the model groups
        if batch_size % n_dev:
            raise UsageError(f"batch size {batch_size} does not divide over {n_dev} "
                             f"{'devices' if model_parallel == 1 else 'model groups'}; "
                             f"use a multiple of {n_dev} (or {setting('devices')})")
    peaks = {}  # the matmul peak of each mesh's devices, measured once
    for mesh in meshes.values():
        if mesh.devices.size not in peaks:
            progress.start(f"matmul peak ({precision}, {mesh.devices.size} device(s))", 1)
            peaks[mesh.devices.size] = matmul_peak(mesh, precision)
            progress.advance()
    rows = []
    for arch in archs:
        for mode in modes:
            mesh, peak = meshes[mode], peaks[meshes[mode].devices.size]
            n_dev = data_size(mesh)
            batch = batch_size
            while True:
                try:
                    row = measure(arch, mode, batch, input_size=input_size, precision=precision,
                                  steps=steps, warmup=warmup, mesh=mesh, progress=progress)
                    break
                except OutOfMemory as e:
                    smaller = (batch // 2) - (batch // 2) % n_dev
                    if not auto_batch or smaller < 1:
                        hint = "" if auto_batch else f"; use a smaller {setting('batch_size')} or {setting('auto_batch')}"
                        raise OutOfMemory(f"{e}{hint}") from None
                    progress.note(f"{arch} {mode}: batch {batch} does not fit, trying {smaller}")
                    batch = smaller
            row["requested_batch_size"] = batch_size
            row["matmul_peak_flops"] = peak
            row["utilization"] = row["flops_per_sec"] / peak
            row["xla_flags"] = os.environ.get("XLA_FLAGS", "")
            rows.append(row)
    return rows
