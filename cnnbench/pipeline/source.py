"""What every dataset is once resolved (:func:`cnnbench.pipeline.sources.resolve`): a
:class:`Source` of examples with class names and split sizes, read by example ranges."""

from __future__ import annotations

import dataclasses
import types
from typing import Callable

from cnnbench.errors import UsageError
from cnnbench.pipeline.tfenv import tfds

Range = tuple[str, int, int]  # (split, start, stop): examples [start, stop) of a named split


@dataclasses.dataclass
class Source:
    name: str
    class_ids: list[str]          # what the labels index: synset ids for ImageNet, else the names
    class_names: list[str]        # human-readable
    splits: dict[str, int]        # named split -> number of examples
    encoded: bool                 # images arrive as encoded bytes (else as uint8 arrays)
    image_shape: tuple[int, ...] | None  # (H, W, C) when every image has the same shape
    _read: Callable[[list[Range], bool, int], object] = dataclasses.field(repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def train_split(self) -> str:
        return "train" if "train" in self.splits else next(iter(self.splits))

    @property
    def eval_split(self) -> str:
        for name in ("validation", "test", "val"):
            if name in self.splits:
                return name
        return self.train_split

    def ranges(self, spec: str) -> list[Range]:
        """Absolute example ranges of a split string; a bad split is one clear error."""
        infos = {k: types.SimpleNamespace(name=k, num_examples=v) for k, v in self.splits.items()}
        try:
            instructions = tfds().core.ReadInstruction.from_spec(spec).to_absolute(infos)
        except (ValueError, KeyError, AssertionError) as e:
            raise UsageError(f"{self.name} has no split {spec!r} ({str(e).splitlines()[0]}); "
                             f"its splits: {', '.join(f'{k} ({v:,})' for k, v in self.splits.items())}") from None
        return [(i.splitname, i.from_ or 0, self.splits[i.splitname] if i.to is None else i.to)
                for i in instructions]

    def num_examples(self, spec: str) -> int:
        return sum(stop - start for _, start, stop in self.ranges(spec))

    def read(self, ranges: list[Range], *, shuffle_files: bool = False, seed: int = 0):
        """A ``tf.data.Dataset`` of ``{"image", "label"}`` for the given ranges, in a fixed order
        (file order shuffled deterministically from ``seed`` when ``shuffle_files``)."""
        return self._read(ranges, shuffle_files, seed)


def ranges_spec(ranges: list[Range]) -> str:
    return "+".join(f"{split}[{start}:{stop}]" for split, start, stop in ranges)
