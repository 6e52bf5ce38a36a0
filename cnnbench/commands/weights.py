"""`cnnbench weights import` and `cnnbench weights download`: published weights as run directories."""

from __future__ import annotations

import dataclasses

import click

from cnnbench.errors import UsageError
from cnnbench.commands.common import pretrained_run
from cnnbench.output import Column, emit, err_console, format_option, integer


# --------------------------------------------------------------------------- weights

@click.group()
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
    result = pretrained_run(name, fmt, out=out, mirror=mirror)
    pct = lambda v: "" if v is None else f"{v:.2f}%"  # noqa: E731
    emit([result], [Column("run_dir", "run directory", justify="left"), Column("arch", "architecture", justify="left"),
                    Column("params", "parameters", integer), Column("published_top1", "published top-1", pct),
                    Column("eval_spec", "eval preprocessing", justify="left")], fmt,
         title=f"{name} ({'downloaded and converted' if result['created'] else 'already in the cache'})",
         document=result, notes=[f"sha256 {result['sha256']}", f"licence: {result['licence']}"])
