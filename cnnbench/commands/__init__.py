"""The `cnnbench` command line: one module per command group, each thin (parse, call the library,
print); the group and the list of commands are here.

Heavy imports (JAX, Flax, TensorFlow) happen inside commands, so `cnnbench --help` is instant.
"""

from __future__ import annotations

import os

import click

from cnnbench import __version__
from cnnbench.commands import (bench, comparing, data, evaluation, models, reproduce, training, transfer,
                               visualize, weights)
from cnnbench.errors import CnnbenchError


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


#: every command (`cnnbench --help` lists them alphabetically)
COMMANDS = [models.archs, models.summary, training.train, evaluation.eval_, evaluation.predict,
            comparing.compare, training.finetune, visualize.visualize, weights.weights, transfer.probe,
            transfer.features, data.data, reproduce.reproduce, bench.bench_command]
for command in COMMANDS:
    cli.add_command(command)
