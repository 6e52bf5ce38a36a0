"""cnnbench: train, evaluate and compare the classic image-classification CNNs.

The Python API (the command line is built on the same functions)::

    import cnnbench

    cnnbench.list_models()                                   # ['alexnet', 'alexnet-owt', ...]
    model = cnnbench.create_model("resnet50", num_classes=10, input_size=224)
    summary = cnnbench.train("lenet5", epochs=2)            # settings as in an experiment file
    report = cnnbench.evaluate(summary["run_dir"], crops="10")
    run = cnnbench.load_run(summary["run_dir"])             # run.model: the trained network

Errors are :class:`cnnbench.errors.CnnbenchError` (usage errors :class:`~cnnbench.errors.UsageError`)
and name settings as Python spells them (``model_parallel``), not command-line flags. Each function
imports what it needs when called, so ``import cnnbench`` stays light.
"""

from __future__ import annotations

from pathlib import Path

# the training package is callable: cnnbench.train(arch, **settings) is cnnbench.train.run
from cnnbench import train

__version__ = "0.1.0"

__all__ = ["create_model", "evaluate", "list_models", "load_run", "train"]


def create_model(name: str, **options):
    """A registered architecture as a Flax NNX module (NHWC input), like ``timm.create_model``:
    ``num_classes``, ``input_size``, ``in_channels``, ``seed`` and the family's own options
    (``activation``, ``aux_logits`` ...)."""
    from cnnbench.archs import create_model as create

    return create(name, **options)


def list_models() -> list[str]:
    """The registered architectures' names, in the order `cnnbench archs` lists them."""
    from cnnbench.archs import list_archs

    return [info.name for info in list_archs()]


def load_run(run_dir: str | Path, *, which: str = "best", raw: bool = False):
    """A run directory as a trained model (:class:`cnnbench.runs.loaded.LoadedRun`): ``.model`` in
    evaluation mode, ``.cfg``, ``.class_names``, ``.eval_spec``. ``which``: "best" or "latest"
    checkpoint; ``raw``: the raw weights of a run trained with ``ema`` instead of the averaged ones."""
    from cnnbench.runs.loaded import load_run as load

    return load(run_dir, which=which, raw=raw)


def evaluate(*runs: str | Path, split: str | None = None, crops: str = "center", batch_size: int = 64,
             model_parallel: int = 1, which: str = "best", precision: str = "fp32", progress=None) -> dict:
    """Top-1/top-5 of one run, or of several runs' ensemble (softmax averaged), on ``split`` (default:
    the run's validation split) with ``crops`` "center", "10" (corners and centre, flipped) or "multiscale" (ILSVRC's
    protocols), the model computing in ``precision`` ("fp32" or "bf16", as `cnnbench eval --precision`). Returns the document `cnnbench eval --format json` prints; each run also keeps its
    result in ``eval/`` for `cnnbench compare`. ``progress``: a :class:`cnnbench.progress.Progress`."""
    from cnnbench.errors import UsageError
    from cnnbench.eval.evaluate import evaluate_runs
    from cnnbench.progress import SILENT
    from cnnbench.runs.loaded import load_run as load

    if not runs:
        raise UsageError("evaluate needs at least one run directory")
    result, _ = evaluate_runs([load(r, which=which) for r in runs], split=split, crops=crops,
                              batch_size=batch_size, model_parallel=model_parallel, precision=precision,
                              progress=progress or SILENT)
    return result
