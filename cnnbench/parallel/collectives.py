"""The collectives of a compiled program, read from its optimised HLO text: what a step costs in
communication, as the compiler actually emitted it (not as a plan says it should).

Each op is counted once per program (a collective inside a loop body is counted once), with the
bytes of its result on one device: the gathered array of an all-gather, the summed array of an
all-reduce, one device's part of a reduce-scatter. Asynchronous pairs (``all-gather-start`` /
``-done`` on accelerators) count once, by their ``-done``.
"""

from __future__ import annotations

import re

#: the collective ops, in the order reports list them
KINDS = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")

_OP = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>.+?)\s+(?P<op>" + "|".join(KINDS)
                 + r")(?P<suffix>-start|-done)?\(")
_LAYOUT = re.compile(r"\{[^{}]*\}")
_ARRAY = re.compile(r"\b(?P<dtype>pred|[a-z]+\d+)\[(?P<dims>[\d,]*)\]")
_ITEMSIZE = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
             "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}


def _bytes(shape: str) -> int:
    total = 0
    for m in _ARRAY.finditer(shape):
        size = 1
        for d in filter(None, m["dims"].split(",")):
            size *= int(d)
        total += size * _ITEMSIZE.get(m["dtype"], 4)
    return total


def collectives(hlo_text: str) -> list[dict]:
    """Every collective of ``hlo_text`` (``compiled.as_text()``) in program order:
    ``{"kind", "bytes", "shape"}``."""
    found = []
    for line in hlo_text.splitlines():
        m = _OP.match(line)
        if m is None or m["suffix"] == "-start":
            continue
        found.append({"kind": m["op"], "bytes": _bytes(m["shape"]), "shape": _LAYOUT.sub("", m["shape"])})
    return found


def totals(hlo_text: str) -> dict[str, dict[str, int]]:
    """``{kind: {"count", "bytes"}}`` for each kind of :data:`KINDS` (zeros included)."""
    out = {kind: {"count": 0, "bytes": 0} for kind in KINDS}
    for op in collectives(hlo_text):
        out[op["kind"]]["count"] += 1
        out[op["kind"]]["bytes"] += op["bytes"]
    return out


def describe(summary: dict[str, dict[str, int]]) -> str:
    """``all-gather 3 (1.2 MB), all-reduce 14 (244.1 MB)``; ``none`` when the program has none."""
    parts = [f"{kind} {v['count']} ({v['bytes'] / 1e6:,.1f} MB)" for kind, v in summary.items() if v["count"]]
    return ", ".join(parts) or "none"
