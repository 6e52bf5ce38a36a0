"""Faster formulations of convolution, max pooling and LRN, mathematically identical to the lax ones.

On a CPU, XLA lowers a convolution's backward pass and max pooling's backward pass
(select-and-scatter) to kernels that run 2-3x slower than PyTorch's, and its buffers outgrow the
caches, while XLA's matrix multiplication runs close to the machine's peak. So here:

- :func:`conv` is a 2-D convolution whose forward pass, input gradient and weight gradient each
  use one of three formulations (:data:`FORWARD`, :data:`INPUT_GRAD`, :data:`WEIGHT_GRAD`): XLA's
  convolution; patches built from ``k*k`` strided slices and one matrix multiplication (the input
  gradient scatters its columns back with ``k*k`` interior-padded adds), a few images at a time;
  or Winograd's F(2x2, 3x3) / F(3x3, 5x5) (:mod:`cnnbench.kernels.winograd`). :func:`choose` picks per
  layer what measured faster on a CPU: Winograd for every pass of a 3x3 stride-1 layer and of a
  5x5 one with 64+ input channels; matrix products for every pass of a 1x1 layer (its patches
  are its input); the patches for every pass of a strided 3x3 layer on 64+ channels; elsewhere
  XLA's forward and the patch-based gradients.
- :func:`max_pool` is max pooling whose gradient goes to the first maximum of each window in
  row-major order, exactly one position per window, as select-and-scatter does, but computed as
  ``k*k`` compare-and-select passes over strided slices (on a CPU).
- :func:`lrn` is local response normalisation with a hand-written gradient that reuses the
  forward pass's power (XLA:CPU's ``pow`` dominated the differentiated formula).

Batch norm's one multiply-add per value (:class:`cnnbench.archs.layers.BatchNorm`, on every
backend) is switched here too, as "batchnorm"; off, the layer runs Flax's own formulation.

A grouped convolution (the paper AlexNet's two towers) runs as one :func:`conv` per group on a
CPU. All are ``jax.custom_vjp`` functions checked against ``lax.conv_general_dilated``,
``lax.reduce_window`` and the differentiated LRN formula (outputs and gradients) in
``tests/test_fastops.py``. ``use(False)`` (or ``CNNBENCH_FASTOPS=0``) switches every layer back to
the plain lax ops; ``use(platform="gpu")`` chooses as for an accelerator; ``use(products=
"bfloat16")`` gives every product bf16 operands with float32 sums (:mod:`cnnbench.kernels.products`).
The choice (:mod:`cnnbench.kernels.choice`) is part of each compiled function's cache key.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from cnnbench.kernels import amx, winograd
from cnnbench.kernels.choice import (OPS, _from_env, check_env, enabled,  # noqa: F401 (the switch, as before)
                                     low_precision_products, platform, use, within)
from cnnbench.kernels.products import accumulator, product

# --------------------------------------------------------------------------- max pooling

def _window_slices(x, k: int, s: int, out_hw: tuple[int, int]):
    """The ``k*k`` strided views of ``x`` (already padded): view (i, j) holds each window's
    element at offset (i, j), shaped like the pooled output."""
    ho, wo = out_hw
    n, _, _, c = x.shape
    for i in range(k):
        for j in range(k):
            yield i, j, lax.slice(x, (0, i, j, 0), (n, i + s * (ho - 1) + 1, j + s * (wo - 1) + 1, c),
                                  (1, s, s, 1))


def _scatter_back(parts, k: int, s: int, padded_hw: tuple[int, int]):
    """Inverse of :func:`_window_slices`: sum each view back onto the padded input's grid."""
    hp, wp = padded_hw
    total = None
    for i, j, part in parts:
        ho, wo = part.shape[1:3]
        config = [(0, 0, 0), (i, hp - i - s * (ho - 1) - 1, s - 1), (j, wp - j - s * (wo - 1) - 1, s - 1),
                  (0, 0, 0)]
        placed = lax.pad(part, jnp.zeros((), part.dtype), config)
        total = placed if total is None else total + placed
    return total


def _reduce_max(x, k, s, pads):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, k, k, 1), (1, s, s, 1), pads)


def _slices_max(x, k, s, pads):
    """:func:`_reduce_max` as the maximum of the ``k*k`` strided views, one fused pass: the same
    values (max is exact), measured 1.1x (ResNet's 112x112 pool) to 5x (AlexNet's 55x55) faster
    than XLA:CPU's reduce-window."""
    xp = lax.pad(x, jnp.array(-jnp.inf, x.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads[1:3]), (0, 0, 0)])
    out_hw = tuple((n - k) // s + 1 for n in xp.shape[1:3])
    out = None
    for _, _, view in _window_slices(xp, k, s, out_hw):
        out = view if out is None else jnp.maximum(out, view)
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, k: int, s: int, pads: tuple):
    return _slices_max(x, k, s, pads)


def _max_pool_fwd(x, k, s, pads):
    y = _slices_max(x, k, s, pads)
    return y, (x, y)


