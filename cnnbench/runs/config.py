"""A training run's configuration: defaults < experiment file (TOML) < command-line options.

The resolved configuration is written into the run directory (``config.json``), so a run can be
re-read, resumed and compared without the file or the command that started it.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

from cnnbench.errors import UsageError, setting

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "exponential", "plateau")
PRECISIONS = ("fp32", "bf16", "fp16")
LR_SCALE_RULES = ("none", "linear")
#: fine-tuning: every layer trains, the chosen ones (``trainable``), or the head alone
STRATEGIES = ("all", "partial", "frozen-base")


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
    ema: float | None = None            # Polyak / EMA decay of the averaged weights (e.g. 0.9999); None: none
    accumulate: int = 1                 # micro-batches per batch (gradient accumulation): batch_size stays the batch
    lr_scale_rule: str = "none"         # "linear": the peak lr is lr x batch_size / 256 (Goyal et al. 2017)
    layer_decay: float | None = None    # layer-wise lr decay: the k-th weight layer from the top trains at lr x decay^k
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

    def source(self, *, dataset: str | None = None, data_dir: str | None = None, manual_dir: str | None = None):
        """The run's dataset (:func:`cnnbench.pipeline.sources.resolve`), or another ``dataset`` looked
        up where the run's data lives; ``data_dir`` / ``manual_dir`` replace the run's folders."""
        from cnnbench.pipeline.sources import resolve

        return resolve(dataset or self.dataset, data_dir=data_dir or self.data_dir,
                       manual_dir=manual_dir or self.manual_dir)

    def validate(self) -> TrainConfig:
        def choice(name, options):
            if getattr(self, name) not in options:
                raise UsageError(f"{name} must be one of {', '.join(options)}, not {getattr(self, name)!r}")

        choice("optimizer", OPTIMIZERS)
        choice("schedule", SCHEDULES)
        choice("precision", PRECISIONS)
        choice("lr_scale_rule", LR_SCALE_RULES)
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise UsageError(f"layer_decay must be in (0, 1], e.g. 0.75, not {self.layer_decay}")
        for name in ("epochs", "batch_size", "model_parallel", "accumulate"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1")
        if self.lr <= 0:
            raise UsageError("lr must be positive")
        if self.ema is not None and not 0 < self.ema < 1:
            raise UsageError(f"ema (the averaging decay) must be between 0 and 1, e.g. 0.999, not {self.ema}")
        from cnnbench.archs import get_arch

        get_arch(self.arch)  # an unknown name is one line before anything loads or shows progress
        return self

    @property
    def peak_lr(self) -> float:
        """The learning rate the schedule starts from: ``lr``, or under the linear scaling rule
        ``lr x batch_size / 256`` (the rule's reference batch, as Goyal et al. and timm use it)."""
        return self.lr * self.batch_size / 256 if self.lr_scale_rule == "linear" else self.lr

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def settings(values: dict) -> dict:
    """``--set KEY=VALUE`` settings: any field of an experiment file, checked by name."""
    unknown = set(values) - FIELDS
    if unknown:
        raise UsageError(f"unknown setting(s) {', '.join(sorted(unknown))}; settings: {', '.join(sorted(FIELDS))}")
    return values


def _file_values(path: str | Path | None) -> dict:
    """The settings of an experiment file (TOML); none for no file."""
    if path is None:
        return {}
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
    return values


def load(path: str | Path | None, arch: str | None, overrides: dict) -> TrainConfig:
    """Defaults, then the experiment file's values, then the command line's (``None`` = not given)."""
    values = _file_values(path)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if arch:
        values["arch"] = arch
    if "arch" not in values:
        raise UsageError("no architecture: name one (cnnbench train lenet5) or set arch in the experiment file")
    return TrainConfig(**values).validate()


#: what may differ between a run directory's configuration and a request to continue it: how long,
#: where the data and checkpoints are kept, on which devices and in how many micro-batches (memory,
#: not the result); everything else defines the run
RESUMABLE = ("epochs", "run_dir", "keep_checkpoints", "data_dir", "manual_dir", "devices", "model_parallel",
             "accumulate")


def from_run(run_dir: Path) -> TrainConfig:
    from cnnbench.runs.layout import read_json

    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise UsageError(f"{run_dir} is not a run directory (no config.json); nothing to resume")
    values = read_json(path)
    if not isinstance(values, dict) or "arch" not in values:
        raise UsageError(f"{path} is not a run configuration (no arch); restore it or start a new run")
    unknown = set(values) - FIELDS
    if unknown:
        raise UsageError(f"{path} has unknown setting(s) {', '.join(sorted(unknown))} (written by another version?)")
    return TrainConfig(**values)


def write_config(run_dir: Path, cfg: TrainConfig, *, home: Path | None = None) -> None:
    """``config.json``, written whole or not at all, naming the directory the run lives in (``home``:
    where a directory being staged will be moved; default ``run_dir``)."""
    from cnnbench.runs.layout import write_text

    write_text(Path(run_dir) / "config.json", dataclasses.replace(cfg, run_dir=str(home or run_dir)).to_json())


def start_from(weights_dir: Path, arch: str | None, overrides: dict) -> str:
    """A new run that starts from the weights in ``weights_dir`` (a run, or published or imported
    weights): sets ``init_from`` and, unless given, the weights' architecture options in
    ``overrides``; returns the architecture, which is the weights' (``arch`` may only repeat it)."""
    weights = from_run(weights_dir)
    if arch and arch != weights.arch:
        raise UsageError(f"{weights_dir} holds a {weights.arch}, not a {arch}; leave out the architecture "
                         f"or name {weights.arch}")
    overrides["init_from"] = str(weights_dir)
    overrides.setdefault("arch_options", dict(weights.arch_options))  # (Keras's ResNet-50 is v1)
    return weights.arch


def requested(run_dir: Path | None, arch: str | None, path: str | Path | None, overrides: dict) -> TrainConfig:
    """What `cnnbench train` asks for. Into a directory that holds a run (``--resume``, or a
    ``--run-dir`` with a ``config.json``): that run's configuration with the architecture, the
    experiment file's and the command line's values on top, which :func:`check_continues` then
    compares with the run. Elsewhere: :func:`load`."""
    if run_dir is None or not (Path(run_dir) / "config.json").exists():
        return load(path, arch, overrides)
    saved = from_run(run_dir)
    given = {k: v for k, v in overrides.items() if v is not None}
    return load(None, arch or saved.arch, {**vars(saved), **_file_values(path), **given})


def conflicts(saved: TrainConfig, requested: TrainConfig) -> list[str]:
    """The settings that define a run (all but :data:`RESUMABLE`) on which ``requested`` differs
    from the run ``saved`` describes, each as ``name: saved (requested new)``."""
    old, new = (json.loads(c.to_json()) for c in (saved, requested))
    return [f"{name} {old[name]!r} (requested {new[name]!r})" for name in sorted(FIELDS - set(RESUMABLE))
            if old.get(name) != new.get(name)]


def check_continues(run_dir: Path, cfg: TrainConfig) -> None:
    """A run directory that already holds a run may only be continued as that run: otherwise one
    usage line lists what differs and the two ways out."""
    if not (Path(run_dir) / "config.json").exists():
        return
    differing = conflicts(from_run(run_dir), cfg)
    if differing:
        may = ", ".join("--" + name.replace("_", "-") for name in RESUMABLE
                        if name not in ("run_dir", "keep_checkpoints")) + " (and keep_checkpoints)"
        raise UsageError(f"{run_dir} holds another run: {'; '.join(differing)}. Continue it as it was "
                         f"(cnnbench train --resume {run_dir}; only {may} may change) "
                         f"or train into a new {setting('run_dir')}")
