"""Model state helpers shared by checkpoints, weight import, fine-tuning and evaluation: names of
state leaves, and models built without drawing a random initialisation."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
from flax import nnx


def path_key(path, sep: str = "/", *, strip_value: bool = True) -> str:
    """``"features/conv1/kernel"`` from a JAX key path (dict keys, attributes, indices), without
    the trailing ``value`` of an ``nnx.Variable`` unless ``strip_value`` is False."""
    keys = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
    if strip_value and keys and keys[-1] == "value":
        keys = keys[:-1]
    return sep.join(keys)


@contextlib.contextmanager
def _cheap_tracer_errors():
    """Flax's ``Variable.set_value`` probes ``getattr(value, "sharding", None)`` on every assignment
    (each random-number draw of an initialiser bumps a counter), and on a tracer JAX 0.10 builds
    that AttributeError's message by walking every equation traced so far: building a model under
    a trace is quadratic in its size (jax-ml/jax#40041). Without the message's "origin" part,
    ``cnnbench archs`` (35 models, empty cache) runs in 12 s instead of 22, with the same output."""
    try:
        from jax._src.interpreters import partial_eval
        tracer = partial_eval.DynamicJaxprTracer
        original = tracer.__dict__["_origin_msg"]
    except (ImportError, AttributeError, KeyError):  # a JAX without the problem (or this hook)
        yield
        return
    tracer._origin_msg = lambda self: ""
    try:
        yield
    finally:
        tracer._origin_msg = original


def abstract_model(name: str, **kwargs) -> nnx.Module:
    """The model with shapes but no values: building even VGG-19 this way allocates nothing and
    compiles no initialiser."""
    from cnnbench.archs.registry import create_model

    with _cheap_tracer_errors():
        return nnx.eval_shape(lambda: create_model(name, **kwargs))


def concrete_rest(rest):
    """Values for the non-weight state of an abstract model (dropout's random-number keys and
    counters): any value does for evaluation, and training reseeds them every step."""
    def concrete(x):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.key(0)
        return jnp.zeros(x.shape, x.dtype)

    return jax.tree.map(concrete, rest)
