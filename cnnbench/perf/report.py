"""How `cnnbench bench` shows its results: one table, its columns and notes."""

from __future__ import annotations

from cnnbench.output import Column, human_bytes, integer


def _ms(v) -> str:
    return f"{v:,.1f}"


COLUMNS = [
    Column("arch", "arch", justify="left"), Column("mode", "mode", justify="left"),
    Column("batch_size", "batch"), Column("input_size", "input"),
    Column("samples_per_sec", "samples/s", lambda v: f"{v:,.1f}"),
    Column("step_time_ms", "step ms", _ms), Column("compile_s", "compile s", lambda v: f"{v:.1f}"),
    Column("params", "parameters", integer), Column("macs", "M mult-adds/img", lambda v: f"{v / 1e6:,.1f}"),
    Column("flops_per_sec", "GFLOP/s", lambda v: f"{v / 1e9:,.1f}"),
    Column("utilization", "of matmul peak", lambda v: f"{v:.0%}"),
    Column("host_peak_bytes", "host peak", human_bytes),
    Column("device_peak_bytes", "device peak", human_bytes),
]


def columns(rows: list[dict]) -> list[Column]:
    """:data:`COLUMNS`, and the compiled steps' collectives when any step has some (several devices)."""
    from cnnbench.parallel.collectives import describe

    if not any(v["count"] for r in rows for v in r.get("collectives", {}).values()):
        return COLUMNS
    return COLUMNS + [Column("collectives", "collectives per step (count, bytes per device)", describe,
                             justify="left", wrap=True)]


def notes(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    first = rows[0]
    lines = [f"peak: {first['matmul_peak_flops'] / 1e9:,.1f} GFLOP/s, the best of 5 large {first['precision']} "
             f"matrix multiplications measured in this run on {first['devices']} device(s)",
             f"median of {first['steps']} timed steps after the warm-up; FLOP/s count 2 per multiply-add, "
             f"x3 for a training step",
             "'of matmul peak' can exceed 100%: the multiply-adds are counted as direct convolutions, and "
             "cnnbench computes some with fewer multiplications (Winograd F(2x2,3x3)) than that count",
             f"XLA_FLAGS: {first['xla_flags'] or '(none)'}"]
    if first.get("precision_note"):
        lines.append(first["precision_note"])
    elif first.get("products"):
        lines.append(f"--precision {first['precision']} on a CPU: float32 layers whose convolutions and dense "
                     f"layers multiply {first['products']} operands into float32 sums (the CPU's bf16 instructions)")
    if first.get("model_parallel", 1) > 1:
        lines.append(f"each copy of the model split over {first['model_parallel']} devices (--model-parallel), "
                     f"the batch over {first['devices'] // first['model_parallel']} copies")
    for r in rows:
        if r["batch_size"] != r["requested_batch_size"]:
            lines.append(f"{r['arch']} {r['mode']}: batch {r['requested_batch_size']} did not fit; "
                         f"measured at {r['batch_size']}")
    return lines
