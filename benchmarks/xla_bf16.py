"""What XLA:CPU in the installed jaxlib makes of bf16: a matrix product and a 3x3 convolution in
float32, in bf16 with bf16 sums, and in bf16 with float32 sums (``preferred_element_type``), under
each CPU option this XLA accepts per program (issue 26).

    python benchmarks/xla_bf16.py [--size 2048] [--repeats 5] [--json]

Prints GFLOP/s (best of ``--repeats``) per program and option set, and the CPU's bf16 flags. An
option this XLA does not know is reported as such (XLA's own message), not fatal.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
from jax import lax

#: per-program XLA options to try (name, value): each alone, against the defaults
OPTIONS = [("xla_cpu_use_onednn", True), ("xla_cpu_experimental_onednn_custom_call", True),
           ("xla_cpu_use_xnnpack", True), ("xla_cpu_use_xnnpack", False)]


def best(compiled, args, repeats: int) -> float:
    compiled(*args).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        compiled(*args).block_until_ready()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    n, key = args.size, jax.random.key(0)
    a32, b32 = jax.random.normal(key, (n, n)), jax.random.normal(jax.random.key(1), (n, n))
    x32, w32 = jax.random.normal(key, (32, 56, 56, 64)), jax.random.normal(key, (3, 3, 64, 64))
    dn = ("NHWC", "HWIO", "NHWC")

    def dot(a, b, acc=None):
        return lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=acc)

    def conv(x, w, acc=None):
        return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn, preferred_element_type=acc)

    bf = jnp.bfloat16
    programs = {
        "product float32": (dot, (a32, b32), 2 * n ** 3),
        "product bf16, bf16 sums": (dot, (a32.astype(bf), b32.astype(bf)), 2 * n ** 3),
        "product bf16, float32 sums": (lambda a, b: dot(a, b, jnp.float32), (a32.astype(bf), b32.astype(bf)), 2 * n ** 3),
        "conv 3x3 56x56x64 float32": (conv, (x32, w32), 2 * 32 * 56 * 56 * 64 * 64 * 9),
        "conv 3x3 bf16, bf16 sums": (conv, (x32.astype(bf), w32.astype(bf)), 2 * 32 * 56 * 56 * 64 * 64 * 9),
        "conv 3x3 bf16, float32 sums": (lambda x, w: conv(x, w, jnp.float32), (x32.astype(bf), w32.astype(bf)),
                                        2 * 32 * 56 * 56 * 64 * 64 * 9),
    }
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line.split(":", 1)[1].split() for line in f if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = []
    rows = []
    for option in [None, *OPTIONS]:
        options = {} if option is None else {option[0]: option[1]}
        label = "defaults" if option is None else f"{option[0]}={option[1]}"
        for name, (fn, operands, flops) in programs.items():
            try:
                compiled = jax.jit(fn).lower(*operands).compile(compiler_options=options)
            except Exception as e:  # an option this XLA does not know
                rows.append({"options": label, "program": name, "gflops": None, "error": str(e).splitlines()[0][:120]})
                continue
            rows.append({"options": label, "program": name,
                         "gflops": flops / best(compiled, operands, args.repeats) / 1e9})
    doc = {"jax": jax.__version__, "bf16_flags": sorted(f for f in flags if "bf16" in f), "rows": rows}
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"jax {doc['jax']}; CPU bf16 flags: {', '.join(doc['bf16_flags']) or 'none'}")
    print("| options | program | GFLOP/s |")
    print("| --- | --- | ---: |")
    for r in rows:
        print(f"| {r['options']} | {r['program']} | "
              + (f"{r['gflops']:.1f} |" if r["gflops"] is not None else f"n/a ({r['error']}) |"))


if __name__ == "__main__":
    main()
