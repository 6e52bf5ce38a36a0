"""`cnnbench archs` and `cnnbench summary`: the registered architectures, counted."""

from __future__ import annotations

import click

from cnnbench.errors import UsageError
from cnnbench.commands.common import parse_options
from cnnbench.output import Column, emit, format_option, giga, human_bytes, integer


@click.command()
@click.option("--family", help="Only this family (e.g. ResNet, VGG).")
@format_option
def archs(family, fmt):
    """List every registered architecture with its counted parameters and multiply-adds.

    \b
    Example:
      cnnbench archs --family vgg
      cnnbench archs --format json
    """
    from cnnbench.analysis.catalog import catalog
    from cnnbench.progress import Bar

    with Bar() as bar:
        rows = catalog(family, bar)
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


@click.command()
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
