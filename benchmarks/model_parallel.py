"""What model parallelism costs in communication: the collectives of compiled training and
inference steps, read from XLA's optimised program, for one network split three ways.

    python benchmarks/model_parallel.py [--arch alexnet] [--batch-size 128] [--devices 2] \\
        [--model-parallel M] [--input-size 227] [--time]

On ``--devices`` devices (virtual CPU devices unless JAX sees that many), for the same global
batch:

- ``data parallel``: every device holds the whole network (``--model-parallel 1``); the training
  step all-reduces every gradient.
- ``model parallel``: the network split over M devices (``--model-parallel``, default: all of
  them), the batch over devices / M copies, as `cnnbench train --model-parallel` runs it; for the
  paper AlexNet, its two towers.
- ``every layer gathers``: what a split that gathers each weight layer's input would receive per
  step (the sum over every convolution and dense layer after the first of its input's bytes times
  (M-1)/M, from the per-layer trace of `cnnbench summary`), beside the split's own figure from the
  same trace. For AlexNet this is the paper's network with conv2, conv4 and conv5 reading both
  towers.

Bytes are per device and per step: the result of each all-gather, all-reduce, ... (see
:mod:`cnnbench.parallel.collectives`). ``--time`` also times the steps (meaningless on virtual CPU
devices, which share the same cores; use it on real accelerators).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="alexnet")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--model-parallel", type=int, help="Devices per copy of the model (default: all).")
    parser.add_argument("--input-size", type=int)
    parser.add_argument("--time", action="store_true", help="Also time 5 steps of each (after 2 warm-up steps).")
    args = parser.parse_args()
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={args.devices}").strip()

    from cnnbench.kernels import flags

    flags.apply()
    import jax

    from cnnbench.analysis.summary import summarize
    from cnnbench.parallel import make_mesh
    from cnnbench.parallel.collectives import KINDS
    from cnnbench.perf.bench import Prepared

    n, m = args.devices, args.model_parallel or args.devices
    print(f"{args.arch}, global batch {args.batch_size}, {n} {jax.devices()[0].platform} devices "
          f"({jax.devices()[0].device_kind})\n")
    print("| variant | mode | mesh (data x model) | " + " | ".join(KINDS) + " | total MB / device / step |"
          + (" step ms |" if args.time else ""))
    print("| --- | --- | --- | " + " | ".join("---:" for _ in KINDS) + " | ---: |" + (" ---: |" if args.time else ""))
    for label, ways in (("data parallel", 1), ("model parallel", m)):
        for mode in ("train", "infer"):
            work = Prepared(args.arch, mode, args.batch_size, input_size=args.input_size, mesh=make_mesh(n, ways))
            found = work.collectives
            cells = [f"{v['count']} ({v['bytes'] / 1e6:,.2f} MB)" if v["count"] else "" for v in found.values()]
            total = sum(v["bytes"] for v in found.values()) / 1e6
            timing = ""
            if args.time:
                work.run(2)
                timing = f" {1e3 * statistics.median(work.run(5)):,.1f} |"
            print(f"| {label} | {mode} | {n // ways} x {ways} | " + " | ".join(cells) + f" | {total:,.2f} |" + timing)
            del work

    s = summarize(args.arch, input_size=args.input_size, model_parallel=m)
    weight_layers = [r for r in s.layers if r.kind in ("conv", "dense")]
    gather_all = sum(math.prod(r.input_shape[1:]) * r.itemsize * (m - 1) // m for r in weight_layers[1:])
    split = sum(c["bytes_per_image"] for c in s.communication)
    images = args.batch_size // (n // m)  # per model group
    print(f"\nForward pass, from the per-layer trace (bytes each device receives per step, "
          f"{images} images per model group):")
    print(f"- the split ({', '.join(c['layer'] for c in s.communication) or 'nothing'}): "
          f"{split * images / 1e6:,.2f} MB")
    print(f"- every weight layer after the first gathering its input: {gather_all * images / 1e6:,.2f} MB")
    print(f"- per device: {s.per_device()['params']:,} of {s.params:,} parameters")


if __name__ == "__main__":
    main()
