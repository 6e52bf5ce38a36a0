"""Matrix products of low-precision operands, as the CPU's bf16 instructions compute them.

XLA:CPU runs a bf16 x bf16 product that sums in bf16 slower than float32, but one that sums in
float32 (``preferred_element_type``) on the CPU's bf16 dot-product instructions (AVX512-BF16,
AMX): 2048 x 2048 matrices, 2 cores, best of 5 (``benchmarks/xla_bf16.py``; BENCHMARKS.md, issue 26):

| operands -> sums | AMD EPYC Zen 4 (AVX512-BF16), GFLOP/s | Intel Xeon with AMX, GFLOP/s |
| --- | ---: | ---: |
| float32 -> float32 | 209 | 315 |
| bf16 -> bf16 | 180 | 263 |
| bf16 -> float32 | 387 | 1543 |

So every product of the fast formulations (and of the dense layers) goes through :func:`product`,
and XLA's convolution gets the same ``preferred_element_type`` (:func:`accumulator`). On a CPU,
``--precision bf16`` keeps the layers in float32 (XLA:CPU's element-wise bf16 arithmetic is slower
than float32's) and gives only the products bf16 operands (:func:`to_products`), as PyTorch's CPU
autocast does for its convolutions and matrix products.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from cnnbench.kernels.choice import low_precision_products


def accumulator(dtype):
    """The dtype a product of ``dtype`` operands sums in when that is wider: float32 for bf16 and
    float16 (None: their own)."""
    return jnp.float32 if jnp.dtype(dtype).itemsize < 4 and jnp.issubdtype(dtype, jnp.floating) else None


def to_products(x):
    """``x`` as a product's operand: float32 values in the chosen low precision
    (:func:`cnnbench.kernels.choice.low_precision_products`: ``--precision bf16`` on a CPU), else as
    they are."""
    low = low_precision_products()
    return x.astype(low) if low is not None and x.dtype == jnp.float32 else x


def product(a, b, dims, *, sums=None):
    """``lax.dot_general(a, b, dims)``: low-precision operands (bf16, float16: a layer's compute
    dtype, or float32 made bf16 by :func:`to_products`) multiply into float32 sums, rounded once to
    the inputs' dtype at the end, or returned as ``sums`` (a gradient's partial sums)."""
    out = jnp.result_type(a, b) if sums is None else sums
    a, b = to_products(a), to_products(b)
    acc = accumulator(a.dtype) if a.dtype == b.dtype else None
    if acc is None:
        return lax.dot_general(a, b, dims, preferred_element_type=sums)
    if a.ndim == b.ndim == 2 and dims[1] == ((), ()):
        return _matrix_product(a, b, dims[0][0][0], dims[0][1][0], jnp.dtype(acc), jnp.dtype(out))
    return lax.dot_general(a, b, dims, preferred_element_type=acc).astype(out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _matrix_product(a, b, ca: int, cb: int, acc, out):
    """Two low-precision matrices (a dense layer's), contracted over a's axis ``ca`` and b's ``cb``.
    Its gradients are products of the same kind: the output gradient rounded to ``a``'s dtype
    times the other operand, summed in ``acc`` (as PyTorch's autocast computes them). JAX's own
    rule multiplied the float32 output gradient by the low-precision operand, which XLA made a
    float32 product of, converting the operand first: alexnet-owt's fc6 (9216 x 4096) took 30 ms
    a step in that conversion alone (BENCHMARKS.md, issue 26)."""
    return lax.dot_general(a, b, (((ca,), (cb,)), ((), ())), preferred_element_type=acc).astype(out)


def _matrix_product_fwd(a, b, ca, cb, acc, out):
    return _matrix_product(a, b, ca, cb, acc, out), (a, b)


def _matrix_product_bwd(ca, cb, acc, out, res, ct):
    a, b = res
    ct = ct.astype(a.dtype)  # [a's free axis, b's free axis]

    def mul(x, y, cx, cy):  # each gradient in its operand's own layout (no transpose after:
        # XLA:CPU folded one into a bf16 product it then could not run)
        return lax.dot_general(x, y, (((cx,), (cy,)), ((), ())), preferred_element_type=acc)

    da = mul(ct, b, 1, 1 - cb) if ca == 1 else mul(b, ct, 1 - cb, 1)
    db = mul(a, ct, 1 - ca, 0) if cb == 0 else mul(ct, a, 0, 1 - ca)
    return da.astype(a.dtype), db.astype(b.dtype)


_matrix_product.defvjp(_matrix_product_fwd, _matrix_product_bwd)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, out_sharding=None):
    """Drop-in for ``lax.dot_general`` (what ``nnx.Linear`` calls): :func:`product` where nothing
    else is asked for (a precision, an output type, a sharding), ``lax.dot_general`` otherwise."""
    if precision is None and preferred_element_type is None and out_sharding is None:
        return product(lhs, rhs, dimension_numbers)
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type, out_sharding=out_sharding)


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """This CPU's feature flags as Linux lists them (empty where it cannot be read)."""
    try:
        with open(cpuinfo) as f:
            return set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return set()


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has bf16 dot-product instructions (``avx512_bf16`` or ``amx_bf16`` among
    its flags), where bf16 products with float32 sums outrun float32's."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags(cpuinfo))


def dense_out_in(x, kernel):
    """``x @ kernel.T`` for a dense layer whose ``kernel`` is stored ``[out, in]`` (the inference
    model's layout on a CPU, :func:`cnnbench.archs.inference.transpose_dense`), computed as
    ``kernel @ x.T`` (``[out, batch]``) and transposed back.

    XLA:CPU's product of a small batch with a large kernel runs 2-3x faster with the kernel as the
    left operand and the batch's axis last: alexnet-owt's fc6-fc8 at batch 32 took 52 ms as
    ``x @ kernel`` (fc6 alone: 35 ms, 4.3 GB/s of kernel read), 16 ms this way; batch 8 24 -> 9,
    batch 128 68 -> 56 (2-core Intel Xeon; BENCHMARKS.md, issue 26). The barrier keeps XLA from
    folding the transpose back into the product, which takes the slow form again (35 ms)."""
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    y = lax.optimization_barrier(product(kernel, flat, (((1,), (1,)), ((), ()))))  # [out, batch]
    return y.T.reshape(*lead, kernel.shape[0])
