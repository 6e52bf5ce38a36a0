"""3x3 stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, 2016).

Each 2x2 block of outputs comes from a 4x4 tile of the input: the tile and the kernel are
carried into a 16-point transform domain (``B^T d B`` and ``G g G^T``, entries 0, +-1, 1/2), where
the convolution becomes 16 independent matrix multiplications over the channels, and back
(``A^T m A``). That is 16 multiply-adds per 4 outputs per channel pair instead of 36: 2.25x fewer.
In exact arithmetic the result is the convolution itself; in float32 it differs from XLA's by
about 1e-6 of the output's scale (``tests/test_fastops.py`` holds it to the same tolerance as the
other fast paths).

The three passes of a training step are all Winograd here:

- forward: ``Y = A^T [ (B^T d B) x (G g G^T) ] A`` per tile;
- input gradient: the same convolution of ``dy`` with the kernel turned 180 degrees and its
  channel axes swapped, padded by ``2 - pad``;
- weight gradient: ``dW = G^T [ sum over tiles (B^T d B)^T x (A dY A^T) ] G``, the transpose of
  the forward's transforms, accumulated over the batch.

XLA:CPU runs the transforms (element-wise sums of strided slices) at memory speed only while
their buffers stay in the caches, so every pass walks the batch a few images at a time
(:func:`chunk`): measured 1.3-2x faster than XLA's own convolution for AlexNet conv3-5, every
ResNet-18/34 3x3 layer and VGG's (BENCHMARKS.md).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

M, R = 2, 3           # outputs per tile side, kernel side
A_ = M + R - 1        # tile side: 4
BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)

#: bytes of one chunk's transformed tiles (16 x tiles x channels x 4) the chunk size aims at: the
#: measured optimum on a 2-core AVX2 EPYC with 1 MiB L2 per core and 32 MiB L3 was 6-10 MB.
CHUNK_BYTES = 8 << 20


def supported(k: int, s: int, pads) -> bool:
    """What this module computes: 3x3 kernels, stride 1, at most 2 pixels of padding per side
    (the input gradient pads by ``2 - pad``)."""
    return k == R and s == 1 and all(0 <= p <= R - 1 for side in pads for p in side)


def chunk(n: int, tiles: int, channels: int, budget: int | None = None) -> int:
    """Images per step: the largest divisor of ``n`` whose transformed tiles fit ``budget``
    (default :data:`CHUNK_BYTES`)."""
    per_image = A_ * A_ * tiles * channels * 4
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


def _tiling(h: int, w: int, pads):
    """Output size, tile counts and the padded input size the tiles need."""
    ho, wo = h + sum(pads[0]) - R + 1, w + sum(pads[1]) - R + 1
    th, tw = -(-ho // M), -(-wo // M)
    return (ho, wo), (th, tw), (th * M + R - 1, tw * M + R - 1)


def _input_tiles(x, pads):
    """``B^T d B`` for every 4x4 input tile: [16, N * th * tw, C]."""
    n, h, w, c = x.shape
    _, (th, tw), (hp, wp) = _tiling(h, w, pads)
    xp = jnp.pad(x, [(0, 0), (pads[0][0], hp - h - pads[0][0]), (pads[1][0], wp - w - pads[1][0]), (0, 0)])
    grid = [[lax.slice(xp, (0, i, j, 0), (n, i + M * (th - 1) + 1, j + M * (tw - 1) + 1, c), (1, M, M, 1))
             for j in range(A_)] for i in range(A_)]
    v = _transform_2d(BT, grid)
    return jnp.stack([v[k][l] for k in range(A_) for l in range(A_)]).reshape(A_ * A_, n * th * tw, c)


def _kernel(w):
    """``G g G^T``: [16, C, O]."""
    g = jnp.asarray(G, w.dtype)
    return jnp.einsum("ki,ijco,lj->klco", g, w, g).reshape(A_ * A_, w.shape[2], w.shape[3])


def _forward(x, w, pads):
    n, h, wd, _ = x.shape
    (ho, wo), (th, tw), _ = _tiling(h, wd, pads)
    o = w.shape[-1]
    m = lax.dot_general(_input_tiles(x, pads), _kernel(w), (((2,), (1,)), ((0,), (0,))))  # [16, P, O]
    m = m.reshape(A_, A_, n, th, tw, o)
    y = _transform_2d(AT, [[m[k, l] for l in range(A_)] for k in range(A_)])  # y[u][v]: [n, th, tw, o]
    y = jnp.stack([jnp.stack(row) for row in y])                                # [u, v, n, th, tw, o]
    y = jnp.transpose(y, (2, 3, 0, 4, 1, 5)).reshape(n, th * M, tw * M, o)
    return y[:, :ho, :wo, :]


def batched(f, x, size: int):
    """``f`` over ``x`` ``size`` images at a time (a loop XLA keeps as one)."""
    n = x.shape[0]
    if size >= n:
        return f(x)
    out = lax.map(f, x.reshape(n // size, size, *x.shape[1:]))
    return out.reshape(n, *out.shape[2:])


def conv(x, w, pads):
    """NHWC x HWIO 3x3 stride-1 convolution with ``pads`` ((top, bottom), (left, right))."""
    _, (th, tw), _ = _tiling(x.shape[1], x.shape[2], pads)
    size = chunk(x.shape[0], th * tw, max(w.shape[2], w.shape[3]))
    return batched(lambda xc: _forward(xc, w, pads), x, size)


def input_grad(dy, w, pads):
    """dL/dx of :func:`conv`: a convolution of ``dy`` with the kernel turned 180 degrees."""
    flipped = jnp.transpose(w[::-1, ::-1], (0, 1, 3, 2))
    return conv(dy, flipped, tuple((R - 1 - lo, R - 1 - hi) for lo, hi in pads))


def weight_grad(x, dy, pads):
    """dL/dw of :func:`conv`, accumulated in float32 over chunks of the batch."""
    n, h, w, c = x.shape
    o = dy.shape[-1]
    (ho, wo), (th, tw), _ = _tiling(h, w, pads)
    dtype = jnp.promote_types(x.dtype, dy.dtype)
    acc = jnp.promote_types(dtype, jnp.float32)

    def part(xc, dyc):
        b = xc.shape[0]
        v = _input_tiles(xc, pads)                                                # [16, P, C]
        d = jnp.pad(dyc, [(0, 0), (0, th * M - ho), (0, tw * M - wo), (0, 0)])
        d = d.reshape(b, th, M, tw, M, o)
        grid = [[d[:, :, u, :, v, :] for v in range(M)] for u in range(M)]      # dY tiles [b, th, tw, o]
        dm = _transform_2d(AT.T, grid)                                             # A dY A^T: 4x4
        dm = jnp.stack([dm[k][l] for k in range(A_) for l in range(A_)]).reshape(A_ * A_, b * th * tw, o)
        return lax.dot_general(v, dm, (((1,), (1,)), ((0,), (0,))), preferred_element_type=acc)  # [16, C, O]

    size = chunk(n, th * tw, max(c, o))
    if size >= n:
        du = part(x, dy)
    else:
        xs, dys = (a.reshape(n // size, size, *a.shape[1:]) for a in (x, dy))
        du = lax.scan(lambda total, pair: (total + part(*pair), None),
                      jnp.zeros((A_ * A_, c, o), acc), (xs, dys))[0]
    g = jnp.asarray(G, acc)
    dw = jnp.einsum("ki,klco,lj->ijco", g, du.reshape(A_, A_, c, o), g)
    return dw.astype(dtype)
