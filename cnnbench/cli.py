"""The `cnnbench` command line. One thin function per command: parse, call, print. No logic here.

Heavy imports (JAX, Flax, TensorFlow) happen inside commands, so `cnnbench --help` is instant.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib

import click

from cnnbench import __version__
from cnnbench.errors import CnnbenchError, UsageError
from cnnbench.output import Column, emit, err_console, format_option, giga, human_bytes, integer, plural
from cnnbench.runs.config import OPTIMIZERS, PRECISIONS, SCHEDULES


class _Group(click.Group):
    """Turns :class:`CnnbenchError` into one ``Error: ...`` line and its exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CnnbenchError as e:
            error = click.ClickException(e.for_cli())
            error.exit_code = e.exit_code
            raise error from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cnnbench")
@click.option("--verbose", is_flag=True,
              help="Also show the libraries' own start-up logs (TensorFlow's C++ lines); CNNBENCH_VERBOSE=1 does the same.")
def cli(verbose):
    """Train, evaluate and compare the classic image-classification CNNs.

    \b
    Examples:
      cnnbench archs                     # every architecture, counted
      cnnbench summary alexnet           # the per-layer table of the AlexNet stats slide
    """
    if verbose:
        os.environ["CNNBENCH_VERBOSE"] = "1"
    if os.environ.get("CNNBENCH_FASTOPS"):  # (fastops imports JAX: only when the variable is set)
        from cnnbench.kernels import fastops

        fastops.check_env()


MODEL_PARALLEL_HELP = ("Split each copy of the model over M devices (mesh axis 'model': the paper AlexNet's two "
                       "towers, the channels of every other network); batches split over devices / M.")


def parse_options(pairs: tuple[str, ...], what: str = "-o") -> dict:
    """``-o key=value`` (or ``--set``) pairs; values are read as TOML (``false``, ``0.3``,
    ``[100, 100]``) or text."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            example = "activation=relu" if what == "-o" else "plateau_patience=3"
            raise UsageError(f"{what} {pair!r} is not KEY=VALUE (e.g. {what} {example})")
        try:
            options[key.replace("-", "_")] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            options[key.replace("-", "_")] = value
    return options


PRETRAINED_HELP = "Published weights by name (see `cnnbench weights download --list`), downloaded on first use."


def _pretrained(name: str, fmt: str = "table", **kwargs) -> dict:
    """``--pretrained NAME`` and `weights download`: the published weights' run directory, with a
    progress bar while the file downloads, is checked and converts."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from cnnbench.transfer.published import get, pretrained

    entry = get(name)
    columns = [TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn()]
    with Progress(*columns, console=err_console(), transient=True, disable=fmt == "json") as bar:
        tasks: dict[str, int] = {}

        def progress(stage, done, total):
            if stage not in tasks:
                label = {"download": f"downloading {entry.filename}", "verify": f"checking {entry.filename}",
                         "convert": f"converting {entry.filename}"}[stage]
                tasks[stage] = bar.add_task(label, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        return pretrained(name, progress=progress, **kwargs)


@cli.command()
@click.option("--family", help="Only this family (e.g. ResNet, VGG).")
@format_option
def archs(family, fmt):
    """List every registered architecture with its counted parameters and multiply-adds.

    \b
    Example:
      cnnbench archs --family vgg
      cnnbench archs --format json
    """
    from rich.progress import Progress

    from cnnbench.analysis.catalog import catalog

    with Progress(console=err_console(), transient=True) as progress:
        task = None

        def advance(name):
            nonlocal task
            if task is None:
                task = progress.add_task("counting", total=None)
            progress.update(task, description=f"counting {name}")

        rows = catalog(family, advance)
    if not rows:
        raise UsageError(f"no architecture of family {family!r}")
    columns = [Column("name", "name", justify="left"), Column("family", "family", justify="left"),
               Column("year", "year"), Column("citation", "paper", justify="left"),
               Column("input_size", "input"), Column("params", "parameters", integer),
               Column("macs", "G mult-adds", giga),
               Column("reference", "top-1 / top-5 err %", justify="left"),
               Column("protocol", "published result", justify="left", wrap=True)]
    emit(rows, columns, fmt, title="cnnbench architectures",
         document=[{k: v for k, v in r.items() if k not in ("citation", "reference", "protocol")}
                   for r in rows])


@cli.command()
@click.argument("arch")
@click.option("--input-size", type=int, help="Input height and width (default: the architecture's).")
@click.option("--num-classes", type=int, help="Classes of the classifier (default: the architecture's).")
@click.option("--in-channels", type=int, help="Input channels (default: the architecture's).")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Architecture option, e.g. -o lrn=false -o activation=tanh.")
@click.option("--all-layers", is_flag=True, help="Also list activations, batch norm and dropout.")
@click.option("--model-parallel", type=int, metavar="M", default=1, show_default=True,
              help="Show the model split over M devices: per-device memory and what crosses devices.")
@format_option
def summary(arch, input_size, num_classes, in_channels, options, all_layers, model_parallel, fmt):
    """Per-layer table of ARCH: shapes, parameters, multiply-adds, memory, receptive fields.

    \b
    Example:
      cnnbench summary alexnet-owt --input-size 227
      cnnbench summary resnet50 --format json
    """
    from cnnbench.analysis.summary import summarize

    s = summarize(arch, input_size=input_size, num_classes=num_classes, in_channels=in_channels,
                  model_parallel=model_parallel, **parse_options(options))
    doc = s.to_dict(all_layers=all_layers)
    rows = [dict(layer, output="x".join(map(str, layer["output_shape"])),
                 window=_window(layer), memory=human_bytes(layer["activation_bytes"]),
                 moved=human_bytes(layer.get("moved_bytes_per_image")) if layer.get("moved_bytes_per_image") else "")
            for layer in doc["layers"]]
    footer = {"name": "total", "params": s.params, "macs": s.macs, "activations": s.activations,
              "memory": human_bytes(s.activation_bytes)}
    columns = [Column("name", "layer", justify="left"), Column("type", "type", justify="left"),
               Column("window", "kernel/stride/pad"), Column("output", "output"),
               Column("params", "parameters", integer), Column("macs", "mult-adds", integer),
               Column("activations", "activations", integer), Column("memory", "memory"),
               Column("receptive_field", "RF"), Column("effective_stride", "eff. stride")]
    notes = list(doc["observations"])
    from cnnbench.analysis.summary import CONNECTION_FAMILIES
    from cnnbench.archs import get_arch

    if get_arch(arch).family in CONNECTION_FAMILIES:  # as LeCun et al. count them
        columns.insert(6, Column("connections", "connections", integer))
        footer["connections"] = sum(r.connections for r in s.layers)
    if model_parallel > 1:
        columns[5:5] = [Column("split", "split", justify="left"),
                        Column("device_params", "params/device", integer),
                        Column("moved", "crosses devices/img")]
        notes += _model_parallel_notes(s, doc)
    hidden = [r for r in s.layers if r not in s.shown]
    if hidden and not all_layers:
        notes.append(f"{len(hidden)} element-wise layers (activation, batch norm, dropout) are not "
                     f"listed; they hold {sum(r.params for r in hidden):,} parameters "
                     f"(--all-layers lists them).")
    if s.params != s.inference_params:
        notes.append(f"{s.params - s.inference_params:,} parameters are used only in training "
                     f"(auxiliary classifiers) and are not in the rows above.")
    h, w, c = s.input_shape
    emit(rows, columns, fmt, title=f"{arch}: input {h}x{w}x{c}, {s.num_classes} classes",
         notes=notes, document=doc, footer=footer)


def _model_parallel_notes(s, doc) -> list[str]:
    """What one device holds and what crosses devices, for `summary --model-parallel`."""
    per, m = doc["per_device"], s.model_parallel
    crossing = ", ".join(f"{c['layer']} {human_bytes(c['bytes_per_image'])}" for c in doc["communication"])
    return [f"Split over {m} devices: each holds {per['params']:,} of the {s.params:,} parameters "
            f"({human_bytes(per['param_bytes'])}, {100 * per['params'] / s.params:.1f}%), "
            f"{human_bytes(per['optimizer_state_bytes'])} of optimiser state (SGD momentum; Adam twice that) "
            f"and {human_bytes(per['activation_bytes_per_image'])} of activations per image.",
            f"Crossing devices, received by each device per image: {crossing or 'nothing'}. "
            f"split: column = whole input, 1/{m} of the output channels; tower = own maps only; "
            f"row = own inputs, partial outputs summed; whole = not split."]


def _window(layer: dict) -> str:
    if layer["kernel"] is None or layer["type"] in ("flatten", "gap"):
        return ""
    k = layer["kernel"]
    return f"{k}x{k} /{layer['stride']}" + (f" p{layer['padding']}" if layer["padding"] else "")


# --------------------------------------------------------------------------- train

def _default(name: str, text: str = "") -> str:
    """An option's help with TrainConfig's default for it, which an experiment file's value
    replaces (the options themselves default to "not given", so that the file can)."""
    from cnnbench.runs.config import TrainConfig

    value = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)
    shown = str(value).lower() if isinstance(value, bool) else value
    return f"{text + ' ' if text else ''}[default: {shown}]"


