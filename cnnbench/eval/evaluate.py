"""`cnnbench eval`: every image of a split through one or several trained runs, ILSVRC style.

Each model sees the split through its own validation preprocessing turned into the chosen crop
protocol (centre crop, 10-crop, multi-scale), returns one softmax vector per image (averaged over
its crops), and the ensemble averages those vectors over models. Batches are sharded over every
local device; the last partial batch is padded and masked, so every image counts exactly once.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from cnnbench import parallel
from cnnbench.errors import CnnbenchError, UsageError, setting
from cnnbench.eval import CROPS, metrics
from cnnbench.eval.evaluators import Evaluator, Result, evaluate, register
from cnnbench.runs.loaded import LoadedRun
from cnnbench.progress import SILENT, Progress
from cnnbench.runs import results
from cnnbench.train.step import inference_program, precision_plan, probabilities

CROP_LABEL = {"center": "centre crop", "10": "10-crop (corners + centre, with flips)",
              "multiscale": "multi-scale (centre crops at {scales}, with flips)"}
#: dataset name -> how REFERENCE.md and the architectures' references name it
PAPER_DATASETS = {"imagenet2012": "ILSVRC-2012", "cifar10": "CIFAR-10"}
SAMPLES = 12  # images kept for the report's figure


def default_scales(size: int) -> tuple[int, ...]:
    """VGG's multi-scale test sizes 256, 384, 512 for a 224 crop, scaled for other input sizes."""
    return tuple(int(round(s * size / 224)) for s in (256, 384, 512))


def crop_spec(base: str, crops: str, *, size: int, scales: tuple[int, ...] | None = None) -> str:
    """The run's validation spec turned into a crop protocol: ``center`` keeps it; ``10`` replaces
    its centre crop by ``ten_crop`` (or, for specs without one such as ``resize(32)``, resizes the
    shorter side to size/0.875 and takes the ten crops); ``multiscale`` takes the centre crops of
    several shorter-side sizes. The normalisation at the end of the spec is kept."""
    from cnnbench.pipeline.recipes import eval_resize
    from cnnbench.pipeline.spec import split_spec, unparse

    if crops not in CROPS:
        raise UsageError(f"{setting('crops')} must be one of {', '.join(CROPS)}, not {crops!r}")
    if crops == "center":
        return base
    host, tail = split_spec(base)
    tail_spec = "".join("|" + unparse(s) for s in tail)
    if crops == "10":
        if any(s.name == "center_crop" for s in host):
            return "|".join(f"ten_crop({s.args[0]})" if s.name == "center_crop" else unparse(s)
                            for s in host) + tail_spec
        return f"resize_shorter({eval_resize(size)})|ten_crop({size})" + tail_spec
    scales = tuple(scales or default_scales(size))
    if any(s < size for s in scales):
        raise UsageError(f"every scale must be at least the crop size {size}: {', '.join(map(str, scales))}")
    return f"multiscale({', '.join(map(str, scales))}, {size})" + tail_spec


@dataclasses.dataclass
class Predictions:
    """One model's (or an ensemble's) softmax outputs over a split, in the split's order."""

    probs: np.ndarray          # (N, classes) float32
    labels: np.ndarray         # (N,)
    index: np.ndarray          # (N,) position in the split
    ids: list[str]             # file names ("" where the dataset has none)
    samples: np.ndarray        # (<= SAMPLES, H, W, C) display images of the first examples
    spec: str = ""
    skipped: int = 0


def probabilities_fn(model: nnx.Module, finish, mesh: Mesh | None = None, precision: str = "fp32") -> Callable:
    """A jitted ``(images, shift) -> (B, classes)`` softmax, averaged over any crop axes; with a
    ``mesh`` the model is split over its ``model`` axis (:func:`cnnbench.parallel.plan`) and its
    weights placed so (batches come sharded over ``data``). The program is the inference model's
    (:func:`cnnbench.archs.inference.inference_model`: batch norm folded into its convolution),
    computing as ``precision`` does on this platform (:func:`cnnbench.train.step.precision_plan`:
    bf16 on a CPU, the products' operands, on the AMX kernels where the CPU has them, as
    `cnnbench bench --mode infer` times it); ``model`` itself is left as it is."""
    model, plan = inference_program(model, mesh, precision)
    graphdef, state = nnx.split(model)
    if mesh is not None:
        state = parallel.place(state, mesh)

    def probs(state, images, shift):
        x = images if finish is None else finish(images, shift, xp=jnp)
        return probabilities(nnx.merge(graphdef, state), x.astype(plan.compute))

    jitted = jax.jit(plan.step(probs))
    return lambda images, shift: jitted(state, images, shift)


