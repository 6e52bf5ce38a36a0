"""`--precision bf16` against float32: the same workloads compiled both ways in one process and
timed in interleaved rounds (issue 26).

    python benchmarks/precision.py [--archs resnet18,alexnet-owt] [--modes train,infer]
        [--batch-size 32] [--rounds 3] [--steps 2] [--precisions fp32,bf16]

Each workload is the step `cnnbench bench` times (:class:`cnnbench.perf.bench.Prepared`), so
``bf16`` is what `--precision bf16` does on this machine (on a CPU with bf16 instructions: float32
layers whose products take bf16 operands, :mod:`cnnbench.kernels.products`). Prints images/s
(median) per precision and the ratio to the first.
"""

from __future__ import annotations

import argparse
import statistics


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="resnet18,alexnet-owt")
    parser.add_argument("--modes", default="train,infer")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--precisions", default="fp32,bf16")
    args = parser.parse_args()

    from cnnbench.kernels import flags

    flags.use_hugepages()
    flags.apply()
    from cnnbench.parallel import make_mesh
    from cnnbench.perf.bench import Prepared

    mesh = make_mesh(1)
    precisions = args.precisions.split(",")
    print(f"| workload | {' | '.join(f'{p} img/s' for p in precisions)} | {' | '.join(f'{p} / {precisions[0]}' for p in precisions[1:])} |")
    print("| --- |" + " ---: |" * (2 * len(precisions) - 1))
    for arch in args.archs.split(","):
        for mode in args.modes.split(","):
            prepared = {p: Prepared(arch, mode, args.batch_size, mesh=mesh, precision=p) for p in precisions}
            times = {p: [] for p in precisions}
            for _ in range(args.rounds):
                for p, work in prepared.items():
                    work.run(1)  # the round's untimed first step
                    times[p] += work.run(args.steps)
            rate = {p: args.batch_size / statistics.median(t) for p, t in times.items()}
            print(f"| {arch} {mode} b{args.batch_size} | " + " | ".join(f"{rate[p]:.1f}" for p in precisions) + " | "
                  + " | ".join(f"{rate[p] / rate[precisions[0]]:.2f}" for p in precisions[1:]) + " |", flush=True)
            del prepared


if __name__ == "__main__":
    main()
