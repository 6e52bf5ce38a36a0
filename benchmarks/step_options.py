"""Variants of the training step (XLA options, fast formulations), timed in turns in one process.

    python benchmarks/step_options.py [--archs alexnet-owt,vgg11] [--mode train] [--rounds 8] \\
        [--steps 2] [--batch-size 32] [--variant '{"xla_cpu_enable_fast_min_max": true}' ...] \\
        [--fastops conv,pool,lrn ...]

For each architecture it compiles the step as the tool does (``cnnbench.kernels.flags.step_options``,
variant "tool"), with each of those options turned off ("off"), with every ``--variant`` (a
JSON object of extra XLA debug options, on top of the tool's) and with every ``--fastops`` (the
tool's options, only those of :data:`cnnbench.kernels.fastops.OPS` named on, comma-separated, or
0 for none: e.g. ``conv,pool,lrn`` for batch norm in Flax's own form), then times ``--steps``
steps of each in ``--rounds`` interleaved rounds. Prints the median and fastest step (wall
clock), the median process CPU time per step (less disturbed by other tenants of the machine
than wall time), and what XLA's compiled program says of itself, the same on every run: the
bytes its operations access (its cost analysis), its temporary buffer and the static size of its
copies, which region-analysis copy insertion cuts.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import time


def copy_megabytes(hlo: str) -> float:
    total = 0
    for m in re.finditer(r"= (f32|f16|bf16|s32|u32|s8|pred)\[([0-9,]*)\][^\n]* copy\(", hlo):
        size = {"f32": 4, "s32": 4, "u32": 4, "f16": 2, "bf16": 2, "s8": 1, "pred": 1}[m.group(1)]
        total += size * math.prod(int(d) for d in m.group(2).split(",") if d)
    return total / 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="alexnet-owt,vgg11")
    parser.add_argument("--mode", default="train", choices=("train", "infer"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--variant", action="append", default=[], help="JSON object of XLA options")
    parser.add_argument("--fastops", action="append", default=[],
                        help="fast formulations to keep on (comma list of conv,pool,lrn,batchnorm; 0: none)")
    args = parser.parse_args()
    try:
        extra = [(v, json.loads(v)) for v in args.variant]
    except json.JSONDecodeError as e:
        parser.error(f"--variant is not a JSON object of XLA options: {e}")
    if not all(isinstance(opts, dict) for _, opts in extra):
        parser.error("--variant must be a JSON object of XLA options, e.g. '{\"xla_cpu_enable_fast_min_max\": true}'")

    from cnnbench.kernels import flags

    flags.use_hugepages()
    flags.apply()
    from cnnbench.archs import get_arch
    from cnnbench.kernels import fastops
    from cnnbench.errors import UsageError
    from cnnbench.parallel import make_mesh
    from cnnbench.perf.bench import Prepared

    try:
        for arch in args.archs.split(","):
            get_arch(arch)
    except UsageError as e:
        parser.error(str(e))
    try:
        for spec in args.fastops:
            fastops.check_env({"CNNBENCH_FASTOPS": spec})
    except UsageError as e:
        parser.error(f"--fastops: {e}")
    ops = [(spec, fastops._from_env(spec)) for spec in args.fastops]

    tool = flags.step_options()
    everything = tuple(fastops.OPS)
    variants = [("tool", None, everything), ("off", {name: False for name in tool}, everything)]
    variants += [(v, {**tool, **opts}, everything) for v, opts in extra]
    variants += [(f"fastops={spec}", None, tuple(chosen)) for spec, chosen in ops]
    print(f"the tool's step options here: {json.dumps(tool)}")
    print("| workload | variant | median ms | fastest ms | CPU ms per step (median) | bytes accessed GB "
          "| temporary MB | copies MB |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")

    def prepare(arch, opts, on):
        with fastops.use(on):  # read while the step is traced, inside Prepared
            return Prepared(arch, args.mode, args.batch_size, mesh=make_mesh(1), compiler_options=opts)

    for arch in args.archs.split(","):
        runs = [(name, prepare(arch, opts, on)) for name, opts, on in variants]
        for _, w in runs:
            w.run(1)
        wall = {name: [] for name, _ in runs}
        cpu = {name: [] for name, _ in runs}
        for _ in range(args.rounds):
            for name, w in runs:
                w.run(1)  # each turn opens with an untimed step
                for _ in range(args.steps):
                    c = time.process_time()
                    wall[name] += w.run(1)
                    cpu[name].append(time.process_time() - c)
        for name, w in runs:
            cost = w.compiled.cost_analysis()
            cost = (cost[0] if isinstance(cost, list) else cost) or {}
            temp = w.compiled.memory_analysis().temp_size_in_bytes
            print(f"| {arch} {args.mode} | {name} | {1e3 * statistics.median(wall[name]):.1f} | "
                  f"{1e3 * min(wall[name]):.1f} | {1e3 * statistics.median(cpu[name]):.1f} | "
                  f"{cost.get('bytes accessed', float('nan')) / 1e9:.2f} | {temp / 1e6:.0f} | "
                  f"{copy_megabytes(w.compiled.as_text()):.1f} |", flush=True)


if __name__ == "__main__":
    main()
