"""The training loop: config -> pipelines -> sharded jitted step -> metrics, checkpoints, summary."""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cnnbench import parallel
from cnnbench.parallel import hosts
from cnnbench.archs import create_model, get_arch
from cnnbench.errors import CnnbenchError, UsageError, setting
from cnnbench.output import plural
from cnnbench.progress import SILENT, Progress
from cnnbench.pipeline.loader import Pipeline, prefetch_to_device
from cnnbench.pipeline.recipes import batch_mixing, recipe_for
from cnnbench.runs.checkpoint import Checkpoints, remove_stale
from cnnbench.runs.config import TrainConfig, check_continues, write_config
from cnnbench.train.optim import optimizer, plateau_scale, set_plateau_scale
from cnnbench.runs.layout import History, MetricsLog, RunLock, new_run_dir, read_metrics, write_dataset, write_text
from cnnbench.train.step import averaged, jit_train_step, make_steps, precision_plan, train_state


def init_distributed(coordinator: str | None, num_processes: int | None, process_id: int | None,
                     timeout: float = hosts.DEFAULT_TIMEOUT, run_dir: str | None = None) -> None:
    """``jax.distributed.initialize`` before anything touches a device; without arguments JAX reads
    what a cluster scheduler (SLURM, Open MPI, ...) set, and a single machine needs nothing. With
    an explicit coordinator every process first checks in there (:func:`hosts.check_in`), so a
    missing one is one line after ``timeout`` seconds."""
    hosts.check_numbering(num_processes, process_id)
    if coordinator or num_processes:
        if (num_processes or 1) > 1 and not run_dir:
            raise UsageError(f"a multi-host run needs {setting('run_dir')}: the same directory for every process, on a file "
                             "system they share (process 0 writes it)")
        if coordinator and num_processes is not None and process_id is not None:
            hosts.check_in(coordinator, num_processes, process_id, timeout,
                           str(Path(run_dir).absolute()) if run_dir else "")
        # Collectives between CPU processes (tests, CPU clusters) go through gloo; accelerators
        # use their own (NCCL, ICI) whatever this says.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=max(int(timeout), 1))
        hosts.end_on_sigterm()


def is_first_process() -> bool:
    """Process 0 of a multi-host run (the one that writes the run directory), or the only one."""
    return jax.process_index() == 0


def train(cfg: TrainConfig, *, run_dir: Path | None = None, progress: Progress = SILENT) -> dict:
    """Train (or continue) the run ``cfg`` describes in ``run_dir`` (default: ``cfg.run_dir``, else
    a new ``runs/ARCH-DATASET-TIME``), holding the run directory's lock throughout (process 0 of
    a multi-host run). A directory that holds another run is refused (:func:`check_continues`).

    ``progress`` hears the run directory (a note), each epoch (a stage of steps, with the loss,
    top-1 and images/s as its status), each validation (a note) and what went wrong on the way
    (a damaged checkpoint: a warning)."""
    started = time.time()
    main = is_first_process()
    run_dir = Path(run_dir or cfg.run_dir or new_run_dir(cfg.arch, cfg.dataset))
    lock = RunLock(run_dir).acquire() if main else None
    try:
        check_continues(run_dir, dataclasses.replace(cfg, run_dir=str(run_dir)))
        return _train(cfg, run_dir, progress, started, main)
    except OSError as e:
        if e.errno not in WRITE_ERRORS or (e.filename and not _inside(e.filename, run_dir)):
            raise  # (a dataset file that cannot be read is not the run directory's failure)
        _quiet_background_errors()
        raise CnnbenchError(_write_failure(e, run_dir)) from None
    finally:
        if lock is not None:
            lock.release()


#: the errors of a file system that takes no more (full, over quota, a file-size limit, read-only, no permission)
WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM)


def _inside(path, run_dir: Path) -> bool:
    return Path(path).absolute().is_relative_to(Path(run_dir).absolute())


