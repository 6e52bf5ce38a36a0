"""DeCAF-style linear probes (Donahue et al. 2014): a trained network's activations at one layer
as features, a linear classifier (scikit-learn) trained on them, accuracy as mean +- std over
several random training subsets of N images per class (their Caltech-101 protocol: 30 per class).

Features are computed once per (dataset, split, layer) and cached in the run directory
(``features/*.npz``); results are kept in ``probes/*.json`` for `cnnbench compare`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import ClassVar

import numpy as np

from cnnbench.errors import UsageError, setting
from cnnbench.eval.evaluators import Evaluator, Result, register
from cnnbench.progress import SILENT, Progress
from cnnbench.runs import results
from cnnbench.runs.layout import slug

CLASSIFIERS = ("logreg", "svm")


def features(subject, dataset: str | None, split: str | None, layer: str, *, batch_size: int = 64,
             data_dir: str | None = None, progress: Progress = SILENT) -> tuple[np.ndarray, np.ndarray, str]:
    """(features (N, D), labels (N,), split) of every image of ``split``, cached in the run
    (``progress``: a stage of images when they are computed)."""
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
    progress.start(f"features of {split}", total)
    batches, _, _ = dataset_batches(subject, source.name, split=split, limit=total, batch_size=batch_size,
                                    data_dir=data_dir)
    feats, labels = collect(subject, batches, name, progress.advance)
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
              seed: int = 0, progress: Progress = SILENT) -> dict:
    """`cnnbench probe`: the :class:`Probe` evaluator on a run directory, its result kept in the run."""
    from cnnbench.eval.evaluators import evaluate
    from cnnbench.runs.loaded import load_run

    if kind not in CLASSIFIERS:  # (before anything loads)
        raise UsageError(f"{setting('classifier')} must be one of {', '.join(CLASSIFIERS)}, not {kind!r}")
    evaluator = Probe(dataset=dataset, layer=layer, classifier=kind, per_class=per_class, count=count,
                      train_split=train_split, test_split=test_split, data_dir=data_dir, seed=seed)
    return evaluate(load_run(run_dir), evaluator, progress=progress).output


def probe_run(run, *, dataset: str | None, layer: str, kind: str, per_class: int | None, count: int,
              train_split: str | None = None, test_split: str | None = None, data_dir: str | None = None,
              seed: int = 0, progress: Progress = SILENT) -> dict:
    """The probe of a loaded run: its features of both splits (cached in the run), then :func:`probe`."""
    from cnnbench.viz.inputs import from_run

    name = from_run(run).taps.resolve(layer)
    subject = from_run(run, reading=(name,))  # the inference model up to the layer read
    source = run.cfg.source(dataset=dataset, data_dir=data_dir)
    train_split = train_split or source.train_split
    test_split = test_split or source.eval_split
    if train_split == test_split:
        raise UsageError(f"{source.name} has one split ({train_split}); give {setting('train_split')} and {setting('test_split')}, "
                         f"e.g. train[:80%] and train[80%:]")
    kw = dict(data_dir=data_dir, progress=progress)
    x, y, _ = features(subject, source.name, train_split, name, **kw)
    xt, yt, _ = features(subject, source.name, test_split, name, **kw)
    return {"run": run.name, "run_dir": str(run.run_dir), "arch": run.cfg.arch, "dataset": source.name,
            "layer": name, "train_split": train_split, "test_split": test_split,
            **probe((x, y), (xt, yt), kind=kind, per_class=per_class, count=count, seed=seed)}


@register
@dataclasses.dataclass
class Probe(Evaluator):
    """A linear classifier on ``layer``'s features (DeCAF): mean and spread of the test top-1 over
    ``count`` training subsets of ``per_class`` images per class (None: all)."""

    name: ClassVar[str] = "probe"
    columns: ClassVar = (("probe_top1", "probe top-1 %", "pct"), ("probe", "probe", "text"))

    dataset: str | None = None
    layer: str = "fc7"
    classifier: str = "logreg"
    per_class: int | None = None
    count: int = 1
    train_split: str | None = None
    test_split: str | None = None
    data_dir: str | None = None
    seed: int = 0

    def __call__(self, run, progress: Progress = SILENT) -> Result:
        found = probe_run(run, dataset=self.dataset, layer=self.layer, kind=self.classifier, per_class=self.per_class,
                          count=self.count, train_split=self.train_split, test_split=self.test_split,
                          data_dir=self.data_dir, seed=self.seed, progress=progress)
        per_class = self.per_class or "all"
        metrics = {k: found[k] for k in ("top1", "top1_std")}
        details = {k: v for k, v in found.items() if k not in metrics}
        return Result(key=f"{found['dataset']}-{found['layer']}-{self.classifier}-{per_class}",
                      label=f"{found['dataset']} {found['layer']} {self.classifier} {per_class}/class",
                      metrics=metrics, details=details, output=found)

    @classmethod
    def facts(cls, records):
        top = results.best_of(records)
        if top is None:
            return {}
        return {"probe_top1": top["metrics"]["top1"], "probe": top["label"], "probes": records}
