"""What a training run that starts from other weights adds before its first step (`finetune`,
`train --pretrained`): pre-trained weights where they fit, a fresh head where they do not, frozen
layers, learning-rate groups."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from flax import nnx

from cnnbench.train import freeze
from cnnbench.runs.config import TrainConfig


def prepare(model: nnx.Module, cfg: TrainConfig):
    """Load ``cfg.init_from`` into ``model`` (matching tensors), freeze what ``cfg.trainable``
    leaves out; returns the optimiser grouping (or None) and a report for the run's log."""
    report: dict = {}
    if cfg.init_from:
        report.update(load_pretrained(model, cfg.arch, Path(cfg.init_from)))
    if cfg.trainable is not None:
        freeze.check_selectors(model, cfg.trainable)
        report["frozen_batch_norm"] = freeze.freeze_batch_norm(model, cfg.trainable)
    if cfg.lr_multipliers:
        freeze.check_selectors(model, list(cfg.lr_multipliers))
    multipliers = dict(cfg.lr_multipliers)
    if cfg.layer_decay is not None and cfg.layer_decay != 1:  # explicit multipliers come first
        shape = (model.input_size, model.input_size, model.in_channels)
        decayed = freeze.layer_decay(model, shape, cfg.layer_decay)
        multipliers.update({k: v for k, v in decayed.items() if k not in multipliers})
        report["layer_decay"] = decayed
    group = freeze.grouping(cfg.trainable, multipliers)
    report.update(freeze.counts(model, group))
    return group, report


def load_pretrained(model: nnx.Module, arch: str, run_dir: Path) -> dict:
    from cnnbench.errors import UsageError
    from cnnbench.runs.checkpoint import restore_matching
    from cnnbench.runs.config import from_run

    source = from_run(run_dir)
    if source.arch != arch:
        raise UsageError(f"{run_dir} holds a {source.arch}, not a {arch}; fine-tune the architecture it holds")
    params, stats = nnx.state(model, nnx.Param), nnx.state(model, nnx.BatchStat)
    template = {"params": params, "batch_stats": stats}
    loaded, fresh, step_dir = restore_matching(run_dir, template)
    merged = jax.tree.map(lambda new, old: old if new is None else np.asarray(new, old.dtype),
                          loaded, template, is_leaf=lambda x: x is None)
    nnx.update(model, merged["params"], merged["batch_stats"])
    fresh = [k.removesuffix("/value").replace("/", ".") for k in fresh]
    return {"init_from": str(run_dir), "init_checkpoint": str(step_dir), "init_arch": source.arch,
            "fresh": fresh}
