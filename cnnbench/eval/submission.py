"""ILSVRC classification submissions: one line per image in file-name order, each the five
predicted class indices (1-based), best first; scored against a devkit ground-truth file (one
1-based label per line).

Indices are 1-based positions in the run's class list (for ``imagenet2012``: sorted synset ids,
as TFDS, Caffe and torchvision number them). The official devkit numbers the classes by its own
``ILSVRC2012_ID``; ``class_map`` (a text file, line i = the synset id of devkit class i) writes
those numbers instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnbench.errors import UsageError
from cnnbench.eval import metrics
from cnnbench.eval.evaluate import Predictions


def order(p: Predictions) -> np.ndarray:
    """Examples in file-name order (split order where the dataset has no file names)."""
    if any(p.ids):
        return np.array(sorted(range(len(p.ids)), key=lambda i: (p.ids[i], int(p.index[i]))))
    return np.argsort(p.index, kind="stable")


def index_map(class_ids: list[str], class_map: Path | None) -> np.ndarray:
    """For each label, the 1-based index a submission writes."""
    if class_map is None:
        return np.arange(1, len(class_ids) + 1)
    lines = [line.split()[0] for line in Path(class_map).read_text().splitlines() if line.strip()]
    position = {synset: i + 1 for i, synset in enumerate(lines)}
    missing = [c for c in class_ids if c not in position]
    if missing:
        raise UsageError(f"class map {class_map} lacks {len(missing)} of the run's classes (e.g. {missing[0]})")
    return np.array([position[c] for c in class_ids])


def write(p: Predictions, path: Path, *, class_ids: list[str], class_map: Path | None = None,
          ground_truth: Path | None = None) -> int:
    """Write the submission (and, optionally, the matching ground-truth file); returns its lines."""
    numbers = index_map(class_ids, class_map)
    rows = order(p)
    top = numbers[metrics.top_k(p.probs[rows], min(5, p.probs.shape[1]))]
    Path(path).write_text("".join(" ".join(map(str, line)) + "\n" for line in top))
    if ground_truth is not None:
        Path(ground_truth).write_text("".join(f"{numbers[label]}\n" for label in p.labels[rows]))
    return len(rows)


def _ints(path: Path, what: str) -> list[list[int]]:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UsageError(f"cannot read {what} file {path}: {e.strerror}") from None
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        try:
            rows.append([int(v) for v in line.split()])
        except ValueError:
            raise UsageError(f"{what} file {path}, line {n}: not whole numbers: {line.strip()[:40]!r}") from None
        if not rows[-1]:
            raise UsageError(f"{what} file {path}, line {n} is empty")
    return rows


def score(ground_truth: Path, predictions: Path, *, num_classes: int = 1000) -> dict:
    """Top-1 / top-5 error of a submission file against a devkit ground-truth file."""
    truth = _ints(ground_truth, "ground-truth")
    guesses = _ints(predictions, "predictions")
    if len(truth) != len(guesses):
        raise UsageError(f"{predictions} has {len(guesses):,} lines but {ground_truth} has {len(truth):,}; "
                         f"a submission has one line per image")
    for what, path, rows in (("ground-truth", ground_truth, truth), ("predictions", predictions, guesses)):
        for n, row in enumerate(rows, start=1):
            bad = [v for v in row if not 1 <= v <= num_classes]
            if bad:
                raise UsageError(f"{what} file {path}, line {n}: label {bad[0]} is outside 1..{num_classes}")
            if what == "ground-truth" and len(row) != 1:
                raise UsageError(f"ground-truth file {path}, line {n}: expected one label, found {len(row)}")
            if what == "predictions" and len(row) > 5:
                raise UsageError(f"predictions file {path}, line {n}: {len(row)} labels; at most 5 count")
    labels = np.array([row[0] for row in truth])
    top1 = float(np.mean([row[0] == t for row, t in zip(guesses, labels)]))
    top5 = float(np.mean([t in row[:5] for row, t in zip(guesses, labels)]))
    return {"top1": top1, "top5": top5, "top1_error": 1 - top1, "top5_error": 1 - top5,
            "num_examples": len(labels), "crops": "submission", "models": [str(predictions)]}