@cli.command()
@click.argument("arch", required=False)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="Experiment file (TOML).")
@click.option("--dataset", help="Dataset (default: digits, offline).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="TFDS data directory.")
@click.option("--manual-dir", type=click.Path(file_okay=False), help="Manually downloaded archives (ImageNet).")
@click.option("--epochs", type=int, help=_default("epochs"))
@click.option("--batch-size", type=int, help=_default("batch_size", "Global batch size (over all devices and hosts)."))
@click.option("--lr", type=float, help=_default("lr", "Peak learning rate."))
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), help=_default("optimizer"))
@click.option("--momentum", type=float, help=_default("momentum"))
@click.option("--nesterov/--no-nesterov", default=None, help=_default("nesterov"))
@click.option("--weight-decay", type=float, help=_default("weight_decay", "L2 on weights."))
@click.option("--schedule", type=click.Choice(SCHEDULES), help=_default("schedule"))
@click.option("--warmup-epochs", type=float, help=_default("warmup_epochs"))
@click.option("--label-smoothing", type=float, help=_default("label_smoothing"))
@click.option("--lr-scale-rule", type=click.Choice(["none", "linear"]),
              help=_default("lr_scale_rule", "linear: the peak learning rate is --lr x batch size / 256."))
@click.option("--layer-decay", type=float, metavar="DECAY",
              help="Layer-wise learning-rate decay: the k-th weight layer from the output trains at lr x DECAY^k "
                   "(batch norms with the layer before them). [default: none]")
@click.option("--accumulate", type=int, metavar="N",
              help=_default("accumulate", "Gradient accumulation: each batch runs as N micro-batches, one after "
                                          "the other (1/N of the activation memory), with the update of the whole "
                                          "batch."))
@click.option("--ema", type=float, metavar="DECAY",
              help="Average the weights after every step (Polyak / EMA, e.g. 0.9999): validated and kept "
                   "beside the raw ones; eval and predict use them. [default: none]")
@click.option("--grad-clip", type=float, help="Clip the global gradient norm. [default: none]")
@click.option("--input-size", type=int)
@click.option("--train-ops", help="Train preprocessing recipe or spec (see `cnnbench data show`).")
@click.option("--eval-ops", help="Validation preprocessing recipe or spec.")
@click.option("--train-split")
@click.option("--eval-split")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE", help="Architecture option.")
@click.option("--precision", type=click.Choice(PRECISIONS), help=_default("precision"))
@click.option("--seed", type=int, help=_default("seed"))
@click.option("--devices", type=int, help="Use the first N devices (default: all).")
@click.option("--model-parallel", type=int, metavar="M", help=_default("model_parallel", MODEL_PARALLEL_HELP))
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Any other setting of an experiment file (TOML value), e.g. --set plateau_patience=3 "
                   "--set decay_epochs=[30,60] --set aux_weight=0.3 --set keep_checkpoints=5.")
@click.option("--run-dir", type=click.Path(file_okay=False),
              help="Run directory (default: runs/ARCH-DATASET-TIME); an existing one is resumed.")
@click.option("--resume", type=click.Path(file_okay=False, exists=True),
              help="Continue the run in this directory from its last checkpoint.")
@click.option("--pretrained", metavar="NAME",
              help="Start from published ImageNet weights (a new head when the classes differ); ARCH "
                   "defaults to theirs. " + PRETRAINED_HELP)
@click.option("--coordinator", metavar="HOST:PORT", help="Multi-host: address of process 0.")
@click.option("--num-processes", type=int, help="Multi-host: number of processes.")
@click.option("--process-id", type=int, help="Multi-host: this process's index.")
@click.option("--init-timeout", type=float, default=30.0, show_default=True, metavar="SECONDS",
              help="Multi-host: how long each process waits for the others at the coordinator.")
@format_option
def train(arch, config_file, options, settings, resume, run_dir, pretrained, coordinator, num_processes, process_id,
          init_timeout, fmt, **values):
    """Train ARCH (default dataset: the offline digits).

    \b
    Examples:
      cnnbench train lenet5
      cnnbench train alexnet --config experiments/alexnet_imagenet.toml --manual-dir ~/ILSVRC2012
      cnnbench train resnet20 --dataset cifar10 --epochs 2 --precision bf16
      cnnbench train alexnet --model-parallel 2 --input-size 67 --epochs 2
      cnnbench train resnet18 --pretrained resnet18 --dataset cifar10 --input-size 64
      cnnbench train --resume runs/lenet5-digits-20261122-031500
    """
    from pathlib import Path

    from cnnbench.runs import config as config_lib
    from cnnbench.train.loop import init_distributed, is_first_process
    from cnnbench.runs.layout import check_free

    init_distributed(coordinator, num_processes, process_id, init_timeout,  # before anything touches a device
                     run_dir=resume or run_dir)
    values.update(config_lib.settings(parse_options(settings, what="--set")))
    if options:
        values["arch_options"] = parse_options(options)
    if pretrained:
        if resume:
            raise UsageError("--pretrained starts a run; --resume continues one: give one of them")
        weights_dir = Path(_pretrained(pretrained, fmt)["run_dir"])
        weights = config_lib.from_run(weights_dir)
        if arch and arch != weights.arch:
            raise UsageError(f"--pretrained {pretrained} holds a {weights.arch}, not a {arch}; "
                             f"leave out ARCH or name {weights.arch}")
        arch = weights.arch
        values["init_from"] = str(weights_dir)
        values.setdefault("arch_options", dict(weights.arch_options))  # (Keras's ResNet-50 is v1)
    target = Path(resume or run_dir) if (resume or run_dir) else None
    if target is not None and is_first_process():
        check_free(target)  # a second writer hears who holds the run first (process 0 writes it)
    if resume:
        config_lib.from_run(target)  # --resume names a run: one line if it is none
    cfg = config_lib.requested(target, arch, config_file, values)
    if target is not None:
        config_lib.check_continues(target, cfg)  # before anything loads
    summary = _train_with_progress(cfg, target, fmt)
    rows = [{"run": summary["run_dir"], "epochs": summary["epochs"], **{f"final_{k}": v for k, v in summary["final"].items()},
             "ema_top1": summary.get("final_ema", {}).get("top1"),
             "best_top1": summary["best"].get("top1"), "best_epoch": summary["best"].get("epoch"),
             "images_per_sec": summary["images_per_sec"], "wall_time": summary["wall_time"]}]
    pct = lambda v: "" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    emit(rows, [Column("run", "run", justify="left"), Column("epochs", "epochs"),
                Column("final_top1", "val top-1", pct), Column("final_top5", "val top-5", pct),
                Column("final_loss", "val loss", lambda v: f"{v:.4f}"),
                *([Column("ema_top1", "EMA val top-1", pct)] if "final_ema" in summary else []),
                Column("best_top1", "best top-1", pct), Column("best_epoch", "at epoch"),
                Column("images_per_sec", "train images/s", lambda v: f"{v:,.0f}"),
                Column("wall_time", "wall time", lambda v: f"{v:.0f} s")], fmt,
         title=f"{cfg.arch} on {summary['dataset']}", document=summary)


