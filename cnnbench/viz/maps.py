"""Where in the image the class is: occlusion (Zeiler & Fergus 2014), saliency (Simonyan et al.
2014), class activation maps (Zhou et al. 2016), Grad-CAM (Selvaraju et al. 2017) and the
fully-convolutional class-score map (Long et al. 2015; OverFeat's sliding window).

Each method is one jitted function of a batch (images on the model's input scale unless said
otherwise); nothing loops over pixels in Python. The functions return raw arrays; figures are drawn
by :mod:`cnnbench.viz.commands`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from cnnbench.archs.layers import (AdaptiveAvgPool, Act, AvgPool, BatchNorm, Conv, Dense, Dropout,
                                   Flatten, GlobalAvgPool, LRN, MaxPool)
from cnnbench.archs.net import module_at
from cnnbench.errors import UsageError, setting
from cnnbench.viz import incremental as incremental_forward
from cnnbench.viz.inputs import Subject
from cnnbench.viz.taps import Taps


def logits(taps: Taps, x) -> np.ndarray:
    return np.asarray(jax.jit(lambda s, x: taps.apply(s, x)[0])(taps.state, x))


# --------------------------------------------------------------------------- occlusion

@dataclasses.dataclass
class Occlusion:
    probs: np.ndarray       # (rows, cols, classes): softmax with the square centred on each cell
    clean: np.ndarray       # (classes,): softmax of the unoccluded image
    patch: int
    stride: int


def occlusion(subject: Subject, image: np.ndarray, shift: np.ndarray, *, patch: int = 32, stride: int = 8,
              chunk: int = 64, advance: Callable[[int], None] = lambda n: None,
              incremental: bool = True) -> Occlusion:
    """Softmax outputs while a ``patch`` x ``patch`` square of the mean colour covers the image,
    centred on every ``stride``-th pixel (cell (i, j) of the map is the square centred in the
    ``stride`` x ``stride`` block at row i, column j). ``image`` is on the display scale (0-255).
    Positions go through the network ``chunk`` at a time, every chunk the same compiled function;
    with ``incremental`` (default) only what the square can change is recomputed, where the network
    allows (:mod:`cnnbench.viz.incremental`: exact, the same probabilities as full passes)."""
    if patch < 0 or stride < 1:
        raise UsageError(f"{setting('patch')} must be at least 0 and {setting('stride')} at least 1")
    h, w, c = image.shape
    rows, cols = -(-h // stride), -(-w // stride)
    ys, xs = np.meshgrid(np.arange(rows) * stride + stride // 2, np.arange(cols) * stride + stride // 2,
                         indexing="ij")
    tops = np.stack([ys.ravel(), xs.ravel()], axis=1) - patch // 2   # (P, 2) top-left corners
    positions = len(tops)
    # One more position whose square lies outside the image: the unoccluded probabilities, from
    # the same compiled function as the others.
    tops = np.concatenate([tops, np.full((1, 2), -patch - 1)])
    chunk = max(1, min(chunk, len(tops)))
    padded = np.concatenate([tops, np.repeat(tops[-1:], -len(tops) % chunk, axis=0)]).astype(np.int32)
    grey = jnp.asarray(subject.grey())
    taps = subject.taps
    # Only the square's surroundings are recomputed where the network allows it (exact).
    win = (min(patch, h), min(patch, w))
    windowed = incremental and patch > 0 and incremental_forward.supported(nnx.merge(taps.graphdef, taps.state))

    def cover(pixels, corners, origin):
        """``pixels`` (from image row/column ``origin``) with the squares at ``corners`` greyed."""
        r = origin[:, :1] + jnp.arange(pixels.shape[-3])[None]
        q = origin[:, 1:] + jnp.arange(pixels.shape[-2])[None]
        inside_r = (r >= corners[:, :1]) & (r < corners[:, :1] + patch)   # (B, rows)
        inside_q = (q >= corners[:, 1:]) & (q < corners[:, 1:] + patch)   # (B, cols)
        mask = inside_r[:, :, None, None] & inside_q[:, None, :, None]
        return jnp.where(mask, grey, pixels.astype(jnp.float32))

    @jax.jit
    def run(state, image, shift, corners):
        shifts = jnp.broadcast_to(shift, (len(corners), c))
        if not windowed:
            covered = cover(image[None], corners, jnp.zeros_like(corners))
            return jax.nn.softmax(taps.apply(state, subject.model_input(covered, shifts))[0].astype(jnp.float32))
        starts = jnp.clip(corners, 0, jnp.asarray([h - win[0], w - win[1]]))
        crops = jax.vmap(lambda o: lax.dynamic_slice(image, (o[0], o[1], 0), (*win, c)))(starts)
        window = subject.model_input(cover(crops, corners, starts), shifts)
        clean = subject.model_input(image[None].astype(jnp.float32), shifts[:1])
        model = nnx.merge(taps.graphdef, state)
        return jax.nn.softmax(incremental_forward.occluded_logits(model, clean, window, starts).astype(jnp.float32))

    image, shift = jnp.asarray(image), jnp.asarray(shift, jnp.float32)
    out = []
    for start in range(0, len(padded), chunk):
        out.append(np.asarray(run(taps.state, image, shift, padded[start:start + chunk])))
        advance(max(0, min(chunk, positions - start)))
    out = np.concatenate(out)
    return Occlusion(out[:positions].reshape(rows, cols, -1), out[positions], patch, stride)


# --------------------------------------------------------------------------- gradients

def saliency(taps: Taps, x, classes) -> np.ndarray:
    """d(class score)/d(input) for each image (Simonyan et al.): (N, H, W, C), the score being
    the class's logit (before the softmax), the input what the model sees (normalised)."""
    @jax.jit
    def grads(state, x, classes):
        def score(x):
            out, _ = taps.apply(state, x)
            return jnp.take_along_axis(out, classes[:, None], axis=1).sum()
        return jax.grad(score)(x)

    return np.asarray(grads(taps.state, jnp.asarray(x, jnp.float32), jnp.asarray(classes, jnp.int32)))


