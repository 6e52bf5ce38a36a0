"""Which parameters train: the three transfer-learning strategies of the lecture notes.

* ``all``: every parameter trains, starting from the pre-trained weights.
* ``partial``: the named layers train (``conv5,fc6,fc7,head`` or ``last N``), the rest is frozen.
* ``frozen-base``: the convolutional base (``features``) is frozen, the head trains.

Frozen parameters get no update and no optimiser state (an ``optax.multi_transform`` whose
frozen group is ``set_to_zero``), and frozen batch-norm layers normalise with their running
statistics and keep them, so a frozen layer stays bit-identical. Layer selectors match a full
dotted path (``features.conv5``), a prefix of one (``head``, ``features.layer4``) or a single path
component (``conv5``, ``fc7``), as `cnnbench summary ARCH --all-layers` names them.
"""

from __future__ import annotations

import re

import jax
from flax import nnx

from cnnbench.archs.state import path_key
from cnnbench.errors import UsageError, setting
from cnnbench.runs.config import STRATEGIES



def _dotted(path) -> str:
    return path_key(path, ".")


def param_paths(model: nnx.Module) -> list[str]:
    params = nnx.state(model, nnx.Param).to_pure_dict()
    return [_dotted(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def matches(selector: str, path: str) -> bool:
    parts = path.split(".")
    return path == selector or path.startswith(selector + ".") or selector in parts


def selectors_for(strategy: str, trainable: str | None, model: nnx.Module,
                  input_shape: tuple[int, int, int]) -> list[str] | None:
    """The trainable-layer selectors of a strategy (None: everything trains)."""
    if strategy not in STRATEGIES:
        raise UsageError(f"{setting('strategy')} must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    if strategy == "all":
        if trainable:
            raise UsageError(f"{setting('trainable')} goes with {setting('strategy')} partial")
        return None
    if strategy == "frozen-base":
        if trainable:
            raise UsageError(f"{setting('trainable')} goes with {setting('strategy')} partial (frozen-base trains the head)")
        return ["head"]
    if not trainable:
        raise UsageError(f"{setting('strategy')} partial needs {setting('trainable')}, e.g. conv5,fc6,fc7,head or 'last 3'")
    last = re.fullmatch(r"\s*last\s*:?\s*(\d+)\s*", trainable)
    if last:
        return _last(model, input_shape, int(last.group(1)))
    return [s.strip() for s in trainable.split(",") if s.strip()]


def _last(model, input_shape, n: int) -> list[str]:
    """The last ``n`` convolution / dense layers and every layer with parameters after the first
    of them, in forward order (their batch norms included)."""
    from cnnbench.archs.trace import trace_model

    records = trace_model(model, input_shape)
    weights = [i for i, r in enumerate(records) if r.kind in ("conv", "dense")]
    if not 1 <= n <= len(weights):
        raise UsageError(f"'last {n}': the model has {len(weights)} convolution and dense layers")
    paths = param_paths(model)
    names = dict.fromkeys(r.name for r in records[weights[-n]:])
    return [name for name in names if any(matches(name, p) for p in paths)]


def layer_decay(model: nnx.Module, input_shape: tuple[int, int, int], decay: float) -> dict[str, float]:
    """Layer-wise learning-rate decay: the k-th convolution or dense layer counted from the output
    (k = 0: the classifier) gets ``decay ** k``; layers with parameters between weight layers
    (batch norms) share the multiplier of the weight layer before them. Returns ``{layer: mult}``."""
    from cnnbench.archs.trace import trace_model

    records = trace_model(model, input_shape)
    weights = [r.name for r in records if r.kind in ("conv", "dense")]
    paths = param_paths(model)
    multipliers, current = {}, None
    for r in records:
        if r.kind in ("conv", "dense"):
            current = weights.index(r.name)
        if current is not None and any(matches(r.name, p) for p in paths):
            multipliers.setdefault(r.name, decay ** (len(weights) - 1 - current))
    return multipliers


def check_selectors(model: nnx.Module, selectors) -> None:
    paths = param_paths(model)
    unknown = [s for s in selectors if not any(matches(s, p) for p in paths)]
    if unknown:
        layers = sorted({p.rsplit(".", 1)[0] for p in paths})
        raise UsageError(f"no layer {', '.join(map(repr, unknown))} in the model; layers: {', '.join(layers)}")


def grouping(trainable: list[str] | None, multipliers: dict[str, float] | None = None):
    """``group(params) -> labels``: each parameter's optimiser group, ``"frozen"`` or
    ``"lr*<multiplier>"`` (the first matching selector of ``multipliers``, else 1), for
    ``optax.multi_transform``; None when everything trains at the base learning rate."""
    multipliers = dict(multipliers or {})
    if trainable is None and not multipliers:
        return None

    def label(path: str) -> str:
        if trainable is not None and not any(matches(s, path) for s in trainable):
            return "frozen"
        mult = next((float(m) for s, m in multipliers.items() if matches(s, path)), 1.0)
        return f"lr*{mult:g}"

    def group(params):
        return jax.tree_util.tree_map_with_path(lambda path, _: label(_dotted(path)), params)

    group.labels = sorted({"frozen", "lr*1", *(f"lr*{float(m):g}" for m in multipliers.values())})  # every label
    return group


def freeze_batch_norm(model: nnx.Module, selectors: list[str] | None) -> list[str]:
    """Frozen batch-norm layers use and keep their running statistics; returns their paths."""
    from cnnbench.archs.layers import BatchNorm

    if selectors is None:
        return []
    frozen = []
    for path, module in nnx.iter_modules(model):
        name = ".".join(map(str, path))
        if isinstance(module, BatchNorm) and not any(matches(s, name) for s in selectors):
            module.frozen = True
            frozen.append(name)
    return frozen


def counts(model: nnx.Module, group) -> dict:
    """Trainable and frozen parameter counts (for the run's log and the CLI)."""
    params = nnx.state(model, nnx.Param)
    leaves = jax.tree.leaves(params)
    total = sum(int(leaf.size) for leaf in leaves)
    if group is None:
        return {"trainable_params": total, "frozen_params": 0}
    frozen = sum(int(leaf.size) for leaf, g in zip(leaves, jax.tree.leaves(group(params))) if g == "frozen")
    return {"trainable_params": total - frozen, "frozen_params": frozen}