def _skipped_note(record: dict) -> str:
    parts = [f"{plural(record[key], what)}" for key, what in (("skipped_train_images", "training image"),
                                                              ("skipped_eval_images", "validation image"))
             if record.get(key)]
    return f"  ({' and '.join(parts)} could not be decoded and were skipped: see skipped.txt)" if parts else ""


def _train_with_progress(cfg, run_dir, fmt):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from cnnbench.train.loop import Events, train as run_training

    columns = [TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]}  top-1 {task.fields[top1]}  {task.fields[rate]} img/s"),
               TimeRemainingColumn()]
    console = err_console()
    # The bar starts with the first epoch: a failure before (data, a run directory) shows no empty bar.
    progress = Progress(*columns, console=console, transient=False, disable=fmt == "json")
    try:
        shown = {"epoch": "-", "loss": "-", "top1": "-", "rate": "-"}
        task = progress.add_task("train", total=None, **shown)

        def epoch_start(epoch, steps):
            progress.start()
            shown["epoch"] = f"{epoch + 1}/{cfg.epochs}"
            progress.reset(task, total=steps, **shown)  # reset() forgets fields it is not given

        def step(r):
            shown.update(loss=f"{r['loss']:.4f}", top1=f"{100 * r['top1']:.1f}%",
                         rate=f"{r['images_per_sec']:,.0f}")
            progress.update(task, completed=r["step_in_epoch"], **shown)

        def validation(r):
            progress.console.print(f"epoch {r['epoch']}/{cfg.epochs}: val top-1 {100 * r['top1']:.2f}%  "
                                   f"top-5 {100 * r['top5']:.2f}%  loss {r['loss']:.4f}"
                                   + (f"  (EMA: top-1 {100 * r['ema_top1']:.2f}%)" if "ema_top1" in r else "")
                                   + _skipped_note(r),
                                   highlight=False)

        def announce(path, resumed):
            split = f" (the model split over {cfg.model_parallel} devices)" if cfg.model_parallel > 1 else ""
            progress.console.print(f"{'resuming' if resumed else 'run directory'}: {path}{split}", highlight=False)

        def note(text):
            progress.console.print(f"Warning: {text}", highlight=False, markup=False, soft_wrap=True)

        return run_training(cfg, run_dir=run_dir, events=Events(epoch_start, step, validation, note),
                            on_run_dir=announce)
    finally:
        progress.stop()


# --------------------------------------------------------------------------- eval, predict

def _pct(v) -> str:
    return "" if v is None else f"{100 * v:.2f}"


@cli.command("eval")
@click.argument("runs", nargs=-1, type=click.Path())
@click.option("--top5/--top1-only", default=True, show_default=True,
              help="Report top-5 accuracy and error beside top-1 (ILSVRC's main measure).")
@click.option("--split", help="Split to evaluate (default: the run's validation split).")
@click.option("--crops", type=click.Choice(["center", "10", "multiscale"]), default="center", show_default=True,
              help="centre crop (the run's validation preprocessing), ILSVRC 10-crop, or multi-scale.")
@click.option("--scales", help="Multi-scale shorter sides, e.g. 256,384,512 (default: those, scaled to the input).")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--checkpoint", type=click.Choice(["best", "latest"]), default="best", show_default=True)
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
@format_option
def eval_(runs, top5, split, crops, scales, batch_size, checkpoint, raw_weights, report_file, submission, class_map,
          ground_truth, predictions, num_classes, data_dir, manual_dir, model_parallel, fmt):
    """Top-1/top-5 of trained RUNS (default: the latest under ./runs); several runs add their ensemble.

    \b
    Examples:
      cnnbench eval --top5
      cnnbench eval runs/alexnet-* --crops 10 --report alexnet.md
      cnnbench eval runs/vgg16-imagenet2012-* --crops multiscale --scales 256,384,512
      cnnbench eval runs/resnet50-* --submission sub.txt
      cnnbench eval --ground-truth ILSVRC2012_validation_ground_truth.txt --predictions sub.txt
    """
    from pathlib import Path

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

    scale_sizes = _int_list(scales, "--scales") if scales else None
    with err_console().status("loading checkpoints ..."):
        loaded = [load_run(Path(r), which=checkpoint, raw=raw_weights) for r in (runs or [latest_run()])]
    result, final = _evaluate_with_progress(loaded, split=split, crops=crops, scales=scale_sizes,
                                            batch_size=batch_size, data_dir=data_dir, manual_dir=manual_dir,
                                            model_parallel=model_parallel)
    result["report"] = analyse(final, loaded[0].class_names)
    notes = []
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


def _eval_table(rows, document, fmt, top5, title, notes=()):
    columns = [Column("model", "model", justify="left"), Column("protocol", "protocol", justify="left", wrap=True),
               Column("num_examples", "images", integer), Column("top1", "top-1 %", _pct),
               Column("top1_error", "top-1 err %", _pct)]
    if top5:
        columns += [Column("top5", "top-5 %", _pct), Column("top5_error", "top-5 err %", _pct)]
    emit(rows, columns, fmt, title=title, notes=list(notes), document=document)


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{option} takes whole numbers separated by commas, e.g. 256,384,512") from None


def _evaluate_with_progress(loaded, **kwargs):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from cnnbench.eval.evaluate import evaluate_runs

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err_console(), transient=True) as progress:
        task = None

        def on_model(run, total):
            nonlocal task
            task = progress.add_task(f"evaluating {run.name}", total=total)

        return evaluate_runs(loaded, on_model=on_model, advance=lambda n: progress.advance(task, n), **kwargs)


@cli.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--run", "run_dir", type=click.Path(file_okay=False), help="Run directory (default: the latest).")
@click.option("--pretrained", metavar="NAME", help="Instead of --run: " + PRETRAINED_HELP)
@click.option("--top", type=int, default=5, show_default=True, help="Classes per image.")
@click.option("--checkpoint", type=click.Choice(["best", "latest"]), default="best", show_default=True)
@click.option("--raw-weights", is_flag=True,
              help="For a run trained with --ema: the raw weights instead of the averaged ones.")
@format_option
def predict(images, run_dir, pretrained, top, checkpoint, raw_weights, fmt):
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
        run_dir = _pretrained(pretrained, fmt)["run_dir"]
    run = load_run(Path(run_dir) if run_dir else latest_run(), which=checkpoint, raw=raw_weights)
    results = predict_files(run, list(images), top=top)
    rows = [{"image": r["image"] if p["rank"] == 1 else "", **p} for r in results for p in r["predictions"]]
    emit(rows, [Column("image", "image", justify="left"), Column("rank", "rank"),
                Column("name", "class", justify="left"), Column("id", "id", justify="left"),
                Column("probability", "probability", lambda v: f"{100 * v:.2f}%")], fmt,
         title=f"{run.cfg.arch} ({run.name})", document=results)


