"""From a :class:`Source` to batches on the devices.

* Order is a pure function of (seed, epoch): the same seed gives the same batches, so a resumed run
  sees the data a continuous run would have seen (``start_step`` skips what was already consumed).
* Every process follows the same global order and keeps every ``process_count``-th example,
  *before* decoding (``process_index`` of ``process_count``): the union of the processes' local
  batches is exactly the global batch a single process would build, so a run does not depend on
  how many hosts it used. Each host reads the split's records but decodes only its share. JAX
  assembles the global batch with ``jax.make_array_from_process_local_data``.
* Images that fail to decode are skipped and counted (:attr:`Pipeline.skipped`), never a crash.
* With ``device_finish`` the host ships uint8 images plus a per-image colour shift, and the
  spec's trailing ``lighting``/``normalize`` run where the batch lands (:attr:`Pipeline.finish`,
  NumPy or ``jax.numpy``, normally inside the jitted step).
* Evaluation pads the last partial batch and marks real examples with ``mask`` = 1, and every
  process yields the same number of batches, so each example is counted exactly once.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
from typing import Iterator

import numpy as np

from cnnbench.errors import UsageError
from cnnbench.pipeline.preprocess import compile_host, compile_ops
from cnnbench.pipeline.source import Source
from cnnbench.pipeline.tfenv import tf


@dataclasses.dataclass
class Pipeline:
    source: Source
    split: str
    batch_size: int            # global, over all processes
    ops: str                   # an expanded preprocessing spec
    train: bool
    channels: int = 3
    seed: int = 0
    process_index: int = 0
    process_count: int = 1
    shuffle_buffer: int = 16_384
    threads: int | None = None
    #: ship uint8 images and leave the spec's trailing lighting/normalize to :attr:`finish`
    device_finish: bool = False
    #: add ``index`` (the example's position in the split) and ``id`` (its file name, or b"") to batches
    with_ids: bool = False

    def __post_init__(self):
        if self.batch_size % self.process_count:
            raise UsageError(f"batch size {self.batch_size} does not divide over {self.process_count} processes")
        self.local_batch = self.batch_size // self.process_count
        self.ranges = self.source.ranges(self.split)
        self.num_examples = sum(b - a for _, a, b in self.ranges)
        if self.num_examples == 0:
            raise UsageError(f"{self.source.name} split {self.split!r} is empty")
        # The ops decode: a JPEG whose first op is a crop decodes only the window it needs.
        raw = {"encoded": self.source.encoded, "channels": self.channels}
        if self.device_finish:
            apply, self.finish = compile_host(self.ops, **raw)
        else:
            full = compile_ops(self.ops, **raw)
            apply, self.finish = (lambda image, seed: (full(image, seed), None)), None
        # Traced once, not once per epoch: every epoch's dataset calls this one graph function.
        self._apply = tf().function(apply)
        self._seen = tf().Variable(0, dtype="int64", trainable=False)
        self._decoded = tf().Variable(0, dtype="int64", trainable=False)

    @property
    def parallelism(self) -> int:
        """Images decoded and augmented at once: ``threads``, else every core this process may use.
        Fixed, not tf.data's AUTOTUNE: on a 2-core machine its tuner dropped the map to one call at
        a time for a third of the epochs (vgg: 470 instead of 1100 images/s, one core busy), and
        never with the parallelism fixed (BENCHMARKS.md, issue 3, sixth session)."""
        if self.threads:
            return self.threads
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            return os.cpu_count() or 1

    @property
    def local_examples(self) -> int:
        """Examples of this process: every ``process_count``-th, starting at ``process_index``."""
        return len(range(self.process_index, self.num_examples, self.process_count))

    @property
    def steps_per_epoch(self) -> int:
        """Train: full batches only (the same count on every process); eval: every example."""
        if self.train:
            return (self.num_examples // self.process_count) // self.local_batch
        return math.ceil(math.ceil(self.num_examples / self.process_count) / self.local_batch)

    @property
    def skipped(self) -> int:
        """Images of the epochs iterated so far (this process) that could not be decoded. Exact once
        an epoch has been iterated to its end (images in flight count as seen, not yet decoded)."""
        return int(self._seen.numpy() - self._decoded.numpy())

    def undecodable(self) -> list[tuple[str, str]]:
        """``(image, error)`` for every image of this pipeline's split that cannot be decoded: the
        file path (folders) or the position in the split, and the decoder's message. One parallel
        pass finds which positions fail, a second decodes only those to name the error; it runs
        only for splits where an epoch skipped images."""
        lib = tf()
        apply = self._apply

        def examples():
            return self.source.read(self.ranges, shuffle_files=False, seed=0).enumerate()

        def survives(index, example):
            image, _ = apply(example["image"], lib.stack([lib.constant(0, "int64"), index]))
            return index, lib.reduce_sum(lib.cast(image, "float32"))  # (reads the pixels: nothing is pruned)

        ok = examples().map(survives, num_parallel_calls=self.parallelism).ignore_errors().batch(4096)
        decoded = {int(i) for indices, _ in ok.as_numpy_iterator() for i in indices}
        failing = sorted(set(range(self.num_examples)) - decoded)
        if not failing:
            return []
        wanted = lib.constant(failing, "int64")
        found = []
        for index, example in examples().filter(lambda i, ex: lib.reduce_any(lib.equal(i, wanted))):
            ident = example.get("id")
            name = ident.numpy().decode(errors="replace") if ident is not None else ""
            try:
                apply(example["image"], lib.stack([lib.constant(0, "int64"), index]))
                error = "could not be decoded"
            except lib.errors.OpError as e:
                error = e.message.split("}}")[-1].split("[Op:")[0].strip() or type(e).__name__
            found.append((name or f"{self.split} example {int(index)}", error))
        return found

    def dataset(self, epoch: int = 0):
        lib = tf()
        epoch_seed = self.seed * 1_000_003 + epoch
        ds = self.source.read(self.ranges, shuffle_files=self.train, seed=epoch_seed)
        ds = ds.enumerate()  # the global position: it seeds the example's augmentation
        if self.train:
            ds = ds.shuffle(min(self.shuffle_buffer, self.num_examples), seed=epoch_seed,
                            reshuffle_each_iteration=False)
        if self.process_count > 1:
            ds = ds.shard(self.process_count, self.process_index)  # before decoding: decode only ours
        seen, decoded, apply, with_ids = self._seen, self._decoded, self._apply, self.with_ids

        def process(index, example):
            # counted as it is taken on, so an image that fails to decode is still counted here
            with lib.control_dependencies([seen.assign_add(1)]):
                seed = lib.stack([lib.constant(epoch_seed, "int64"), index])
            image, shift = apply(example["image"], seed)  # decodes, then augments
            out = {"image": image, "label": lib.cast(example["label"], "int32")}
            if shift is not None:
                out["shift"] = shift
            if with_ids:
                out["index"] = lib.cast(index, "int32")
                out["id"] = example.get("id", lib.constant(b""))
            return out

        def count_decoded(batch):  # per batch: a stage per image cost ~2% of the rate (vgg)
            decoded.assign_add(lib.cast(lib.shape(batch["label"])[0], "int64"))
            return batch

        ds = ds.map(process, num_parallel_calls=self.parallelism, deterministic=True)
        ds = ds.ignore_errors()
        ds = ds.batch(self.local_batch, drop_remainder=False, num_parallel_calls=self.parallelism,
                      deterministic=True).map(count_decoded)
        return ds.with_options(self.options()).prefetch(2)

    def options(self):
        """How every dataset of this pipeline runs (the decode baseline of ``tools`` too):
        deterministic, at :attr:`parallelism` with tf.data's autotuner off, on a private pool of
        ``threads`` threads when given."""
        options = tf().data.Options()
        options.deterministic = True
        options.autotune.enabled = False  # see parallelism
        if self.threads:
            options.threading.private_threadpool_size = self.threads
        return options

    def epoch(self, epoch: int = 0, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """NumPy batches of this process for one epoch: ``image``, ``label`` and, in evaluation,
        ``mask``. Train batches are all full; evaluation yields :attr:`steps_per_epoch` batches."""
        steps = self.steps_per_epoch
        ds = self.dataset(epoch)
        if start_step:
            ds = ds.skip(start_step)
        step = start_step
        template = None
        for batch in ds.as_numpy_iterator():
            if step >= steps:
                break
            n = len(batch["label"])
            if self.train and n < self.local_batch:
                break  # images were skipped: this shard ran short of a full batch
            template = batch
            if not self.train:
                batch = _pad(batch, self.local_batch, n)
            yield batch
            step += 1
        while not self.train and step < steps:  # this process's shard is shorter: empty batches
            if template is None:
                raise UsageError(f"no image of {self.source.name} {self.split!r} could be decoded")
            yield _pad({k: v[:0] for k, v in template.items()}, self.local_batch, 0)
            step += 1


def _pad(batch: dict, size: int, n: int) -> dict:
    out = {k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)]) if n < size else v
           for k, v in batch.items()}
    out["mask"] = (np.arange(size) < n).astype(np.float32)
    return out


def to_global(batch: dict[str, np.ndarray], sharding) -> dict:
    """One global ``jax.Array`` per key, sharded on the batch axis over every device of every host."""
    import jax

    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def prefetch_to_device(batches, sharding, depth: int = 2):
    """Keep ``depth`` batches on the devices ahead of the step, so the accelerator never waits."""
    queue = collections.deque()
    for batch in batches:
        queue.append(to_global(batch, sharding))
        if len(queue) > depth:
            yield queue.popleft()
    while queue:
        yield queue.popleft()
