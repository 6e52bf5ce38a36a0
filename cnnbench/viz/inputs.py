"""What the visualisations look at: a trained run (its model behind :class:`Taps`), single image
files and batches of a dataset, all through the run's own validation preprocessing. Images are
kept as the preprocessing leaves them before normalisation (0-255), for display; the model sees
them after ``finish`` (normalisation), which runs inside each jitted function."""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Sequence

import jax.numpy as jnp
import numpy as np

from cnnbench.errors import UsageError, setting
from cnnbench.runs.loaded import LoadedRun
from cnnbench.viz.taps import Taps


@dataclasses.dataclass
class Subject:
    """A model to look into: its taps, class names and the normalisation its inputs need."""

    taps: Taps
    class_names: list[str]
    finish: Callable | None = None   # uint8 images + colour shift -> model input (see Finish)
    title: str = ""                  # how figures name it: "alexnet-owt (run name)"
    run: LoadedRun | None = None

    @property
    def input_size(self) -> int:
        return self.taps.input_shape[0]

    @property
    def channels(self) -> int:
        return self.taps.input_shape[2]

    def reading(self, names: Sequence[str] = ()) -> "Subject":
        """This subject as the inference program (:mod:`cnnbench.archs.inference`: batch norm folded
        into the convolution before it), every layer in ``names`` keeping its output: what a
        figure computes on once it knows which layers it reads. ``self`` where nothing folds."""
        from flax import nnx

        model = nnx.merge(self.taps.graphdef, self.taps._host_state)
        taps = _inference_taps(model, self.taps.input_shape, self.taps.arch, names)
        return self if taps is None else dataclasses.replace(self, taps=taps)

    def model_input(self, images, shift):
        """Inside a traced function: display images (0-255) -> what the model was trained on."""
        if self.finish is None:
            return images.astype(jnp.float32)
        return self.finish(images, shift, xp=jnp)

    def grey(self) -> np.ndarray:
        """The occluder's colour on the 0-255 scale: the normalisation mean (the mean image
        colour, zero after normalisation), or mid-grey when the spec has no mean."""
        mean = getattr(self.finish, "mean", (0.0,))
        mean = np.resize(np.asarray(mean, np.float32), self.channels)
        return mean if np.any(mean) else np.full(self.channels, 127.5, np.float32)

    def class_index(self, name: str | None, default: int) -> int:
        """``--class``: a class index, id or name (case-insensitive); ``None`` keeps ``default``."""
        if name is None:
            return default
        names = self.class_names
        ids = self.run.class_ids if self.run is not None else names
        if name.isdigit() and int(name) < len(names):
            return int(name)
        for labels in (ids, names):
            lowered = [str(v).lower() for v in labels]
            if name.lower() in lowered:
                return lowered.index(name.lower())
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        raise UsageError(f"no class {name!r}; give an index 0-{len(names) - 1} or a name ({shown})")


def from_run(run: LoadedRun, *, reading: tuple[str, ...] | None = None) -> Subject:
    """The run's model to look into. ``reading``: the only layers whose outputs will be read (as
    :meth:`Taps.resolve` names them); then the rest runs as the inference model (batch norm
    folded into its convolution, :mod:`cnnbench.archs.inference`). None: the model as trained."""
    from cnnbench.pipeline.preprocess import compile_host

    _, finish = compile_host(run.eval_spec)
    shape = (run.input_size, run.input_size, run.channels)
    taps = None if reading is None else _inference_taps(run.model, shape, run.cfg.arch, reading)
    taps = taps or Taps(run.model, shape, run.cfg.arch)
    return Subject(taps, list(run.class_names), finish, f"{run.cfg.arch} ({run.name})", run)


def _inference_taps(model, shape, arch: str, keep: Sequence[str]) -> Taps | None:
    """:class:`Taps` of the inference model of ``model`` (batch norm folded, ``keep``: layers left as
    they are, their outputs read; dense kernels re-laid out on a CPU), or None where nothing changes."""
    import jax
    from flax import nnx

    from cnnbench.archs.inference import inference_model

    folded, pairs = inference_model(model, shape, keep=tuple(keep), platform=jax.default_backend())
    moved = any(getattr(m, "transposed", False) for _, m in nnx.iter_modules(folded))
    return Taps(folded, shape, arch) if pairs or moved else None


def load_image(subject: Subject, path: str, spec: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image HWC 0-255, colour shift[C]) of an image file, preprocessed as the run's validation
    images (or with ``spec``), through the same code as `cnnbench predict`."""
    from cnnbench.eval.predict import image_loader

    if subject.run is None:
        raise UsageError("loading image files needs a run directory")
    load, _ = image_loader(subject.run, spec)
    image, shift = load(path)
    return image, shift


@dataclasses.dataclass
class Batch:
    images: np.ndarray   # (B, H, W, C), 0-255, as shown
    shift: np.ndarray    # (B, C)
    labels: np.ndarray   # (B,)
    valid: np.ndarray    # (B,) bool: False on the padding of the last batch


def dataset_batches(subject: Subject, dataset: str | None, *, split: str | None, limit: int,
                    batch_size: int = 64, data_dir: str | None = None) -> tuple[Iterator[Batch], object, str]:
    """Batches of the first ``limit`` images of ``split`` (default: the evaluation split) of
    ``dataset`` (default: the run's), with the source and the split used."""
    from cnnbench.pipeline.loader import Pipeline

    run = subject.run
    if run is None:
        raise UsageError("reading a dataset needs a run directory")
    source = run.cfg.source(dataset=dataset, data_dir=data_dir)
    split = split or source.eval_split
    total = source.num_examples(split)  # also checks the split
    if limit < 1:
        raise UsageError(f"{setting('n')} must be at least 1")
    if limit < total and "[" not in split and "+" not in split:
        split, total = f"{split}[:{limit}]", limit   # read no more than needed
    batch_size = max(1, min(batch_size, limit, total))
    pipeline = Pipeline(source, split, batch_size, run.eval_spec, train=False, channels=run.channels,
                        device_finish=True)

    def batches() -> Iterator[Batch]:
        seen = 0
        for batch in pipeline.epoch(0):
            valid = batch["mask"] > 0
            valid &= np.arange(len(valid)) < limit - seen
            seen += int(valid.sum())
            shift = batch.get("shift", np.zeros((len(valid), run.channels), np.float32))
            yield Batch(batch["image"], shift, batch["label"].astype(np.int64), valid)
            if seen >= limit:
                return

    return batches(), source, split
