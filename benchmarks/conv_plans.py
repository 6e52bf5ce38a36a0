"""Each convolution layer of an architecture, each pass, each formulation: which is fastest here?

    python benchmarks/conv_plans.py resnet18 [--batch-size 32] [--input-size 224] [--rounds 3]
        [--passes forward,input_grad,weight_grad] [--products bfloat16] [--json]

:func:`cnnbench.kernels.fastops.choose` picks, per layer shape, XLA's convolution, patches and a
matrix product, or Winograd for the forward pass, the input gradient and the weight gradient, from
timings taken on one CPU. This script re-takes those timings on the machine it runs on, for every
distinct convolution of ``ARCH`` (at the batch size and input size given, float32): each pass of
each layer is jitted on its own for every formulation that applies, and the formulations are timed
in interleaved rounds (median of ``--rounds``), so a noisy neighbour hits them alike. The table
marks the formulation ``choose`` picks now and the fastest one; the last rows sum the layers' time
(each layer times the number of times it occurs in the network) under the current plan and under
the per-pass fastest. ``--products bfloat16`` times every formulation as ``--precision bf16`` runs
it on a CPU with bf16 instructions (float32 layers, bf16 operands in the products; XLA's
convolution stays float32). Per-layer times are leads, not verdicts: change ``choose`` only where whole
steps (``cnnbench bench``, ``benchmarks/torch_peer.py``) measure faster too.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from cnnbench.archs import create_model, get_arch, trace
from cnnbench.errors import UsageError
from cnnbench.kernels import amx, fastops, flags, winograd

PASSES = {"forward": fastops.FORWARD, "input_grad": fastops.INPUT_GRAD, "weight_grad": fastops.WEIGHT_GRAD}


def conv_layers(arch: str, input_size: int) -> collections.Counter:
    """(input h, w, c, kernel, stride, padding, output channels) -> how often it occurs in ``arch``.
    A grouped layer counts as its groups' convolutions (as :func:`fastops.conv_general_dilated` runs
    it on a CPU): ``groups`` times the shape of one group."""
    model = create_model(arch, input_size=input_size)
    records = trace.trace_model(model, (input_size, input_size, model.in_channels))
    layers = collections.Counter()
    for r in records:
        if r.kind != "conv":
            continue
        (h, w, c), (ho, wo, o) = r.input_shape[1:], r.output_shape[1:]
        groups = round(r.kernel * r.kernel * c * ho * wo * o / r.macs)
        layers[h, w, c // groups, r.kernel, r.stride, r.padding, o // groups] += groups
    return layers


def _space_to_depth(k: int, s: int, c: int):
    """The kernel side :func:`fastops.conv` turns this layer into by space-to-depth, or None."""
    return fastops._space_to_depth_blocks(k, s, c, "cpu", jnp.float32)


def candidates(k: int, s: int, c: int, pads) -> list[str]:
    names = ["xla", "matmul"]
    if _space_to_depth(k, s, c):
        names.append("space-to-depth")
    if winograd.supported(k, s, pads):
        names.append("winograd")
    # the AMX kernel: bf16 products only (under --products bfloat16), on a CPU that has it
    # (a strided 1x1 layer's gradients: the stride-1 kernel on the pixels the stride reads)
    if (fastops.low_precision_products() is not None and (amx.supported(k, s) or k == 1)
            and all(0 <= p <= k - 1 for pad in pads for p in pad) and amx.available()):
        names.append("amx")
    return names


def _pass(name: str, form: str, k: int, s: int, c: int):
    """fn(x, w, dy, s, pads) -> that pass of that formulation."""
    if form == "amx" and k == 1 and s > 1:  # through fastops.conv, which runs it on the pixels the stride reads
        plan = {"forward": "matmul", "input_grad": "amx", "weight_grad": "amx"}
        index = 0 if name == "input_grad" else 1
        return lambda x, w, dy, s, pads: jax.vjp(lambda x, w: fastops.conv(x, w, s, pads, plan), x, w)[1](dy)[index]
    if form != "space-to-depth":
        return PASSES[name][form]
    blocks = _space_to_depth(k, s, c)

    def whole(x, w, s, pads):  # the layer as conv() runs it: every pass by the blocks' own plan
        return fastops._space_to_depth_conv(x, w, s, pads, blocks)
    if name == "forward":
        return whole
    index = 0 if name == "input_grad" else 1
    return lambda x, w, dy, s, pads: jax.vjp(lambda x, w: whole(x, w, s, pads), x, w)[1](dy)[index]


def programs(layer, n: int, passes):
    """{(pass, formulation): (jitted function, its arguments)} for one layer."""
    h, w, c, k, s, p, o = layer
    pads = ((p, p), (p, p))
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (n, h, w, c), jnp.float32)
    kernel = jax.random.normal(keys[1], (k, k, c, o), jnp.float32) / (k * k * c) ** 0.5
    y_hw = fastops._out_hw(x, k, s, pads)
    dy = jax.random.normal(keys[2], (n, *y_hw, o), jnp.float32)
    out = {}
    for name in passes:
        for form in candidates(k, s, c, pads):
            if form == "amx" and name == "weight_grad" and 1 < k and k * c <= 64 and not (s == 1 and min(c, o) >= 16):
                form = "amx_run"  # a layer on few channels: by kernel rows, any stride (as choose)
            elif form == "amx" and name != "forward" and s != 1 and k > 1:
                if min(c, o) < 16:
                    continue
                form = "amx_s2d"  # a strided layer's gradients: the kernel's, by space-to-depth (as choose)
            elif form == "amx" and name == "forward" and k == 1 and s > 1:
                continue  # a strided 1x1 layer's forward pass: a product (its gradients on the kernel)
            fn = _pass(name, form, k, s, c)
            if name == "forward":
                out[name, form] = (jax.jit(lambda x, w, fn=fn: fn(x, w, s, pads)), (x, kernel))
            else:
                out[name, form] = (jax.jit(lambda x, w, dy, fn=fn: fn(x, w, dy, s, pads)), (x, kernel, dy))
    return out, y_hw


def time_layer(layer, n: int, passes, rounds: int) -> dict:
    progs, y_hw = programs(layer, n, passes)
    h, w, c, k, s, p, o = layer
    plan = fastops.choose(k, s, c, o, y_hw, "cpu", ((p, p), (p, p)), jnp.float32)
    if _space_to_depth(k, s, c):
        plan = dict.fromkeys(plan, "space-to-depth")
    for fn, args in progs.values():  # compile and warm up
        jax.block_until_ready(fn(*args))
    times = collections.defaultdict(list)
    for _ in range(rounds):
        for key, (fn, args) in progs.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[key].append(time.perf_counter() - start)
    result = {}
    for name in passes:
        ms = {form: 1e3 * statistics.median(t) for (p_, form), t in times.items() if p_ == name}
        result[name] = {"ms": ms, "chosen": plan[name], "fastest": min(ms, key=ms.get)}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("arch")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--input-size", type=int, help="default: the architecture's own")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--passes", default=",".join(PASSES))
    parser.add_argument("--products", choices=("bfloat16",), help="the products' operands (default: float32)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    passes = [p for p in args.passes.split(",") if p]
    unknown = set(passes) - set(PASSES)
    if unknown:
        parser.error(f"unknown pass(es) {sorted(unknown)}; choose from {', '.join(PASSES)}")
    if min(args.batch_size, args.rounds, args.input_size or 1) < 1:
        parser.error("--batch-size, --rounds and --input-size must be at least 1")
    if jax.devices()[0].platform != "cpu":
        parser.error("the formulations are chosen for CPUs only; run with JAX_PLATFORMS=cpu")
    try:
        args.input_size = args.input_size or get_arch(args.arch).input_size
    except UsageError as e:
        parser.error(str(e))
    layers = conv_layers(args.arch, args.input_size)
    stem = next(iter(layers))
    rows, total_chosen, total_fastest = [], 0.0, 0.0
    for layer, count in layers.items():
        with fastops.use(products=args.products):  # traced (at the first call) under the choice
            timed = time_layer(layer, args.batch_size, passes, args.rounds)
        h, w, c, k, s, p, o = layer
        for name, t in timed.items():
            if name == "input_grad" and layer == stem:
                continue  # the gradient for the input images is never computed in training
            rows.append({"layer": f"{h}x{w}x{c} -> {o}, {k}x{k}/{s} pad {p}", "count": count, "pass": name, **t})
            total_chosen += count * t["ms"][t["chosen"]]
            total_fastest += count * t["ms"][t["fastest"]]
        print(f"timed {h}x{w}x{c} -> {o}, {k}x{k}/{s}", file=sys.stderr)

    if args.json:
        print(json.dumps({"arch": args.arch, "batch_size": args.batch_size, "products": args.products or "float32", "rows": rows,
                          "total_chosen_ms": total_chosen, "total_fastest_ms": total_fastest}, indent=1))
        return 0
    print(f"{args.arch}, batch {args.batch_size}, {args.input_size}px, float32, {args.products or 'float32'} "
          f"products; median of {args.rounds} "
          f"interleaved rounds, ms; * = choose()'s pick, ! = fastest where it differs")
    forms = [f for f in ("xla", "matmul", "winograd", "space-to-depth", "amx", "amx_run", "amx_s2d")
             if any(f in r["ms"] for r in rows)]
    print("| layer | x | pass | " + " | ".join(forms) + " |")
    print("| --- | ---: | --- | " + " | ".join("---:" for _ in forms) + " |")
    for r in rows:
        cells = []
        for form in forms:
            ms = r["ms"].get(form)
            mark = "*" if form == r["chosen"] else "!" if form == r["fastest"] else ""
            cells.append("-" if ms is None else f"{ms:.1f}{mark}")
        print(f"| {r['layer']} | {r['count']} | {r['pass']} | " + " | ".join(cells) + " |")
    print(f"sum over the network (layers x occurrences): chosen {total_chosen:.0f} ms, "
          f"per-pass fastest {total_fastest:.0f} ms")
    return 0


if __name__ == "__main__":
    flags.use_hugepages()  # as the cnnbench command runs (re-executes this script once)
    flags.apply()
    sys.exit(main())