def materialised(make, operands: tuple, always):
    """``make(*operands)``, computed into buffers of its own. XLA:CPU fuses element-wise work into
    every consumer, recomputing it there, and drops optimisation barriers before it fuses, but it
    keeps a conditional: so the result comes out of one whose predicate ``always`` is true but not
    a value XLA can fold (identical branches or a constant predicate are simplified away). The
    other branch, never taken, gives zeros."""
    shapes = jax.eval_shape(make, *operands)
    return lax.cond(always, lambda ops: make(*ops),
                    lambda ops: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes), operands)


def _max_pool_bwd(k, s, pads, res, dy):
    x, y = res
    xp = lax.pad(x, jnp.array(-jnp.inf, x.dtype), [(lo, hi, 0) for lo, hi in pads])
    views = list(_window_slices(xp, k, s, y.shape[1:3]))
    # Each window's first maximum in row-major order (as select-and-scatter picks it; k*k: none,
    # a NaN window), as a small integer.
    itype = jnp.int8 if k * k < 128 else jnp.int32
    first = jnp.full(y.shape, k * k, itype)
    for t in reversed(range(len(views))):
        first = jnp.where(views[t][2] == y, itype(t), first)
    # Without the barrier XLA fused the window maxima, the first-maximum search and whatever made
    # ``dy`` (GoogLeNet's branch-gradient sums, batch norm's and ReLU's gradients) into the
    # scatter's nine interior-padded pads, recomputing them for every input position
    # (BENCHMARKS.md, issue 6). ``first`` holds 0..k*k, so the predicate is always true.
    first, dy = materialised(lambda f, d: (f, d), (first, dy), first[(0,) * first.ndim] <= k * k)
    zero = jnp.zeros((), dy.dtype)
    dxp = _scatter_back(((i, j, jnp.where(first == t, dy, zero)) for t, (i, j, _) in enumerate(views)),
                        k, s, xp.shape[1:3])
    (_, _), (t, _), (left, _), _ = pads
    return (lax.slice(dxp, (0, t, left, 0), (x.shape[0], t + x.shape[1], left + x.shape[2], x.shape[3])),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x, k: int, s: int, pads) -> jax.Array:
    """``reduce_window(max)`` over NHWC ``x`` with (k, k) windows, stride s, ``pads`` per axis."""
    pads = _int_pads(pads)
    # Measured on CPUs only; accelerators keep select-and-scatter until measured there.
    if not enabled("pool") or k == 1 or platform() != "cpu":
        return _reduce_max(x, k, s, pads)
    return _max_pool(x, k, s, pads)


# --------------------------------------------------------------------------- local response normalisation

def _channel_window_sum(x, size: int, pads: tuple[int, int]):
    """Sums over windows of ``size`` along the last axis (channels; of any rank: LRN's groups)."""
    rest = x.ndim - 1
    return lax.reduce_window(x, 0.0, lax.add, (1,) * rest + (size,), (1,) * x.ndim, [(0, 0)] * rest + [pads])


def _lrn_base(x, size, alpha, k):
    """``z = k + alpha * (sum of x^2 over each channel's window)``, the quantity raised to beta."""
    half = size // 2
    return k + alpha * _channel_window_sum(x * x, size, (half, size - 1 - half))


def _lrn_plain(x, size, alpha, beta, k):
    return x / _lrn_base(x, size, alpha, k) ** beta


def _lrn_fwd(x, size, alpha, beta, k):
    z = _lrn_base(x, size, alpha, k)
    scale = z ** -beta
    return x * scale, (x, z, scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _lrn(x, size, alpha, beta, k):
    return _lrn_fwd(x, size, alpha, beta, k)[0]


def _lrn_bwd(size, alpha, beta, k, res, dy):
    """``dx_m = dy_m s_m - 2 alpha beta x_m sum_{i: m in window(i)} dy_i x_i s_i / z_i`` with
    ``s = z^-beta`` kept from the forward pass: one power per element where differentiating the
    quotient computes two (and XLA:CPU's ``pow`` dominates the layer)."""
    x, z, scale = res
    half = size // 2
    back = _channel_window_sum(dy * x * scale / z, size, (size - 1 - half, half))  # the windows m is in
    return (dy * scale - (2 * alpha * beta) * x * back,)


_lrn.defvjp(_lrn_fwd, _lrn_bwd)


def lrn(x, size: int, alpha: float, beta: float, k: float) -> jax.Array:
    """Krizhevsky et al.'s local response normalisation across the channels (last axis) of ``x``:
    ``x_i / (k + alpha * sum_{j=i-size/2}^{i+size-1-size/2} x_j^2) ** beta``, with a hand-written
    gradient (the same values to float rounding): the paper AlexNet's two LRN layers measured
    94 -> 39 and 69 -> 26 ms per forward and backward pass (batch 32, BENCHMARKS.md)."""
    if not enabled("lrn"):
        return _lrn_plain(x, size, alpha, beta, k)
    return _lrn(x, size, alpha, beta, k)


# --------------------------------------------------------------------------- convolution

def _patches(xp, k: int, s: int, out_hw):
    """[N, Ho, Wo, k*k*C] patches of padded NHWC ``xp``, ordered (kh, kw, c) like an HWIO kernel."""
    views = [v for _, _, v in _window_slices(xp, k, s, out_hw)]
    return views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)


