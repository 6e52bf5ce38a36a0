"""`cnnbench visualize ...`: what a trained network learned, as figures."""

from __future__ import annotations

import click

from cnnbench.commands.common import int_list
from cnnbench.output import format_option
from cnnbench.runs.layout import CHECKPOINTS


# --------------------------------------------------------------------------- visualize

@click.group()
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
                    click.option("--checkpoint", type=click.Choice(CHECKPOINTS), default="best", show_default=True),
                    format_option]
        for option in reversed(options):
            fn = option(fn)
        return fn
    return decorate


def _visualize(name, run_dir, checkpoint, out, fmt, **kwargs):
    from pathlib import Path

    from cnnbench.progress import Bar
    from cnnbench.runs.loaded import load_run
    from cnnbench.viz.commands import FIGURES
    from cnnbench.viz.inputs import from_run

    subject = from_run(load_run(Path(run_dir), which=checkpoint))
    out = Path(out) if out else Path(run_dir) / "viz"
    with Bar() as bar:
        written = FIGURES[name](subject, out=out, progress=bar, **kwargs)
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
    picked = list(int_list(channels, "--channels")) if channels else None
    _visualize("top-patches", run_dir, checkpoint, out, fmt, dataset=dataset, split=split, limit=limit,
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
