"""`cnnbench eval` (ILSVRC-style top-1/top-5, ensembles, reports, submissions) and `cnnbench predict`."""

from __future__ import annotations

import click

from cnnbench.eval import CROPS
from cnnbench.runs.layout import CHECKPOINTS

from cnnbench.errors import UsageError
from cnnbench.commands.common import MODEL_PARALLEL_HELP, PRETRAINED_HELP, int_list, parse_options, pretrained_run
from cnnbench.output import Column, emit, err_console, format_option, integer, plural


# --------------------------------------------------------------------------- eval, predict

#: what the inference program can compute in (``--precision`` of eval and predict)
INFERENCE_PRECISIONS = ("fp32", "bf16")
PRECISION_HELP = ("What the model computes in: bf16 gives the convolutions and dense layers bf16 operands "
                  "(on a CPU with AMX, cnnbench's AMX kernels; on an accelerator, bf16 layers), as "
                  "`cnnbench bench --precision bf16` times it.")


def _pct(v) -> str:
    return "" if v is None else f"{100 * v:.2f}"


@click.command("eval")
@click.argument("runs", nargs=-1, type=click.Path())
@click.option("--top5/--top1-only", default=True, show_default=True,
              help="Report top-5 accuracy and error beside top-1 (ILSVRC's main measure).")
@click.option("--split", help="Split to evaluate (default: the run's validation split).")
@click.option("--crops", type=click.Choice(CROPS), default="center", show_default=True,
              help="centre crop (the run's validation preprocessing), ILSVRC 10-crop, or multi-scale.")
@click.option("--scales", help="Multi-scale shorter sides, e.g. 256,384,512 (default: those, scaled to the input).")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--checkpoint", type=click.Choice(CHECKPOINTS), default="best", show_default=True)
@click.option("--raw-weights", is_flag=True,
              help="For a run trained with --ema: the raw weights instead of the averaged ones.")
@click.option("--report", "report_file", type=click.Path(dir_okay=False),
              help="Write a Markdown report (and a PNG of sample predictions beside it).")
@click.option("--submission", type=click.Path(dir_okay=False),
              help="Write an ILSVRC submission: per image in file-name order, five 1-based class indices.")
@click.option("--class-map", type=click.Path(dir_okay=False, exists=True),
              help="Submission numbering: a file whose line i is the class id (synset) of index i.")
@click.option("--ground-truth", type=click.Path(dir_okay=False),
              help="Score --predictions (a submission file) against this file of 1-based labels.")
