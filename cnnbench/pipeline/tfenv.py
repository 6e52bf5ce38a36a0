"""The one door to TensorFlow: imported lazily, quietly, and with every GPU hidden from it, so
that JAX owns the accelerators and TensorFlow only decodes and augments images on the CPU."""

from __future__ import annotations

import functools
import os


@functools.cache
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow

    try:
        tensorflow.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow was initialised before us; it can no longer change devices
        pass
    return tensorflow


@functools.cache
def tfds():
    tf()
    import tensorflow_datasets

    tensorflow_datasets.disable_progress_bar()  # cnnbench shows its own progress
    return tensorflow_datasets
