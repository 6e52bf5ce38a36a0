"""DeCAF-style linear probes (Donahue et al. 2014): a trained network's activations at one layer
as features, a linear classifier (scikit-learn) trained on them, accuracy as mean +- std over
several random training subsets of N images per class (their Caltech-101 protocol: 30 per class).

Features are computed once per (dataset, split, layer) and cached in the run directory
(``features/*.npz``); results are kept in ``probes/*.json`` for `cnnbench compare`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np

from cnnbench.errors import UsageError, setting
from cnnbench.runs.layout import slug

CLASSIFIERS = ("logreg", "svm")


def features(subject, dataset: str | None, split: str | None, layer: str, *, batch_size: int = 64,
             data_dir: str | None = None, advance: Callable[[int], None] = lambda n: None,
             on_split: Callable[[str, int], None] = lambda split, n: None) -> tuple[np.ndarray, np.ndarray, str]:
    """(features (N, D), labels (N,), split) of every image of ``split``, cached in the run."""
    from cnnbench.viz.features import collect
    from cnnbench.viz.inputs import dataset_batches

    run = subject.run
    name = subject.taps.resolve(layer)

    source = run.cfg.source(dataset=dataset, data_dir=data_dir)
    split = split or source.eval_split
    total = source.num_examples(split)
    digest = hashlib.sha1(f"{run.checkpoint}|{run.eval_spec}".encode()).hexdigest()[:8]
    cache = run.run_dir / "features" / f"{slug(source.name)}-{slug(split)}-{name}-{digest}.npz"
    if cache.is_file():
        saved = np.load(cache)
        return saved["features"], saved["labels"], split
    on_split(split, total)
    batches, _, _ = dataset_batches(subject, source.name, split=split, limit=total, batch_size=batch_size,
                                    data_dir=data_dir)
    feats, labels = collect(subject, batches, name, advance)
    cache.parent.mkdir(exist_ok=True)
    np.savez(cache, features=feats.astype(np.float32), labels=labels)
    return feats, labels, split


def subsets(labels: np.ndarray, per_class: int | None, count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` random training subsets with ``per_class`` images of every class (all images when
    ``per_class`` is None: one subset)."""
    if per_class is None:
        return [np.arange(len(labels))]
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    short = [int(c) for c, n in zip(classes, counts) if n < per_class]
    if short:
        raise UsageError(f"{setting('per_class')} {per_class}: class(es) {', '.join(map(str, short[:5]))} have fewer "
                         f"training images ({int(counts.min())} at least)")
    return [np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in classes])
            for _ in range(count)]


def classifier(kind: str, seed: int = 0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    if kind not in CLASSIFIERS:
        raise UsageError(f"{setting('classifier')} must be one of {', '.join(CLASSIFIERS)}, not {kind!r}")
    model = LogisticRegression(max_iter=2000, C=1.0) if kind == "logreg" else LinearSVC(C=1.0, max_iter=5000,
                                                                                       random_state=seed)
    return make_pipeline(StandardScaler(), model)


def probe(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], *, kind: str = "logreg",
          per_class: int | None = 30, count: int = 5, seed: int = 0) -> dict:
    """Accuracy of a linear classifier on the features, over ``count`` random training subsets."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    (x, y), (xt, yt) = train, test
    accuracies = []
    for chosen in subsets(y, per_class, count, seed):
        clf = classifier(kind, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(x[chosen], y[chosen])
        accuracies.append(float(clf.score(xt, yt)))
    return {"classifier": kind, "per_class": per_class, "subsets": len(accuracies),
            "top1": float(np.mean(accuracies)), "top1_std": float(np.std(accuracies)),
            "accuracies": accuracies, "feature_dim": int(x.shape[1]), "train_images": int(len(y)),
            "test_images": int(len(yt))}


def run_probe(run_dir: Path, *, dataset: str | None, layer: str, kind: str, per_class: int | None, count: int,
              train_split: str | None = None, test_split: str | None = None, data_dir: str | None = None,
              seed: int = 0, advance=lambda n: None, on_split=lambda split, n: None) -> dict:
    from cnnbench.runs.loaded import load_run
    from cnnbench.viz.inputs import from_run

    run = load_run(run_dir)
    subject = from_run(run)
    name = subject.taps.resolve(layer)
    source = run.cfg.source(dataset=dataset, data_dir=data_dir)
    train_split = train_split or source.train_split
    test_split = test_split or source.eval_split
    if train_split == test_split:
        raise UsageError(f"{source.name} has one split ({train_split}); give {setting('train_split')} and {setting('test_split')}, "
                         f"e.g. train[:80%] and train[80%:]")
    kw = dict(data_dir=data_dir, advance=advance, on_split=on_split)
    x, y, _ = features(subject, source.name, train_split, name, **kw)
    xt, yt, _ = features(subject, source.name, test_split, name, **kw)
    result = {"run": run.name, "run_dir": str(run.run_dir), "arch": run.cfg.arch, "dataset": source.name,
              "layer": name, "train_split": train_split, "test_split": test_split,
              **probe((x, y), (xt, yt), kind=kind, per_class=per_class, count=count, seed=seed)}
    folder = run.run_dir / "probes"
    folder.mkdir(exist_ok=True)
    (folder / f"{slug(source.name)}-{name}-{kind}-{per_class or 'all'}.json").write_text(json.dumps(result, indent=2))
    return result


def saved_probes(run_dir: Path) -> list[dict]:
    folder = Path(run_dir) / "probes"
    from cnnbench.runs.layout import read_json

    return [read_json(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
