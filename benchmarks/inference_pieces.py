"""The CPU inference program's pieces of the batch (``Net.chunk``, issue 26): the same inference
workload compiled with each piece size in one process and timed in interleaved rounds.

    python benchmarks/inference_pieces.py [--archs resnet18,resnet50] [--pieces 0,2,4,8]
        [--precision bf16] [--batch-size 32] [--rounds 3] [--steps 3]

Each workload is the step `cnnbench bench --mode infer` times (:class:`cnnbench.perf.bench.Prepared`)
on the devices the command makes (one per core), with huge pages as the command has them;
``--pieces``: images of each device's share per piece (0: the whole batch at once; the default
program uses :data:`cnnbench.archs.inference.CPU_CHUNK`). Prints the median step time per piece
size and its speedup against the first.
"""

from __future__ import annotations

import argparse
import statistics


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="resnet18,resnet50")
    parser.add_argument("--pieces", default="0,2,4,8")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    from cnnbench.kernels import flags

    flags.use_hugepages()  # re-runs this script once, with huge pages for large buffers
    flags.apply()
    flags.use_cpu_devices()  # before JAX starts: one device per core, as the command
    from cnnbench.archs import inference
    from cnnbench.perf.bench import Prepared

    sizes = [int(p) for p in args.pieces.split(",")]
    default = inference.CPU_CHUNK
    print(f"{args.precision}, batch {args.batch_size}; median ms per step over {args.rounds} interleaved rounds "
          f"x {args.steps} steps; speedup against pieces of {sizes[0] or 'the whole batch'}")
    print("| workload | " + " | ".join(f"pieces of {s}" if s else "whole batch" for s in sizes) + " | "
          + " | ".join(f"{s or 'whole'} / {sizes[0] or 'whole'}" for s in sizes[1:]) + " |")
    print("| --- |" + " ---: |" * (2 * len(sizes) - 1))
    for arch in args.archs.split(","):
        prepared = {}
        for size in sizes:
            inference.CPU_CHUNK = size or None  # read when the inference program is built
            prepared[size] = Prepared(arch, "infer", args.batch_size, precision=args.precision)
        inference.CPU_CHUNK = default
        times = {s: [] for s in sizes}
        for _ in range(args.rounds):
            for size, work in prepared.items():
                work.run(1)  # the round's untimed first step
                times[size] += work.run(args.steps)
        ms = {s: 1e3 * statistics.median(t) for s, t in times.items()}
        print(f"| {arch} infer | " + " | ".join(f"{ms[s]:.1f}" for s in sizes) + " | "
              + " | ".join(f"{ms[sizes[0]] / ms[s]:.2f}" for s in sizes[1:]) + " |", flush=True)
        del prepared


if __name__ == "__main__":
    main()
