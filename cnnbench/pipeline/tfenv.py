"""The one door to TensorFlow: imported lazily, quietly, and with every GPU hidden from it, so
that JAX owns the accelerators and TensorFlow only decodes and augments images on the CPU.

Quietly: TensorFlow's C++ libraries log while they load ("WARNING: All log messages before
absl::InitializeLog() ...", "I0000 ... oneDNN custom operations are on ..."), twice, whatever
``TF_CPP_MIN_LOG_LEVEL`` says; the import runs with the process's standard error sent to
/dev/null, unless ``CNNBENCH_VERBOSE`` is set (``cnnbench --verbose``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys


@contextlib.contextmanager
def _stderr_silenced():
    """File descriptor 2 to /dev/null for the block (C++ code writes there, not to sys.stderr)."""
    if os.environ.get("CNNBENCH_VERBOSE"):
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@functools.cache
def tf():
    # 3: not even the decoders' own error lines ("Premature end of JPEG data"): an image that cannot
    # be decoded is skipped, counted and named in the run's skipped.txt instead
    if not os.environ.get("CNNBENCH_VERBOSE"):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _stderr_silenced():
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