def _display(images: np.ndarray, crops: str) -> np.ndarray:
    """The view to show of each example: the centre one of a 10-crop, the first of other stacks."""
    if images.ndim == 5:
        images = images[:, 4] if crops == "10" else images[:, 0]
    return images


def predict_split(run: LoadedRun, source, *, split: str, crops: str, scales=None, batch_size: int = 64,
                  model_parallel: int = 1, precision: str = "fp32",
                  advance: Callable[[int], None] = lambda n: None) -> Predictions:
    """Softmax outputs of ``run`` for every image of ``split`` under the crop protocol ``crops``,
    on every local device (each copy of the model split over ``model_parallel`` of them), computed
    as ``precision`` does (:func:`probabilities_fn`)."""
    from cnnbench.pipeline.loader import Pipeline

    if jax.process_count() > 1:
        raise UsageError("cnnbench eval runs on one host (it uses every device of this one)")
    if source.num_classes != len(run.class_names):
        raise UsageError(f"{run.name} was trained for {len(run.class_names)} classes; "
                         f"{source.name} has {source.num_classes}")
    spec = crop_spec(run.eval_spec, crops, size=run.input_size, scales=scales)
    mesh = parallel.make_mesh(None, model_parallel)
    groups = parallel.data_size(mesh)
    batch_size = -(-batch_size // groups) * groups  # a multiple of the batch's split
    pipeline = Pipeline(source, split, batch_size, spec, train=False, channels=run.channels,
                        device_finish=True, with_ids=True)
    sharding = parallel.batch_sharding(mesh)
    probs_of = probabilities_fn(run.model, pipeline.finish, mesh, precision)
    out = {"probs": [], "label": [], "index": [], "id": []}
    samples: list[np.ndarray] = []
    pending = None  # (device result, host batch): the next batch is decoded while this one runs

    def collect(result, batch):
        keep = batch["mask"] > 0
        out["probs"].append(np.asarray(jax.device_get(result))[keep])
        for key in ("label", "index", "id"):
            out[key].append(batch[key][keep])
        if len(samples) < SAMPLES:
            samples.extend(_display(batch["image"][keep], crops)[:SAMPLES - len(samples)])
        advance(int(keep.sum()))

    for batch in pipeline.epoch(0):
        images = jax.device_put(batch["image"], sharding)
        shift = jax.device_put(batch.get("shift", np.zeros((len(batch["image"]), run.channels), np.float32)),
                               sharding)
        result = probs_of(images, shift)
        if pending is not None:
            collect(*pending)
        pending = (result, batch)
    if pending is not None:
        collect(*pending)
    if not out["probs"]:
        raise UsageError(f"no image of {source.name} {split!r} could be decoded")
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in np.concatenate(out["id"])]
    return Predictions(np.concatenate(out["probs"]), np.concatenate(out["label"]).astype(np.int64),
                       np.concatenate(out["index"]).astype(np.int64), ids, np.stack(samples), spec,
                       pipeline.skipped)


def combine(predictions: list[Predictions]) -> Predictions:
    """The ensemble: softmax outputs averaged over models that saw the same images."""
    first = predictions[0]
    for p in predictions[1:]:
        if not np.array_equal(p.index, first.index) or not np.array_equal(p.labels, first.labels):
            raise CnnbenchError("the models did not see the same images (a different number of images "
                                "could be decoded); cannot average them")
    return dataclasses.replace(first, probs=metrics.ensemble([p.probs for p in predictions]), spec="")


def paper_rows(arch: str, dataset: str, split: str) -> list[dict]:
    """Published results for ``arch`` on this dataset (REFERENCE.md), as report rows."""
    from cnnbench.archs import get_arch

    name = PAPER_DATASETS.get(dataset.split(":")[0].split("/")[0])
    if name is None:
        return []
    rows = []
    for ref in get_arch(arch).references:
        if ref.dataset != name or (ref.split == "test") != (split.startswith("test")):
            continue
        rows.append({"model": f"paper: {arch}", "protocol": ref.protocol, "source": ref.source,
                     "top1": None if ref.top1 is None else ref.top1 / 100,
                     "top5": None if ref.top5 is None else ref.top5 / 100,
                     "top1_error": None if ref.top1_err is None else ref.top1_err / 100,
                     "top5_error": None if ref.top5_err is None else ref.top5_err / 100})
    return rows


