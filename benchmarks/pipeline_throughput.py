"""Train-preprocessing throughput on ImageNet-sized JPEGs vs. plain decoding and vs. the rate at
which an `alexnet` training step consumes images, all measured in this one process.

    python benchmarks/pipeline_throughput.py [--images 768] [--batch-size 64] [--rounds 3]

Each measurement times batches inside one epoch (after 2 warm-up batches), as in a long run where
tf.data's start-up is amortised. Every recipe is timed twice: float32 images finished on the host,
and uint8 images with lighting/normalize deferred to the device (``device_finish``).

Then the same per-image functions once more on one thread (tf.data with a one-thread pool, no
batching), as microseconds per image: on this machine the multi-threaded rates above swung 2x from
run to run (TensorFlow's thread pools), the one-thread costs stayed within a few percent. And once
more on one thread end to end: batched, each batch fetched as NumPy (the decode baseline reduces
each image to one number, so the batching is the pipelines' cost alone).

Writes nothing but a temporary image folder; prints a table (and --json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import numpy as np


def write_jpegs(root, n, classes=8, size=(375, 500), seed=0):
    """n photo-sized JPEGs (500x375, quality 90) in root/train/<class>/; smooth content plus noise so
    they compress like photographs (~60-100 KB) rather than like flat colour."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    for i in range(n):
        folder = os.path.join(root, "train", f"c{i % classes}")
        os.makedirs(folder, exist_ok=True)
        freq = rng.uniform(2, 12, 3)
        base = np.stack([np.sin(freq[c] * (xx + rng.uniform()) * np.pi) * np.cos(freq[c] * yy * np.pi)
                         for c in range(3)], -1)
        pixels = np.clip(127 + 100 * base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"{i}.jpg"), quality=90)


def pipeline_rate(pipeline, batches):
    from cnnbench.pipeline.tools import throughput

    return throughput(pipeline, batches=batches, warmup=2)["images_per_sec"]


def host_images(source, spec, num_parallel_calls, reduce=False):
    """The train split's images through ``spec``'s host part (uint8), or only decoded (``None``),
    each seeded by its position as the pipelines seed it; ``reduce``: each image's maximum, in the
    same map call (TensorFlow cannot prune the work away, nothing is copied out)."""
    from cnnbench.pipeline.preprocess import compile_host, decode
    from cnnbench.pipeline.tfenv import tf

    lib = tf()
    if spec is None:
        fn = lambda data, seed: decode(data, encoded=True, channels=3)  # noqa: E731
    else:
        host, _ = compile_host(spec, encoded=True)
        fn = lambda data, seed: host(data, seed)[0]  # noqa: E731
    finish = lib.reduce_max if reduce else (lambda image: image)
    return source.read(source.ranges("train")).enumerate().map(
        lambda i, ex: finish(fn(ex["image"], lib.stack([lib.constant(0, "int64"), i]))),
        num_parallel_calls=num_parallel_calls, deterministic=True)


def per_image_us(source, spec, rounds=3):
    """Best-of-``rounds`` microseconds per image of ``spec``'s host part (``None``: plain decoding)
    on one thread: tf.data with a one-thread pool and one call at a time, no batching."""
    from cnnbench.pipeline.tfenv import tf

    lib = tf()
    ds = host_images(source, spec, num_parallel_calls=1, reduce=True)
    options = lib.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    ds = ds.with_options(options).prefetch(8)
    for _ in ds:  # warm-up pass
        pass
    best = float("inf")
    for _ in range(rounds):
        started, n = time.perf_counter(), 0
        for _ in ds:
            n += 1
        best = min(best, (time.perf_counter() - started) / n * 1e6)
    return best


def one_thread_batched_rate(source, spec, batch_size=64, batches=8):
    """Images/s of ``spec``'s host part (``None``: plain decoding, each image reduced to one number)
    end to end on one tf.data thread: batched, and each batch fetched as NumPy, as training sees it."""
    from cnnbench.pipeline.tfenv import tf

    lib = tf()
    # the baseline reduces each image to one number: batching is the pipelines' cost alone
    ds = host_images(source, spec, num_parallel_calls=lib.data.AUTOTUNE, reduce=spec is None)
    options = lib.data.Options()
    options.threading.private_threadpool_size = 1
    it = iter(ds.repeat().batch(batch_size).prefetch(lib.data.AUTOTUNE).with_options(options))
    for _ in range(2):
        next(it)
    started = time.perf_counter()
    for _ in range(batches):
        next(it).numpy()
    return batch_size * batches / (time.perf_counter() - started)