def saliency_map(gradient: np.ndarray) -> np.ndarray:
    """The map Simonyan et al. show: max over channels of |gradient|, (N, H, W)."""
    return np.abs(gradient).max(axis=-1)


def gradcam(taps: Taps, x, classes, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM at ``layer``: ReLU(sum_k alpha_k A_k), alpha_k the spatial mean of
    d(class logit)/dA_k. Returns (maps (N, h, w), the layer's activations (N, h, w, K))."""
    if not taps.spatial(layer):
        raise UsageError(f"Grad-CAM needs a layer with a spatial output; {layer} gives "
                         f"{taps.by_name[layer].shape}")
    shape = (len(x), *taps.by_name[layer].shape)

    @jax.jit
    def run(state, x, classes):
        def score(delta):
            out, acts = taps.apply(state, x, [layer], deltas={layer: delta})
            return jnp.take_along_axis(out, classes[:, None], axis=1).sum(), acts[layer]
        g, a = jax.grad(score, has_aux=True)(jnp.zeros(shape, jnp.float32))
        weights = g.mean(axis=(1, 2))                                  # (N, K)
        return jax.nn.relu(jnp.einsum("nhwk,nk->nhw", a, weights)), a

    maps, acts = run(taps.state, jnp.asarray(x, jnp.float32), jnp.asarray(classes, jnp.int32))
    return np.asarray(maps), np.asarray(acts)


def default_gradcam_layer(taps: Taps) -> str:
    """The last stage of the network that still outputs maps larger than 1x1 (the last
    convolutional layer after its ReLU, an Inception module, a residual stage), as Selvaraju et al.
    use."""
    stages = taps.stages()
    if not stages:
        raise UsageError(f"{taps.arch} has no layer with a spatial output for Grad-CAM")
    return stages[-1]


# --------------------------------------------------------------------------- CAM

def _head_layers(taps: Taps) -> list[tuple[str, object]]:
    head = taps.module("head")
    if not hasattr(head, "named_layers"):
        raise UsageError(f"{taps.arch}'s head is not a sequence of layers")
    return [(f"head.{name}", layer) for name, layer in head.named_layers()]


def cam_layers(taps: Taps) -> tuple[str, list[str]]:
    """(the layer whose output global average pooling averages, the affine layers after it)."""
    layers = _head_layers(taps)
    gap = [i for i, (_, layer) in enumerate(layers) if isinstance(layer, GlobalAvgPool)]
    if not gap:
        raise UsageError(f"class activation maps need global average pooling before the classifier "
                         f"(NiN, GoogLeNet, ResNet); {taps.arch} has none: use `cnnbench visualize gradcam`")
    i = gap[-1]
    tail = layers[i + 1:]
    if any(not isinstance(layer, (Dense, Dropout)) for _, layer in tail):
        raise UsageError(f"{taps.arch}: the layers after global average pooling are not affine; use gradcam")
    return (layers[i - 1][0] if i else "features"), [name for name, _ in tail]


def cam(taps: Taps, x) -> tuple[np.ndarray, np.ndarray]:
    """Class activation maps (Zhou et al.): the classifier after global average pooling applied at
    every position of the map it averages, minus its bias: (maps (N, h, w, classes), logits).
    Averaged over positions, a class's map is its logit minus the classifier's bias."""
    source, tail = cam_layers(taps)

    @jax.jit
    def run(state, x):
        out, acts = taps.apply(state, x, [source])
        model = nnx_merge(taps, state)
        a = acts[source]

        def classify(v):
            for name in tail:
                v = module_at(model, name)(v, train=False)
            return v

        return classify(a) - classify(jnp.zeros(a.shape[-1:], a.dtype)), out

    maps, out = run(taps.state, jnp.asarray(x, jnp.float32))
    return np.asarray(maps), np.asarray(out)


def nnx_merge(taps: Taps, state):
    from flax import nnx

    return nnx.merge(taps.graphdef, state)


# --------------------------------------------------------------------------- FCN heat map

def _fcn_plan(taps: Taps) -> list[tuple[str, str, tuple]]:
    """The head rewritten for inputs larger than the training size: (op, layer, arguments).
    Dense layers become convolutions (the first after a flatten with the flattened map's extent,
    the others 1x1), global average pooling becomes average pooling over a window of the map size
    at training resolution, adaptive pooling that is the identity at training size is dropped."""
    plan = []
    shape = taps.by_name["features"].shape        # at the training size
    flattened = None                              # (h, w, c) of the map a Flatten consumed
    for name, layer in _head_layers(taps):
        out = taps.by_name[name].shape
        if isinstance(layer, Flatten):
            flattened = shape if len(shape) == 3 else (1, 1, shape[-1])
        elif isinstance(layer, GlobalAvgPool):
            plan.append(("avg", name, tuple(shape[:2])))
            flattened = None
        elif isinstance(layer, AdaptiveAvgPool):
            if tuple(shape) != tuple(out):
                raise UsageError(f"{taps.arch}: {name} resamples a {shape[0]}x{shape[1]} map at the "
                                 f"training size; the fully-convolutional view needs it to be the identity")
        elif isinstance(layer, Dense):
            kernel = flattened if flattened is not None else (1, 1, shape[-1])
            plan.append(("dense", name, tuple(kernel)))
            flattened = None
        elif isinstance(layer, Dropout):
            pass                                  # the identity in evaluation
        elif isinstance(layer, (Act, Conv, BatchNorm, MaxPool, AvgPool, LRN)):
            plan.append(("layer", name, ()))
        else:
            raise UsageError(f"{taps.arch}: cannot apply {name} ({type(layer).__name__}) convolutionally")
        shape = out
    return plan


def fcn(taps: Taps, x) -> np.ndarray:
    """Class scores (logits) at every position, (N, rows, cols, classes), for inputs of any size at
    least the training size: the convolutional base, then the head applied as convolutions, so
    position (i, j) scores the training-size window there (at the training size: one position, the
    model's logits)."""
    plan = _fcn_plan(taps)

    @jax.jit
    def run(state, x):
        model = nnx_merge(taps, state)
        y = model.features(x, train=False)
        for op, name, args in plan:
            layer = module_at(model, name)
            if op == "avg":
                y = lax.reduce_window(y, 0.0, lax.add, (1, *args, 1), (1, 1, 1, 1), "VALID") / (args[0] * args[1])
            elif op == "dense":
                kernel = layer.kernel_in_out().reshape(*args, -1)
                y = lax.conv_general_dilated(y, kernel, (1, 1), "VALID",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
                if layer.bias is not None:
                    y = y + layer.bias[...]
            else:
                y = layer(y, train=False)
        return y

    try:
        return np.asarray(run(taps.state, jnp.asarray(x, jnp.float32)))
    except (TypeError, ValueError) as e:
        raise UsageError(f"the image is too small for the fully-convolutional view of {taps.arch} "
                         f"(at least {taps.input_shape[0]}x{taps.input_shape[1]}): {str(e).splitlines()[0]}") from None
