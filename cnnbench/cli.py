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


def main(argv=None):
    cli.main(args=argv, prog_name="cnnbench")
