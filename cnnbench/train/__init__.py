"""The training engine: configuration, optimisers and schedules, the sharded jitted step, the loop,
checkpoints and run directories.

The package is also the Python API's ``cnnbench.train(arch, **settings)`` (:func:`run`): a package
attribute named ``train`` would be replaced by this package the moment any ``cnnbench.train.*``
module is imported, so the package itself is callable."""

from __future__ import annotations

import sys
import types
from pathlib import Path


def run(arch: str | None = None, *, experiment: str | Path | None = None, run_dir: str | Path | None = None,
        progress=None, **settings) -> dict:
    """Train ``arch`` (or the experiment file's architecture) with any setting of an experiment file
    as a keyword (``dataset="synthetic"``, ``epochs=2``, ``batch_size=64``, ``ema=0.999`` ...);
    into ``run_dir`` if given (an existing run there continues), else a new ``runs/ARCH-DATASET-TIME``.
    Returns the run's summary (``summary.json``: ``run_dir``, ``best`` and ``final`` top-1/top-5/loss ...).
    ``progress``: a :class:`cnnbench.progress.Progress` (e.g. ``Bar()`` for rich bars; default: silent)."""
    from cnnbench.runs.config import requested
    from cnnbench.runs.config import settings as checked
    from cnnbench.progress import SILENT
    from cnnbench.train.loop import train

    run_dir = Path(run_dir) if run_dir else None
    return train(requested(run_dir, arch, experiment, checked(settings)), run_dir=run_dir,
                 progress=progress or SILENT)


class _Package(types.ModuleType):
    def __call__(self, arch: str | None = None, **kwargs) -> dict:
        return run(arch, **kwargs)


sys.modules[__name__].__class__ = _Package
