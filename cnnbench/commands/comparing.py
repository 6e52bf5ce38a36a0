"""`cnnbench compare`: architectures and runs side by side."""

from __future__ import annotations

import click

from cnnbench.output import Column, emit, format_option, human_bytes, integer


@click.command()
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

    from cnnbench.compare import compare as compare_items, evaluators, plots, sort_rows
    from cnnbench.progress import Bar

    with Bar() as bar:
        rows = compare_items(list(items), bench=bench, batch_size=batch_size, steps=steps, archs_only=archs_only,
                             progress=bar)
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
               *[Column(key, header, pct) if kind == "pct" else Column(key, header, justify="left")
                 for evaluator in evaluators().values() for key, header, kind in evaluator.columns],
               Column("started_from", "fine-tuned from", justify="left"),
               Column("paper_top1", "paper top-1 %", pct),
               Column("paper_dataset", "paper dataset", justify="left"),
               Column("epochs", "epochs"), Column("wall_time", "wall time", lambda v: f"{v:,.0f} s"),
               Column("train_images_per_sec", "run img/s", rate)]
    shown = [c for c in columns if any(r.get(c.key) is not None for r in rows)]
    emit(rows, shown, fmt, title="cnnbench compare", notes=notes)