@cli.command()
@click.argument("items", nargs=-1, required=True)
@click.option("--sort", "sort_key", help="Sort by this column key (e.g. params, macs, best_top1).")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False), help="Write PNG figures into this folder.")
@click.option("--bench/--no-bench", default=True, show_default=True,
              help="Measure forward and training images/s on synthetic data (a few steps each).")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Batch of the throughput measurement.")
@click.option("--steps", type=int, default=3, show_default=True, help="Timed steps per measurement.")
@click.option("--archs-only", is_flag=True, help="Architecture names stand for themselves, not their latest run.")
@format_option
def compare(items, sort_key, plot_dir, bench, batch_size, steps, archs_only, fmt):
    """Architectures and runs side by side: size, cost, depth, receptive field, speed, accuracy.

    ITEMS are run directories or architecture names; a name with runs under ./runs stands for
    its latest run.

    \b
    Examples:
      cnnbench compare alexnet-owt vgg16 googlenet resnet50 --sort macs
      cnnbench compare plain20 plain56 resnet20 resnet56 --plot figures/   # He et al. Fig. 1
      cnnbench compare runs/* --no-bench --format markdown
    """
    from pathlib import Path

    from rich.progress import Progress, TextColumn

    from cnnbench.compare import compare as compare_items, plots, sort_rows

    with Progress(TextColumn("{task.description}"), console=err_console(), transient=True) as progress:
        task = progress.add_task("comparing", total=None)
        rows = compare_items(list(items), bench=bench, batch_size=batch_size, steps=steps, archs_only=archs_only,
                             on_item=lambda name, what: progress.update(task, description=f"{what} {name}"))
    rows = sort_rows(rows, sort_key)
    notes = [f"{r['name']}: {r['run_dir']}" for r in rows if r["kind"] == "run" and r["name"] != Path(r["run_dir"]).name]
    if plot_dir:
        notes += [f"figure: {p}" for p in plots(rows, Path(plot_dir))]
    if bench:
        notes.append(f"images/s: synthetic data, batch {batch_size}, median of {steps} steps, this machine")
    pct = lambda v: "" if v is None else f"{100 * v:.2f}"  # noqa: E731
    rate = lambda v: "" if v is None else f"{v:,.1f}"  # noqa: E731
    columns = [Column("name", "name", justify="left"), Column("kind", "kind", justify="left"),
               Column("dataset", "dataset", justify="left"), Column("input_size", "input"),
               Column("params", "parameters", integer), Column("macs", "M mult-adds", lambda v: f"{v / 1e6:,.1f}"),
               Column("activation_bytes", "activations/img", human_bytes), Column("depth", "depth"),
               Column("receptive_field", "RF"),
               Column("forward_images_per_sec", "fwd img/s", rate),
               Column("train_step_images_per_sec", "train img/s", rate),
               Column("best_top1", "best val top-1 %", pct), Column("best_top5", "top-5 %", pct),
               Column("eval_top1", "eval top-1 %", pct), Column("probe_top1", "probe top-1 %", pct),
               Column("probe", "probe", justify="left"), Column("started_from", "fine-tuned from", justify="left"),
               Column("paper_top1", "paper top-1 %", pct),
               Column("paper_dataset", "paper dataset", justify="left"),
               Column("epochs", "epochs"), Column("wall_time", "wall time", lambda v: f"{v:,.0f} s"),
               Column("train_images_per_sec", "run img/s", rate)]
    shown = [c for c in columns if any(r.get(c.key) is not None for r in rows)]
    emit(rows, shown, fmt, title="cnnbench compare", notes=notes)


# --------------------------------------------------------------------------- transfer learning

@cli.command()
@click.argument("source", type=click.Path(file_okay=False), required=False)
@click.option("--pretrained", metavar="NAME", help="Instead of SOURCE: " + PRETRAINED_HELP)
@click.option("--dataset", required=True, help="The new task's dataset (e.g. cifar10, folder:PATH).")
@click.option("--strategy", type=click.Choice(["all", "partial", "frozen-base"]), default="frozen-base",
              show_default=True, help="Train everything, some layers, or only the head.")
@click.option("--trainable", help="With --strategy partial: layers that train, e.g. conv5,fc6,fc7,head or 'last 3'.")
@click.option("--lr-mult", "lr_mults", multiple=True, metavar="LAYER=X",
              help="Learning-rate multiplier of a layer (e.g. --lr-mult head=10).")
@click.option("--data-dir", type=click.Path(file_okay=False))
@click.option("--manual-dir", type=click.Path(file_okay=False))
@click.option("--epochs", type=int, help="Default 10.")
@click.option("--batch-size", type=int, help="Default: the source run's.")
@click.option("--lr", type=float, help="Default 0.01.")
@click.option("--optimizer", type=click.Choice(["sgd", "adam", "adamw"]))
@click.option("--schedule", type=click.Choice(["constant", "step", "cosine", "exponential", "plateau"]))
@click.option("--weight-decay", type=float)
@click.option("--input-size", type=int, help="Default: the source run's.")
@click.option("--train-ops")
@click.option("--eval-ops")
@click.option("--train-split")
@click.option("--eval-split")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]))
@click.option("--seed", type=int)
@click.option("--devices", type=int)
@click.option("--model-parallel", type=int, metavar="M", help=MODEL_PARALLEL_HELP + " [default: 1]")
@click.option("--run-dir", type=click.Path(file_okay=False), help="Default: runs/ARCH-DATASET-TIME.")
@format_option
def finetune(source, pretrained, dataset, strategy, trainable, lr_mults, run_dir, fmt, **values):
    """Fine-tune the network in SOURCE (a run or imported weights) or published --pretrained weights
    on another dataset.

    A new head is made when the class count differs; frozen layers get no updates, no optimiser
    state, and keep their batch-norm statistics. Writes a normal run directory.

    \b
    Examples:
      cnnbench finetune runs/lenet5-digits-... --dataset folder:letters --strategy frozen-base
      cnnbench finetune weights/alexnet-owt --dataset caltech101 --strategy partial --trainable conv5,head
      cnnbench finetune weights/resnet50 --dataset oxford_flowers102 --strategy all --lr-mult head=10
      cnnbench finetune --pretrained resnet50 --dataset oxford_flowers102 --strategy frozen-base
    """
    from pathlib import Path

    from cnnbench.transfer.finetune import finetune_config

    if bool(source) == bool(pretrained):
        raise UsageError("give SOURCE (a run directory) or --pretrained NAME" + (", not both" if source else ""))
    if pretrained:
        source = _pretrained(pretrained, fmt)["run_dir"]

    multipliers = {}
    for pair in lr_mults:
        layer, sep, value = pair.partition("=")
        try:
            multipliers[layer] = float(value) if sep and layer else None
        except ValueError:
            multipliers[layer] = None
        if multipliers[layer] is None:
            raise UsageError(f"--lr-mult {pair!r} is not LAYER=NUMBER (e.g. head=10)")
    cfg = finetune_config(Path(source), dataset=dataset, strategy=strategy, trainable=trainable,
                          lr_multipliers=multipliers, overrides=values)
    summary = _train_with_progress(cfg, Path(run_dir) if run_dir else None, fmt)
    transfer = summary.get("transfer", {})
    notes = [f"strategy {strategy}: {transfer.get('trainable_params', 0):,} parameters train, "
             f"{transfer.get('frozen_params', 0):,} frozen"]
    if transfer.get("fresh"):
        notes.append(f"new (not from {source}): {', '.join(transfer['fresh'])}")
    pct = lambda v: "" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    emit([{"run": summary["run_dir"], "epochs": summary["epochs"], **{f"final_{k}": v for k, v in summary["final"].items()},
           "best_top1": summary["best"].get("top1"), "wall_time": summary["wall_time"]}],
         [Column("run", "run", justify="left"), Column("epochs", "epochs"),
          Column("final_top1", "val top-1", pct), Column("final_top5", "val top-5", pct),
          Column("best_top1", "best top-1", pct), Column("wall_time", "wall time", lambda v: f"{v:.0f} s")], fmt,
         title=f"{cfg.arch} fine-tuned on {summary['dataset']}", notes=notes, document=summary)


