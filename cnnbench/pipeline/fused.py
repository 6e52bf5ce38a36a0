"""Fused host ops, a CPU's business rather than a recipe's: ``resize_shorter`` + crop (+ ``flip``)
computed in one pass, with OpenCV for plain bilinear resampling and a windowed JPEG decode for the
antialiased one. The same pixels as the ops as written (tests pin this)."""

from __future__ import annotations

import functools
import math
from typing import Callable

import numpy as np

from cnnbench.errors import CnnbenchError
from cnnbench.pipeline.ops import _hw, _jpeg_hw, _jpeg_window
from cnnbench.pipeline.spec import Step
from cnnbench.pipeline.tfenv import tf

def _shorter_side_crop(crop, random, size, max_size=None, antialias=True):
    """``resize_shorter(size[, max_size])`` then a ``crop x crop`` window (random or centred), and
    given a third seed (plain bilinear only) the ``flip`` after them, in one op. The same result as
    the ops as written up to float rounding (a test pins this); on uint8 images, one of the two grey
    levels nearest to it.

    - Antialiased (the Inception-style recipes): ``scale_and_translate``, the kernel behind
      ``tf.image.resize``, evaluates the resized image only inside the window, and from JPEG bytes
      (``apply.from_jpeg``) only the source window is decoded at all.
    - Plain bilinear (the AlexNet and VGG recipes): OpenCV (:func:`_bilinear_crop`). One thread,
      500x375 JPEGs: the AlexNet recipe's host work fell from 1.9 to 1.6 ms per image, VGG's from
      2.4 to 1.7 (BENCHMARKS.md). The whole photo is decoded: from JPEG bytes the window path's
      checks (JPEG? CMYK?) are ``tf.cond`` branches, and with them it measured 0.25 ms slower."""
    def placed(h, w, seed, crop_seed):
        """(new_h, new_w, top, left): the resized photo's size and the crop's corner in it."""
        lib = tf()
        target = size if max_size is None else lib.random.stateless_uniform(
            (), seed, minval=size, maxval=max_size + 1, dtype="int32")
        scale = lib.cast(target, "float32") / lib.cast(lib.minimum(h, w), "float32")
        new_h = lib.maximum(lib.cast(lib.round(lib.cast(h, "float32") * scale), "int32"), target)
        new_w = lib.maximum(lib.cast(lib.round(lib.cast(w, "float32") * scale), "int32"), target)
        if random:
            top = lib.random.stateless_uniform((), crop_seed, maxval=new_h - crop + 1, dtype="int32")
            left = lib.random.stateless_uniform((), crop_seed + 1, maxval=new_w - crop + 1, dtype="int32")
        else:
            top, left = (new_h - crop) // 2, (new_w - crop) // 2
        return new_h, new_w, top, left

    def plan(h, w, seed, crop_seed):
        """(first, last) source rows/columns the crop samples, the scale and the crop offset."""
        lib = tf()
        new_h, new_w, top, left = placed(h, w, seed, crop_seed)
        ratio = lib.stack([lib.cast(new_h, "float32") / lib.cast(h, "float32"),
                           lib.cast(new_w, "float32") / lib.cast(w, "float32")])
        # Only the source window the crop samples (plus the kernel's reach, 1/ratio + 1 pixels)
        # is converted and resampled, not the whole photo.
        offset = lib.cast(lib.stack([top, left]), "float32")
        first = lib.cast(lib.floor(offset / ratio), "int32") - lib.cast(lib.math.ceil(1 / ratio), "int32") - 1
        last = lib.cast(lib.math.ceil((offset + crop) / ratio), "int32") + lib.cast(lib.math.ceil(1 / ratio), "int32") + 1
        return lib.maximum(first, 0), lib.minimum(last, lib.stack([h, w])), ratio, offset

    def smooth(window, first, ratio, offset, channels):
        out = tf().raw_ops.ScaleAndTranslate(
            images=tf().cast(window, "float32")[None], size=[crop, crop], scale=ratio,
            translation=tf().cast(first, "float32") * ratio - offset, kernel_type="triangle",
            antialias=True)[0]
        out.set_shape([crop, crop, channels])
        return out

    if not antialias:
        _cv2()  # a missing OpenCV fails here, in one line, not image by image in tf.data

        def bilinear(image, seed, crop_seed, flip_seed=None):  # the seeds the ops would get unfused
            lib = tf()
            h, w = _hw(image)
            new_h, new_w, top, left = placed(h, w, seed, crop_seed)
            # TensorFlow's flip: mirror when a uniform draw from the flip's seed is below 1/2
            mirror = 0 if flip_seed is None else lib.cast(
                lib.random.stateless_uniform([], flip_seed, minval=0, maxval=1.0) < 0.5, "int32")
            params = lib.stack([h, w, new_h, new_w, top, left, mirror])
            out = lib.numpy_function(functools.partial(_bilinear_crop, crop=crop), [image, params], image.dtype,
                                     stateful=False)
            out.set_shape([crop, crop, image.shape[-1]])
            return out
        return bilinear

    def apply(image, seed, crop_seed):  # the seeds the two ops would get unfused
        h, w = _hw(image)
        first, last, ratio, offset = plan(h, w, seed, crop_seed)
        return smooth(image[first[0]:last[0], first[1]:last[1], :], first, ratio, offset, image.shape[-1])

    def from_jpeg(data, channels, seed, crop_seed):
        h, w = _jpeg_hw(data)
        first, last, ratio, offset = plan(h, w, seed, crop_seed)
        return smooth(_jpeg_window(data, first, last, h, w, channels), first, ratio, offset, channels)

    apply.from_jpeg = from_jpeg
    return apply


