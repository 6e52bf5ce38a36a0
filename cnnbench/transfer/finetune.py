"""`cnnbench finetune`: a training configuration that starts from a run or imported weights."""

from __future__ import annotations

from pathlib import Path

from cnnbench.train import freeze
from cnnbench.runs.config import TrainConfig


def finetune_config(source: Path, *, dataset: str, strategy: str, trainable: str | None,
                    lr_multipliers: dict[str, float], overrides: dict) -> TrainConfig:
    """A training configuration that starts from ``source`` (a run or imported weights): its
    architecture, options and input size, the chosen strategy's trainable layers, and fine-tuning
    defaults (10 epochs, lr 0.01, cosine) under the explicit ``overrides``."""
    from cnnbench.archs import create_model, get_arch
    from cnnbench.runs.loaded import is_run
    from cnnbench.errors import UsageError
    from cnnbench.runs.config import from_run

    if not is_run(source):
        raise UsageError(f"{source} is not a run or weights directory (no config.json)")
    base = from_run(source)
    info = get_arch(base.arch)
    size = overrides.get("input_size") or base.input_size or info.input_size
    channels = base.in_channels or info.in_channels
    model = create_model(base.arch, input_size=size, in_channels=channels, **base.arch_options)
    selectors = freeze.selectors_for(strategy, trainable, model, (size, size, channels))
    if selectors is not None:
        freeze.check_selectors(model, selectors)
    # The source's preprocessing when it names one (imported weights do: Keras VGG expects
    # normalize(caffe)), else the new dataset's default recipe.
    values = {"epochs": 10, "lr": 0.01, "schedule": "cosine", "batch_size": base.batch_size,
              "train_ops": base.train_ops, "eval_ops": base.eval_ops,
              **{k: v for k, v in overrides.items() if v is not None and k != "input_size"}}
    cfg = TrainConfig(arch=base.arch, arch_options=dict(base.arch_options), dataset=dataset, input_size=size,
                      in_channels=channels, init_from=str(source), trainable=selectors,
                      lr_multipliers=dict(lr_multipliers), **values)
    return cfg.validate()