def _write_failure(e: OSError, run_dir: Path) -> str:
    """One line for a run directory that stopped taking writes: what failed and what was kept."""
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints" / "latest").glob("*") if p.name.isdigit()) \
        if (run_dir / "checkpoints" / "latest").is_dir() else []
    kept = (f"the last complete checkpoint (step {steps[-1]}) is intact in {run_dir}/checkpoints/latest; "
            f"free space and continue with cnnbench train --resume {run_dir}") if steps else \
        "no checkpoint was complete yet"
    return f"cannot write {e.filename or run_dir}: {e.strerror or e}; training stopped; {kept}"


def _train(cfg: TrainConfig, run_dir: Path, progress: Progress, started: float, main: bool) -> dict:
    mesh = parallel.make_mesh(cfg.devices, cfg.model_parallel, training=True)
    groups = parallel.data_size(mesh)
    if cfg.batch_size % (groups * cfg.accumulate):
        where = f"{groups} devices" if cfg.model_parallel == 1 else \
            f"{groups} model groups ({mesh.devices.size} devices / --model-parallel {cfg.model_parallel})"
        if cfg.accumulate > 1:
            where = f"{cfg.accumulate} micro-batches over {where}"
        raise UsageError(f"global batch size {cfg.batch_size} does not divide over {where}; "
                         f"use a multiple of {groups * cfg.accumulate}")
    replicated = parallel.replicated(mesh)
    data = parallel.batch_sharding(mesh)

    # ---- data
    info = get_arch(cfg.arch)
    size, channels = cfg.input_size or info.input_size, cfg.in_channels or info.in_channels
    source = cfg.source()

    specs = {train: recipe_for(source, cfg.train_ops if train else cfg.eval_ops, train=train, size=size,
                               channels=channels) for train in (True, False)}
    mixing = batch_mixing(specs[True])[1]  # mixup / cutmix: the training step's business

    def pipeline(train: bool) -> Pipeline:
        spec = batch_mixing(specs[train], train=train)[0]
        split = (cfg.train_split or source.train_split) if train else (cfg.eval_split or source.eval_split)
        return Pipeline(source, split, cfg.batch_size, spec, train=train, channels=channels, seed=cfg.seed,
                        process_index=jax.process_index(), process_count=jax.process_count(),
                        device_finish=True)

    train_data, eval_data = pipeline(True), pipeline(False)
    steps_per_epoch = train_data.steps_per_epoch
    if steps_per_epoch == 0:
        raise UsageError(f"batch size {cfg.batch_size} is larger than the {train_data.num_examples} "
                         f"training images of {source.name}")

    # ---- model, optimiser, state (placed on the mesh as the model's split says)
    model = create_model(cfg.arch, num_classes=source.num_classes, input_size=size, in_channels=channels,
                         seed=cfg.seed, **cfg.arch_options)
    group, transfer = None, {}
    if cfg.init_from or cfg.trainable is not None or cfg.lr_multipliers or cfg.layer_decay is not None:
        from cnnbench.train.start import prepare

        group, transfer = prepare(model, cfg)
    precision = precision_plan(cfg.precision, mesh.devices.flat[0].platform)
    precision.apply(model)
    dtype = precision.compute
    if precision.note and main:
        progress.warn(precision.note)
    parallel.plan(model, cfg.model_parallel, mesh)
    tx, lr_schedule = optimizer(cfg, steps_per_epoch, group)
    graphdef, state, other = train_state(model, tx, mesh, ema=cfg.ema is not None, loss_scale=cfg.precision == "fp16")
    train_step, eval_step = make_steps(graphdef, other, tx, seed=cfg.seed, finish=train_data.finish,
                                       eval_finish=eval_data.finish, dtype=dtype, ema_decay=cfg.ema,
                                       accumulate=cfg.accumulate, mixing=mixing,
                                       label_smoothing=cfg.label_smoothing, aux_weight=cfg.aux_weight)
    train_step = jit_train_step(precision.step(train_step), state, mesh)
    eval_step = jax.jit(precision.step(eval_step), out_shardings=replicated)

    # ---- run directory, resume
    run_dir.mkdir(parents=True, exist_ok=True)
    interrupted_save = remove_stale(run_dir) if main else []
    checkpoints = Checkpoints(run_dir, cfg.keep_checkpoints)
    restored = checkpoints.restore(state, note=progress.warn)
    if restored is None and not interrupted_save and any(r["kind"] == "validation" for r in read_metrics(run_dir)):
        checkpoints.close()  # epochs were finished and their checkpoints completed: they were deleted
        raise UsageError(f"{run_dir} has finished epochs in metrics.jsonl but no checkpoint to continue from "
                         f"(checkpoints/latest is empty); restore the checkpoints, or train into a new {setting('run_dir')}")
    start_epoch, best_top1, plateau = 0, -1.0, {"best_error": math.inf, "bad_epochs": 0}
    if restored is not None:
        state, meta = restored
        start_epoch, best_top1, plateau = meta["epoch"] + 1, meta["best_top1"], meta["plateau"]
    split = f" (the model split over {cfg.model_parallel} devices)" if cfg.model_parallel > 1 else ""
    progress.note(f"{'resuming' if restored is not None else 'run directory'}: {run_dir}{split}")
    if main:
        write_config(run_dir, cfg)
        write_dataset(run_dir, source, specs[True], eval_data.ops)
        if transfer:
            write_text(run_dir / "transfer.json", json.dumps(transfer, indent=2))
    log = MetricsLog(run_dir / "metrics.jsonl", int(state["step"]) if restored else None, enabled=main)

    loop = _Loop(cfg, train_step, eval_step, train_data, eval_data, data, checkpoints, log, progress,
                 lr_schedule, run_dir, started)
    try:
        state = loop.run(state, start_epoch, best_top1, plateau)
    except NonFiniteLoss as stop:
        if main:  # what the run did until it stopped, and why
            write_text(run_dir / "summary.json", json.dumps(
                {**summarize_run(run_dir, cfg, source.name, time.time() - started), "stopped": stop.record},
                indent=2))
        raise
    finally:
        _finish(checkpoints, log)
    summary = summarize_run(run_dir, cfg, source.name, time.time() - started)
    summary["params_digest"] = params_digest(state["params"])
    summary["mesh"] = {axis: int(size) for axis, size in mesh.shape.items()}
    if transfer:
        summary["transfer"] = transfer
    if main:
        write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def _finish(checkpoints: Checkpoints, log: MetricsLog) -> None:
    """Complete the checkpoint being written (an interrupted run still does), then close
    everything; the first error (a full disk) is raised once all is closed."""
    error = None
    for step in (checkpoints.wait, checkpoints.close, log.close):
        try:
            step()
        except Exception as e:  # noqa: BLE001 (re-raised below)
            error = error or e
    if error is not None:
        raise error


