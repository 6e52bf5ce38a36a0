"""`cnnbench predict`: the five most probable classes of image files, with human-readable names
(Keras's ``decode_predictions``), through the run's own validation preprocessing (so a digits
model sees an 8x8-like grey image resized as in training, an ImageNet model a centre crop)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cnnbench.errors import UsageError
from cnnbench.eval import metrics
from cnnbench.eval.evaluate import probabilities_fn
from cnnbench.runs.loaded import LoadedRun


def image_loader(run: LoadedRun, spec: str | None = None):
    """``(load(path) -> (uint8 image, float32 shift[C]), finish)``: image files through the run's
    validation preprocessing (or ``spec``), as the evaluation pipeline prepares them; ``finish``
    (``None`` for specs without a trailing normalisation) completes them on the device."""
    from cnnbench.pipeline.preprocess import compile_host, decode
    from cnnbench.pipeline.tfenv import tf

    lib = tf()
    apply, finish = compile_host(spec or run.eval_spec)

    def load(path) -> tuple[np.ndarray, np.ndarray]:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise UsageError(f"cannot read image {path}: {e.strerror}") from None
        try:
            image, shift = apply(decode(lib.constant(data), encoded=True, channels=run.channels),
                                 lib.constant([0, 0], "int64"))
        except (lib.errors.InvalidArgumentError, ValueError):
            raise UsageError(f"{path} is not an image that can be decoded (JPEG, PNG, GIF, BMP)") from None
        return image.numpy(), (np.zeros(run.channels, np.float32) if shift is None else shift.numpy())

    return load, finish


def check_images(paths: list[str]) -> None:
    """One usage line for the first path that is not a readable image, before any model loads."""
    from PIL import Image, UnidentifiedImageError

    for path in paths:
        if not os.path.isfile(path):
            raise UsageError(f"image {path} does not exist" if not os.path.exists(path) else f"{path} is not a file")
        try:
            with Image.open(path) as image:
                image.load()  # decodes the whole image: a truncated file fails here
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise UsageError(f"{path} is not an image that can be decoded ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def predict_files(run: LoadedRun, paths: list[str], *, top: int = 5,
                  precision: str = "fp32") -> tuple[list[dict], str | None]:
    """The ``top`` classes of each image file, computed as ``precision`` does
    (:func:`cnnbench.eval.evaluate.probabilities_fn`), and the precision's note for the user (what it
    does instead where this machine cannot; else None)."""
    import jax

    from cnnbench.train.step import precision_plan

    load, finish = image_loader(run)
    images, shifts = zip(*(load(path) for path in paths))
    note = precision_plan(precision, jax.default_backend()).note
    probs_of, chunk = probabilities_fn(run.model, finish, precision=precision), 32  # bounded memory for many files
    probs = np.concatenate([np.asarray(probs_of(np.stack(images[i:i + chunk]), np.stack(shifts[i:i + chunk])))
                            for i in range(0, len(images), chunk)])
    best = metrics.top_k(probs, min(top, probs.shape[1]))
    return [{"image": path, "predictions": [
        {"rank": r + 1, "class": int(c), "id": run.class_ids[c], "name": run.class_names[c],
         "probability": float(probs[i, c])} for r, c in enumerate(best[i])]}
        for i, path in enumerate(paths)], note
