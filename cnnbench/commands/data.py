"""`cnnbench data prepare | show | bench`: datasets and their input pipelines."""

from __future__ import annotations

import click

from cnnbench.errors import UsageError
from cnnbench.output import Column, emit, err_console, format_option, integer, plural


# --------------------------------------------------------------------------- data

def dataset_options(fn):
    fn = click.option("--manual-dir", type=click.Path(file_okay=False),
                      help="Folder with manually downloaded archives (ILSVRC2012_img_train.tar ...).")(fn)
    fn = click.option("--data-dir", type=click.Path(file_okay=False),
                      help="TFDS data directory (default: ~/tensorflow_datasets).")(fn)
    return click.argument("dataset")(fn)


@click.group()
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
    from cnnbench.pipeline.tools import bench_pipeline
    from cnnbench.progress import Bar

    pipeline = _pipeline(dataset, data_dir, manual_dir, split, train, ops, size, channels, seed, batch_size)
    with Bar() as bar:
        rows = bench_pipeline(pipeline, batches=batches, progress=bar)
    emit(rows, [Column("pipeline", "pipeline", justify="left", wrap=True),
                Column("images", "images", integer), Column("seconds", "seconds", lambda v: f"{v:.2f}"),
                Column("images_per_sec", "images/s", lambda v: f"{v:,.0f}"),
                Column("vs_decode", "vs decode", lambda v: f"{v:.0%}")], fmt,
         title=f"{pipeline.source.name} {pipeline.split}, batch {batch_size}")
