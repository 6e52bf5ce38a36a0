"""The XLA options the `cnnbench` command sets, and why.

XLA reads ``XLA_FLAGS`` once, when JAX creates its first backend, so the command line sets them in
:func:`cnnbench.cli.main` before any command imports JAX. A flag the user already put in
``XLA_FLAGS`` wins (their value is kept, ours is not added); ``CNNBENCH_XLA_DEFAULTS=0`` turns all
of ours off. Importing ``cnnbench`` as a library sets nothing: call :func:`apply` first if wanted.

Each entry was kept because whole training/inference steps measured faster with it, interleaved
against the same step without it (BENCHMARKS.md, "XLA options").
"""

from __future__ import annotations

import os

#: flag -> (value, why). Only CPU flags so far; other backends ignore them.
DEFAULTS: dict[str, tuple[str, str]] = {}


def merged(existing: str, defaults: dict[str, tuple[str, str]] = DEFAULTS) -> str:
    """``existing`` XLA_FLAGS plus every default whose flag it does not already name."""
    named = {part.split("=", 1)[0] for part in existing.split()}
    extra = [f"{flag}={value}" for flag, (value, _) in defaults.items() if flag not in named]
    return " ".join([existing.strip(), *extra]).strip()


def apply(environ=os.environ) -> str:
    """Add the defaults to ``XLA_FLAGS`` (unless ``CNNBENCH_XLA_DEFAULTS=0``); returns the result.
    Has no effect on a JAX backend that already exists."""
    if environ.get("CNNBENCH_XLA_DEFAULTS", "1") != "0":
        value = merged(environ.get("XLA_FLAGS", ""))
        if value:
            environ["XLA_FLAGS"] = value
    return environ.get("XLA_FLAGS", "")
