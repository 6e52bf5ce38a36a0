"""A training run's configuration: defaults < experiment file (TOML) < command-line options.

The resolved configuration is written into the run directory (``config.json``), so a run can be
re-read, resumed and compared without the file or the command that started it.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

from cnnbench.errors import UsageError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "exponential", "plateau")
PRECISIONS = ("fp32", "bf16")


@dataclasses.dataclass
class TrainConfig:
    arch: str
    arch_options: dict = dataclasses.field(default_factory=dict)
    # data
    dataset: str = "digits"
    data_dir: str | None = None
    manual_dir: str | None = None
    train_split: str | None = None      # default: the dataset's train split
    eval_split: str | None = None       # default: validation, else test
    input_size: int | None = None       # default: the architecture's
    in_channels: int | None = None      # default: the architecture's
    train_ops: str | None = None        # recipe or spec; default: chosen from the dataset
    eval_ops: str | None = None
    # optimisation
    epochs: int = 30
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4          # L2 on weights (kernels), added to the gradient as the papers did
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    decay_epochs: list[int] = dataclasses.field(default_factory=list)  # "step": epochs where lr /= 1/decay_factor
    decay_factor: float = 0.1           # "step" and "plateau" multiply by it; "exponential": per epoch
    plateau_patience: int = 2           # epochs without a better validation error before lr *= decay_factor
    label_smoothing: float = 0.0
    grad_clip: float | None = None      # global norm
    aux_weight: float = 0.3             # GoogLeNet's auxiliary losses
    precision: str = "fp32"
    seed: int = 0
    # transfer learning
    init_from: str | None = None        # a run (or imported weights) directory to start from
    trainable: list[str] | None = None  # layer selectors that train; None: all (see transfer.freeze)
    lr_multipliers: dict = dataclasses.field(default_factory=dict)  # layer selector -> lr factor
    # run
    run_dir: str | None = None
    keep_checkpoints: int = 2
    devices: int | None = None          # default: every device JAX sees
    model_parallel: int = 1             # devices each copy of the model is split over (mesh axis "model")

    def validate(self) -> TrainConfig:
        def choice(name, options):
            if getattr(self, name) not in options:
                raise UsageError(f"{name} must be one of {', '.join(options)}, not {getattr(self, name)!r}")

        choice("optimizer", OPTIMIZERS)
        choice("schedule", SCHEDULES)
        choice("precision", PRECISIONS)
        for name in ("epochs", "batch_size", "model_parallel"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1")
        if self.lr <= 0:
            raise UsageError("lr must be positive")
        return self

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def load(path: str | Path | None, arch: str | None, overrides: dict) -> TrainConfig:
    """Defaults, then the experiment file's values, then the command line's (``None`` = not given)."""
    values: dict = {}
    if path is not None:
        try:
            values = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise UsageError(f"experiment file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise UsageError(f"experiment file {path} is not valid TOML: {e}") from None
        values.pop("description", None)
        unknown = set(values) - FIELDS
        if unknown:
            raise UsageError(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    if arch:
        values["arch"] = arch
    if "arch" not in values:
        raise UsageError("no architecture: name one (cnnbench train lenet5) or set arch in the experiment file")
    return TrainConfig(**values).validate()


def from_run(run_dir: Path) -> TrainConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise UsageError(f"{run_dir} is not a run directory (no config.json); nothing to resume")
    return TrainConfig(**json.loads(path.read_text()))
