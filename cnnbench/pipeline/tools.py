"""What `cnnbench data prepare|show|bench` compute: a dataset's description, a grid of augmented
samples, and the throughput of its preprocessing."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from cnnbench.errors import UsageError
from cnnbench.progress import SILENT, Progress
from cnnbench.pipeline.loader import Pipeline
from cnnbench.pipeline.recipes import recipe_for
from cnnbench.pipeline.source import Source


def describe(source: Source) -> dict:
    return {
        "dataset": source.name, "num_classes": source.num_classes,
        "splits": dict(source.splits), "image_shape": list(source.image_shape) if source.image_shape else None,
        "classes": [{"id": i, "name": n} for i, n in zip(source.class_ids, source.class_names)],
    }


def pipeline_for(source: Source, *, split: str, train: bool, size: int, channels: int, batch_size: int,
                 ops: str | None = None, seed: int = 0) -> Pipeline:
    spec = recipe_for(source, ops, train=train, size=size, channels=channels)
    return Pipeline(source, split, batch_size, spec, train=train, channels=channels, seed=seed)


def sample_grid(pipeline: Pipeline, out: Path, *, count: int = 16, title: str = "") -> tuple[Path, int]:
    """A PNG grid of the first ``count`` preprocessed examples (fewer if the split has fewer) with
    their class names, and how many it shows; each image is rescaled to [0, 1] for display (the
    normalisation undone visually, not numerically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images, labels = [], []
    for batch in pipeline.epoch(0):
        keep = batch.get("mask", np.ones(len(batch["label"]))) > 0
        batch_images = batch["image"] if pipeline.finish is None else pipeline.finish(batch["image"], batch["shift"])
        images += list(batch_images[keep])
        labels += list(batch["label"][keep])
        if len(images) >= count:
            break
    images, labels = images[:count], labels[:count]
    if not images:
        raise UsageError(f"no image of {pipeline.source.name} {pipeline.split!r} could be decoded to show")
    cols = min(8, len(images))
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label in zip(axes.flat, images, labels):
        view = image[0] if image.ndim == 4 else image  # first view of multi-crop evaluation
        view = (view - view.min()) / max(float(view.max() - view.min()), 1e-6)
        ax.imshow(view[..., 0] if view.shape[-1] == 1 else view, cmap="gray" if view.shape[-1] == 1 else None)
        ax.set_title(pipeline.source.class_names[int(label)][:18], fontsize=8)
    fig.suptitle(title or f"{pipeline.source.name} {pipeline.split}: {pipeline.ops}", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out, len(images)


def decode_throughput(pipeline: Pipeline, *, images: int) -> dict:
    """The limit any preprocessing can reach: JPEG/PNG decoding of the same files, on all cores,
    with nothing copied back (each decoded image is reduced to one number). The numbers arrive in
    batches of the pipeline's size, as the pipelines' images do: one Python step per decoded image
    held the rate to half on this machine, and made it swing 2x between runs."""
    from cnnbench.pipeline.preprocess import decode
    from cnnbench.pipeline.tfenv import tf

    lib, source = tf(), pipeline.source

    def decoded(example):  # a reduction over every pixel: TensorFlow cannot prune the decode away
        return lib.reduce_max(decode(example["image"], encoded=source.encoded, channels=pipeline.channels))

    warmup = 2 * pipeline.local_batch
    ds = source.read(pipeline.ranges).map(decoded, num_parallel_calls=pipeline.parallelism)
    ds = ds.ignore_errors().repeat().take(images + warmup).batch(pipeline.local_batch)
    batches = iter(ds.with_options(pipeline.options()).prefetch(2))  # run as the pipeline runs
    for _ in range(2):  # warm-up of this very iterator: thread pools, file cache
        next(batches)  # (a fresh iterator starts cold: timed that way, the rate came out at 0.5-1x)
    started = time.perf_counter()
    count = sum(int(batch.shape[0]) for batch in batches)
    seconds = time.perf_counter() - started
    return {"images": count, "seconds": seconds, "images_per_sec": count / seconds}


def throughput(pipeline: Pipeline, *, batches: int, warmup: int = 2,
               progress: Progress = SILENT) -> dict:
    """Images per second of one pipeline, after ``warmup`` batches (tf.data start-up excluded);
    ``progress`` counts the timed batches."""
    done, started, timed = 0, None, 0
    epoch = 0
    while done < batches + warmup:
        for batch in pipeline.epoch(epoch):
            done += 1
            if done == warmup:
                started = time.perf_counter()
            elif done > warmup:
                timed += int(batch.get("mask", np.ones(len(batch["label"]))).sum())
                progress.advance(1)
            if done >= batches + warmup:
                break
        epoch += 1
    seconds = time.perf_counter() - started
    return {"images": timed, "seconds": seconds, "images_per_sec": timed / seconds}


def bench_pipeline(pipeline: Pipeline, *, batches: int, progress: Progress = SILENT) -> list[dict]:
    """`cnnbench data bench`: plain decoding of ``batches`` batches (the limit), then the pipeline
    as it is (float32 from the host) and with its last steps on the device (uint8 from the host);
    each row has ``images``, ``seconds``, ``images_per_sec`` and, after the first, ``vs_decode``."""
    import dataclasses

    progress.start("timing plain decoding")
    rows = [{"pipeline": "decode only (the limit)",
             **decode_throughput(pipeline, images=batches * pipeline.batch_size)}]
    variants = [(f"{pipeline.ops} (float32 from the host)", pipeline),
                ("same, uint8 + lighting/normalize on the device", dataclasses.replace(pipeline, device_finish=True))]
    for label, p in variants:
        progress.start(label[:40], batches)
        rows.append({"pipeline": label, **throughput(p, batches=batches, progress=progress)})
    for row in rows[1:]:
        row["vs_decode"] = row["images_per_sec"] / rows[0]["images_per_sec"]
    return rows
