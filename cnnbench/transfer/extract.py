"""`cnnbench features`: a preprocessed NHWC batch through a trained network, one layer's output
saved (``logits``, ``fc7``, ``pool5`` or any layer `cnnbench summary --all-layers` lists)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnbench.errors import UsageError


def extract(run_dir: Path, batch: np.ndarray, layer: str, *, batch_size: int = 64) -> tuple[np.ndarray, str]:
    """(activations, full layer name) of ``layer`` for the float32 NHWC ``batch``."""
    from cnnbench.parallel import over_batch
    from cnnbench.runs.loaded import load_run
    from cnnbench.viz.inputs import from_run

    run = load_run(run_dir)
    if batch.ndim != 4 or batch.shape[-1] != run.channels:
        raise UsageError(f"the input must be an N x H x W x {run.channels} batch (preprocessed, channels last), "
                         f"not {'x'.join(map(str, batch.shape))}")
    name = "logits" if layer == "logits" else from_run(run).taps.resolve(layer)
    taps = from_run(run, reading=(name,)).taps  # the inference model up to the layer read

    def run_batch(state, x):
        logits, store = taps.apply(state, x, [] if name == "logits" else [name])
        return logits if name == "logits" else store[name]

    forward = over_batch(run_batch, taps.state)  # each batch split over every device
    try:
        outs = [forward(np.asarray(batch[i:i + batch_size], np.float32)) for i in range(0, len(batch), batch_size)]
    except TypeError as e:  # a dense layer fed a map of another size
        raise UsageError(f"{run.cfg.arch} cannot take {batch.shape[1]}x{batch.shape[2]} inputs up to {name} "
                         f"(trained at {run.input_size}x{run.input_size}): {str(e).splitlines()[0]}") from None
    return np.concatenate(outs), name


def load_batch(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {path} as a NumPy array (.npy): {str(e).splitlines()[0]}") from None
