"""Which formulation the layers take: the fast CPU forms or XLA's own, for which backend, and the
precision of the products' operands. Set once by the caller (the command line, a step function
through :func:`within`), and part of every compiled function's cache key, so a function compiled
under one choice is traced again under another, never silently stale."""

from __future__ import annotations

import contextlib
import functools
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp

#: what ``CNNBENCH_FASTOPS`` / :func:`use` switch; "batchnorm" is the normalisation's form
#: (:class:`cnnbench.archs.layers.BatchNorm`)
OPS = ("conv", "pool", "lrn", "batchnorm")


def _from_env(value: str) -> frozenset:
    """``CNNBENCH_FASTOPS``: 1 (default, all), 0 (none) or a comma list of :data:`OPS`."""
    value = value.strip().lower()
    return frozenset(OPS if value in ("", "1", "all") else () if value == "0"
                     else (name.strip() for name in value.split(",")))


def check_env(environ=os.environ) -> None:
    """A ``CNNBENCH_FASTOPS`` naming anything :data:`OPS` lacks is a usage error (a misspelt name
    would otherwise turn every fast path off without a word)."""
    unknown = _from_env(environ.get("CNNBENCH_FASTOPS", "1")) - set(OPS)
    if unknown:
        from cnnbench.errors import UsageError

        raise UsageError(f"CNNBENCH_FASTOPS names {', '.join(sorted(unknown))}: use 1 (all), 0 (none) "
                         f"or a comma list of {','.join(OPS)}")


class Choice(NamedTuple):
    """Which fast formulations layers use (:data:`OPS`), for which backend they are chosen
    (``None``: JAX's default backend; the CPU formulations run only on "cpu"), and the dtype of the
    operands of float32 layers' matrix products (None: float32; "bfloat16": bf16 operands summed
    in float32, :mod:`cnnbench.kernels.products`)."""
    ops: frozenset
    platform: str | None = None
    products: str | None = None


#: the choice in force, part of every compiled function's cache key (``jax.make_user_context``): a
#: function compiled under one choice is traced again under another, never silently stale
_CHOICE = jax.make_user_context(default_value=Choice(_from_env(os.environ.get("CNNBENCH_FASTOPS", "1"))))


def enabled(op: str) -> bool:
    return op in _CHOICE.value.ops


def platform() -> str:
    """The backend the formulations are chosen for: :func:`use`'s ``platform``, else JAX's default."""
    return _CHOICE.value.platform or jax.default_backend()


def low_precision_products():
    """The dtype float32 layers' products take their operands in (None: float32)."""
    name = _CHOICE.value.products
    return None if name is None else jnp.dtype(name)


@contextlib.contextmanager
def use(on: bool | tuple[str, ...] | None = True, *, platform: str | None = None, products: str | None = None):
    """Layers traced inside this block use (or do not use) the fast formulations: all (``True``),
    none (``False``), those named, or as before (``None``); ``platform`` chooses them as for that
    backend (e.g. "gpu": the CPU-only formulations stay off); ``products`` ("bfloat16") gives
    float32 layers' matrix products bf16 operands with float32 sums."""
    current = _CHOICE.value
    ops = current.ops if on is None else frozenset(OPS if on is True else () if on is False else on)
    with _CHOICE(Choice(ops, platform or current.platform, products or current.products)):
        yield


def within(fn, on: bool | tuple[str, ...] | None = None, **choice):
    """``fn`` traced under ``use(on, **choice)`` wherever it is called: a step function that
    always computes this way, jitted like any other (its backward pass, traced inside, too)."""
    if on is None and not any(choice.values()):
        return fn

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with use(on, **choice):
            return fn(*args, **kwargs)
    return wrapped