# --------------------------------------------------------------------------- visualize

@cli.group()
def visualize():
    """What a trained network learned, as PNG figures written into --out (default RUN/viz).

    \b
    Examples:
      cnnbench visualize filters runs/alexnet-owt-imagenet2012-20261122-101500
      cnnbench visualize occlusion RUN cat.jpg --patch 32 --stride 8
      cnnbench visualize tsne RUN --layer fc7 --n 2000
    """


def viz_options(image: bool = False, dataset: bool = False):
    def decorate(fn):
        options = [click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False))]
        if image:
            options.append(click.argument("image", type=click.Path()))
        if dataset:
            options += [click.option("--dataset", help="Dataset (default: the run's)."),
                        click.option("--split", help="Split (default: see the command)."),
                        click.option("--n", "limit", type=int, default=2000, show_default=True,
                                     help="Images of the split to use (the first N)."),
                        click.option("--data-dir", type=click.Path(file_okay=False), help="TFDS data directory.")]
        options += [click.option("--out", type=click.Path(file_okay=False), help="Folder for the PNGs (default: RUN/viz)."),
                    click.option("--checkpoint", type=click.Choice(["best", "latest"]), default="best", show_default=True),
                    format_option]
        for option in reversed(options):
            fn = option(fn)
        return fn
    return decorate


def _visualize(name, run_dir, checkpoint, out, fmt, **kwargs):
    import inspect
    from pathlib import Path

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from cnnbench.runs.loaded import load_run
    from cnnbench.viz import commands
    from cnnbench.viz.inputs import from_run

    subject = from_run(load_run(Path(run_dir), which=checkpoint))
    command = getattr(commands, name)
    out = Path(out) if out else Path(run_dir) / "viz"
    if "progress" not in inspect.signature(command).parameters:
        written = command(subject, out=out, **kwargs)
    else:
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
        with Progress(*columns, console=err_console(), transient=True) as bar:
            def progress(description, total):
                task = bar.add_task(description, total=total)
                return lambda n: bar.advance(task, n)

            written = command(subject, out=out, progress=progress, **kwargs)
    if fmt == "json":
        import json

        click.echo(json.dumps([w.as_dict() for w in written], indent=2))
    else:
        for w in written:
            click.echo(f"wrote {w.path}: {w.note}")


def _names(text):
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


@visualize.command("filters")
@viz_options()
@click.option("--layer", help="A convolution (default: the first), e.g. conv1, features.conv2.")
@click.option("--max", "limit", type=int, default=96, show_default=True, help="Kernels shown.")
def viz_filters(run_dir, checkpoint, out, fmt, layer, limit):
    """The learned kernels of a layer as an image grid (AlexNet's Figure 3 for conv1).

    \b
    Example:
      cnnbench visualize filters runs/alexnet-imagenet2012-20261122-101500 --layer conv1
    """
    _visualize("filters", run_dir, checkpoint, out, fmt, layer=layer, limit=limit)


@visualize.command("activations")
@viz_options(image=True)
@click.option("--layers", help="Comma-separated layers (default: up to 4 stages of the convolutional base).")
@click.option("--maps", "count", type=int, default=8, show_default=True, help="Channels shown per layer.")
def viz_activations(run_dir, image, checkpoint, out, fmt, layers, count):
    """Feature maps of chosen layers for one IMAGE.

    \b
    Example:
      cnnbench visualize activations RUN cat.jpg --layers conv1,conv3,conv5
    """
    _visualize("activations", run_dir, checkpoint, out, fmt, image_path=image, layers=_names(layers), count=count)


@visualize.command("top-patches")
@viz_options(dataset=True)
@click.option("--layer", help="Layer (default: the last one with maps larger than 1x1, e.g. relu5).")
@click.option("--channels", help="Comma-separated channel indices (default: 0-7).")
@click.option("--top", type=int, default=9, show_default=True, help="Patches per channel.")
def viz_top_patches(run_dir, checkpoint, out, fmt, dataset, split, limit, data_dir, layer, channels, top):
    """The dataset patches (cropped to the unit's receptive field) that excite chosen channels most
    (Zeiler & Fergus); the split defaults to the evaluation split.

    \b
    Example:
      cnnbench visualize top-patches RUN --layer conv5 --channels 0,5,9 --n 5000
    """
    picked = list(_int_list(channels, "--channels")) if channels else None
    _visualize("top_patches", run_dir, checkpoint, out, fmt, dataset=dataset, split=split, limit=limit,
               data_dir=data_dir, layer=layer, channels=picked, top=top)


@visualize.command("occlusion")
@viz_options(image=True)
@click.option("--patch", type=int, default=32, show_default=True, help="Side of the grey square (pixels).")
@click.option("--stride", type=int, default=8, show_default=True, help="Step between square positions.")
@click.option("--class", "wanted", help="Class index or name (default: the predicted one).")
def viz_occlusion(run_dir, image, checkpoint, out, fmt, patch, stride, wanted):
    """The class probability while a grey square slides over IMAGE (Zeiler & Fergus).

    \b
    Example:
      cnnbench visualize occlusion RUN dog.jpg --patch 32 --stride 8
    """
    _visualize("occlusion", run_dir, checkpoint, out, fmt, image_path=image, patch=patch, stride=stride, wanted=wanted)


@visualize.command("saliency")
@viz_options(image=True)
@click.option("--class", "wanted", help="Class index or name (default: the predicted one).")
def viz_saliency(run_dir, image, checkpoint, out, fmt, wanted):
    """The gradient of the class score with respect to IMAGE's pixels (Simonyan et al.).

    \b
    Example:
      cnnbench visualize saliency RUN dog.jpg
    """
    _visualize("saliency", run_dir, checkpoint, out, fmt, image_path=image, wanted=wanted)


@visualize.command("cam")
@viz_options(image=True)
@click.option("--class", "wanted", help="Class index or name (default: the predicted one).")
def viz_cam(run_dir, image, checkpoint, out, fmt, wanted):
    """Class activation maps of a global-average-pooling model (NiN, GoogLeNet, ResNet; Zhou et al.).

    \b
    Example:
      cnnbench visualize cam runs/resnet20-cifar10-20261122-101500 frog.png
    """
    _visualize("cam", run_dir, checkpoint, out, fmt, image_path=image, wanted=wanted)


@visualize.command("gradcam")
@viz_options(image=True)
@click.option("--layer", help="Layer (default: the last one with maps larger than 1x1, e.g. relu5).")
@click.option("--class", "wanted", help="Class index or name (default: the predicted one).")
def viz_gradcam(run_dir, image, checkpoint, out, fmt, layer, wanted):
    """Grad-CAM of any model at a layer (Selvaraju et al.).

    \b
    Example:
      cnnbench visualize gradcam RUN dog.jpg --layer conv5
    """
    _visualize("gradcam", run_dir, checkpoint, out, fmt, image_path=image, layer=layer, wanted=wanted)


@visualize.command("tsne")
@viz_options(dataset=True)
@click.option("--layer", help="Feature layer (default: the input of the last dense layer, e.g. relu7).")
@click.option("--seed", type=int, default=0, show_default=True)
def viz_tsne(run_dir, checkpoint, out, fmt, dataset, split, limit, data_dir, layer, seed):
    """A 2-D t-SNE of a layer's features over a dataset split, coloured by class.

    \b
    Example:
      cnnbench visualize tsne RUN --layer fc7 --n 2000
    """
    _visualize("tsne", run_dir, checkpoint, out, fmt, dataset=dataset, split=split, limit=limit,
               data_dir=data_dir, layer=layer, seed=seed)