def _quiet_background_errors() -> None:
    """After a fatal write error has been reported in one line: orbax's writer threads and their
    event loops fail too as the process ends, each with a traceback that says nothing new."""
    import logging
    import os
    import sys
    import threading

    if os.environ.get("CNNBENCH_VERBOSE"):
        return
    logging.getLogger("absl").setLevel(logging.CRITICAL)
    threading.excepthook = lambda args: None
    sys.unraisablehook = lambda unraisable: None


class NonFiniteLoss(CnnbenchError):
    """A NaN or infinite loss: the run stops, saying which checkpoint (if any) is intact."""

    def __init__(self, loss: float, step: int, epoch: int, checkpoint_step: int | None, run_dir: Path):
        self.record = {"reason": f"loss is {loss}", "step": step, "epoch": epoch,
                       "intact_checkpoint_step": checkpoint_step}
        kept = (f"the last good checkpoint (step {checkpoint_step}) is intact in {run_dir}/checkpoints/latest"
                if checkpoint_step is not None else
                "no checkpoint was written yet (the first comes at the end of epoch 1), so a --resume "
                "would start again from step 0")
        super().__init__(f"loss is {loss} at step {step} (epoch {epoch}): training stopped; {kept}")


@dataclasses.dataclass
class _Loop:
    """The epoch loop over the pieces :func:`train` assembled."""

    cfg: TrainConfig
    train_step: Callable
    eval_step: Callable
    train_data: object
    eval_data: object
    sharding: object
    checkpoints: object
    log: object
    progress: Progress
    lr_schedule: Callable
    run_dir: Path
    started: float
    counted: dict = dataclasses.field(default_factory=dict)  # skipped images counted so far, per split

    def run(self, state, start_epoch: int, best_top1: float, plateau: dict) -> dict:
        """Train from ``start_epoch`` to the end; returns the final state."""
        for epoch in range(start_epoch, self.cfg.epochs):
            state, means = self.train_epoch(state, epoch)
            validation = evaluate(self.eval_step, state, self.eval_data, self.sharding)
            if "ema" in state:  # the averaged weights, beside the raw ones
                validation.update({f"ema_{k}": v for k, v in evaluate(self.eval_step, averaged(state), self.eval_data,
                                                                       self.sharding).items() if k != "num_examples"})
            if self.cfg.schedule == "plateau":
                state, plateau = self.plateau(state, plateau, validation)
            is_best = validation["top1"] > best_top1
            best_top1 = max(best_top1, validation["top1"])
            record = {"kind": "validation", "step": int(state["step"]), "epoch": epoch + 1, **validation,
                      "best_top1": best_top1, **{f"train_{k}": v for k, v in means.items()},
                      **self.skipped(), "wall_time": time.time() - self.started}
            self.log.write(record)
            self.progress.note(validation_line(record, self.cfg.epochs))
            self.checkpoints.save(int(state["step"]), state, {"epoch": epoch, "best_top1": best_top1,
                                                              "plateau": plateau, "validation": validation},
                                  best=is_best)
        return state

    def skipped(self) -> dict:
        """Images of this epoch that could not be decoded, per split (training, evaluation); the
        first time a split has any, each is named with its error in the run's ``skipped.txt``."""
        counts = {}
        for key, data in (("skipped_train_images", self.train_data), ("skipped_eval_images", self.eval_data)):
            total = data.skipped
            counts[key] = total - self.counted.get(key, 0)
            if counts[key] and key not in self.counted and is_first_process():
                self.name_skipped(data)
            self.counted[key] = total
        return counts

    def name_skipped(self, data) -> None:
        """Each undecodable image of ``data``'s split, with its error, in ``skipped.txt`` (once: a
        resumed run finds them there)."""
        path = self.run_dir / "skipped.txt"
        old = path.read_text() if path.exists() else "# split\timage\terror: images skipped as undecodable\n"
        if any(line.startswith(f"{data.split}\t") for line in old.splitlines()):
            return
        lines = [f"{data.split}\t{name}\t{error}" for name, error in data.undecodable()]
        write_text(path, old + "".join(line + "\n" for line in lines))

    def train_epoch(self, state, epoch: int):
        """One epoch; returns the state and the epoch's mean training metrics (loss, top1)."""
        steps = self.train_data.steps_per_epoch
        log_every = max(1, steps // 10)
        self.progress.start(f"epoch {epoch + 1}/{self.cfg.epochs}", steps)
        window_start, window_images, window, sums, done = time.time(), 0, None, {}, 0
        for i, batch in enumerate(prefetch_to_device(self.train_data.epoch(epoch), self.sharding)):
            state, metrics = self.train_step(state, batch)
            # the logged loss and top-1 are means over the steps since the last record (summed on
            # the device, so no step waits for the host), and the epoch's means go to validation
            window = metrics if window is None else jax.tree.map(jnp.add, window, metrics)
            window_images += self.cfg.batch_size
            if (i + 1) % log_every and i + 1 != steps:
                continue
            n = window_images // self.cfg.batch_size
            values = {k: float(v) / n for k, v in jax.device_get(window).items()}
            if "skipped" in values:  # fp16: the window's means over the steps that were not skipped
                done_steps = n - round(values["skipped"] * n)
                values.update({k: values[k] * n / max(done_steps, 1) for k in ("loss", "top1", "top5")},
                              skipped=round(values["skipped"] * n), loss_scale=values["loss_scale"])
            for k in ("loss", "top1", "top5"):
                sums[k] = sums.get(k, 0.0) + values[k] * n
            if "skipped" in values:
                sums["skipped"] = sums.get("skipped", 0) + values["skipped"]
            window, done = None, done + n
            step = int(state["step"])
            if not math.isfinite(values["loss"]):
                raise NonFiniteLoss(values["loss"], step, epoch + 1, self.checkpoints.latest.latest_step(),
                                    self.run_dir)
            now = time.time()
            record = {"kind": "train", "step": step, "epoch": epoch + 1,
                      "lr": float(self.lr_schedule(step - 1)) * plateau_scale(state["opt_state"]),
                      **values, "images_per_sec": window_images / max(now - window_start, 1e-9),
                      "wall_time": now - self.started, "step_in_epoch": i + 1}
            self.log.write(record)
            self.progress.update(i + 1, status=f"loss {record['loss']:.4f}  top-1 {100 * record['top1']:.1f}%  "
                                               f"{record['images_per_sec']:,.0f} img/s")
            window_start, window_images = now, 0
        return state, {k: v if k == "skipped" else v / max(done, 1) for k, v in sums.items()}

    def plateau(self, state, plateau: dict, validation: dict):
        """Reduce-on-plateau: lr *= decay_factor after ``plateau_patience`` epochs without a lower
        validation error."""
        error = 1.0 - validation["top1"]
        if error < plateau["best_error"] - 1e-9:
            return state, {"best_error": error, "bad_epochs": 0}
        plateau = dict(plateau, bad_epochs=plateau["bad_epochs"] + 1)
        if plateau["bad_epochs"] >= self.cfg.plateau_patience:
            scale = plateau_scale(state["opt_state"]) * self.cfg.decay_factor
            state = dict(state, opt_state=set_plateau_scale(state["opt_state"], scale))
            plateau["bad_epochs"] = 0
        return state, plateau


def validation_line(record: dict, epochs: int) -> str:
    """The line a validation leaves: top-1, top-5, loss (and the EMA weights', and images skipped)."""
    line = (f"epoch {record['epoch']}/{epochs}: val top-1 {100 * record['top1']:.2f}%  "
            f"top-5 {100 * record['top5']:.2f}%  loss {record['loss']:.4f}")
    if "ema_top1" in record:
        line += f"  (EMA: top-1 {100 * record['ema_top1']:.2f}%)"
    skipped = [plural(record[key], what) for key, what in (("skipped_train_images", "training image"),
                                                           ("skipped_eval_images", "validation image"))
               if record.get(key)]
    if skipped:
        line += f"  ({' and '.join(skipped)} could not be decoded and were skipped: see skipped.txt)"
    return line


def evaluate(eval_step, state, pipeline, sharding) -> dict:
    """Top-1 / top-5 / loss over every image of the split, each counted exactly once."""
    totals = None
    for batch in prefetch_to_device(pipeline.epoch(0), sharding):
        sums = eval_step(state, batch)
        totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    totals = {k: float(v) for k, v in jax.device_get(totals).items()}
    n = max(totals["count"], 1.0)
    return {"top1": totals["top1"] / n, "top5": totals["top5"] / n, "loss": totals["loss"] / n,
            "num_examples": int(totals["count"])}


def params_digest(params) -> float:
    """Sum of |w| over this process's own copy of the parameters (of a split one, each part its
    devices hold, once): equal on every host when the hosts agree."""
    total = 0.0
    for leaf in jax.tree.leaves(params):
        parts = {}
        for shard in leaf.addressable_shards:
            parts.setdefault(tuple((s.start, s.stop) for s in shard.index), shard)
        total += sum(np.abs(np.asarray(shard.data, np.float64)).sum() for shard in parts.values())
    return float(total)


def summarize_run(run_dir: Path, cfg: TrainConfig, dataset: str, wall_time: float) -> dict:
    history = History(run_dir)
    final, best, train = history.final, history.best, history.train
    rate = history.images_per_sec
    return {
        "run_dir": str(run_dir), "arch": cfg.arch, "dataset": dataset, "epochs": len(history.validation),
        "steps": train[-1]["step"] if train else 0,
        "final": {k: final[k] for k in ("top1", "top5", "loss")} if final else {},
        **({"final_ema": {k: final[f"ema_{k}"] for k in ("top1", "top5", "loss")}} if "ema_top1" in final else {}),
        "best": {k: best[k] for k in ("top1", "top5", "loss", "epoch")} if best else {},
        "train_loss": train[-1]["loss"] if train else None,
        "images_per_sec": None if rate is None else float(rate),
        "wall_time": wall_time,
    }