def _patches_t(xp, k: int, s: int, out_hw):
    """[k*k*C, N*Ho*Wo]: :func:`_patches` transposed, built that way (each strided view's channels
    moved to the front), rows ordered (kh, kw, c) like an HWIO kernel."""
    views = [jnp.moveaxis(v, 3, 0) for _, _, v in _window_slices(xp, k, s, out_hw)]
    return jnp.stack(views).reshape(k * k * xp.shape[-1], -1)


#: below this many input channels a layer reads an image (RGB or grey): :func:`choose` keeps
#: Winograd off it, and its patch-based weight gradient builds the patches transposed (see
#: :func:`_matmul_weight_grad`)
FEW_CHANNELS = 8


def _int_pads(pads) -> tuple:
    """``pads`` as a tuple of int pairs: hashable (a custom call's static argument, a plan's key)."""
    return tuple(tuple(int(v) for v in p) for p in pads)


def _padded(pads) -> bool:
    return any(lo or hi for lo, hi in pads)


def _pad(x, pads):
    return jnp.pad(x, [(0, 0), *pads, (0, 0)]) if _padded(pads) else x


def _out_hw(x, k, s, pads):
    return tuple((n + lo + hi - k) // s + 1 for n, (lo, hi) in zip(x.shape[1:3], pads))


def _matmul_forward(x, w, s, pads, chunk: int | None = None):
    """Patches times the kernel; a ``k x k`` layer ``chunk`` images at a time (:func:`_patch_chunk`),
    so the patches stay in the caches; a 1x1 layer (its patches are its input) in one product."""
    k, out_hw = w.shape[0], _out_hw(x, w.shape[0], s, pads)
    kernel = w.reshape(-1, w.shape[-1])

    def part(xc):
        return product(_patches(_pad(xc, pads), k, s, out_hw), kernel, (((3,), (0,)), ((), ())))

    return winograd.batched(part, x, chunk or (x.shape[0] if k == 1 else _patch_chunk(x.shape[0], out_hw)))


def _lax_conv(x, w, s, pads):
    """XLA's convolution; bf16 operands sum in float32. (Float32 ones stay float32 under bf16
    products: XLA's bf16 convolution was not clearly faster in whole steps, BENCHMARKS.md.)"""
    acc = accumulator(x.dtype)
    y = lax.conv_general_dilated(x, w, (s, s), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                 preferred_element_type=acc)
    return y if acc is None else y.astype(x.dtype)


def _matmul_input_grad(dy, w, s, pads, x_shape, chunk: int | None = None):
    """dL/dx: each output position's gradient spread over its window (columns), scattered back;
    ``chunk`` images at a time (:func:`_patch_chunk`), so the columns stay in the caches."""
    k, c = w.shape[0], w.shape[2]
    hp, wp = x_shape[1] + sum(pads[0]), x_shape[2] + sum(pads[1])
    t, left = pads[0][0], pads[1][0]

    def part(dyc):
        cols = product(dyc, w.reshape(-1, w.shape[-1]), (((3,), (1,)), ((), ())))  # [n,Ho,Wo,kkC]
        parts = ((i, j, cols[..., (i * k + j) * c:(i * k + j + 1) * c]) for i in range(k) for j in range(k))
        dxp = _scatter_back(parts, k, s, (hp, wp))
        return lax.slice(dxp, (0, t, left, 0), (dyc.shape[0], t + x_shape[1], left + x_shape[2], c))

    # 1x1: no columns to keep small, and the batch-wide matmul was 1.1-1.7x faster than in chunks
    whole = dy.shape[0] if k == 1 else None
    return winograd.batched(part, dy, chunk or whole or _patch_chunk(dy.shape[0], dy.shape[1:3]))


def _patch_chunk(n: int, out_hw: tuple[int, int], rows: int = 600) -> int:
    """Images per step of the patch-based gradients' loops: the largest divisor of ``n`` not above
    ``max(2, rows / (Ho*Wo))``. Small chunks keep each step's patches in the caches (measured
    2-2.5x faster than one batch-wide matmul on AlexNet/ResNet/VGG layers, BENCHMARKS.md); maps
    of 14x14 and smaller take more images per step so the matmul stays large enough."""
    cap = max(2, rows // (out_hw[0] * out_hw[1]))
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def _matmul_weight_grad(x, dy, k, s, pads, chunk: int | None = None):
    """dL/dw = patches(x)^T dy, accumulated over the batch ``chunk`` images at a time (on fewer
    than :data:`FEW_CHANNELS` input channels with the patches built transposed), or for an
    unpadded 1x1 layer (:func:`_pointwise_weight_grad`; a strided one on its subsampled input) in
    one product."""
    n, c, o = x.shape[0], x.shape[-1], dy.shape[-1]
    dtype = jnp.promote_types(x.dtype, dy.dtype)
    acc_dtype = jnp.promote_types(dtype, jnp.float32)  # bf16 partial sums add up in float32
    if k == 1 and chunk is None and not _padded(pads) and (dy.size // o) % 2 == 0:
        # Strided (ResNet's projections): the subsampled input is a quarter of x, and the chunked
        # form's transposes of its columns cost more: 56x56x256 -> 512 38.8 -> 26.8 ms, 14x14x1024
        # -> 2048 24.4 -> 19.6 (the input made by a ReLU, as in a network; BENCHMARKS.md, issue 6).
        xs = x if s == 1 else x[:, ::s, ::s, :]
        return _pointwise_weight_grad(xs, dy, acc_dtype).astype(dtype).reshape(1, 1, c, o)
    chunk = chunk or _patch_chunk(n, dy.shape[1:3])

    def part(xc, dyc):
        if c < FEW_CHANNELS:
            # An RGB image's layer: k*k views of 3 channels each make [P, kkC] patches slowly (3
            # floats per piece), and XLA then transposes them for the product. Built transposed,
            # the product is a plain [kkC, P] x [P, O] one: ResNet's 7x7/2 stem 115-157 -> 69-77 ms,
            # VGG's 3x3 conv1 133 -> 91 (batch 32; BENCHMARKS.md, issue 6). On 64+ channels this
            # was 1-1.8x slower (a real transpose of the channels).
            cols = _patches_t(_pad(xc, pads), k, s, dyc.shape[1:3])
            return product(cols, dyc.reshape(-1, o), (((1,), (0,)), ((), ())), sums=acc_dtype)  # [kkC, O]
        cols = _patches(_pad(xc, pads), k, s, dyc.shape[1:3])
        return product(cols, dyc, (((0, 1, 2), (0, 1, 2)), ((), ())), sums=acc_dtype)  # [kkC, O]

    return winograd.summed(part, x, dy, chunk).astype(dtype).reshape(k, k, c, o)


def _pointwise_weight_grad(x, dy, acc_dtype):
    """A 1x1 layer's dL/dw = x^T dy over every position of the batch (``x`` already subsampled for
    a strided layer), as two half-batch products summed: the batch dimension of that product keeps
    XLA:CPU on Eigen, which reads x transposed in place. In chunks (and as one plain product inside
    a network) XLA hands it to YNNPACK behind an explicit transpose of x at 1-3 GB/s, which cost
    ResNet-50 3-6% of its training step (three in-process A/Bs, BENCHMARKS.md, issue 6)."""
    m = x.shape[0] * x.shape[1] * x.shape[2]
    halves = product(x.reshape(2, m // 2, x.shape[-1]), dy.reshape(2, m // 2, dy.shape[-1]),
                     (((1,), (1,)), ((0,), (0,))), sums=acc_dtype)
    return halves[0] + halves[1]  # [C, O]


def _xla_input_grad(x, w, dy, s, pads):
    return jax.vjp(lambda x: _lax_conv(x, w, s, pads), x)[1](dy)[0]


def _xla_weight_grad(x, w, dy, s, pads):
    return jax.vjp(lambda w: _lax_conv(x, w, s, pads), w)[1](dy)[0]


def _amx_forward(x, w, s, pads):
    """The AMX kernel's output rounded once to bf16 (as PyTorch's autocast convolutions give it),
    back to the layer's dtype in whatever XLA fuses the conversion into: half the bytes written and
    read between layers. Whole bf16 inference steps (2-core Xeon, batch 32, fastest steps): vgg11
    384 -> 341 ms, resnet18 128 -> 120, resnet50 436 -> 406; training level (BENCHMARKS.md)."""
    return packed_conv(x, amx.pack(w), s, pads, w.shape[-1])


def _amx_input_grad(x, w, dy, s, pads):
    """A stride-1 layer's input gradient: ``dy`` convolved with the kernel turned round (both
    spatial axes reversed, inputs and outputs swapped), padded by ``k - 1`` less the forward pads."""
    k = w.shape[0]
    turned = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    back = tuple((k - 1 - lo, k - 1 - hi) for lo, hi in pads)
    return amx.conv(dy, turned, 1, back).astype(w.dtype)


#: Each pass of a convolution, by formulation: "xla" (XLA's convolution), "matmul" (patches and a
#: matrix multiplication), "winograd" (F(2x2, 3x3) / F(3x3, 5x5), stride 1 only: :mod:`.winograd`)
#: or "amx" (the native AMX kernels, bf16 operands; the gradients stride 1 only: :mod:`.amx`), and
#: for the weight gradient of a layer on few channels, any stride, "amx_run" (by kernel rows); a
#: strided layer's gradients "amx_s2d" (the kernel's, of the stride-1 layer space-to-depth makes).
FORWARD = {"xla": _lax_conv, "matmul": _matmul_forward,
           "winograd": lambda x, w, s, pads: winograd.conv(x, w, pads), "amx": _amx_forward}
INPUT_GRAD = {"xla": _xla_input_grad,
              "matmul": lambda x, w, dy, s, pads: _matmul_input_grad(dy, w, s, pads, x.shape),
              "winograd": lambda x, w, dy, s, pads: winograd.input_grad(dy, w, pads), "amx": _amx_input_grad,
              "amx_s2d": lambda x, w, dy, s, pads: _amx_s2d_grads(x, w, dy, s, pads)[0]}
WEIGHT_GRAD = {"xla": _xla_weight_grad,
               "matmul": lambda x, w, dy, s, pads: _matmul_weight_grad(x, dy, w.shape[0], s, pads),
               "winograd": lambda x, w, dy, s, pads: winograd.weight_grad(x, dy, pads, w.shape[0]),
               "amx": lambda x, w, dy, s, pads: amx.weight_grad(x, dy, w.shape[0], pads).astype(w.dtype),
               "amx_run": lambda x, w, dy, s, pads: amx.run_weight_grad(x, dy, w.shape[0], s, pads).astype(w.dtype),
               "amx_s2d": lambda x, w, dy, s, pads: _amx_s2d_grads(x, w, dy, s, pads)[1]}


def choose(k: int, s: int, cin: int, cout: int, out_hw: tuple[int, int], platform: str,
           pads=((0, 0), (0, 0)), dtype=jnp.float32, amx_products: bool | None = None) -> dict[str, str]:
    """Which formulation each pass uses, from per-layer timings (BENCHMARKS.md). Accelerators keep
    XLA's convolution throughout. Where the products are bf16 (``--precision bf16``;
    ``amx_products``, by default :func:`cnnbench.kernels.choice.low_precision_products`) and the
    CPU has AMX (:func:`cnnbench.kernels.amx.available`), a layer's forward pass (and a stride-1
    layer's gradients, a strided layer's on a large map by space-to-depth, and an RGB stem's weight
    gradient) runs on the AMX kernels: per layer
    (batch 32, 2 cores) 2.5-6x faster than Winograd with bf16 products, the ResNet stem and strided
    3x3 layers faster than XLA's convolution and the patches; a stride-1 1x1 layer on 16+ channels
    each way too, in every pass: forward 1.0-3.8x and the weight gradient 1.9-4.1x faster than
    XLA's bf16 products (BENCHMARKS.md, issue 26)."""
    plan = _plan(k, s, cin, cout, out_hw, platform, pads, dtype)
    if amx_products is None:
        amx_products = low_precision_products() == jnp.bfloat16
    if amx_products and _amx_applies(k, s, out_hw, platform, pads, dtype) and (k > 1 or min(cin, cout) >= 16):
        # the gradients: stride 1 only, and on 16+ channels each way (the input gradient's output
        # channels are the layer's inputs, padded to 32; the weight gradient's both); a layer on few
        # channels (an RGB stem, any stride: k*C <= 64) takes the weight gradient by kernel rows
        if s == 1 and min(cin, cout) >= 16:
            return dict.fromkeys(plan, "amx")
        blocks = -(-k // s)
        if min(cin, cout) >= 64 and min(out_hw) >= 28 and blocks > 1 and amx.supported(blocks, 1):
            # A strided layer on a large map (ResNet's first 3x3/2 after the stem): its gradients as
            # those of the stride-1 layer space-to-depth makes of it (2x2 on 4C channels: 16 taps
            # for 9, all on the kernel). Per layer, batch 32, input and weight gradient (ms):
            # 56x56x64 -> 128 15.4 -> 8.9 and 34.0 -> 15.8, 56x56x128 -> 128 26.6 -> 22.1 and
            # 47.0 -> 38.4; on smaller maps the rearrangements cost more than the taps save
            # (28x28x256 -> 256: 14.5 -> 23.7, 28.7 -> 23.9), and its forward pass lost everywhere
            # (BENCHMARKS.md, issue 26)
            return {**plan, "forward": "amx", "input_grad": "amx_s2d", "weight_grad": "amx_s2d"}
        return {**plan, "forward": "amx", **({"weight_grad": "amx_run"} if k * cin <= 64 else {})}
    if amx_products and k == 1 and s > 1 and min(cin, cout) >= 16 and not _padded(pads) \
            and _amx_applies(1, 1, out_hw, platform, pads, dtype):
        # A strided 1x1 layer (ResNet's projections): a stride-1 layer on the pixels the stride
        # reads (:func:`conv`), its forward pass a product (the kernel's strided grid was slower:
        # 28x28x512 -> 1024 7.8 against 11.6 ms), both gradients on the kernel. Forward and
        # backward, batch 32: 56x56x256 -> 512 65 -> 41 ms, 28x28x512 -> 1024 47 -> 24,
        # 14x14x1024 -> 2048 37 -> 24 (BENCHMARKS.md, issue 26).
        return {**plan, "input_grad": "amx", "weight_grad": "amx"}
    return plan


def _amx_applies(k, s, out_hw, platform, pads, dtype) -> bool:
    """A layer the AMX kernel computes: a square kernel of 2x2 to 11x11 with stride up to 4 and
    padding no wider than the kernel, float32 layers with bf16 products, on a CPU with AMX."""
    return (platform == "cpu" and amx.supported(k, s) and min(out_hw) >= 1 and jnp.dtype(dtype) == jnp.float32
            and all(0 <= p <= k - 1 for pad in pads for p in pad) and amx.available())


def _plan(k: int, s: int, cin: int, cout: int, out_hw: tuple[int, int], platform: str,
          pads=((0, 0), (0, 0)), dtype=jnp.float32) -> dict[str, str]:
    """:func:`choose` without the AMX kernel: from per-layer timings on a 2-core AVX2 CPU."""
    xla = {"forward": "xla", "input_grad": "xla", "weight_grad": "xla"}
    if platform != "cpu" or min(out_hw) < 1:  # too small an input: lax says so
        return xla
    # 5x5 only as measured (AlexNet's conv2, 64 input channels): on LeNet's or GoogLeNet's few
    # channels the 36- and 49-point transforms cost more (compiling included) than they save.
    if winograd.supported(k, s, pads) and jnp.dtype(dtype) == jnp.float32 and (k == 3 or cin >= 64):
        if cin < FEW_CHANNELS:
            # An RGB image's 3x3 layer (VGG's conv1, 224x224x3 -> 64, batch 32): on 3 channels the
            # transforms dominate. XLA's forward 95 ms against Winograd's 211, the patches' weight
            # gradient 211 against 480 (XLA's 358; AVX2 machine; built transposed since, see
            # :func:`_matmul_weight_grad`).
            return {"forward": "xla", "input_grad": "matmul", "weight_grad": "matmul"}
        if cin < 32:
            # 16 channels (the CIFAR ResNets' first stage, 32x32x16 -> 16, batch 128): XLA's
            # forward 5.4 ms against Winograd's 17.7, the patches' input gradient 15.0 against
            # 17.5; Winograd's weight gradient 18.0 against the patches' 27.9.
            return {"forward": "xla", "input_grad": "matmul", "weight_grad": "winograd"}
        # 3x3 stride 1 (AlexNet conv3-5, VGG, ResNet's 3x3 layers but the first of a stage):
        # Winograd in cache-sized chunks was 1.3-2x faster than XLA's convolution in every pass.
        # 5x5 stride 1 (AlexNet conv2): F(3x3, 5x5) beat XLA's forward (114 -> 56-58 ms), the
        # chunked patches' input gradient (91 -> 57) and weight gradient (102 -> 54); on maps
        # it does not tile, F(2x2, 5x5) beat the patches' input gradient too (16x16: 50 -> 43).
        return {"forward": "winograd", "input_grad": "winograd", "weight_grad": "winograd"}
    if k == 1 and jnp.dtype(dtype) == jnp.float32:
        # 1x1 (ResNet's bottlenecks and projections, GoogLeNet's reductions, NiN): one matrix
        # product per pass. XLA hands a 1x1 convolution to YNNPACK's convolution at 58-129
        # GFLOP/s; as a product it ran at 140-184 (forward 1.1-2.7x, input gradient 1.3-2.5x faster).
        return {"forward": "matmul", "input_grad": "matmul", "weight_grad": "matmul"}
    if k == 3 and s > 1 and cin >= 64 and jnp.dtype(dtype) == jnp.float32:
        # A strided 3x3 layer (the first 3x3 of ResNet's stages 2-4): patches and one product per
        # few images (:func:`_patch_chunk`) forward too. Per layer (batch 32, Zen 4, ms) XLA's
        # convolution against the chunked patches: 56x56x64 -> 128 40 -> 28, 28x28x128 -> 256
        # 36 -> 22, and with bf16 products (which XLA's float32 convolution cannot take) 47 -> 23,
        # 31 -> 16, 45 -> 21. Whole steps, old plan against this one, in one process:
        # resnet18 inference +5% (float32) and +18% (bf16), training +2% and +4%; resnet50
        # inference +1% and +2-8%, training +2% and +9-13% (BENCHMARKS.md, issue 26).
        return {"forward": "matmul", "input_grad": "matmul", "weight_grad": "matmul"}
    # Elsewhere XLA's forward convolution is kept (patches + matmul, chunked or not, was no
    # faster); both gradients are patches x matmul over cache-sized batch chunks: the weight
    # gradient 2.5-6x faster than XLA's (AlexNet's 11x11 conv1 included), the input gradient
    # 1.9-2.3x for 5x5 and strided 3x3 layers.
    return {**xla, "input_grad": "xla" if k == 1 else "matmul", "weight_grad": "matmul"}


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, s: int, pads: tuple, plan: tuple):
    return FORWARD[dict(plan)["forward"]](x, w, s, pads)


def _conv_fwd(x, w, s, pads, plan):
    # The AMX weight gradient takes its operands in bf16: keeping the input as the forward pass
    # rounded it (instead of float32) lets XLA write the activation once, in bf16, at half the bytes
    passes = dict(plan)
    kept = x.astype(jnp.bfloat16) if passes["weight_grad"] in ("amx", "amx_s2d") else x
    if passes["forward"] == "amx":
        # Training: the sums in float32 straight from the kernel. Batch norm's statistics and
        # normalisation read the output in several passes, for which XLA made a float32 copy of
        # the bf16 output (resnet50: 190 ms a step); inference (:func:`_amx_forward`) keeps bf16
        return amx.conv(x, w, s, pads).astype(x.dtype), (kept, w)
    return _conv(x, w, s, pads, plan), (kept, w)


def _conv_bwd(s, pads, plan, res, dy):
    x, w = res
    plan = dict(plan)
    return (INPUT_GRAD[plan["input_grad"]](x, w, dy, s, pads).astype(w.dtype),
            WEIGHT_GRAD[plan["weight_grad"]](x, w, dy, s, pads))


_conv.defvjp(_conv_fwd, _conv_bwd)


def _space_to_depth_blocks(k: int, s: int, cin: int, platform: str, dtype) -> int | None:
    """Kernel side after :func:`_space_to_depth_conv`, where that is worth doing: a strided layer on
    few channels (an RGB stem) whose kernel becomes 3x3 blocks, so Winograd applies (AlexNet's
    11x11 stride-4 conv1: 3x3 on 48 channels, measured 1.3-2x faster; BENCHMARKS.md)."""
    blocks = -(-k // s)
    ok = platform == "cpu" and s > 1 and blocks == winograd.R and s * s * cin <= 64 \
        and jnp.dtype(dtype) == jnp.float32
    return blocks if ok else None


def _s2d_input(x, k: int, s: int, pads, blocks: int):
    """The input of :func:`_space_to_depth_conv`'s stride-1 layer (for a ``k x k`` kernel): ``x``
    padded, its ``s x s`` pixel blocks made channels (an exact rearrangement: any dtype)."""
    n, h, wd, c = x.shape
    out = [(size + lo + hi - k) // s + 1 for size, (lo, hi) in zip((h, wd), pads)]
    side = [(m + blocks - 1) * s for m in out]                 # padded size the blocks tile
    xp = jnp.pad(x, [(0, 0), (pads[0][0], max(side[0] - h - pads[0][0], 0)),
                     (pads[1][0], max(side[1] - wd - pads[1][0], 0)), (0, 0)])[:, :side[0], :side[1]]
    hs, ws = side[0] // s, side[1] // s
    return xp.reshape(n, hs, s, ws, s, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, hs, ws, s * s * c)


def _s2d_kernel(w, s: int, blocks: int):
    """The kernel of :func:`_space_to_depth_conv`'s stride-1 layer: ``w`` zero-padded to
    ``blocks * s`` a side and cut into ``s x s`` blocks as the input is."""
    k, c, o = w.shape[0], w.shape[2], w.shape[3]
    wp = jnp.pad(w, [(0, blocks * s - k), (0, blocks * s - k), (0, 0), (0, 0)])
    return wp.reshape(blocks, s, blocks, s, c, o).transpose(0, 2, 1, 3, 4, 5).reshape(blocks, blocks, s * s * c, o)


def _space_to_depth_conv(x, w, s: int, pads, blocks: int):
    """A stride-``s`` convolution as a stride-1 one: ``s x s`` pixel blocks of the (padded) input
    become channels, and the kernel, zero-padded to ``blocks * s``, is cut the same way. The same
    sums in another order; gradients flow through the reshapes. (The output has exactly the
    strided layer's size: the padded input covers ``out + blocks - 1`` blocks a side; the kernel's
    zero taps past ``k`` meet whatever the last block holds.)"""
    return conv(_s2d_input(x, w.shape[0], s, pads, blocks), _s2d_kernel(w, s, blocks), 1, ((0, 0), (0, 0)))


def _amx_s2d_grads(x, w, dy, s: int, pads):
    """Both gradients of a strided layer as those of the stride-1 layer :func:`_space_to_depth_conv`
    makes of it, on the AMX kernels (which take the gradients of stride-1 layers only), carried back
    through the rearrangements. ``x`` as the forward pass kept it (bf16 for the kernel)."""
    k = w.shape[0]
    blocks = -(-k // s)
    xs, kernel = _s2d_input(x, k, s, pads, blocks), _s2d_kernel(w, s, blocks)
    unpadded = ((0, 0), (0, 0))
    dxs = _amx_input_grad(xs, kernel, dy, 1, unpadded)
    dks = amx.weight_grad(xs, dy, blocks, unpadded).astype(w.dtype)
    dx, = jax.linear_transpose(lambda v: _s2d_input(v, k, s, pads, blocks), jax.ShapeDtypeStruct(x.shape, w.dtype))(dxs)
    dw, = jax.linear_transpose(lambda v: _s2d_kernel(v, s, blocks), jax.ShapeDtypeStruct(w.shape, w.dtype))(dks)
    return dx, dw


def conv(x, w, stride: int, pads, plan: dict | None = None) -> jax.Array:
    """NHWC x HWIO 2-D convolution (square kernel, no groups, no dilation) via :func:`choose`."""
    pads = _int_pads(pads)
    k = w.shape[0]
    if plan is None:
        blocks = _space_to_depth_blocks(k, stride, w.shape[2], platform(), x.dtype)
        if blocks and min(_out_hw(x, k, stride, pads)) >= 1:
            return _space_to_depth_conv(x, w, stride, pads, blocks)
        plan = choose(k, stride, w.shape[2], w.shape[3], _out_hw(x, k, stride, pads),
                      platform(), pads, x.dtype)
    if set(plan.values()) == {"xla"}:
        return _lax_conv(x, w, stride, pads)
    if k == 1 and stride > 1 and plan["input_grad"] == "amx":  # the pixels the stride reads
        return _conv(x[:, ::stride, ::stride], w, 1, pads, tuple(sorted(plan.items())))
    return _conv(x, w, stride, pads, tuple(sorted(plan.items())))


def forward_form(k: int, stride: int, cin: int, cout: int, pads, dtype=jnp.float32) -> str | None:
    """The formulation :func:`conv`, under the choice in force (:mod:`.choice`: platform,
    products), gives this layer's forward pass on its kernel as it is (a key of :data:`FORWARD`),
    or None where it computes another layer (space-to-depth) or the fast forms are off. "amx": one
    AMX call, so a kernel packed once (:func:`cnnbench.kernels.amx.pack`) can stand in for it
    (:func:`packed_conv`); "matmul": products of the kernel itself, whose operands the products
    round as they are."""
    pads = _int_pads(pads)
    if not enabled("conv") or _space_to_depth_blocks(k, stride, cin, platform(), dtype):
        return None
    return choose(k, stride, cin, cout, (1, 1), platform(), pads, dtype)["forward"]


def packed_conv(x, packed, stride: int, pads, channels: int) -> jax.Array:
    """The forward pass :func:`conv` computes where :func:`forward_form` is "amx", from the kernel packed
    once (``channels``: the layer's output channels): the same values, without re-packing the
    kernel on every call. Inference only (no gradient)."""
    pads = _int_pads(pads)
    return amx.conv_packed(x, packed, stride, pads, channels, jnp.bfloat16).astype(x.dtype)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """Drop-in for ``lax.conv_general_dilated`` (what ``nnx.Conv`` calls): the fast path for the
    plain case (NHWC, square kernel, equal strides, no dilation; groups one by one) inside compiled
    functions, lax for the rest and for eager op-by-op calls (where the many small operations of
    the fast formulations would each be dispatched on their own)."""
    plain = (enabled("conv") and isinstance(lhs, jax.core.Tracer) and lhs.ndim == 4 and precision is None
             and not kwargs.get("preferred_element_type") and kwargs.get("out_sharding") is None
             and all(d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
             and not isinstance(padding, str) and rhs.shape[0] == rhs.shape[1]
             and len(set(window_strides)) == 1 and lhs.dtype == rhs.dtype
             and _is_nhwc(dimension_numbers))
    if not plain:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                        feature_group_count=feature_group_count, precision=precision,
                                        **kwargs)
    if feature_group_count > 1:
        return _grouped_conv(lhs, rhs, window_strides[0], padding, feature_group_count)
    return conv(lhs, rhs, window_strides[0], padding)


def _grouped_conv(x, w, stride: int, pads, groups: int) -> jax.Array:
    """A grouped convolution (AlexNet's two towers: group g's outputs see only group g's inputs)
    as one :func:`conv` per group, outputs concatenated. On a CPU XLA's grouped convolution ran the
    paper AlexNet's conv2 input gradient alone at 859 ms of a 3.1 s training step (BENCHMARKS.md);
    per group each pass gets :func:`choose`'s formulation. Accelerators keep the grouped op."""
    if platform() != "cpu":
        return lax.conv_general_dilated(x, w, (stride, stride), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=groups)
    cin, cout = w.shape[2], w.shape[3] // groups
    return jnp.concatenate([conv(x[..., g * cin:(g + 1) * cin], w[..., g * cout:(g + 1) * cout], stride, pads)
                            for g in range(groups)], axis=-1)


def _is_nhwc(dn) -> bool:
    if isinstance(dn, lax.ConvDimensionNumbers):
        return tuple(dn.lhs_spec) == (0, 3, 1, 2) and tuple(dn.rhs_spec) == (3, 2, 0, 1) \
            and tuple(dn.out_spec) == (0, 3, 1, 2)
    return tuple(dn or ()) == ("NHWC", "HWIO", "NHWC")
