"""What the units respond to: learned filters (Krizhevsky et al. 2012, Figure 3), feature maps of
one image, the dataset patches that excite a unit most (Zeiler & Fergus 2014, Figure 2), and the
feature space itself: a t-SNE embedding and nearest neighbours (Krizhevsky et al., Figure 4)."""

from __future__ import annotations

import dataclasses
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from cnnbench.archs.layers import Conv, Dense
from cnnbench.errors import UsageError
from cnnbench.viz.inputs import Batch, Subject
from cnnbench.viz.taps import Taps


# --------------------------------------------------------------------------- filters

@dataclasses.dataclass
class Filters:
    layer: str
    kernels: np.ndarray   # (k, k, inputs per group, outputs); a first dense layer as (H, W, C, outputs)
    dense: bool = False


def default_filter_layer(taps: Taps) -> str:
    convs = taps.of_kind((Conv,))
    if convs:
        return convs[0]
    dense = taps.of_kind((Dense,))
    if dense:
        return dense[0]
    raise UsageError(f"{taps.arch} has no convolution or dense layer")


def filters(taps: Taps, layer: str) -> Filters:
    module = taps.module(layer)
    if not isinstance(module, (Conv, Dense)):  # a block (GoogLeNet's conv1 = conv + ReLU): its first conv
        inside = [n for n in taps.of_kind((Conv,)) if n.startswith(layer + ".")]
        if inside:
            layer, module = inside[0], taps.module(inside[0])
    if isinstance(module, Conv):
        return Filters(layer, np.asarray(module.kernel[...]))
    if isinstance(module, Dense):
        h, w, c = taps.input_shape
        kernel = np.asarray(module.kernel_in_out())
        if kernel.shape[0] != h * w * c:
            raise UsageError(f"{layer} is a dense layer on {kernel.shape[0]} features, not on the "
                             f"{h}x{w}x{c} image: only convolutions and a first dense layer have "
                             f"filters to show")
        return Filters(layer, kernel.reshape(h, w, c, -1), dense=True)
    raise UsageError(f"{layer} is a {type(module).__name__}, which has no filters; convolutions: "
                     f"{', '.join(taps.of_kind((Conv,)))}")


def kernel_images(kernels: np.ndarray) -> np.ndarray:
    """(outputs, k, k, c) with each kernel scaled to [0, 1] on its own (the usual display of
    first-layer filters: the colours are relative within a kernel)."""
    k = np.moveaxis(kernels, -1, 0).astype(np.float32)
    low = k.min(axis=(1, 2, 3), keepdims=True)
    span = k.max(axis=(1, 2, 3), keepdims=True) - low
    return np.where(span > 0, (k - low) / np.where(span > 0, span, 1), 0.5)


# --------------------------------------------------------------------------- activations

def activations(subject: Subject, images, shift, names: list[str]) -> dict[str, np.ndarray]:
    """The outputs of ``names`` for a batch of display images: {name: (N, ...)}."""
    taps = subject.taps

    @jax.jit
    def run(state, images, shift):
        return taps.apply(state, subject.model_input(images, shift), names)[1]

    return {k: np.asarray(v) for k, v in run(taps.state, jnp.asarray(images), jnp.asarray(shift)).items()}


def default_activation_layers(taps: Taps, count: int = 4) -> list[str]:
    """Up to ``count`` stages of the convolutional base (see :meth:`Taps.stages`), spread from the
    first to the last."""
    stages = [n for n in taps.stages() if n.startswith("features.")] or taps.stages()
    if not stages:
        return [taps.names[0]]
    picks = np.unique(np.linspace(0, len(stages) - 1, min(count, len(stages))).round().astype(int))
    return [stages[i] for i in picks]


# --------------------------------------------------------------------------- top patches

@dataclasses.dataclass
class Patch:
    value: float          # the channel's largest activation in this image
    label: int
    box: tuple[int, int, int, int]   # top, left, bottom, right in the (preprocessed) image
    pixels: np.ndarray    # the image cropped to the box (display scale)


def receptive_box(taps: Taps, layer: str, row: int, col: int) -> tuple[int, int, int, int]:
    """The input pixels unit (row, col) of ``layer`` sees, clipped to the image, from the geometry
    `cnnbench summary` reports (receptive field, effective stride and padding)."""
    g = taps.by_name[layer].geometry
    h, w = taps.input_shape[:2]
    top = row * g.effective_stride - g.effective_padding
    left = col * g.effective_stride - g.effective_padding
    return (max(top, 0), max(left, 0), min(top + g.receptive_field, h), min(left + g.receptive_field, w))


def _tally(batch: Batch, seen: int, advance) -> int:
    """``seen`` plus the batch's valid images, reported to ``advance``."""
    count = int(batch.valid.sum())
    advance(count)
    return seen + count


def _require_images(seen: int) -> int:
    if seen == 0:
        raise UsageError("no image could be read from the dataset")
    return seen


