"""Parameter initializers with exactly the values of ``jax.nn.initializers``, without a compile per shape.

Run eagerly, ``jax.nn.initializers.glorot_uniform()(key, shape)`` compiles a program for every new
weight shape (the draw, then the scaling), 0.3-0.8 s each on 2 CPU cores: creating GoogLeNet, whose
118 weights nearly all differ in shape, took 20 s before its first step. Here the random draw is
compiled once per size *bucket* (a power of two) and shared by every weight that fits in it:
with JAX's partitionable Threefry (its default) the first ``n`` draws of a length-``N`` request are
the draws any ``n``-element request gets, so slicing and reshaping give the same numbers. The
scaling is the same float32 multiplication, done by NumPy. A test pins the values to JAX's.

Under a trace (``nnx.eval_shape``, ``jax.jit``) the JAX initializers are used as they are.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.nn import initializers as _jax_init

#: draws of up to this many numbers are rounded up to a power of two (at least ``_SMALLEST``)
_BUCKETED_UP_TO, _SMALLEST = 1 << 22, 1 << 10
_TRUNCATED_STD = 0.87962566103423978  # the standard deviation of N(0, 1) truncated to (-2, 2)


def _eager(key) -> bool:
    return not isinstance(key, jax.core.Tracer)


def _bucket(n: int, key) -> int:
    if n > _BUCKETED_UP_TO or not jax.config.jax_threefry_partitionable or \
            str(jax.random.key_impl(key)) != "threefry2x32":
        return n  # other generators may not hand out prefixes of longer draws
    return max(_SMALLEST, 1 << (n - 1).bit_length())


#: the standard draws (``uniform`` on [-1, 1)) of ``size`` numbers
_DRAWS = {"normal": lambda k, size, dtype: jax.random.normal(k, (size,), dtype),
          "uniform": lambda k, size, dtype: jax.random.uniform(k, (size,), dtype, -1),
          "truncated_normal": lambda k, size, dtype: jax.random.truncated_normal(k, -2, 2, (size,), dtype)}
_FANS = {"fan_in": lambda fan_in, fan_out: fan_in, "fan_out": lambda fan_in, fan_out: fan_out,
         "fan_avg": lambda fan_in, fan_out: (fan_in + fan_out) / 2,
         "fan_geo_avg": lambda fan_in, fan_out: (fan_in * fan_out) ** 0.5}


@functools.cache
def _draw_fn(distribution: str, size: int, dtype):
    draw = _DRAWS[distribution]
    return jax.jit(lambda k: draw(k, size, dtype))


def _standard(distribution: str, key, shape, dtype) -> np.ndarray:
    """What ``jax.random.<distribution>(key, shape, dtype)`` returns (``uniform`` on [-1, 1)), in NumPy."""
    n = math.prod(shape)
    return np.asarray(_draw_fn(distribution, _bucket(n, key), np.dtype(dtype))(key))[:n].reshape(shape)


def _dtype(dtype):
    return np.dtype(jnp.float32 if dtype is None else dtype)


def normal(stddev: float = 1e-2):
    """``jax.nn.initializers.normal(stddev)``."""
    reference = _jax_init.normal(stddev)

    def init(key, shape, dtype=None):
        if not _eager(key):
            return reference(key, shape, dtype)
        dtype = _dtype(dtype)
        return jnp.asarray(_standard("normal", key, tuple(shape), dtype) * dtype.type(stddev))
    return init


def variance_scaling(scale: float, mode: str, distribution: str, in_axis: int = -2, out_axis: int = -1):
    """``jax.nn.initializers.variance_scaling`` for real float weights (default axes)."""
    if mode not in _FANS or distribution not in _DRAWS:
        raise ValueError(f"variance scaling: mode {mode!r} (one of {', '.join(_FANS)}), "
                         f"distribution {distribution!r} (one of {', '.join(_DRAWS)})")
    reference = _jax_init.variance_scaling(scale, mode, distribution, in_axis, out_axis)

    def init(key, shape, dtype=None):
        if not _eager(key) or len(shape) < 2:
            return reference(key, shape, dtype)
        shape, dtype = tuple(shape), _dtype(dtype)
        fan_in, fan_out = shape[in_axis], shape[out_axis]
        receptive = math.prod(shape) / fan_in / fan_out
        fan_in, fan_out = fan_in * receptive, fan_out * receptive
        denominator = _FANS[mode](fan_in, fan_out)
        variance = dtype.type(scale / denominator)
        if distribution == "truncated_normal":
            factor = np.sqrt(variance) / dtype.type(_TRUNCATED_STD)
        elif distribution == "normal":
            factor = np.sqrt(variance)
        else:  # uniform on [-sqrt(3 variance), sqrt(3 variance))
            factor = np.sqrt(dtype.type(3) * variance)
        return jnp.asarray(_standard(distribution, key, shape, dtype) * factor)
    return init


def lecun_normal():
    return variance_scaling(1.0, "fan_in", "truncated_normal")


def glorot_uniform():
    return variance_scaling(1.0, "fan_avg", "uniform")


def constant(value):
    """``jax.nn.initializers.constant(value)``, filled by NumPy (no compile per shape)."""
    reference = _jax_init.constant(value)

    def init(key, shape, dtype=None):
        if not _eager(key):
            return reference(key, shape, dtype)
        return jnp.asarray(np.full(tuple(shape), value, _dtype(dtype)))
    return init


zeros = constant(0.0)
ones = constant(1.0)
