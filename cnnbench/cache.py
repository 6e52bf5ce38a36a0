"""cnnbench's cache folder: the architecture statistics (`archs`) and downloaded weights (`weights
download`) live under it. ``$CNNBENCH_CACHE_DIR`` moves it; the default follows XDG
(``$XDG_CACHE_HOME/cnnbench``, else ``~/.cache/cnnbench``). JAX's compiled programs have their
own switch (``$CNNBENCH_COMPILE_CACHE``, `cnnbench.kernels.flags`)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    if os.environ.get("CNNBENCH_CACHE_DIR"):
        return Path(os.environ["CNNBENCH_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cnnbench"
