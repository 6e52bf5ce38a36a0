"""XLA options of the training step, on and off, timed in turns in one process.

    python benchmarks/step_options.py [--archs alexnet-owt,vgg11] [--mode train] [--rounds 8] \\
        [--steps 2] [--batch-size 32] [--variant '{"xla_cpu_enable_fast_min_max": true}' ...]

For each architecture it compiles the step as the tool does (``cnnbench.perf.flags.step_options``,
variant "tool"), with each of those options turned off ("off"), and with every ``--variant`` (a
JSON object of extra XLA debug options, on top of the tool's), then times ``--steps`` steps of
each in ``--rounds`` interleaved rounds. Prints the median and fastest step (wall clock), the
median process CPU time per step (less disturbed by other tenants of the machine than wall
time) and the static size of the program's copies, which region-analysis copy insertion cuts.
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
    args = parser.parse_args()
    try:
        extra = [(v, json.loads(v)) for v in args.variant]
    except json.JSONDecodeError as e:
        parser.error(f"--variant is not a JSON object of XLA options: {e}")
    if not all(isinstance(opts, dict) for _, opts in extra):
        parser.error("--variant must be a JSON object of XLA options, e.g. '{\"xla_cpu_enable_fast_min_max\": true}'")

    from cnnbench.perf import flags

    flags.use_hugepages()
    flags.apply()
    from cnnbench.archs import get_arch
    from cnnbench.errors import UsageError
    from cnnbench.perf.bench import Prepared, _mesh

    try:
        for arch in args.archs.split(","):
            get_arch(arch)
    except UsageError as e:
        parser.error(str(e))

    tool = flags.step_options()
    variants = [("tool", None), ("off", {name: False for name in tool})]
    variants += [(v, {**tool, **opts}) for v, opts in extra]
    print(f"the tool's step options here: {json.dumps(tool)}")
    print("| workload | variant | median ms | fastest ms | CPU ms per step (median) | copies MB |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for arch in args.archs.split(","):
        runs = [(name, Prepared(arch, args.mode, args.batch_size, mesh=_mesh(1), compiler_options=opts))
                for name, opts in variants]
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
            print(f"| {arch} {args.mode} | {name} | {1e3 * statistics.median(wall[name]):.1f} | "
                  f"{1e3 * min(wall[name]):.1f} | {1e3 * statistics.median(cpu[name]):.1f} | "
                  f"{copy_megabytes(w.compiled.as_text()):.1f} |", flush=True)


if __name__ == "__main__":
    main()
