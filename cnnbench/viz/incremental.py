"""Occluded forward passes that recompute only what the occluding square can change.

A square over part of the image changes a conv layer's output only inside the square's reach:
for AlexNet at 224x224 a 32-pixel square touches 11x11 of conv1's 55x55 outputs, 10x10 of
conv2's 27x27 and most of conv5's 13x13. :func:`occluded_logits` carries a window of each layer's
activations through the plain (chain-shaped) part of ``model.features`` (convolutions, max
pooling and the spatially point-wise layers), reading the clean image's activations around it,
and pastes it into the clean activations where the chain ends (a block that is not a plain layer,
or a window that has grown to the whole map); the rest of the network then runs as usual. The
windows are exact, not approximate: every output whose receptive field meets the square is
recomputed from the same inputs the full pass would use.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from cnnbench.archs import layers as L
from cnnbench.archs.inference import Identity
from cnnbench.kernels import fastops

#: layers that act on each spatial position alone (in evaluation mode; a folded batch norm's
#: :class:`Identity` too)
POINTWISE = (L.Act, L.LRN, L.BatchNorm, L.Dropout, Identity)


def _pads(layer, x) -> tuple[tuple[int, int], tuple[int, int]]:
    if isinstance(layer, L.Conv):
        return ((layer.p, layer.p), (layer.p, layer.p))
    return tuple(layer._pads(x)[1:3])


def _window_op(layer, crop):
    """``layer`` on an already padded ``crop`` (no padding of its own)."""
    if isinstance(layer, L.Conv):
        kernel = layer.kernel[...].astype(crop.dtype)
        if layer.groups == 1:  # the fast CPU formulations (XLA's own is slow on these small maps)
            y = fastops.conv(crop, kernel, layer.s, ((0, 0), (0, 0)))
        else:
            y = lax.conv_general_dilated(crop, kernel, (layer.s, layer.s), "VALID",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                         feature_group_count=layer.groups)
        return y if layer.bias is None else y + layer.bias[...].astype(crop.dtype)
    return lax.reduce_window(crop, -jnp.inf, lax.max, (1, layer.k, layer.k, 1), (1, layer.s, layer.s, 1), "VALID")


def _pad_value(layer):
    return 0.0 if isinstance(layer, L.Conv) else -jnp.inf


def _chain(model) -> list:
    """The leading layers of ``model.features`` that windows can pass through."""
    features = getattr(model, "features", None)
    if not isinstance(features, L.Sequential):
        return []
    out = []
    for _, layer in features.named_layers():
        if not isinstance(layer, (*POINTWISE, L.Conv, L.MaxPool)):
            break
        if isinstance(layer, L.Conv) and getattr(layer, "kernel_dilation", (1, 1)) not in (None, 1, (1, 1)):
            break
        out.append(layer)
    return out


def supported(model) -> bool:
    """Whether :func:`occluded_logits` saves anything: the features start with a convolution."""
    chain = _chain(model)
    return any(isinstance(layer, L.Conv) for layer in chain)


def _crop(padded, window, starts, origin, size):
    """For each b: ``padded`` [1, Hp, Wp, C] cut to ``size`` from ``origin[b]``, with ``window[b]``
    (whose top-left is at ``starts[b]`` in ``padded``'s coordinates; it may hang over the cut's
    edges, only the part inside is placed) written over it -> [B, *size, C]."""
    h, w = window.shape[1:3]

    def one(win, start, o):
        base = lax.dynamic_slice(padded[0], (o[0], o[1], 0), (*size, padded.shape[-1]))
        rows = o[0] + jnp.arange(size[0]) - start[0]
        cols = o[1] + jnp.arange(size[1]) - start[1]
        inside = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
        picked = jnp.take(jnp.take(win, jnp.clip(rows, 0, h - 1), axis=0), jnp.clip(cols, 0, w - 1), axis=1)
        return jnp.where(inside[:, :, None], picked, base)

    return jax.vmap(one)(window, starts, origin)


def occluded_logits(model, clean, window, starts):
    """Logits of ``B`` images that equal ``clean`` [1, H, W, C] (the model's input) except for
    ``window`` [B, h, w, C] placed at ``starts`` [B, 2] (top-left, inside the image)."""
    features = model.features
    chain = _chain(model)
    full, starts = clean, jnp.asarray(starts, jnp.int32)
    done = 0
    for layer in chain:
        if isinstance(layer, POINTWISE):
            window, full = layer(window, train=False), layer(full, train=False)
            done += 1
            continue
        k, s = layer.k, layer.s
        pads = _pads(layer, full)
        padded = jnp.pad(full, [(0, 0), *pads, (0, 0)], constant_values=_pad_value(layer))
        out_full = layer(full, train=False)
        out_hw = out_full.shape[1:3]
        size_in, size_out, origin = [], [], []
        for axis in range(2):
            n_out, span = out_hw[axis], window.shape[1 + axis]
            n = min(n_out, (span + k - 2) // s + 1)             # outputs the window can reach
            first = -((-(starts[:, axis] + pads[axis][0] - k + 1)) // s)  # ceil division
            first = jnp.clip(first, 0, n_out - n)
            size_out.append(n)
            size_in.append((n - 1) * s + k)
            origin.append(first)
        origin = jnp.stack(origin, axis=1)
        if tuple(size_out) == tuple(out_hw):   # the window has grown to the whole map
            break
        crop = _crop(padded, window, starts + jnp.asarray([pads[0][0], pads[1][0]]), origin * s, tuple(size_in))
        window, full, starts = _window_op(layer, crop), out_full, origin
        done += 1
    x = _crop(full, window, starts, jnp.zeros_like(starts), tuple(full.shape[1:3]))  # pasted back
    for name in features.names[done:]:
        x = features[name](x, train=False)
    return model.head(x, train=False)
