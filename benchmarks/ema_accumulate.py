"""What `--ema` and `--accumulate N` cost per training step, against the plain step, in one process.

    python benchmarks/ema_accumulate.py [--arch resnet20] [--input-size 32] [--batch-size 64] \\
        [--accumulate 4] [--rounds 5] [--steps 10]

The plain step, the step with EMA weights (decay 0.999) and the step as N micro-batches are
compiled as `cnnbench train` compiles them (one device), then timed in interleaved rounds (each
round times ``--steps`` steps of each, on one fixed synthetic batch); the medians over rounds and
their ratios to the plain step are printed, with the compiled programs' peak temporary memory
(the activations that accumulation divides).
"""

from __future__ import annotations

import argparse
import statistics
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--accumulate", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    import jax
    import numpy as np
    import optax

    from cnnbench.archs import create_model, get_arch
    from cnnbench.parallel import batch_sharding, make_mesh
    from cnnbench.train.step import jit_train_step, make_steps, train_state

    mesh = make_mesh(1, 1)
    channels = get_arch(args.arch).in_channels
    rng = np.random.default_rng(0)
    batch = jax.device_put({"image": rng.normal(size=(args.batch_size, args.input_size, args.input_size, channels))
                            .astype(np.float32), "label": rng.integers(0, 10, args.batch_size).astype(np.int32)},
                           batch_sharding(mesh))
    variants = {"plain": {}, "ema 0.999": {"ema": True}, f"accumulate {args.accumulate}": {"accumulate": args.accumulate}}
    steps, states, memory = {}, {}, {}
    for name, options in variants.items():
        model = create_model(args.arch, num_classes=10, input_size=args.input_size, seed=0)
        tx = optax.sgd(0.01, momentum=0.9)
        graphdef, state, other = train_state(model, tx, mesh, ema=options.get("ema", False))
        step, _ = make_steps(graphdef, other, tx, seed=0, finish=None, ema_decay=0.999 if options.get("ema") else None,
                             accumulate=options.get("accumulate", 1))
        step = jit_train_step(step, state, mesh)
        compiled = step.lower(state, batch).compile()
        analysis = compiled.memory_analysis()
        memory[name] = getattr(analysis, "temp_size_in_bytes", 0) if analysis is not None else 0
        state, _ = step(state, batch)  # warm-up
        jax.block_until_ready(state)
        steps[name], states[name] = step, state
    times = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name in variants:
            state = states[name]
            started = time.perf_counter()
            for _ in range(args.steps):
                state, metrics = steps[name](state, batch)
            jax.block_until_ready(metrics)
            times[name].append((time.perf_counter() - started) / args.steps)
            states[name] = state
    plain = statistics.median(times["plain"])
    print(f"{args.arch} at {args.input_size}x{args.input_size}, batch {args.batch_size}, {args.rounds} rounds of "
          f"{args.steps} steps, on {jax.devices()[0].device_kind}")
    print(f"{'step':<16}{'ms/step':>10}{'vs plain':>10}{'temp MiB':>10}")
    for name in variants:
        median = statistics.median(times[name])
        print(f"{name:<16}{1e3 * median:>10.1f}{median / plain:>10.2f}{memory[name] / 2**20:>10.1f}")


if __name__ == "__main__":
    main()
