"""What evaluators found about a run, kept in the run: ``eval/EVALUATOR-KEY.json``, one schema.

Every evaluator (:mod:`cnnbench.eval.evaluators`: accuracy with a test-time protocol, a linear
probe, ...) keeps one record per setting it ran with; `cnnbench compare` and the Python API read
them back with :func:`read`. A record is::

    {"evaluator": "accuracy",               # the registry name
     "key": "test-center",                  # the setting (one file per evaluator and key)
     "label": "test, centre crop",          # the setting in words (compare's protocol column)
     "metrics": {"top1": 0.71, "top5": 0.9, ...},   # the numbers, higher is better unless named *_error
     "model": {"checkpoint": "...", "weights": "ema", "epoch": 30},
     "written": "2026-12-05T01:02:03Z",
     ...}                                   # the evaluator's own details (split, crops, layer, ...)

Writes hold the run's lock and are atomic; a run another process is writing (still training) is
evaluated all the same and its result not kept (a warning says so). Results written before this
schema (``eval/SPLIT-CROPS.json``, ``probes/*.json``) are read as records too.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from cnnbench.runs.layout import RunLock, describe_holder, read_json, slug, write_text

FOLDER = "eval"


def keep(run_dir: Path, evaluator: str, key: str, *, label: str, metrics: dict, model: dict | None = None,
         details: dict | None = None) -> Path | None:
    """Keep one evaluator's result in the run; returns its file, or None when the run is held by
    another process (a warning says so)."""
    from cnnbench.output import warn

    run_dir = Path(run_dir)
    record = {"evaluator": evaluator, "key": key, "label": label, "metrics": metrics, "model": model or {},
              "written": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              **{k: v for k, v in (details or {}).items() if k not in ("evaluator", "key", "label", "metrics")}}
    lock = RunLock(run_dir)
    holder = lock.try_acquire()
    if holder is not None:
        warn(f"result not kept in {run_dir / FOLDER}: the run is being written by {describe_holder(holder)}")
        return None
    try:
        folder = run_dir / FOLDER
        folder.mkdir(exist_ok=True)
        path = folder / f"{slug(evaluator)}-{slug(key)}.json"
        write_text(path, json.dumps(record, indent=2))
        return path
    finally:
        lock.release()


def read(run_dir: Path, evaluator: str | None = None) -> list[dict]:
    """Every kept result of the run (of one ``evaluator``, if given), oldest file name first."""
    run_dir = Path(run_dir)
    records = []
    for folder, earlier in ((FOLDER, _earlier_accuracy), ("probes", _earlier_probe)):
        for path in sorted((run_dir / folder).glob("*.json")) if (run_dir / folder).is_dir() else ():
            record = read_json(path)  # (a damaged file is one line naming it, like every run file)
            if isinstance(record, dict):  # (what is not an object is no result of ours)
                records.append(record if "evaluator" in record else earlier(record))
    return [r for r in records if evaluator is None or r["evaluator"] == evaluator]


def best_of(records: list[dict], metric: str = "top1") -> dict | None:
    """The record with the highest ``metric``, or None."""
    found = [r for r in records if r["metrics"].get(metric) is not None]
    return max(found, key=lambda r: r["metrics"][metric]) if found else None


def _earlier_accuracy(row: dict) -> dict:
    """An ``eval/SPLIT-CROPS.json`` of before the schema (the row of `cnnbench eval`'s models)."""
    metrics = {k: row[k] for k in ("top1", "top5", "top1_error", "top5_error", "num_examples") if k in row}
    return {"evaluator": "accuracy", "key": f"{row.get('split')}-{row.get('crops')}",
            "label": f"{row.get('split')}, {row.get('crops')}", "metrics": metrics,
            "model": {k: row.get(k) for k in ("checkpoint", "weights", "epoch")},
            **{k: row[k] for k in ("dataset", "split", "crops") if k in row}}


def _earlier_probe(row: dict) -> dict:
    """A ``probes/*.json`` of before the schema (`cnnbench probe`'s document)."""
    setting = [row.get(k) for k in ("dataset", "layer", "classifier")] + [row.get("per_class") or "all"]
    return {"evaluator": "probe", "key": "-".join(map(str, setting)),
            "label": " ".join(map(str, setting)) + "/class",
            "metrics": {"top1": row.get("top1"), "top1_std": row.get("top1_std")}, "model": {},
            **{k: v for k, v in row.items() if k not in ("top1", "top1_std")}}
