"""Preprocessing as small registered ops composed by a spec string, big_vision style:

    "resize_shorter(256)|random_crop(227)|flip|lighting(0.1)|normalize(imagenet)"

Each op maps an HWC image (uint8 or float32, 0-255) to an image, given a per-op stateless random
seed, so the
result depends only on (seed, epoch, example) and never on threads or timing. Geometric ops keep
uint8 (a quarter of the memory traffic); the compiled spec returns float32. Eval ops that make
several views (``ten_crop``, ``multiscale``) add a leading crop axis; ops after them act per view.
Experiment files name a recipe (``alexnet``) or give a spec; both go through :func:`parse`.

Here the spec is compiled: :func:`compile_ops` (everything on the host) and :func:`compile_host`
(the host part, then :class:`Finish` where the batch lands). The ops are in
:mod:`cnnbench.pipeline.ops`, the recipes in :mod:`cnnbench.pipeline.recipes`, the spec language in
:mod:`cnnbench.pipeline.spec`, the fused resize-and-crop in :mod:`cnnbench.pipeline.fused`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from cnnbench.errors import UsageError
from cnnbench.pipeline.fused import _fuse
from cnnbench.pipeline.ops import PCA_EIGVAL, PCA_EIGVEC, _float, _norm_stats
from cnnbench.pipeline.spec import parse, split_spec, unparse
from cnnbench.pipeline.tfenv import tf

def compile_ops(spec: str, *, fuse: bool = True, seed_count: int | None = None, encoded: bool | None = None,
                channels: int = 3, as_float: bool = True) -> Callable:
    """``apply(image, seed[2]) -> float32 image`` running every op with its own derived seed (the
    k-th step of the spec always gets the k-th seed). ``fuse`` computes ``resize_shorter`` + crop
    (+ ``flip``) in one pass (same result, see :func:`_shorter_side_crop`); ``fuse=False`` runs them
    as written. ``as_float=False`` returns the last op's dtype (uint8 where every op kept it).

    ``encoded=None``: ``image`` is decoded already. Otherwise ``image`` is what a source yields
    (encoded bytes when ``encoded``, else a uint8 array) and is decoded to ``channels`` here: a
    JPEG whose first op is a crop decodes only the window that crop needs (the same pixels)."""
    steps = parse(spec)
    try:
        fns = _fuse(steps) if fuse else [(s.build(), 1) for s in steps]
    except TypeError as e:
        raise UsageError(f"bad arguments in preprocessing spec {spec!r}: {e}") from None
    windowed = bool(encoded) and bool(fns) and hasattr(fns[0][0], "from_jpeg")

    def apply(image, seed):
        lib = tf()
        seeds = lib.random.experimental.stateless_split(seed, num=max(seed_count or len(steps), 1))
        rest, k = fns, 0
        if windowed:
            (first, covered), rest, k = fns[0], fns[1:], fns[0][1]
            own = [seeds[j] for j in range(covered)]
            data = image

            def whole():
                return first(decode(data, encoded=True, channels=channels), *own)

            def jpeg():  # CMYK (4-channel) JPEGs take the general path: libjpeg cannot crop-convert them
                colours = lib.image.extract_jpeg_shape(data)[2]
                return lib.cond(colours < 4, lambda: first.from_jpeg(data, channels, *own), whole)

            image = lib.cond(lib.io.is_jpeg(data), jpeg, whole)
        elif encoded is not None:
            image = decode(image, encoded=encoded, channels=channels)
        for fn, covered in rest:
            image = fn(image, *(seeds[k + j] for j in range(covered)))
            k += covered
        return _float(image) if as_float else image

    return apply


@dataclasses.dataclass(frozen=True)
class Finish:
    """The per-pixel tail of a spec (``lighting`` then ``normalize``), applied where the batch lands,
    normally inside the jitted step on the accelerator: the host then ships uint8 images (a quarter
    of the bytes) plus one colour shift per image, and skips two float passes over every pixel."""

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __call__(self, images, shift, xp=np):
        """``images`` uint8 (B, ..., C), ``shift`` float32 (B, C) -> float32, with NumPy or jax.numpy."""
        channels = images.shape[-1]
        shift = xp.reshape(shift, (shift.shape[0],) + (1,) * (images.ndim - 2) + (channels,))
        mean = np.resize(np.asarray(self.mean, np.float32), channels)
        std = np.resize(np.asarray(self.std, np.float32), channels)
        return (images.astype(xp.float32) + shift - mean) / std


def compile_host(spec: str, *, encoded: bool | None = None, channels: int = 3) -> tuple[Callable, Finish]:
    """``apply(image, seed) -> (uint8 image, float32 shift[C])`` and the :class:`Finish` completing
    it: ``finish(*apply(x, seed))`` equals ``compile_ops(spec)(x, seed)`` up to the rounding of the
    host part to uint8 (at most half a grey level)."""
    host, tail = split_spec(spec)
    if not tail:
        full = compile_ops(spec, encoded=encoded, channels=channels)
        return (lambda image, seed: (full(image, seed), None)), None
    steps = len(host) + len(tail)
    run = compile_ops("|".join(unparse(s) for s in host), seed_count=steps, encoded=encoded,
                      channels=channels, as_float=False) if host else None
    names = [t.name for t in tail]
    std_light = next((t.args[0] if t.args else 0.1 for t in tail if t.name == "lighting"), None)
    norm = next((t for t in tail if t.name == "normalize"), None)
    mean, std = ((0.0,), (1.0,)) if norm is None else _norm_stats(*norm.args)

    def apply(image, seed):
        lib = tf()
        # The same per-step seeds the full spec would use (the lighting step keeps its own).
        seeds = lib.random.experimental.stateless_split(seed, num=max(steps, 1))
        if host:
            out = run(image, seed)
        else:
            out = image if encoded is None else decode(image, encoded=encoded, channels=channels)
        if out.dtype != "uint8":  # geometric ops on uint8 images stay uint8: nothing to round
            out = lib.cast(lib.clip_by_value(lib.round(_float(out)), 0, 255), "uint8")
        shift = lib.zeros([out.shape[-1] if out.shape[-1] is not None else channels], "float32")
        if std_light is not None:
            k = len(host) + names.index("lighting")
            alpha = lib.random.stateless_normal((3,), seeds[k], stddev=std_light)
            shift = 255.0 * lib.linalg.matvec(lib.constant(PCA_EIGVEC), alpha * lib.constant(PCA_EIGVAL))
        return out, shift

    return apply, Finish(tuple(float(m) for m in mean), tuple(float(s) for s in std))


def decode(image, *, encoded: bool, channels: int):
    """Bytes (JPEG, PNG incl. PNG-in-JPEG, CMYK, grey, GIF, BMP) or uint8 arrays to uint8 HWC with
    ``channels`` channels. Undecodable bytes raise, and the pipeline skips and counts them."""
    lib = tf()
    if encoded and channels == 1:
        data = image

        def cmyk():  # libjpeg converts CMYK to RGB but not to grey: go through RGB
            return lib.cond(lib.image.extract_jpeg_shape(data)[2] == 4, lambda: lib.image.rgb_to_grayscale(
                lib.io.decode_jpeg(data, channels=3)), lambda: lib.io.decode_jpeg(data, channels=1))

        image = lib.cond(lib.io.is_jpeg(data), cmyk,
                         lambda: lib.io.decode_image(data, channels=1, expand_animations=False))
        image.set_shape([None, None, 1])
    elif encoded:
        image = lib.io.decode_image(image, channels=channels, expand_animations=False)
    elif image.shape[-1] != channels:
        image = lib.image.rgb_to_grayscale(image) if channels == 1 else lib.image.grayscale_to_rgb(image)
    return image
