"""How one architecture's step time grows with batch size and input area (interleaved, one process).

    python benchmarks/scaling.py [--arch resnet18] [--mode train] [--batches 8,16,32] \\
        [--sizes 112,160,224] [--rounds 3] [--steps 1]

Three batch sizes at the largest input size and three input sizes at the largest batch (five
workloads, the corner shared), all compiled first, then timed in ``--rounds`` interleaved rounds.
For each: median step time, time per image, and the step time a linear model predicts from the
reference (largest batch, largest size) workload, scaled by batch x area; multiply-adds scale
the same way for a network ending in global average pooling (ResNet).
"""

from __future__ import annotations

import argparse
import statistics


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--mode", default="train", choices=("train", "infer"))
    parser.add_argument("--batches", default="8,16,32")
    parser.add_argument("--sizes", default="112,160,224")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1)
    args = parser.parse_args()

    from cnnbench.kernels import flags

    flags.apply()
    from cnnbench.parallel import make_mesh
    from cnnbench.perf.bench import Prepared

    batches = [int(b) for b in args.batches.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    top_b, top_s = max(batches), max(sizes)
    configs = [(b, top_s) for b in batches] + [(top_b, s) for s in sizes if s != top_s]
    mesh = make_mesh(1)
    work = {}
    for b, s in configs:
        work[b, s] = Prepared(args.arch, args.mode, b, input_size=s, mesh=mesh)
        work[b, s].run(1)
    times = {c: [] for c in configs}
    for r in range(args.rounds):
        for c in (configs if r % 2 == 0 else configs[::-1]):
            times[c] += work[c].run(args.steps)
    med = {c: statistics.median(t) for c, t in times.items()}
    ref = med[top_b, top_s]
    print(f"{args.arch} {args.mode}, median of {args.rounds} interleaved rounds x {args.steps} steps")
    print("| batch | input | step ms | ms / image | linear prediction ms | measured / predicted | G mult-adds / step |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for b, s in configs:
        predicted = ref * (b / top_b) * (s * s) / (top_s * top_s)
        macs = work[b, s].facts["macs"] * b / 1e9
        print(f"| {b} | {s} | {1e3 * med[b, s]:,.0f} | {1e3 * med[b, s] / b:,.1f} | {1e3 * predicted:,.0f} | "
              f"{med[b, s] / predicted:.2f} | {macs:,.1f} |")


if __name__ == "__main__":
    main()
