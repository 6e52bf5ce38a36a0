"""The `cnnbench` command line. One thin function per command: parse, call, print. No logic here.

Heavy imports (JAX, Flax, TensorFlow) happen inside commands, so `cnnbench --help` is instant.
"""

from __future__ import annotations

import tomllib

import click

from cnnbench import __version__
from cnnbench.errors import CnnbenchError, UsageError
from cnnbench.output import Column, emit, err_console, format_option, giga, human_bytes, integer


class _Group(click.Group):
    """Turns :class:`CnnbenchError` into one ``Error: ...`` line and its exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CnnbenchError as e:
            error = click.ClickException(str(e))
            error.exit_code = e.exit_code
            raise error from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cnnbench")
def cli():
    """Train, evaluate and compare the classic image-classification CNNs.

    \b
    Examples:
      cnnbench archs                     # every architecture, counted
      cnnbench summary alexnet           # the per-layer table of the AlexNet stats slide
    """


def parse_options(pairs: tuple[str, ...]) -> dict:
    """``-o key=value`` pairs; values are read as TOML (``false``, ``0.3``, ``[100, 100]``) or text."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"option {pair!r} is not KEY=VALUE (e.g. -o activation=relu)")
        try:
            options[key.replace("-", "_")] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            options[key.replace("-", "_")] = value
    return options


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
@format_option
def summary(arch, input_size, num_classes, in_channels, options, all_layers, fmt):
    """Per-layer table of ARCH: shapes, parameters, multiply-adds, memory, receptive fields.

    \b
    Example:
      cnnbench summary alexnet-owt --input-size 227
      cnnbench summary resnet50 --format json
    """
    from cnnbench.analysis.summary import summarize

    s = summarize(arch, input_size=input_size, num_classes=num_classes, in_channels=in_channels,
                  **parse_options(options))
    doc = s.to_dict(all_layers=all_layers)
    rows = [dict(layer, output="x".join(map(str, layer["output_shape"])),
                 window=_window(layer), memory=human_bytes(layer["activation_bytes"]))
            for layer in doc["layers"]]
    footer = {"name": "total", "params": s.params, "macs": s.macs, "activations": s.activations,
              "memory": human_bytes(s.activation_bytes)}
    columns = [Column("name", "layer", justify="left"), Column("type", "type", justify="left"),
               Column("window", "kernel/stride/pad"), Column("output", "output"),
               Column("params", "parameters", integer), Column("macs", "mult-adds", integer),
               Column("activations", "activations", integer), Column("memory", "memory"),
               Column("receptive_field", "RF"), Column("effective_stride", "eff. stride")]
    notes = list(doc["observations"])
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


def _window(layer: dict) -> str:
    if layer["kernel"] is None or layer["type"] in ("flatten", "gap"):
        return ""
    k = layer["kernel"]
    return f"{k}x{k} /{layer['stride']}" + (f" p{layer['padding']}" if layer["padding"] else "")


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
    shape = "x".join(map(str, info["image_shape"])) if info["image_shape"] else "varies"
    emit(rows, [Column("split", "split", justify="left"), Column("examples", "examples", integer)], fmt,
         title=dataset, notes=[f"{info['num_classes']} classes, images {shape}", f"classes: {shown}"],
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

    from cnnbench.pipeline.tools import sample_grid

    pipeline = _pipeline(dataset, data_dir, manual_dir, split, train, ops, size, channels, seed, count)
    path = sample_grid(pipeline, Path(out), count=count)
    click.echo(f"wrote {path} ({count} samples of {pipeline.source.name} {pipeline.split}: {pipeline.ops})")


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


def main(argv=None):
    cli.main(args=argv, prog_name="cnnbench")
