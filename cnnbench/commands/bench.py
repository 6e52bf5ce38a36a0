"""`cnnbench bench`: training and inference steps timed on synthetic data."""

from __future__ import annotations

import click

from cnnbench.perf.bench import MODES, PRECISIONS

from cnnbench.commands.common import MODEL_PARALLEL_HELP
from cnnbench.output import emit, format_option


# --------------------------------------------------------------------------- bench

@click.command("bench")
@click.argument("archs", nargs=-1, required=True)
@click.option("--mode", type=click.Choice([*MODES, "both"]), default="train", show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True, help="Global batch size.")
@click.option("--input-size", type=int, help="Input height and width (default: the architecture's).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
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
    from cnnbench.perf.bench import run
    from cnnbench.perf.report import columns, notes
    from cnnbench.progress import Bar

    modes = ("train", "infer") if mode == "both" else (mode,)
    with Bar(log="bench: ") as bar:  # (off a terminal, a line per workload says it is alive)
        rows = run(list(archs), modes=modes, progress=bar, **options)
    emit(rows, columns(rows), fmt, title=f"cnnbench bench ({options['precision']})", notes=notes(rows))
