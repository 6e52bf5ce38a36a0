"""Run directories as trained models: find them, rebuild their model, load their weights.

Everything that uses a trained network (eval, predict, compare, and later fine-tuning and the
visualisations) starts from :func:`load_run`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flax import nnx

from cnnbench.errors import UsageError
from cnnbench.runs.config import TrainConfig, from_run
from cnnbench.runs.layout import RUNS, read_dataset


@dataclasses.dataclass
class LoadedRun:
    run_dir: Path
    cfg: TrainConfig
    model: nnx.Module           # the trained weights, in evaluation mode
    class_ids: list[str]
    class_names: list[str]
    input_size: int
    channels: int
    eval_spec: str              # the validation preprocessing it was trained with
    checkpoint: Path            # the checkpoint directory the weights came from
    meta: dict                  # what the loop stored with it: epoch, best_top1, validation
    weights: str = "raw"        # "ema": the averaged weights of a run trained with --ema; "raw" otherwise

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def epoch(self) -> int | None:
        return self.meta["epoch"] + 1 if "epoch" in self.meta else None


def is_run(path: Path) -> bool:
    return (Path(path) / "config.json").is_file()


def latest_run(root: Path = RUNS) -> Path:
    """The most recently started run under ``root`` (``./runs``)."""
    runs = [p for p in root.iterdir() if is_run(p)] if root.is_dir() else []
    if not runs:
        raise UsageError(f"no run directory under {root}/; train one first (cnnbench train lenet5) "
                         f"or name one")
    return max(runs, key=lambda p: (p / "config.json").stat().st_mtime)


def dataset_info(run_dir: Path, cfg: TrainConfig, size: int, channels: int) -> dict:
    """``dataset.json`` of the run: class ids and names, validation preprocessing. Runs written
    before it existed ask the dataset itself."""
    saved = read_dataset(run_dir)
    if saved is not None:
        return saved
    from cnnbench.pipeline.recipes import recipe_for

    source = cfg.source()
    spec = recipe_for(source, cfg.eval_ops, train=False, size=size, channels=channels)
    return {"dataset": source.name, "ids": list(source.class_ids), "names": list(source.class_names),
            "eval_spec": spec}


def load_run(run_dir: str | Path, *, which: str = "best", raw: bool = False) -> LoadedRun:
    """Rebuild the run's model from its ``config.json`` and load the weights of its best
    (``which="best"``) or latest checkpoint: the averaged (EMA) weights of a run trained with
    ``--ema``, unless ``raw``."""
    from cnnbench.archs import get_arch
    from cnnbench.archs.state import abstract_model, concrete_rest
    from cnnbench.runs.checkpoint import restore_weights

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"run directory {run_dir} does not exist")
    if not is_run(run_dir):
        raise UsageError(f"{run_dir} is not a run directory (no config.json)")
    cfg = from_run(run_dir)
    info = get_arch(cfg.arch)
    size, channels = cfg.input_size or info.input_size, cfg.in_channels or info.in_channels
    dataset = dataset_info(run_dir, cfg, size, channels)
    ids, names = dataset["ids"], dataset["names"]
    # Built abstractly (no initialiser runs), then filled with the checkpoint's weights.
    abstract = abstract_model(cfg.arch, num_classes=len(names), input_size=size, in_channels=channels,
                              **cfg.arch_options)
    graphdef, params, batch_stats, rest = nnx.split(abstract, nnx.Param, nnx.BatchStat, ...)
    kind = "ema" if cfg.ema is not None and not raw else "raw"
    template = {"params": params, "batch_stats": batch_stats}
    weights, meta, step_dir = restore_weights(run_dir, {"ema": template} if kind == "ema" else template, which=which)
    weights = weights["ema"] if kind == "ema" else weights
    model = nnx.merge(graphdef, weights["params"], weights["batch_stats"], concrete_rest(rest))
    model.eval()
    return LoadedRun(run_dir, cfg, model, ids, names, size, channels, dataset["eval_spec"], step_dir, meta, kind)
