"""The spec language, big_vision style: ``"resize_shorter(256)|random_crop(227)|flip|normalize(imagenet)"``
parsed into :class:`Step` objects (and back), and split into the host part and the per-pixel tail
that can run on the device (:func:`split_spec`)."""

from __future__ import annotations

import ast
import dataclasses
import re
from typing import Callable

from cnnbench.errors import UsageError
from cnnbench.pipeline.ops import OPS
from cnnbench.pipeline.recipes import RECIPES

@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    args: tuple
    kwargs: tuple = ()  # (name, value) pairs: ``resize_shorter(256, antialias=False)``

    def build(self, *extra) -> Callable:
        return OPS[self.name](*extra, *self.args, **dict(self.kwargs))


def parse(spec: str) -> list[Step]:
    steps = []
    for part in filter(None, (p.strip() for p in spec.split("|"))):
        match = re.fullmatch(r"([a-z_0-9]+)(?:\((.*)\))?", part)
        if not match or match.group(1) not in OPS:
            raise UsageError(f"unknown preprocessing op {part!r}; ops: {', '.join(OPS)}; "
                             f"recipes: {', '.join(RECIPES)}")
        args, kwargs = [], []
        for part in filter(None, (a.strip() for a in (match.group(2) or "").split(","))):
            key, eq, value = part.partition("=")
            if eq and key.strip().isidentifier():
                kwargs.append((key.strip(), _literal(value.strip())))
            elif kwargs:
                raise UsageError(f"in {spec!r}: positional argument {part!r} after a keyword one")
            else:
                args.append(_literal(part))
        steps.append(Step(match.group(1), tuple(args), tuple(kwargs)))
    return steps


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word such as imagenet


def unparse(step: Step) -> str:
    args = [repr(a) for a in step.args] + [f"{k}={v!r}" for k, v in step.kwargs]
    return step.name + (f"({', '.join(args)})" if args else "")


DEFERRABLE = ("lighting", "normalize")


def split_spec(spec: str) -> tuple[list[Step], list[Step]]:
    """(host steps, deferred steps): the trailing ``lighting`` / ``normalize`` steps, in that order."""
    steps = parse(spec)
    cut = len(steps)
    while cut and steps[cut - 1].name in DEFERRABLE:
        cut -= 1
    tail = steps[cut:]
    if [t.name for t in tail] not in ([], ["lighting"], ["normalize"], ["lighting", "normalize"]):
        return steps, []  # an unusual order: run everything on the host, as written
    return steps[:cut], tail