@click.option("--predictions", type=click.Path(dir_okay=False), help="A submission file to score.")
@click.option("--num-classes", type=int, default=1000, show_default=True,
              help="Label range when scoring --predictions.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="TFDS data directory (default: the run's).")
@click.option("--manual-dir", type=click.Path(file_okay=False), help="Manual download folder (default: the run's).")
@click.option("--model-parallel", type=int, metavar="M", default=1, show_default=True, help=MODEL_PARALLEL_HELP)
@click.option("--precision", type=click.Choice(INFERENCE_PRECISIONS), default="fp32", show_default=True,
              help=PRECISION_HELP)
@click.option("--evaluator", default="accuracy", show_default=True, metavar="NAME",
              help="A registered evaluator instead of accuracy: probe, or one an installed package adds.")
@click.option("--set", "evaluator_options", multiple=True, metavar="KEY=VALUE",
              help="An option of --evaluator (e.g. --evaluator probe --set layer=fc6 --set dataset=cifar10).")
@format_option
def eval_(runs, top5, split, crops, scales, batch_size, checkpoint, raw_weights, report_file, submission, class_map,
          ground_truth, predictions, num_classes, data_dir, manual_dir, model_parallel, precision, evaluator,
          evaluator_options, fmt):
    """Top-1/top-5 of trained RUNS (default: the latest under ./runs); several runs add their ensemble.

    \b
    Examples:
      cnnbench eval --top5
      cnnbench eval runs/alexnet-* --crops 10 --report alexnet.md
      cnnbench eval runs/vgg16-imagenet2012-* --crops multiscale --scales 256,384,512
      cnnbench eval runs/resnet50-* --submission sub.txt
      cnnbench eval runs/resnet50-* --precision bf16
      cnnbench eval --ground-truth ILSVRC2012_validation_ground_truth.txt --predictions sub.txt
      cnnbench eval runs/alexnet-* --evaluator probe --set dataset=caltech101 --set layer=fc6
    """
    from pathlib import Path

    if evaluator != "accuracy" or evaluator_options:
        _check_accuracy_only(evaluator)
        _run_evaluator(evaluator, parse_options(evaluator_options, what="--set"), runs, checkpoint, raw_weights, fmt)
        return
    if ground_truth or predictions:
        if not (ground_truth and predictions) or runs:
            raise UsageError("scoring a submission takes --ground-truth FILE and --predictions FILE, and no run")
        from cnnbench.eval.submission import score

        result = score(Path(ground_truth), Path(predictions), num_classes=num_classes)
        _eval_table([{"model": predictions, "protocol": "submission file", **result}], result, fmt, top5,
                    f"{predictions} against {ground_truth}")
        return
    from cnnbench.eval.report import analyse, write_report
    from cnnbench.runs.loaded import latest_run, load_run

    scale_sizes = int_list(scales, "--scales") if scales else None
    with err_console().status("loading checkpoints ..."):
        loaded = [load_run(Path(r), which=checkpoint, raw=raw_weights) for r in (runs or [latest_run()])]
    result, final = _evaluate_with_progress(loaded, split=split, crops=crops, scales=scale_sizes,
                                            batch_size=batch_size, data_dir=data_dir, manual_dir=manual_dir,
                                            model_parallel=model_parallel, precision=precision)
    result["report"] = analyse(final, loaded[0].class_names)
    notes = [result["precision_note"]] if result["precision_note"] else []
    if report_file:
        report_path, figure = write_report(result, final, loaded[0].class_names, Path(report_file))
        notes.append(f"report: {report_path} (figure {figure})")
    if submission:
        from cnnbench.eval.submission import write

        lines = write(final, Path(submission), class_ids=loaded[0].class_ids,
                      class_map=Path(class_map) if class_map else None)
        notes.append(f"submission: {submission} ({lines:,} lines, file-name order)")
    rows = [{**m, "protocol": result["protocol"]} for m in result["models"]]
    if result["ensemble"]:
        rows.append({**result, "model": f"ensemble of {len(loaded)}", "protocol": "softmax averaged"})
    rows += [{**r, "num_examples": None} for r in result["paper"]]
    if result["skipped_images"]:
        notes.append(f"{plural(result['skipped_images'], 'image')} could not be decoded and were skipped")
    _eval_table(rows, result, fmt, top5, f"{result['dataset']} {result['split']}: "
                                        f"{plural(result['num_examples'], 'image')}", notes)


#: the options of `cnnbench eval` that only the accuracy evaluator has (its settings as flags)
_ACCURACY_ONLY = ("top5", "split", "crops", "scales", "batch_size", "report_file", "submission", "class_map",
                  "ground_truth", "predictions", "num_classes", "data_dir", "manual_dir", "model_parallel",
                  "precision")


def _check_accuracy_only(evaluator: str) -> None:
    from click.core import ParameterSource

    ctx = click.get_current_context()
    if evaluator == "accuracy":
        raise UsageError("the accuracy evaluator takes its options as flags (--split, --crops, --scales ...), not --set")
    given = [p.opts[0] for p in ctx.command.params
             if p.name in _ACCURACY_ONLY and ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE]
    if given:
        raise UsageError(f"{', '.join(given)} belong to the accuracy evaluator; give the {evaluator} evaluator's "
                         f"options as --set KEY=VALUE")


def _run_evaluator(name, options, runs, checkpoint, raw_weights, fmt):
    """`cnnbench eval --evaluator NAME`: one registered evaluator on each run, its result kept in the
    run (compare shows it) and shown as a table of its metrics."""
    from pathlib import Path

    from cnnbench.compare import evaluators
    from cnnbench.eval.evaluators import create, evaluate
    from cnnbench.progress import Bar
    from cnnbench.runs.loaded import latest_run, load_run

    evaluators()  # cnnbench's own and the installed packages'
    chosen = create(name, options)
    with err_console().status("loading checkpoints ..."):
        loaded = [load_run(Path(r), which=checkpoint, raw=raw_weights) for r in (runs or [latest_run()])]
    found = []
    with Bar() as bar:
        for run in loaded:
            result = evaluate(run, chosen, progress=bar)
            found.append({"model": run.name, "run_dir": str(run.run_dir), "key": result.key, "setting": result.label,
                          "metrics": result.metrics, "details": result.details})
    names = list(dict.fromkeys(k for f in found for k in f["metrics"]))
    number = lambda v: "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    emit([{"model": f["model"], "setting": f["setting"], **f["metrics"]} for f in found],
         [Column("model", "model", justify="left"), Column("setting", "setting", justify="left", wrap=True),
          *(Column(k, k, number) for k in names)], fmt,
         title=f"the {name} evaluator on {plural(len(found), 'run')}",
         notes=[f"kept in each run as eval/{name}-KEY.json (cnnbench compare shows it)"],
         document={"evaluator": name, "options": options, "results": found})


def _eval_table(rows, document, fmt, top5, title, notes=()):
    columns = [Column("model", "model", justify="left"), Column("protocol", "protocol", justify="left", wrap=True),
               Column("num_examples", "images", integer), Column("top1", "top-1 %", _pct),
               Column("top1_error", "top-1 err %", _pct)]
    if top5:
        columns += [Column("top5", "top-5 %", _pct), Column("top5_error", "top-5 err %", _pct)]
    emit(rows, columns, fmt, title=title, notes=list(notes), document=document)


def _evaluate_with_progress(loaded, **kwargs):
    from cnnbench.eval.evaluate import evaluate_runs
    from cnnbench.progress import Bar

    with Bar() as bar:
        return evaluate_runs(loaded, progress=bar, **kwargs)


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--run", "run_dir", type=click.Path(file_okay=False), help="Run directory (default: the latest).")
@click.option("--pretrained", metavar="NAME", help="Instead of --run: " + PRETRAINED_HELP)
@click.option("--top", type=int, default=5, show_default=True, help="Classes per image.")
@click.option("--checkpoint", type=click.Choice(CHECKPOINTS), default="best", show_default=True)
@click.option("--raw-weights", is_flag=True,
              help="For a run trained with --ema: the raw weights instead of the averaged ones.")
@click.option("--precision", type=click.Choice(INFERENCE_PRECISIONS), default="fp32", show_default=True,
              help=PRECISION_HELP)
@format_option
def predict(images, run_dir, pretrained, top, checkpoint, raw_weights, precision, fmt):
    """The most probable classes of IMAGES, with their names and probabilities.

    \b
    Examples:
      cnnbench predict cat.jpg dog.png --run runs/resnet50-imagenet2012-20261122-101500
      cnnbench predict cat.jpg --pretrained resnet50
    """
    from pathlib import Path

    from cnnbench.eval.predict import check_images, predict_files
    from cnnbench.runs.loaded import latest_run, load_run

    check_images(list(images))  # a missing or broken image is one line before the model loads
    if pretrained and run_dir:
        raise UsageError("give --run or --pretrained, not both")
    if pretrained:
        run_dir = pretrained_run(pretrained, fmt)["run_dir"]
    run = load_run(Path(run_dir) if run_dir else latest_run(), which=checkpoint, raw=raw_weights)
    results, note = predict_files(run, list(images), top=top, precision=precision)
    rows = [{"image": r["image"] if p["rank"] == 1 else "", **p} for r in results for p in r["predictions"]]
    emit(rows, [Column("image", "image", justify="left"), Column("rank", "rank"),
                Column("name", "class", justify="left"), Column("id", "id", justify="left"),
                Column("probability", "probability", lambda v: f"{100 * v:.2f}%")], fmt,
         title=f"{run.cfg.arch} ({run.name})", notes=[note] if note else [], document=results)