@visualize.command("neighbors")
@viz_options(image=True, dataset=True)
@click.option("--layer", help="Feature layer (default: the input of the last dense layer).")
@click.option("-k", "k", type=int, default=8, show_default=True, help="Neighbours shown.")
def viz_neighbors(run_dir, image, checkpoint, out, fmt, dataset, split, limit, data_dir, layer, k):
    """The training images nearest to IMAGE in feature space (AlexNet's Figure 4); the split
    defaults to the training split.

    \b
    Example:
      cnnbench visualize neighbors RUN dog.jpg --n 5000
    """
    _visualize("neighbors", run_dir, checkpoint, out, fmt, image_path=image, dataset=dataset, split=split,
               limit=limit, k=k, layer=layer, data_dir=data_dir)


@visualize.command("heatmap")
@viz_options(image=True)
@click.option("--size", type=int, help="Shorter side of the image (default: twice the training size).")
@click.option("--class", "wanted", help="Class index or name (default: the most probable on average).")
def viz_heatmap(run_dir, image, checkpoint, out, fmt, size, wanted):
    """The classifier applied convolutionally over a larger IMAGE: a class-score map (FCN view),
    checked against the plain model at the training size.

    \b
    Example:
      cnnbench visualize heatmap RUN street.jpg --size 448
    """
    _visualize("heatmap", run_dir, checkpoint, out, fmt, image_path=image, size=size, wanted=wanted)


# --------------------------------------------------------------------------- weights

@cli.group()
def weights():
    """Published ImageNet weights (torchvision, Keras applications) as cnnbench run directories."""


@weights.command("import")
@click.argument("source", type=click.Choice(["torchvision", "keras"]))
@click.argument("arch")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory to write.")
@click.option("--transform-input/--no-transform-input", default=None,
              help="googlenet-bn: torchvision's input re-normalisation (default on, as its weights were trained).")
@format_option
def weights_import(source, arch, file, out, transform_input, fmt):
    """Convert FILE (torchvision .pth/.safetensors state dict, Keras .h5) for ARCH into a run directory.

    \b
    torchvision: alexnet-owt, vgg11 ... vgg19, vgg11-bn ... vgg19-bn, googlenet-bn, resnet18 ... resnet152
    keras:       vgg16, vgg19, resnet50 (vgg16_weights_tf_dim_ordering_tf_kernels.h5 ...)
    Examples:
      cnnbench weights import torchvision resnet50 resnet50-0676ba61.pth --out weights/resnet50
      cnnbench weights import keras vgg16 vgg16_weights_tf_dim_ordering_tf_kernels.h5 --out weights/vgg16-keras
    """
    from cnnbench.transfer.weights import import_weights

    with err_console().status(f"converting {file} ..."):
        result = import_weights(source, arch, file, out, transform_input=transform_input)
    options = ", ".join(f"{k}={v}" for k, v in result["arch_options"].items())
    row = {**result, "arch": result["arch"] + (f" ({options})" if options else "")}
    emit([row], [Column("run_dir", "run directory", justify="left"), Column("arch", "architecture", justify="left"),
                 Column("source", "from", justify="left"), Column("tensors", "tensors", integer),
                 Column("params", "parameters", integer), Column("num_classes", "classes", integer),
                 Column("eval_spec", "eval preprocessing", justify="left")], fmt,
         title=f"imported {source} {arch}", document=result,
         notes=[f"not imported: {result['ignored_summary']}"] if result["ignored"] else [])


@weights.command("download")
@click.argument("name", required=False)
@click.option("--list", "list_", is_flag=True, help="The registry: every name, its file, digest, licence, accuracy.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Run directory to write (default: the cache's weights/runs/NAME, which --pretrained reads).")
@click.option("--mirror", metavar="URL", help="Fetch the same file name from this server instead "
              "(default: $CNNBENCH_WEIGHTS_MIRROR, else the publisher).")
@format_option
def weights_download(name, list_, out, mirror, fmt):
    """Download published ImageNet weights NAME once (resumed if cut off, checked against the
    publisher's digest) and convert them into a run directory.

    \b
    Examples:
      cnnbench weights download --list
      cnnbench weights download resnet50
      cnnbench weights download vgg16-keras --out weights/vgg16-keras
    The cache is $CNNBENCH_CACHE_DIR/weights (default ~/.cache/cnnbench/weights).
    """
    from cnnbench.transfer.published import PUBLISHED, weights_dir

    if list_:
        if name or out:
            raise UsageError("--list takes no NAME or --out")
        rows = [{**dataclasses.asdict(e), "file": e.filename} for e in PUBLISHED.values()]
        pct = lambda v: "" if v is None else f"{v:.2f}"  # noqa: E731
        emit(rows, [Column("name", "name", justify="left"), Column("arch", "architecture", justify="left"),
                    Column("source", "from", justify="left"), Column("top1", "top-1 %", pct),
                    Column("top5", "top-5 %", pct), Column("size_mb", "MB", lambda v: f"{v:,.0f}"),
                    Column("digest", "digest", lambda v: v.replace(":", " ")[:15] + ("..." if len(v) > 15 else ""),
                           justify="left"),
                    Column("note", "note", justify="left", wrap=True)], fmt,
             title="published ImageNet weights", document=rows,
             notes=["top-1/top-5: the publisher's single centre crop on the ILSVRC-2012 validation set",
                    "digest: torchvision publishes the first 8 hex digits of each file's SHA-256 (in its "
                    "name), Keras an MD5; the full SHA-256 is recorded with the converted run",
                    "licences: --format json; torchvision's weights have none of their own (ImageNet's "
                    "terms apply), Keras's VGG files are CC BY 4.0, its ResNet-50 MIT",
                    f"cache: {weights_dir()}"])
        return
    if not name:
        raise UsageError("name the weights to download (see `cnnbench weights download --list`)")
    result = _pretrained(name, fmt, out=out, mirror=mirror)
    pct = lambda v: "" if v is None else f"{v:.2f}%"  # noqa: E731
    emit([result], [Column("run_dir", "run directory", justify="left"), Column("arch", "architecture", justify="left"),
                    Column("params", "parameters", integer), Column("published_top1", "published top-1", pct),
                    Column("eval_spec", "eval preprocessing", justify="left")], fmt,
         title=f"{name} ({'downloaded and converted' if result['created'] else 'already in the cache'})",
         document=result, notes=[f"sha256 {result['sha256']}", f"licence: {result['licence']}"])


@cli.command()
@click.argument("source", type=click.Path(file_okay=False))
@click.option("--dataset", help="Dataset to probe (default: the run's).")
@click.option("--layer", default="fc7", show_default=True, help="Layer whose output are the features (fc6, fc7, pool5, ...).")
@click.option("--classifier", type=click.Choice(["logreg", "svm"]), default="logreg", show_default=True)
@click.option("--per-class", type=int, default=30, show_default=True,
              help="Training images per class in each subset (0: all training images, one subset).")
