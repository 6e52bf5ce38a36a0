"""Top-k accuracy and the analyses of an evaluation report, on NumPy arrays of class probabilities.

Ties are broken the way a stable sort does (and ``jax.lax.top_k``): among equal scores the lower
class index ranks first. So an example's rank is the number of classes scoring strictly higher
plus the number scoring the same with a lower index, and it is top-k correct iff rank < k. The
same order writes submission files, so scoring a written submission gives the same numbers.
"""

from __future__ import annotations

import numpy as np


def ranks(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """0-based rank of each example's true class among its scores (N, C), ties to the lower index."""
    scores = np.asarray(scores)
    labels = np.asarray(labels, np.int64)
    true = scores[np.arange(len(labels)), labels][:, None]
    index = np.arange(scores.shape[1])[None, :]
    above = (scores > true) | ((scores == true) & (index < labels[:, None]))
    return above.sum(axis=1)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """(N, k) class indices, best first, in the tie order of :func:`ranks`."""
    return np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, :k]


def accuracy(scores: np.ndarray, labels: np.ndarray) -> dict:
    """``top1``, ``top5`` (fractions), their errors and ``num_examples``."""
    r = ranks(scores, labels)
    top1, top5 = float(np.mean(r < 1)) if len(r) else 0.0, float(np.mean(r < 5)) if len(r) else 0.0
    return {"top1": top1, "top5": top5, "top1_error": 1.0 - top1, "top5_error": 1.0 - top5,
            "num_examples": int(len(r))}


def ensemble(probabilities: list[np.ndarray]) -> np.ndarray:
    """Average of the models' softmax outputs (Krizhevsky et al.'s 5- and 7-CNN predictions)."""
    if not probabilities:
        raise ValueError("an ensemble needs at least one model")
    shapes = {p.shape for p in probabilities}
    if len(shapes) != 1:
        raise ValueError(f"models disagree on (examples, classes): {sorted(shapes)}")
    return np.mean(np.stack(probabilities), axis=0)


def per_class(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> list[dict]:
    """For each class: examples, top-1 and top-5 accuracy (None when the class has no example)."""
    r = ranks(probs, labels)
    out = []
    for c in range(num_classes):
        sel = labels == c
        n = int(sel.sum())
        out.append({"class": c, "examples": n,
                    "top1": float(np.mean(r[sel] < 1)) if n else None,
                    "top5": float(np.mean(r[sel] < 5)) if n else None})
    return out


def hardest(classes: list[dict], n: int = 10) -> list[dict]:
    """The ``n`` classes with the lowest top-1 accuracy (ties: lower top-5 first, then index)."""
    seen = [c for c in classes if c["examples"]]
    return sorted(seen, key=lambda c: (c["top1"], c["top5"], c["class"]))[:n]


def confusion(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(true, predicted) counts of top-1 predictions."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, top_k(probs, 1)[:, 0]), 1)
    return matrix


def confused_pairs(matrix: np.ndarray, n: int = 10) -> list[dict]:
    """The ``n`` most frequent mistakes: true class, predicted class, count, share of the true class."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:n]
    pairs = []
    for flat in order:
        t, p = divmod(int(flat), matrix.shape[1])
        if off[t, p] == 0:
            break
        pairs.append({"true": t, "predicted": p, "count": int(off[t, p]),
                      "share": float(off[t, p] / max(matrix[t].sum(), 1))})
    return pairs


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> dict:
    """Reliability of the top-1 confidence: per confidence bin the mean confidence and accuracy,
    and the expected calibration error (ECE, bin-weighted |accuracy - confidence|)."""
    confidence = probs.max(axis=1)
    correct = ranks(probs, labels) < 1
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        sel = which == b
        n = int(sel.sum())
        if not n:
            continue
        conf, acc = float(confidence[sel].mean()), float(correct[sel].mean())
        ece += n / len(labels) * abs(acc - conf)
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "examples": n,
                     "confidence": conf, "accuracy": acc})
    return {"mean_confidence": float(confidence.mean()) if len(labels) else 0.0,
            "accuracy": float(correct.mean()) if len(labels) else 0.0, "ece": float(ece), "bins": rows}
