"""Run directories: ``runs/<arch>-<dataset>-<timestamp>/`` with ``config.json``, ``dataset.json``
(class ids and names, preprocessing), ``metrics.jsonl`` (one JSON object per logged step
and per validation), ``checkpoints/``, ``summary.json`` and, once evaluated, ``eval/*.json``."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

RUNS = Path("runs")


def new_run_dir(arch: str, dataset: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset.split(":")[0])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = RUNS / f"{arch}-{slug}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = RUNS / f"{arch}-{slug}-{stamp}-{n}"
    return path


def write_dataset(run_dir: Path, source, train_spec: str, eval_spec: str) -> None:
    """What the labels mean and how images were prepared, so a run can predict and name classes
    without its dataset (``dataset.json``)."""
    (run_dir / "dataset.json").write_text(json.dumps(
        {"dataset": source.name, "ids": list(source.class_ids), "names": list(source.class_names),
         "image_shape": list(source.image_shape) if source.image_shape else None,
         "train_spec": train_spec, "eval_spec": eval_spec}, indent=1))


def read_dataset(run_dir: Path) -> dict | None:
    path = run_dir / "dataset.json"
    return json.loads(path.read_text()) if path.is_file() else None


class MetricsLog:
    """Appends JSON lines (and the same scalars as TensorBoard events in ``tensorboard/``); a
    resumed run drops JSON records past the step it resumes from, so the log reads as if the run
    had never stopped."""

    def __init__(self, path: Path, resume_step: int | None = None, enabled: bool = True,
                 tensorboard: bool = True):
        self.path, self.enabled = path, enabled
        self.board = None
        if enabled and tensorboard:
            from cnnbench.train.tensorboard import TensorBoard

            self.board = TensorBoard(path.parent / "tensorboard")
        if enabled and path.exists():
            # A killed run may have left a torn last line; a resumed one drops what comes after
            # its checkpoint; a fresh run in an old directory starts a new log.
            kept = [r for r in _parse(path.read_text()) if resume_step is not None and r.get("step", 0) <= resume_step]
            path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            if self.board is not None:
                self.board.write(record)

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


def _parse(text: str) -> list[dict]:
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pass  # a line torn by a killed process
    return records


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return _parse(path.read_text()) if path.exists() else []
