"""`cnnbench probe` (linear probes on a network's features) and `cnnbench features`."""

from __future__ import annotations

import click

from cnnbench.errors import UsageError
from cnnbench.output import Column, emit, format_option, integer


@click.command()
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

    from cnnbench.progress import Bar
    from cnnbench.transfer.probe import run_probe

    if per_class < 0 or subsets < 1:
        raise UsageError("--per-class must be at least 0 and --subsets at least 1")
    with Bar() as bar:
        result = run_probe(Path(source), dataset=dataset, layer=layer, kind=classifier, per_class=per_class or None,
                           count=subsets, train_split=train_split, test_split=test_split, data_dir=data_dir,
                           seed=seed, progress=bar)
    emit([result], [Column("run", "run", justify="left"), Column("dataset", "dataset", justify="left"),
                    Column("layer", "layer", justify="left"), Column("feature_dim", "dim", integer),
                    Column("classifier", "classifier", justify="left"),
                    Column("per_class", "per class", lambda v: "all" if v is None else str(v)),
                    Column("subsets", "subsets"), Column("top1", "top-1 %", lambda v: f"{100 * v:.2f}"),
                    Column("top1_std", "+-", lambda v: f"{100 * v:.2f}"),
                    Column("test_images", "test images", integer)], fmt,
         title=f"linear probe of {result['arch']}", document=result)


@click.command()
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