def top_patches(subject: Subject, batches: Iterable[Batch], layer: str, channels: list[int], *,
                top: int = 9, advance=lambda n: None) -> tuple[list[list[Patch]], int]:
    """For each channel of ``layer``, the ``top`` images whose strongest response in that channel
    is the largest, each cropped to the receptive field of the unit that responded (one patch per
    image, as Zeiler & Fergus show them). Returns the patches and the number of images seen."""
    taps = subject.taps
    shape = taps.by_name[layer].shape
    if any(c < 0 or c >= shape[-1] for c in channels):
        raise UsageError(f"{layer} has {shape[-1]} channels (0-{shape[-1] - 1}); got {channels}")
    spatial = len(shape) == 3
    picked = jnp.asarray(channels)

    def strongest(state, images, shift):
        a = taps.apply(state, subject.model_input(images, shift), [layer])[1][layer][..., picked]
        if not spatial:
            return a, jnp.zeros(a.shape, jnp.int32)
        flat = a.reshape(a.shape[0], -1, a.shape[-1])                 # (N, h*w, channels)
        return flat.max(axis=1), flat.argmax(axis=1).astype(jnp.int32)

    from cnnbench.parallel import over_batch

    best: list[list[Patch]] = [[] for _ in channels]
    seen = 0
    run = over_batch(strongest, taps.state)  # each batch split over every device
    for batch in batches:
        values, where = run(batch.images, batch.shift)
        for n in np.flatnonzero(batch.valid):
            for k in range(len(channels)):
                if len(best[k]) == top and values[n, k] <= best[k][-1].value:
                    continue
                row, col = divmod(int(where[n, k]), shape[1]) if spatial else (0, 0)
                box = receptive_box(taps, layer, row, col) if spatial else (0, 0, *taps.input_shape[:2])
                t, left, b, r = box
                best[k].append(Patch(float(values[n, k]), int(batch.labels[n]), box,
                                     np.array(batch.images[n, t:b, left:r])))
                best[k] = sorted(best[k], key=lambda p: -p.value)[:top]
        seen = _tally(batch, seen, advance)
    return best, _require_images(seen)


# --------------------------------------------------------------------------- feature space

def default_feature_layer(taps: Taps) -> str:
    """The input of the last dense layer (AlexNet's fc7 after its ReLU, ResNet's pooled
    features), else the globally pooled maps, else the convolutional base's output."""
    from cnnbench.archs.layers import Dropout, GlobalAvgPool

    dense = taps.of_kind((Dense,))
    names = [n for n in taps.names if n not in ("features", "head")]
    if dense:
        i = names.index(dense[-1]) - 1
        while i > 0 and isinstance(taps.module(names[i]), Dropout):  # the same values, named after the layer
            i -= 1
        if i >= 0:
            return names[i]

    pooled = taps.of_kind((GlobalAvgPool,))
    return pooled[-1] if pooled else "features"


def feature_fn(subject: Subject, layer: str):
    """A compiled ``(images, shift) -> (N, D)``: ``layer``'s output for display images, flattened."""
    from cnnbench.parallel import over_batch

    taps = subject.taps

    def run(state, images, shift):
        a = taps.apply(state, subject.model_input(images, shift), [layer])[1][layer]
        return a.reshape(a.shape[0], -1)

    return over_batch(run, taps.state)  # each batch split over every device


def collect(subject: Subject, batches: Iterable[Batch], layer: str, advance=lambda n: None):
    """(features (N, D), labels (N,)) of every valid image of ``batches``."""
    fn = feature_fn(subject, layer)
    feats, labels = [], []
    for batch in batches:
        f = fn(batch.images, batch.shift)
        feats.append(f[batch.valid])
        labels.append(batch.labels[batch.valid])
        advance(int(batch.valid.sum()))
    if not feats or not sum(len(f) for f in feats):
        raise UsageError("no image could be read from the dataset")
    return np.concatenate(feats), np.concatenate(labels)


def tsne(features: np.ndarray, *, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE of the rows (scikit-learn; PCA initialisation, perplexity capped for few points)."""
    from sklearn.manifold import TSNE

    n = len(features)
    if n < 5:
        raise UsageError(f"t-SNE needs at least 5 images, got {n}")
    perplexity = min(perplexity, (n - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        features.astype(np.float32))


@dataclasses.dataclass
class Neighbour:
    distance: float
    label: int
    image: np.ndarray


def neighbours(subject: Subject, query: np.ndarray, batches: Iterable[Batch], layer: str, *, k: int = 8,
               advance=lambda n: None) -> tuple[list[Neighbour], int]:
    """The ``k`` images of ``batches`` closest to ``query`` (a (D,) feature vector) in Euclidean
    distance between ``layer`` features, as AlexNet's Figure 4 retrieves them; with the count seen."""
    fn = feature_fn(subject, layer)
    best: list[Neighbour] = []
    seen = 0
    for batch in batches:
        d = np.linalg.norm(fn(batch.images, batch.shift) - query[None], axis=1)
        for n in np.flatnonzero(batch.valid):
            if len(best) < k or d[n] < best[-1].distance:
                best.append(Neighbour(float(d[n]), int(batch.labels[n]), np.array(batch.images[n])))
                best = sorted(best, key=lambda b: b.distance)[:k]
        seen = _tally(batch, seen, advance)
    return best, _require_images(seen)
