"""Occlusion maps: windowed (incremental) forward passes vs full ones, interleaved in one process.

    python benchmarks/occlusion.py [--arch alexnet-owt] [--size 224] [--patch 32] [--stride 8] \\
        [--rounds 2] [--chunk 64]

Random weights and a random image (the cost does not depend on them). Each round runs
``maps.occlusion`` both ways, as `cnnbench visualize occlusion` does (every call compiles its own
function, as a command run does), and reports the wall time, the part spent before the first
chunk came back (compilation plus one chunk) and the largest difference between the two maps.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="alexnet-owt")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from cnnbench.kernels import flags

    flags.apply()
    import numpy as np

    from cnnbench.archs import create_model
    from cnnbench.pipeline.ops import NORMALIZATION
    from cnnbench.pipeline.preprocess import Finish
    from cnnbench.viz import maps
    from cnnbench.viz.inputs import Subject
    from cnnbench.viz.taps import Taps

    model = create_model(args.arch, input_size=args.size, seed=0)
    c = model.in_channels
    subject = Subject(Taps(model, (args.size, args.size, c), args.arch),
                      [str(k) for k in range(model.num_classes)], Finish(*NORMALIZATION["imagenet"]), args.arch)
    image = (np.random.default_rng(0).random((args.size, args.size, c)) * 255).astype(np.uint8)
    shift = np.zeros(c, np.float32)
    times = {True: [], False: []}
    firsts = {True: [], False: []}
    maps_ = {}
    for _ in range(args.rounds):
        for incremental in (True, False):
            marks = [time.perf_counter()]
            out = maps.occlusion(subject, image, shift, patch=args.patch, stride=args.stride, chunk=args.chunk,
                                 incremental=incremental, advance=lambda n: marks.append(time.perf_counter()))
            times[incremental].append(time.perf_counter() - marks[0])
            firsts[incremental].append(marks[1] - marks[0])
            maps_[incremental] = out.probs
    positions = int(np.prod(maps_[True].shape[:2]))
    diff = float(np.abs(maps_[True] - maps_[False]).max())
    print(f"{args.arch} {args.size}x{args.size}, patch {args.patch}, stride {args.stride}: {positions} positions, "
          f"chunk {args.chunk}, {args.rounds} rounds; max |difference| of the maps {diff:.2e}")
    print("| forward passes | wall s (median) | to the first chunk s | s per 100 positions after it |")
    print("| --- | ---: | ---: | ---: |")
    for incremental, label in ((True, "windowed (default)"), (False, "full")):
        wall, first = statistics.median(times[incremental]), statistics.median(firsts[incremental])
        print(f"| {label} | {wall:.1f} | {first:.1f} | {100 * (wall - first) / positions:.2f} |")


if __name__ == "__main__":
    main()