@click.option("--subsets", type=int, default=5, show_default=True, help="Random training subsets (mean +- std).")
@click.option("--train-split", help="Default: the dataset's train split.")
@click.option("--test-split", help="Default: its validation/test split.")
@click.option("--data-dir", type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=0, show_default=True)
@format_option
def probe(source, dataset, layer, classifier, per_class, subsets, train_split, test_split, data_dir, seed, fmt):
    """A linear classifier on the features of a trained network (DeCAF): mean +- std over subsets.

    \b
    Examples:
      cnnbench probe weights/alexnet-owt --dataset caltech101 --layer fc6 --per-class 30
      cnnbench probe runs/lenet5-digits-... --layer f6 --classifier svm --per-class 10
    """
    from pathlib import Path

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from cnnbench.transfer.probe import run_probe

    if per_class < 0 or subsets < 1:
        raise UsageError("--per-class must be at least 0 and --subsets at least 1")
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    with Progress(*columns, console=err_console(), transient=True) as progress:
        task = {"id": None}

        def on_split(split, total):
            task["id"] = progress.add_task(f"features of {split}", total=total)

        result = run_probe(Path(source), dataset=dataset, layer=layer, kind=classifier, per_class=per_class or None,
                           count=subsets, train_split=train_split, test_split=test_split, data_dir=data_dir,
                           seed=seed, on_split=on_split, advance=lambda n: progress.advance(task["id"], n))
    emit([result], [Column("run", "run", justify="left"), Column("dataset", "dataset", justify="left"),
                    Column("layer", "layer", justify="left"), Column("feature_dim", "dim", integer),
                    Column("classifier", "classifier", justify="left"),
                    Column("per_class", "per class", lambda v: "all" if v is None else str(v)),
                    Column("subsets", "subsets"), Column("top1", "top-1 %", lambda v: f"{100 * v:.2f}"),
                    Column("top1_std", "+-", lambda v: f"{100 * v:.2f}"),
                    Column("test_images", "test images", integer)], fmt,
         title=f"linear probe of {result['arch']}", document=result)


@cli.command()
@click.argument("source", type=click.Path(file_okay=False))
@click.option("--input", "input_file", required=True, type=click.Path(dir_okay=False, exists=True),
              help="A preprocessed float32 batch, N x H x W x C (.npy).")
@click.option("--layer", default="logits", show_default=True, help="logits, fc7, pool5 or any layer of `summary --all-layers`.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Where to save the activations (.npy).")
def features(source, input_file, layer, out):
    """Save one layer's activations for a preprocessed batch (feature extraction).

    \b
    Example:
      cnnbench features weights/alexnet-owt --input batch.npy --layer fc7 --out fc7.npy
    """
    from pathlib import Path

    import numpy as np

    from cnnbench.transfer.extract import extract, load_batch

    activations, name = extract(Path(source), load_batch(Path(input_file)), layer)
    np.save(out, activations)
    click.echo(f"wrote {out}: {name} activations, {'x'.join(map(str, activations.shape))} float32")


# --------------------------------------------------------------------------- data

def dataset_options(fn):
    fn = click.option("--manual-dir", type=click.Path(file_okay=False),
                      help="Folder with manually downloaded archives (ILSVRC2012_img_train.tar ...).")(fn)
    fn = click.option("--data-dir", type=click.Path(file_okay=False),
                      help="TFDS data directory (default: ~/tensorflow_datasets).")(fn)
    return click.argument("dataset")(fn)


@cli.group()
def data():
    """Prepare, look at and time datasets.

    \b
    DATASET is digits (offline default), imagenet2012, folder:PATH, synthetic:HxWxC:K:N or any
    TFDS image-classification name (mnist, fashion_mnist, cifar10, caltech101, ...).
    """


@data.command()
@dataset_options
@format_option
def prepare(dataset, data_dir, manual_dir, fmt):
    """Build (or verify) DATASET and list its splits and classes.

    \b
    Example:
      cnnbench data prepare digits
      cnnbench data prepare imagenet2012 --manual-dir ~/ILSVRC2012
    """
    from cnnbench.pipeline.sources import resolve
    from cnnbench.pipeline.tools import describe

    with err_console().status(f"preparing {dataset} ..."):
        info = describe(resolve(dataset, data_dir=data_dir, manual_dir=manual_dir))
    rows = [{"split": k, "examples": v} for k, v in info["splits"].items()]
    classes = info["classes"]
    shown = ", ".join(c["name"] for c in classes[:8]) + (", ..." if len(classes) > 8 else "")
    shape = f"images {'x'.join(map(str, info['image_shape']))}" if info["image_shape"] else "image sizes vary"
    emit(rows, [Column("split", "split", justify="left"), Column("examples", "examples", integer)], fmt,
         title=dataset, notes=[f"{plural(info['num_classes'], 'class')}, {shape}", f"classes: {shown}"],
         document=info)


def pipeline_options(fn):
    for option in reversed([
        click.option("--split", help="Split string, e.g. train, validation, train[:90%] (default: "
                                     "train for --train, else the evaluation split)."),
        click.option("--train/--eval", "train", default=True, show_default=True,
                     help="Training (augmented) or evaluation preprocessing."),
        click.option("--ops", help="Recipe (alexnet, vgg, inception, cifar, small, center, ten_crop, "
                                   "multiscale) or spec 'resize_shorter(256)|random_crop(224)|flip'."),
        click.option("--size", type=int, default=224, show_default=True, help="Model input size."),
        click.option("--channels", type=int, default=3, show_default=True, help="Image channels."),
        click.option("--seed", type=int, default=0, show_default=True),
    ]):
        fn = option(fn)
    return fn


def _pipeline(dataset, data_dir, manual_dir, split, train, ops, size, channels, seed, batch_size):
    from cnnbench.pipeline.sources import resolve
    from cnnbench.pipeline.tools import pipeline_for

    source = resolve(dataset, data_dir=data_dir, manual_dir=manual_dir)
    split = split or (source.train_split if train else source.eval_split)
    return pipeline_for(source, split=split, train=train, size=size, channels=channels,
                        batch_size=batch_size, ops=ops, seed=seed)


@data.command()
@dataset_options
@pipeline_options
@click.option("--count", type=int, default=16, show_default=True, help="Number of samples.")
@click.option("--out", type=click.Path(dir_okay=False), default="samples.png", show_default=True)
def show(dataset, data_dir, manual_dir, split, train, ops, size, channels, seed, count, out):
    """Write a PNG grid of preprocessed samples of DATASET with their labels.

    \b
    Example:
      cnnbench data show digits --size 32 --channels 1
      cnnbench data show cifar10 --ops cifar --size 32 --out cifar.png
    """
    from pathlib import Path

    from cnnbench.pipeline.sources import resolve
    from cnnbench.pipeline.tools import pipeline_for, sample_grid

    if count < 1:
        raise UsageError(f"--count must be at least 1, not {count}")

    source = resolve(dataset, data_dir=data_dir, manual_dir=manual_dir)
    split = split or (source.train_split if train else source.eval_split)
    available = source.num_examples(split)
    # (a training pipeline yields whole batches only: a split smaller than --count shows what it has)
    pipeline = pipeline_for(source, split=split, train=train, size=size, channels=channels,
                            batch_size=max(1, min(count, available)), ops=ops, seed=seed)
    path, shown = sample_grid(pipeline, Path(out), count=count)
    click.echo(f"wrote {path} ({plural(shown, 'sample')} of {pipeline.source.name} {pipeline.split}: {pipeline.ops})"
               + (f"; the split has {plural(available, 'image')}" if shown < count else ""))


