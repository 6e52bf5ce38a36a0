"""The architecture catalogue behind `cnnbench archs`: registry metadata plus counted statistics.

Counting every architecture means tracing all of them (~20 s on two CPU cores), so the counts are
cached on disk, keyed by a fingerprint of the model source code and the JAX/Flax versions: any
change to an architecture invalidates the cache. ``CNNBENCH_CACHE_DIR`` moves the cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

from cnnbench.archs import ArchInfo, list_archs
from cnnbench.cache import cache_dir
from cnnbench.progress import SILENT, Progress


def _fingerprint() -> str:
    import flax
    import jax

    import cnnbench.analysis.summary as summary
    import cnnbench.archs as archs

    digest = hashlib.sha256(f"{jax.__version__} {flax.__version__}".encode())
    for path in sorted(Path(archs.__file__).parent.glob("*.py")) + [Path(summary.__file__)]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def counted_stats(names: Iterable[str], progress: Progress = SILENT) -> dict:
    """``{name: {"params", "macs", "activations"}}`` at each architecture's default input (counted
    once per version of the code, then cached; ``progress``: a stage per architecture counted)."""
    from cnnbench.analysis.summary import summarize

    path = cache_dir() / f"arch-stats-{_fingerprint()}.json"
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    missing = [n for n in names if n not in cache]
    for name in missing:
        progress.start(f"counting {name}")
        s = summarize(name)
        cache[name] = {"params": s.params, "macs": s.macs, "activations": s.activations}
    if missing:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(cache))
            tmp.replace(path)  # atomic: a concurrent reader never sees half a file
        except OSError:
            pass  # a read-only home only costs speed
    return {n: cache[n] for n in names}


def citation(info: ArchInfo) -> str:
    """'Krizhevsky et al. 2012' from the registry's full reference."""
    authors = info.paper.split('"')[0].strip(" ,")
    first = authors.split(",")[0].split("&")[0].strip()
    return f"{first}{' et al.' if (',' in authors or '&' in authors) else ''} {info.year}"


def catalog(family: str | None = None, progress: Progress = SILENT) -> list[dict]:
    infos = [i for i in list_archs() if family is None or i.family.lower() == family.lower()]
    stats = counted_stats([i.name for i in infos], progress)
    rows = []
    for info in infos:
        ref = info.primary_reference
        rows.append({
            "name": info.name, "family": info.family, "year": info.year, "paper": info.paper,
            "citation": citation(info), "description": info.description,
            "input_size": info.input_size, "in_channels": info.in_channels,
            "num_classes": info.num_classes, **stats[info.name],
            "published_params": info.params, "published_gmacs": info.gmacs,
            "reference": None if ref is None else f"{_err(ref.top1_err)} / {_err(ref.top5_err)}",
            "protocol": None if ref is None else f"{ref.dataset} {ref.split}, {ref.protocol}",
            "references": [dict(vars(r), top1=r.top1, top5=r.top5) for r in info.references],
            "options": info.options,
        })
    return rows


def _err(value) -> str:
    return "–" if value is None else str(value)