@register
@dataclasses.dataclass
class Accuracy(Evaluator):
    """Top-1/top-5 of every image of ``split`` (default: the run's validation split) under the
    crop protocol ``crops``; the predictions come back in :attr:`Result.output` (for ensembles,
    reports and submissions)."""

    name: ClassVar[str] = "accuracy"
    columns: ClassVar = (("eval_top1", "eval top-1 %", "pct"),)

    split: str | None = None
    crops: str = "center"
    scales: tuple[int, ...] | None = None
    batch_size: int = 64
    data_dir: str | None = None
    manual_dir: str | None = None
    model_parallel: int = 1
    precision: str = "fp32"  # what the inference program computes in (probabilities_fn)
    source: Any = None  # a resolved dataset (default: the run's)

    def __call__(self, run, progress: Progress = SILENT) -> Result:
        source = self.source or run.cfg.source(data_dir=self.data_dir, manual_dir=self.manual_dir)
        split = self.split or run.cfg.eval_split or source.eval_split
        progress.start(f"evaluating {run.name}", source.num_examples(split))
        p = predict_split(run, source, split=split, crops=self.crops, scales=self.scales, batch_size=self.batch_size,
                          model_parallel=self.model_parallel, precision=self.precision, advance=progress.advance)
        label = CROP_LABEL[self.crops].split(" (")[0]
        # float32 keeps the names results had before there was a choice; another precision is a
        # result of its own beside it
        tail = "" if self.precision == "fp32" else f"-{self.precision}"
        return Result(key=f"{split}-{self.crops}{tail}",
                      label=f"{split}, {label}" + ("" if self.precision == "fp32" else f", {self.precision}"),
                      metrics={**metrics.accuracy(p.probs, p.labels)},
                      details={"dataset": source.name, "split": split, "crops": self.crops, "spec": p.spec,
                               "precision": self.precision, "skipped_images": p.skipped},
                      output=p)

    @classmethod
    def facts(cls, records):
        top = results.best_of(records)
        if top is None:
            return {}
        return {"eval_top1": top["metrics"]["top1"], "eval_top5": top["metrics"].get("top5"),
                "eval_protocol": top["label"], "evaluations": records}


def evaluate_runs(runs: list[LoadedRun], *, split: str | None = None, crops: str = "center", scales=None,
                  batch_size: int = 64, data_dir: str | None = None, manual_dir: str | None = None,
                  model_parallel: int = 1, precision: str = "fp32",
                  progress: Progress = SILENT) -> tuple[dict, Predictions]:
    """Evaluate each run and, when there are several, their ensemble. Returns the JSON document of
    ``cnnbench eval`` and the final (ensemble or single) predictions, for reports and submissions.
    ``precision``: what the inference program computes in (:func:`probabilities_fn`; the document
    says it, and what it does instead where this machine cannot). ``progress``: a stage of images
    per run."""

    mesh = parallel.make_mesh(None, model_parallel)  # a --model-parallel that cannot split the devices fails first
    note = precision_plan(precision, mesh.devices.flat[0].platform).note
    datasets = {r.cfg.dataset for r in runs}
    if len(datasets) > 1:
        raise UsageError(f"the runs were trained on different datasets ({', '.join(sorted(datasets))}); "
                         f"an ensemble needs one")
    cfg = runs[0].cfg
    source = cfg.source(data_dir=data_dir, manual_dir=manual_dir)
    split = split or cfg.eval_split or source.eval_split
    source.num_examples(split)  # checks that the split exists
    accuracy = Accuracy(split=split, crops=crops, scales=scales, batch_size=batch_size, model_parallel=model_parallel,
                        precision=precision, source=source)
    predictions, models = [], []
    for run in runs:
        found = evaluate(run, accuracy, progress=progress)  # (kept in the run's eval/ for compare)
        p = found.output
        predictions.append(p)
        models.append({"model": run.name, "run_dir": str(run.run_dir), "arch": run.cfg.arch,
                       "checkpoint": str(run.checkpoint), "weights": run.weights, "epoch": run.epoch, "spec": p.spec,
                       **found.metrics, "skipped_images": p.skipped})
    final = combine(predictions) if len(predictions) > 1 else predictions[0]
    result = {**metrics.accuracy(final.probs, final.labels), "dataset": source.name, "split": split,
              "crops": crops, "precision": precision, "precision_note": note, "protocol": CROP_LABEL[crops].format(
                  scales=", ".join(map(str, scales or default_scales(runs[0].input_size)))),
              "models": models, "ensemble": len(runs) > 1, "skipped_images": final.skipped,
              "paper": [row for arch in dict.fromkeys(r.cfg.arch for r in runs)
                        for row in paper_rows(arch, source.name, split)]}
    return result, final