@data.command()
@dataset_options
@pipeline_options
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--batches", type=int, default=20, show_default=True, help="Timed batches per measurement.")
@format_option
def bench(dataset, data_dir, manual_dir, split, train, ops, size, channels, seed, batch_size, batches, fmt):
    """Measure preprocessing throughput of DATASET (images/s) against plain decoding.

    \b
    Example:
      cnnbench data bench imagenet2012 --ops alexnet --batches 50
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    import dataclasses

    from cnnbench.pipeline.tools import decode_throughput, throughput

    pipeline = _pipeline(dataset, data_dir, manual_dir, split, train, ops, size, channels, seed, batch_size)
    with err_console().status("timing plain decoding ..."):
        rows = [{"pipeline": "decode only (the limit)",
                 **decode_throughput(pipeline, images=batches * batch_size)}]
    variants = [(f"{pipeline.ops} (float32 from the host)", pipeline),
                ("same, uint8 + lighting/normalize on the device",
                 dataclasses.replace(pipeline, device_finish=True))]
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err_console(), transient=True) as progress:
        for label, p in variants:
            task = progress.add_task(label[:40], total=batches)
            rows.append({"pipeline": label, **throughput(
                p, batches=batches, advance=lambda n: progress.advance(task, n))})
    for row in rows[1:]:
        row["vs_decode"] = row["images_per_sec"] / rows[0]["images_per_sec"]
    emit(rows, [Column("pipeline", "pipeline", justify="left", wrap=True),
                Column("images", "images", integer), Column("seconds", "seconds", lambda v: f"{v:.2f}"),
                Column("images_per_sec", "images/s", lambda v: f"{v:,.0f}"),
                Column("vs_decode", "vs decode", lambda v: f"{v:.0%}")], fmt,
         title=f"{pipeline.source.name} {pipeline.split}, batch {batch_size}")


# --------------------------------------------------------------------------- reproduce

@cli.command()
@click.argument("name", required=False)
@click.option("--list", "list_", is_flag=True, help="List the findings, their papers, numbers and budgets.")
@click.option("--budget", default="small", show_default=True,
              help="smoke (about a minute), small (at most 15 minutes on a 2-core CPU, offline data) or paper "
                   "(the paper's own setup and data).")
@click.option("--seeds", type=int, help="Train seeds 0..N-1 of every variant (default: the budget's).")
@click.option("--dataset", help="Train on this dataset instead of the budget's (e.g. cifar10 at the small budget).")
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder of the runs, report and figures (default: reproductions/NAME).")
@format_option
def reproduce(name, list_, budget, seeds, dataset, out, fmt):
    """Reproduce a paper's finding: train its variants, test the claim, write a report with a verdict.

    \b
    Examples:
      cnnbench reproduce --list
      cnnbench reproduce resnet-degradation                  # the small budget: digits, 3 seeds
      cnnbench reproduce relu-vs-tanh --budget smoke --seeds 2
      cnnbench reproduce nin-gap-vs-fc --budget paper        # CIFAR-10, the paper's solver

    Running the same command again reuses finished runs and continues unfinished ones.
    """
    from cnnbench.reproduce import get_finding, list_findings

    if not list_ and not name:
        raise UsageError("name a finding (cnnbench reproduce --list shows them)")
    if list_:
        findings = [f.describe() for f in list_findings()]
        minutes = lambda b: "cluster" if b["estimated_minutes"] is None else f"~{b['estimated_minutes']:g} min"
        rows = [{**f, "small": f"{f['budgets']['small']['dataset']}, {f['budgets']['small']['seeds']} seeds, "
                               f"{minutes(f['budgets']['small'])}",
                 "paper_budget": f"{f['budgets']['paper']['dataset']}"} for f in findings]
        emit(rows, [Column("name", "finding", justify="left"), Column("paper", "paper", justify="left", wrap=True),
                    Column("claim", "claim", justify="left", wrap=True),
                    Column("small", "small budget", justify="left"), Column("paper_budget", "paper budget", justify="left")],
             fmt, title="the papers' findings (cnnbench reproduce NAME)", document=findings)
        return
    from cnnbench.reproduce.run import plan

    p = plan(get_finding(name), budget, seeds=seeds, dataset=dataset, out=out)
    doc = _reproduce_with_progress(p, fmt)
    rows = [{"variant": k, **v} for k, v in doc["measured"].items()]
    spread = lambda v: "" if v is None else f"{v:.2f}"
    emit(rows, [Column("variant", "variant", justify="left"), Column("mean", doc["unit"], lambda v: f"{v:.2f}"),
                Column("std", "std", spread), Column("seeds", "seeds"),
                Column("values", "per seed", lambda v: ", ".join(f"{x:.2f}" for x in v), justify="left", wrap=True)],
         fmt, title=f"{doc['name']} ({doc['budget']} budget, {doc['dataset']}): {doc['verdict']}", document=doc)
    if fmt != "json":
        err_console().print(f"verdict: {doc['verdict']} ({doc['rule']}); report: {p.out / 'report.md'}",
                            highlight=False, markup=False, soft_wrap=True)


def _reproduce_with_progress(p, fmt):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from cnnbench.reproduce.run import Progress as Events, execute
    from cnnbench.train.loop import Events as TrainEvents

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=err_console(), disable=fmt == "json") as progress:
        overall = progress.add_task(f"{p.finding.name}: epochs of {plural(len(p.runs), 'run')}", total=p.epochs_total,
                                    completed=0)
        current = progress.add_task("", total=None, visible=False)

        def run_start(planned, index, total):
            verb = {"done": "finished, reused", "diverged": "diverged earlier, kept", "partial": "continuing",
                    "new": "training"}[planned.state]
            progress.console.print(f"[{index + 1}/{total}] {planned.name}: {verb} ({planned.run_dir})",
                                   highlight=False, markup=False)

        def run_end(planned):  # (a continued run's earlier epochs count here)
            finished = p.runs[:p.runs.index(planned) + 1]
            progress.update(overall, completed=sum(r.cfg.epochs for r in finished))
            progress.update(current, visible=False)

        def train_events(planned):
            def epoch_start(epoch, steps):
                progress.reset(current, total=steps, visible=True,
                               description=f"  {planned.name} epoch {epoch + 1}/{planned.cfg.epochs}")

            def step(r):
                progress.update(current, completed=r["step_in_epoch"])

            def validation(r):
                progress.advance(overall, 1)

            def note(text):
                progress.console.print(f"Warning: {text}", highlight=False, markup=False, soft_wrap=True)

            return TrainEvents(epoch_start, step, validation, note)

        def analysis(what):
            progress.console.print(f"analysis: {what}", highlight=False, markup=False)

        return execute(p, Events(run_start, train_events, run_end, analysis))


# --------------------------------------------------------------------------- bench

@cli.command("bench")
@click.argument("archs", nargs=-1, required=True)
@click.option("--mode", type=click.Choice(["train", "infer", "both"]), default="train", show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True, help="Global batch size.")
@click.option("--input-size", type=int, help="Input height and width (default: the architecture's).")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@click.option("--steps", type=int, default=10, show_default=True, help="Timed steps (the median counts).")
@click.option("--warmup", type=int, default=2, show_default=True, help="Untimed steps after compiling.")
@click.option("--auto-batch", is_flag=True, help="Halve the batch size until it fits in memory.")
@click.option("--devices", type=int, help="Use the first N devices (default: all).")
@click.option("--model-parallel", type=int, metavar="M", default=1, show_default=True, help=MODEL_PARALLEL_HELP)
@format_option
def bench_command(archs, mode, fmt, **options):
    """Time training and inference steps of ARCH... on synthetic data: samples/s, step time,
    compile time, FLOP/s and their share of the measured matmul peak, peak memory.

    \b
    Examples:
      cnnbench bench alexnet-owt resnet18 vgg11 --mode both
      cnnbench bench resnet50 --precision bf16 --batch-size 256 --auto-batch --format json
      cnnbench bench alexnet --model-parallel 2 --batch-size 64
    """
    from cnnbench.perf.report import columns, notes, run_with_progress

    modes = ("train", "infer") if mode == "both" else (mode,)
    rows = run_with_progress(list(archs), modes=modes, **options)
    emit(rows, columns(rows), fmt, title=f"cnnbench bench ({options['precision']})", notes=notes(rows))


def main(argv=None):
    from cnnbench.kernels import flags

    if argv is None:  # the command itself, not a call from Python code
        flags.use_hugepages()  # re-runs the command once, with huge pages for large buffers
    flags.apply()  # XLA reads its options once, before JAX's first use: set ours now
    flags.use_compile_cache()
    cli.main(args=argv, prog_name="cnnbench")


if __name__ == "__main__":
    main()
