"""One registry of architectures: names -> builders + metadata (paper, year, published numbers).

Adding an architecture is one builder in its family's file plus one :func:`register` call.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Callable

from flax import nnx

from cnnbench.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Reference:
    """A published result. Errors are in percent, as the papers print them."""

    dataset: str
    top1_err: float | None
    top5_err: float | None
    protocol: str
    source: str
    split: str = "validation"

    @property
    def top1(self) -> float | None:
        return None if self.top1_err is None else round(100.0 - self.top1_err, 3)

    @property
    def top5(self) -> float | None:
        return None if self.top5_err is None else round(100.0 - self.top5_err, 3)


@dataclasses.dataclass(frozen=True)
class ArchInfo:
    name: str
    family: str
    builder: Callable[..., nnx.Module]
    paper: str
    year: int
    input_size: int
    in_channels: int = 3
    num_classes: int = 1000
    description: str = ""
    #: published parameter count / G multiply-adds at ``input_size`` with ``num_classes``
    params: int | None = None
    gmacs: float | None = None
    references: tuple[Reference, ...] = ()
    #: builder options a user may set, with their defaults (shown by `cnnbench archs`)
    options: dict = dataclasses.field(default_factory=dict)

    @property
    def primary_reference(self) -> Reference | None:
        return self.references[0] if self.references else None


REGISTRY: dict[str, ArchInfo] = {}


def register(name: str, builder: Callable[..., nnx.Module], **meta) -> ArchInfo:
    if name in REGISTRY:
        raise ValueError(f"architecture {name!r} registered twice")
    info = ArchInfo(name=name, builder=builder, **meta)
    REGISTRY[name] = info
    return info


def get_arch(name: str) -> ArchInfo:
    try:
        return REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, REGISTRY, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UsageError(f"unknown architecture {name!r}; {hint}(`cnnbench archs` lists all "
                         f"{len(REGISTRY)})") from None


def list_archs() -> list[ArchInfo]:
    return list(REGISTRY.values())


def create_model(name: str, *, num_classes: int | None = None, input_size: int | None = None,
                 in_channels: int | None = None, seed: int = 0, rngs: nnx.Rngs | None = None,
                 **options) -> nnx.Module:
    """Build a registered architecture, like ``timm.create_model``.

    ``num_classes``, ``input_size`` and ``in_channels`` default to the architecture's own
    (e.g. 1000 classes at 227x227x3 for ``alexnet``); ``options`` are family-specific
    (``activation``, ``aux_logits``, ``head`` ...).
    """
    info = get_arch(name)
    unknown = set(options) - set(info.options)
    if unknown:
        known = ", ".join(info.options) or "none"
        raise UsageError(f"{name} has no option {', '.join(sorted(unknown))}; its options: {known}")
    kwargs = {**info.options, **options}
    try:
        return info.builder(num_classes=num_classes or info.num_classes,
                            input_size=input_size or info.input_size,
                            in_channels=in_channels or info.in_channels,
                            rngs=rngs or nnx.Rngs(seed), **kwargs)
    except UsageError as e:
        raise UsageError(f"{name}: {e.args[0]}") from None