def alexnet_step_rate(batch_size, steps=5):
    """Images/s of a jitted SGD-momentum training step of the paper's AlexNet at 227x227."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from cnnbench.archs import create_model

    model = create_model("alexnet")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.sgd(0.01, momentum=0.9)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, rest, x, y):
        model = nnx.merge(graphdef, params, rest)  # merged at the jit level: dropout RNG can advance

        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x, train=True), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        updates, opt_state = tx.update(grads, opt_state, params)
        _, _, rest = nnx.split(model, nnx.Param, ...)
        return optax.apply_updates(params, updates), opt_state, rest, loss

    x = jax.random.normal(jax.random.key(0), (batch_size, 227, 227, 3))
    y = jnp.zeros((batch_size,), jnp.int32)
    params, opt_state, rest, loss = step(params, opt_state, rest, x, y)  # compile
    jax.block_until_ready(loss)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        params, opt_state, rest, loss = step(params, opt_state, rest, x, y)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - t)
    return batch_size / statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=768)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--step-batch", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from cnnbench.pipeline.loader import Pipeline
    from cnnbench.pipeline.recipes import expand
    from cnnbench.pipeline.sources import resolve
    from cnnbench.pipeline.tools import decode_throughput

    with tempfile.TemporaryDirectory() as root:
        write_jpegs(root, args.images)
        source = resolve(f"folder:{root}")
        batches = args.images // args.batch_size - 3  # stay inside one epoch after the warm-up
        specs = {name: expand(name, size=227 if name == "alexnet" else 224) for name in ("alexnet", "vgg", "inception")}
        recipes = {}
        for name, spec in specs.items():
            recipes[f"{name} f32"] = Pipeline(source, "train", args.batch_size, spec, train=True)
            recipes[f"{name} u8"] = Pipeline(source, "train", args.batch_size, spec, train=True,
                                             device_finish=True)
        rates = {"decode": [], **{k: [] for k in recipes}}
        for _ in range(args.rounds):  # interleaved rounds: a noisy neighbour hits every row alike
            rates["decode"].append(decode_throughput(recipes["alexnet f32"], images=batches * args.batch_size)
                                   ["images_per_sec"])
            for name, p in recipes.items():
                rates[name].append(pipeline_rate(p, batches))
        one_thread = {name: per_image_us(source, spec) for name, spec in {"decode": None, **specs}.items()}
        batched = {name: [] for name in ("decode", *specs)}
        for _ in range(args.rounds):
            for name, spec in {"decode": None, **specs}.items():
                batched[name].append(one_thread_batched_rate(source, spec, args.batch_size))
        batched = {name: statistics.median(v) for name, v in batched.items()}
    medians = {k: statistics.median(v) for k, v in rates.items()}
    step = alexnet_step_rate(args.step_batch)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "images": args.images, "image_size": "500x375 JPEG", "batch_size": args.batch_size,
        "decode_images_per_sec": medians["decode"],
        "recipes": {k: {"images_per_sec": medians[k], "vs_decode": medians[k] / medians["decode"],
                        "vs_alexnet_step": medians[k] / step} for k in recipes},
        "alexnet_train_step_images_per_sec": step,
        "one_thread_us_per_image": one_thread,
        "one_thread_batched_images_per_sec": batched,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"machine: {result['machine']}; {args.images} JPEGs 500x375, batch {args.batch_size}, "
          f"median of {args.rounds} rounds")
    print("f32: normalised float32 images from the host; u8: uint8 + lighting/normalize on the device")
    print(f"{'pipeline':<16}{'images/s':>10}{'vs decode':>11}{'vs alexnet step':>17}")
    print(f"{'decode':<16}{medians['decode']:>10.0f}{'100%':>11}{medians['decode'] / step:>16.1f}x")
    for name, r in result["recipes"].items():
        print(f"{name:<16}{r['images_per_sec']:>10.0f}{r['vs_decode']:>11.0%}{r['vs_alexnet_step']:>16.1f}x")
    print(f"alexnet train step (batch {args.step_batch}, 227x227, fp32): {step:.1f} images/s")
    print("one thread, host part (uint8 out), best of 3 passes:")
    for name, us in one_thread.items():
        print(f"{name:<16}{us:>8.0f} us/image{one_thread['decode'] / us:>8.0%} of the decode rate")
    print(f"one thread, end to end (batches of {args.batch_size} fetched as NumPy), median of {args.rounds}:")
    for name, rate in batched.items():
        print(f"{name:<16}{rate:>8.0f} images/s{rate / batched['decode']:>8.0%} of the decode rate")


if __name__ == "__main__":
    main()
