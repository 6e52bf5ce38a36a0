"""Stride-1 convolution by Winograd's minimal filtering (Lavin & Gray, 2016): F(2x2, 3x3), and
F(3x3, 5x5) where its blocks fit the map (else F(2x2, 5x5), see :func:`form`); weight gradients by
F(3x3, 3x3) / F(3x3, 5x5) where the batch chunks hold enough tiles (see :func:`weight_form`).

Each m x m block of outputs (m = 2 for 3x3 kernels, 3 for 5x5) comes from an a x a tile of the
input (a = m + r - 1: 4 for 3x3, 7 for 5x5): the tile and the kernel are carried into an a*a-point
transform domain (``B^T d B`` and ``G g G^T``), where the convolution becomes a*a independent
matrix multiplications over the channels, and back (``A^T m A``). For 3x3 kernels that is 16
multiply-adds per 4 outputs per channel pair instead of 36 (2.25x fewer; F(3x3, 3x3): 25 per 9
instead of 81); for 5x5, 49 per 9 outputs instead of 225 (4.6x fewer). In exact arithmetic the
result is the convolution itself; in float32 it differs from XLA's by about 1e-6 (3x3) and 7e-6
(5x5) of the output's scale (``tests/test_fastops.py`` holds it to the same tolerance as the
other fast paths).

The three passes of a training step:

- forward: ``Y = A^T [ (B^T d B) x (G g G^T) ] A`` per tile;
- input gradient: the same convolution of ``dy`` with the kernel turned 180 degrees and its
  channel axes swapped, padded by ``r - 1 - pad``;
- weight gradient: ``dW = G^T [ sum over tiles (B^T d B)^T x (A dY A^T) ] G``, the transpose of
  the forward's transforms, accumulated over the batch.

XLA:CPU runs the transforms (element-wise sums of strided slices) at memory speed only while
their buffers stay in the caches, so every pass walks the batch a few images at a time
(:func:`chunk`): measured 1.3-2x faster than XLA's own convolution for AlexNet conv3-5, every
ResNet-18/34 3x3 layer and VGG's (BENCHMARKS.md). The a*a points of a transform go through the
products in groups of at most :data:`GROUP`, each group written by one fused computation: whole
training steps 8-13% faster than with all points stacked at once (resnet18, alexnet-owt, vgg11).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jax import lax

from cnnbench.kernels.products import accumulator, to_products


@dataclasses.dataclass(frozen=True, eq=False)
class Minimal:
    """F(m x m, r x r): ``AT`` (m x a), ``G`` (a x r), ``BT`` (a x a), a = m + r - 1."""

    m: int
    r: int
    AT: np.ndarray
    G: np.ndarray
    BT: np.ndarray

    @property
    def a(self) -> int:
        return self.m + self.r - 1

    @property
    def GG(self) -> np.ndarray:
        """``G kron G`` [a*a, r*r]: ``G g G^T`` of an r x r kernel as one matrix product."""
        return np.kron(self.G, self.G)


def toom_cook(m: int, r: int, points) -> Minimal:
    """F(m, r) from the Toom-Cook construction at ``m + r - 2`` finite points and infinity:
    ``A^T`` and ``G`` from the points (Lavin & Gray, eq. 8-10), ``B^T`` solved from the identity
    ``y_i = sum_k d_(i+k) g_k = A^T [(G g) * (B^T d)]`` for every i, k and input position."""
    a = m + r - 1
    p = [float(v) for v in points][:a - 1]
    at = np.array([[pj ** i for pj in p] + [1.0 if i == m - 1 else 0.0] for i in range(m)])
    f = [np.prod([pj - pl for pl in p if pl != pj]) for pj in p]
    g = np.array([[pj ** k / fj for k in range(r)] for pj, fj in zip(p, f)] + [[0.0] * (r - 1) + [1.0]])
    rows, rhs = [], []
    for i in range(m):
        for k in range(r):
            for col in range(a):
                coef = np.zeros((a, a))
                coef[:, col] = at[i] * g[:, k]
                rows.append(coef.ravel())
                rhs.append(1.0 if col == i + k else 0.0)
    bt = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0].reshape(a, a)
    bt = np.round(bt, 9) + 0.0  # exact small integers for these points (no -0.0)
    return Minimal(m, r, at, g, bt)


#: by kernel side, the forms in order of preference: F(2x2, 3x3) with the transforms of Lavin &
#: Gray (entries 0, +-1, 1/2); for 5x5, F(3x3, 5x5) at the points 0, +-1, +-2, 1/2 and infinity,
#: else F(2x2, 5x5) at 0, +-1, +-2 and infinity (see :func:`form`).
FORMS = {
    3: (Minimal(2, 3, np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64),
                np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64),
                np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)),),
    5: (toom_cook(3, 5, (0, 1, -1, 2, -2, 0.5)), toom_cook(2, 5, (0, 1, -1, 2, -2))),
}


#: the most a form's m x m blocks may overhang the output, as a fraction of its area (see :func:`form`)
OVERHANG = 0.11


def form(k: int, out_hw: tuple[int, int]) -> Minimal:
    """The first of ``FORMS[k]`` whose m x m blocks, tiling the output, overhang it by at most
    :data:`OVERHANG` of its area; else the last.

    For 5x5 kernels (batch 32, float32, ms for forward / input gradient / weight gradient),
    F(3x3, 5x5) against F(2x2, 5x5): AlexNet's conv2 (27x27, 64 -> 192) 56-58 / 57 / 54 against
    82 / 87 / 69; NiN's (26x26, 96 -> 256, 8% overhang) 114 / 120 / 72 against 146 / 154 / 109;
    20x20 (10%) 25 / 25 / 20 against 33 / 35 / 32. With more overhang it lost the forward: 17x17
    (12%) 69 against 49, 16x16 (27%) 65 against 44, 10x10 (44%) 5.1 against 4.8. Its error is
    7e-6 of the output's scale against F(2x2, 5x5)'s 5e-6 (BENCHMARKS.md)."""
    forms = FORMS[k]
    h, w = out_hw

    def overhang(f):
        return -(-h // f.m) * f.m * -(-w // f.m) * f.m / (h * w) - 1

    return next((f for f in forms if overhang(f) <= OVERHANG), forms[-1])


#: by kernel side, the forms :func:`weight_grad` prefers, larger blocks first (see :func:`weight_form`)
WEIGHT_FORMS = {3: (toom_cook(3, 3, (0, 1, -1, 2)), FORMS[3][0]), 5: FORMS[5]}

#: the fewest tiles a weight-gradient chunk may contract over for the larger form (see :func:`weight_form`)
WEIGHT_MIN_TILES = 128


def weight_form(k: int, n: int, out_hw: tuple[int, int], channels: int) -> Minimal:
    """The weight gradient's form: the first of ``WEIGHT_FORMS[k]`` whose chunk of the batch (see
    :func:`chunk`) contracts over at least :data:`WEIGHT_MIN_TILES` tiles, else the last.

    Its sums run over every tile of the chunk, so larger blocks (fewer tiles, fewer transform
    points per output) pay off until the contraction gets short. 3x3 kernels, batch 32, ms,
    F(3x3, 3x3) against F(2x2, 3x3): 56x56x64 -> 64 (722 tiles per chunk) 38-39 against 56;
    112x112x64 -> 128 (1444) 301 against 445; 28x28x128 -> 128 (400) 29-30 against 38;
    13x13x384 -> 256 (200) 35 against 40; 7x7x512 -> 512 (144) 35 against 38; but 28x28x256 -> 512
    (100 tiles, one image per chunk) 289 against 208 (BENCHMARKS.md). 5x5 kernels: F(3x3, 5x5)
    was as fast or faster on every map measured, overhanging or not."""
    forms = WEIGHT_FORMS[k]
    for f in forms[:-1]:
        _, (th, tw), _ = _tiling(f, out_hw[0] + f.r - 1, out_hw[1] + f.r - 1, ((0, 0), (0, 0)))
        if chunk(n, th * tw, channels, a=f.a) * th * tw >= WEIGHT_MIN_TILES:
            return f
    return forms[-1]


R = 3  # the kernel side of F(2x2, 3x3), which the space-to-depth stem aims at

#: the most transform points one computation writes. XLA:CPU fuses a concatenation with its
#: element-wise operands only up to 8 operands (``kMaxConcatenateArguments``); past that it
#: computes every point in a fusion of its own and then copies them all into the stacked array.
#: So the a*a points go through the products in groups (:func:`groups`) of at most this many.
GROUP = 8


def groups(points: int, size: int | None = None) -> list[tuple[int, int]]:
    """``[lo, hi)`` ranges splitting ``points`` into the fewest groups of at most ``size``
    (default :data:`GROUP`), as equal as they can be: 16 -> 8 + 8, 25 -> 6 + 6 + 7 + 6."""
    size = size or GROUP
    count = -(-points // size)
    bounds = [round(i * points / count) for i in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _stacked(points: list) -> list:
    """Equally shaped arrays, stacked group by group (:func:`groups`): one array per group."""
    return [jnp.stack(points[lo:hi]) for lo, hi in groups(len(points))]


#: bytes of one chunk's transformed tiles (a*a x tiles x channels x 4) the chunk size aims at: the
#: measured optimum on a 2-core AVX2 EPYC with 1 MiB L2 per core and 32 MiB L3 was 6-10 MB.
CHUNK_BYTES = 8 << 20


def supported(k: int, s: int, pads) -> bool:
    """What this module computes: 3x3 and 5x5 kernels, stride 1, at most ``k - 1`` pixels of
    padding per side (the input gradient pads by ``k - 1 - pad``)."""
    return k in FORMS and s == 1 and all(0 <= p <= k - 1 for side in pads for p in side)


def chunk(n: int, tiles: int, channels: int, budget: int | None = None, a: int = 4) -> int:
    """Images per step: the largest divisor of ``n`` whose transformed tiles (``a*a`` per tile)
    fit ``budget`` (default :data:`CHUNK_BYTES`)."""
    per_image = a * a * tiles * channels * 4
    cap = max(1, (budget or CHUNK_BYTES) // max(per_image, 1))
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def _combine(matrix, items):
    """``[sum_j matrix[i, j] * items[j] for i]``, skipping zero coefficients (no multiply for +-1)."""
    out = []
    for row in matrix:
        total = None
        for coef, item in zip(row, items):
            if coef == 0:
                continue
            term = item if coef == 1 else -item if coef == -1 else item * jnp.asarray(coef, item.dtype)
            total = term if total is None else total + term
        out.append(total)
    return out


def _transform_2d(matrix, grid):
    """``matrix @ grid @ matrix^T`` on an a x a grid (list of lists) of equally shaped arrays."""
    cols = [_combine(matrix, [row[j] for row in grid]) for j in range(len(grid[0]))]  # cols[j][k]
    return [_combine(matrix, [cols[j][k] for j in range(len(cols))]) for k in range(len(matrix))]


def _tiling(f: Minimal, h: int, w: int, pads):
    """Output size, tile counts and the padded input size the tiles need."""
    ho, wo = h + sum(pads[0]) - f.r + 1, w + sum(pads[1]) - f.r + 1
    th, tw = -(-ho // f.m), -(-wo // f.m)
    return (ho, wo), (th, tw), (th * f.m + f.r - 1, tw * f.m + f.r - 1)


def _input_tiles(f: Minimal, x, pads):
    """``B^T d B`` for every a x a input tile: [a*a, N * th * tw, C] in groups of points
    (:func:`_stacked`)."""
    n, h, w, c = x.shape
    _, (th, tw), (hp, wp) = _tiling(f, h, w, pads)
    m, a = f.m, f.a
    xp = jnp.pad(x, [(0, 0), (pads[0][0], hp - h - pads[0][0]), (pads[1][0], wp - w - pads[1][0]), (0, 0)])
    grid = [[lax.slice(xp, (0, i, j, 0), (n, i + m * (th - 1) + 1, j + m * (tw - 1) + 1, c), (1, m, m, 1))
             for j in range(a)] for i in range(a)]
    v = _transform_2d(f.BT, grid)
    return _stacked([v[k][l].reshape(n * th * tw, c) for k in range(a) for l in range(a)])


def _kernel(f: Minimal, w, turned: bool = False):
    """``G g G^T``: [a*a, C, O] in the groups of :func:`groups`, each as one matrix product
    ``(G kron G) @ w`` over the r*r taps of the HWIO kernel, which are its leading axes, so no
    transposes: measured 11x faster than the same transform as an einsum over G twice (1.1 vs
    12.9 ms on a 3x3 512x512 kernel, where XLA ran two skinny matrix products over transposed
    copies); the same sums up to float rounding. ``turned``: of the kernel turned 180 degrees
    (the taps in reverse order), channels unswapped."""
    r, c, o = f.r, w.shape[2], w.shape[3]
    gg = jnp.asarray(f.GG[:, ::-1] if turned else f.GG, w.dtype)
    taps = w.reshape(r * r, c * o)
    return [(gg[lo:hi] @ taps).reshape(hi - lo, c, o) for lo, hi in groups(f.a * f.a)]


def _forward(f: Minimal, x, kernel, pads, swapped: bool = False):
    """One chunk of images; ``kernel`` is :func:`_kernel`'s transform (a list, one array per group
    of points), computed once per call of :func:`conv` (inside the chunk loop XLA recomputed it on
    every step: 12 ms of AlexNet conv2's 95)."""
    n, h, wd, _ = x.shape
    (ho, wo), (th, tw), _ = _tiling(f, h, wd, pads)
    o, a = kernel[0].shape[1 if swapped else 2], f.a
    dims = (((2,), (2 if swapped else 1,)), ((0,), (0,)))
    # low-precision products (kernels.products): bf16 tiles and kernel, float32 sums, and the output
    # transform in float32
    acc = accumulator(to_products(kernel[0]).dtype)
    m = [lax.dot_general(to_products(t), to_products(k), dims, preferred_element_type=acc)
         for t, k in zip(_input_tiles(f, x, pads), kernel)]  # [g, P, O] each
    m = [part[i].reshape(n, th, tw, o) for part in m for i in range(part.shape[0])]     # the a*a points
    y = _transform_2d(f.AT, [m[k * a:(k + 1) * a] for k in range(a)])               # y[u][v]: [n, th, tw, o]
    y = jnp.stack([jnp.stack(row) for row in y])                                # [u, v, n, th, tw, o]
    y = jnp.transpose(y, (2, 3, 0, 4, 1, 5)).reshape(n, th * f.m, tw * f.m, o)
    return y[:, :ho, :wo, :].astype(x.dtype)


def batched(f, x, size: int):
    """``f`` over ``x`` ``size`` images at a time (a loop XLA keeps as one)."""
    n = x.shape[0]
    if size >= n:
        return f(x)
    out = lax.map(f, x.reshape(n // size, size, *x.shape[1:]))
    return out.reshape(n, *out.shape[2:])


def summed(part, x, dy, size: int):
    """``part(x_i, dy_i)`` summed over the batch's chunks of ``size`` images (a loop XLA keeps as
    one). The first chunk's term starts the sum rather than a zero array: the same sums in the same
    order, and inside a ``shard_map`` (a layer split over devices) the sum's type then varies over
    the devices as its terms do."""
    n = x.shape[0]
    if size >= n:
        return part(x, dy)
    xs, dys = (arr.reshape(n // size, size, *arr.shape[1:]) for arr in (x, dy))
    return lax.scan(lambda total, pair: (total + part(*pair), None), part(xs[0], dys[0]), (xs[1:], dys[1:]))[0]


def _out_hw(x, k: int, pads) -> tuple[int, int]:
    return x.shape[1] + sum(pads[0]) - k + 1, x.shape[2] + sum(pads[1]) - k + 1


def conv(x, w, pads, turned: bool = False):
    """NHWC x HWIO stride-1 convolution (3x3 or 5x5 kernel) with ``pads`` ((top, bottom), (left, right));
    ``turned``: with ``w`` turned 180 degrees and its channel axes swapped, without building that kernel."""
    f = form(w.shape[0], _out_hw(x, w.shape[0], pads))
    _, (th, tw), _ = _tiling(f, x.shape[1], x.shape[2], pads)
    size = chunk(x.shape[0], th * tw, max(w.shape[2], w.shape[3]), a=f.a)
    kernel = [to_products(k) for k in _kernel(f, w, turned)]  # (low-precision products: once, not per chunk)
    return batched(lambda xc: _forward(f, xc, kernel, pads, swapped=turned), x, size)


def input_grad(dy, w, pads):
    """dL/dx of :func:`conv`: a convolution of ``dy`` with the kernel turned 180 degrees."""
    k = w.shape[0]
    return conv(dy, w, tuple((k - 1 - lo, k - 1 - hi) for lo, hi in pads), turned=True)


def weight_grad(x, dy, pads, k: int = 3):
    """dL/dw of :func:`conv` (a ``k x k`` kernel), accumulated in float32 over chunks of the batch."""
    n, h, w, c = x.shape
    o = dy.shape[-1]
    f = weight_form(k, n, _out_hw(x, k, pads), max(c, o))
    m, a = f.m, f.a
    (ho, wo), (th, tw), _ = _tiling(f, h, w, pads)
    dtype = jnp.promote_types(x.dtype, dy.dtype)
    acc = jnp.promote_types(dtype, jnp.float32)

    def part(xc, dyc):
        b = xc.shape[0]
        v = _input_tiles(f, xc, pads)                                             # [g, P, C] each
        d = jnp.pad(dyc, [(0, 0), (0, th * m - ho), (0, tw * m - wo), (0, 0)])
        d = d.reshape(b, th, m, tw, m, o)
        grid = [[d[:, :, u, :, v, :] for v in range(m)] for u in range(m)]      # dY tiles [b, th, tw, o]
        dm = _transform_2d(f.AT.T, grid)                                           # A dY A^T: a x a
        dm = _stacked([dm[i][j].reshape(b * th * tw, o) for i in range(a) for j in range(a)])
        return jnp.concatenate([lax.dot_general(to_products(vg), to_products(dg), (((1,), (1,)), ((0,), (0,))),
                                                preferred_element_type=acc)
                                for vg, dg in zip(v, dm)])                        # [a*a, C, O]

    du = summed(part, x, dy, chunk(n, th * tw, max(c, o), a=a))
    # G^T du G, as one matrix product over the a*a points (as in :func:`_kernel`)
    dw = jnp.asarray(f.GG.T, acc) @ du.reshape(a * a, c * o)
    return dw.reshape(f.r, f.r, c, o).astype(dtype)