@functools.cache
def _cv2():
    try:
        import cv2
    except ImportError:  # inside tf.data every image would fail and be skipped as undecodable
        raise CnnbenchError("the alexnet and vgg recipes' bilinear crops need OpenCV: "
                            "pip install opencv-python-headless") from None
    cv2.setNumThreads(1)  # tf.data already runs one call per core
    return cv2


#: :func:`_bilinear_crop` resizes the whole photo while the resized photo is at most this many
#: crops in area, else samples the crop alone: the break-even point on a 500x375 photo and 224
#: crops, one thread (resize 208 us at 1.7 crops, 314 at 3.1, 534 at 7; the crop alone 306-344)
RESIZE_AREA = 3.0


def _bilinear_crop(image, params, crop: int):
    """Bilinear resizing (half-pixel centres, clamped at the border) of the photo to (new_h, new_w),
    then its ``crop x crop`` window at (top, left), mirrored left-right when asked. ``params``:
    h, w, new_h, new_w, top, left, mirror. Either ``cv2.resize`` of the whole photo and a slice,
    or, for a large resized photo, ``cv2.warpAffine`` sampling only the window: output (i, j) reads
    the photo at ((top + i + 0.5) * h / new_h - 0.5, (left + j + 0.5) * w / new_w - 0.5), and
    ``BORDER_REPLICATE`` clamps as the resize kernels do."""
    cv2 = _cv2()
    h, w, new_h, new_w, top, left, mirror = (int(v) for v in params)
    channels = image.shape[-1]
    if new_h * new_w <= RESIZE_AREA * crop * crop:
        out = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR).reshape(new_h, new_w, channels)
        out = out[top:top + crop, left:left + crop]
        # cv2.flip: NumPy's copy of a reversed view took 320 us per 224x224x3 crop, this 9
        return (cv2.flip(out, 1) if mirror else np.ascontiguousarray(out)).reshape(crop, crop, channels)
    sy, sx = h / new_h, w / new_w
    oy, ox = (top + 0.5) * sy - 0.5, (left + 0.5) * sx - 0.5
    # Only the rows and columns the samples read (one more each side), in float32: warpAffine's
    # float path, conversions included, took 316 us where its uint8 path took 379.
    y0, x0 = max(math.floor(oy) - 1, 0), max(math.floor(ox) - 1, 0)
    y1, x1 = min(math.ceil(oy + (crop - 1) * sy) + 2, h), min(math.ceil(ox + (crop - 1) * sx) + 2, w)
    window = image[y0:y1, x0:x1].astype(np.float32)
    oy, ox = oy - y0, ox - x0
    if mirror:
        ox, sx = ox + (crop - 1) * sx, -sx
    out = cv2.warpAffine(window, np.array([[sx, 0.0, ox], [0.0, sy, oy]]), (crop, crop),
                         flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    # to the nearest grey level (the values are not negative), or back to the photo's float type
    out = cv2.convertScaleAbs(out) if image.dtype == np.uint8 else out.astype(image.dtype, copy=False)
    return out.reshape(crop, crop, channels)


def _fuse(steps: list[Step]) -> list[tuple[Callable, int]]:
    """(op, number of spec steps it covers); fused ops keep the seeds of the steps they replace."""
    fns, i = [], 0
    while i < len(steps):
        step, nxt = steps[i], steps[i + 1] if i + 1 < len(steps) else None
        if step.name == "resize_shorter" and nxt is not None and nxt.name in ("random_crop", "center_crop"):
            kwargs = dict(step.kwargs)
            # a flip right after a plain bilinear crop is a mirrored sampling of the same window
            mirror = i + 2 < len(steps) and steps[i + 2].name == "flip" and not steps[i + 2].args \
                and kwargs.get("antialias", True) is False
            fns.append((_shorter_side_crop(nxt.args[0], nxt.name == "random_crop", *step.args, **kwargs),
                        3 if mirror else 2))
            i += 3 if mirror else 2
        else:
            fns.append((step.build(), 1))
            i += 1
    return fns
