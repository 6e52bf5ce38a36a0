"""Run directories: ``runs/<arch>-<dataset>-<timestamp>/`` with ``config.json``, ``dataset.json``
(class ids and names, preprocessing), ``metrics.jsonl`` (one JSON object per logged step
and per validation), ``checkpoints/``, ``summary.json`` and, once evaluated, ``eval/*.json``.

One writer at a time: a process that writes into a run holds :class:`RunLock` (an ``flock`` on
``.lock``, which the kernel releases when the process ends, however it ends). Every JSON file of a
run is read through :func:`read_json`: a missing, empty or broken file is one line naming it.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import re
import socket
import statistics
import sys
import time
from pathlib import Path

from cnnbench.errors import UsageError, setting

#: the checkpoints a run keeps: the best validation top-1 and the newest
CHECKPOINTS = ("best", "latest")

RUNS = Path("runs")
LOCK = ".lock"


def read_json(path: Path, *, required: bool = True):
    """The JSON value in ``path`` (a run directory's ``config.json``, ``dataset.json``,
    ``summary.json``, ``transfer.json``, ``imported.json``, ``eval/*.json`` ...); None for a missing
    file that is not ``required``. A missing required, unreadable, empty or invalid file is a
    :class:`UsageError` naming the file and what is wrong with it."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        if not required:
            return None
        raise UsageError(f"{path} is missing: {path.parent} is not a complete run directory") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path} cannot be read ({getattr(e, 'strerror', None) or e})") from None
    if not text.strip():
        raise UsageError(f"{path} is empty (cut short while it was written?); restore it or start a new run")
    try:
        return json.loads(text)
    except ValueError as e:
        raise UsageError(f"{path} is not valid JSON ({e}); restore it or start a new run") from None


class RunLock:
    """The exclusive right to write into ``run_dir``: ``flock`` on ``run_dir/.lock``, released by
    the kernel when the holder ends (a SIGKILLed run can be resumed at once). The file names the
    holder (pid, host, command, since when) for the one-line refusal a second writer gets."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        holder = self.try_acquire()
        if holder is not None:
            raise UsageError(f"{self.run_dir} is being written by another process: {describe_holder(holder)}; "
                             f"wait for it to end, or use another {setting('run_dir')}")
        return self

    def try_acquire(self) -> dict | None:
        """Take the lock and return None, or leave it and return its holder's description. A run
        directory that cannot be created or written is one usage line, before anything loads."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UsageError(f"cannot write the run directory {self.run_dir}: {e.strerror or e}"
                             f"{f' ({e.filename})' if e.filename and str(e.filename) != str(self.run_dir) else ''}; "
                             f"choose a writable {setting('run_dir')}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            except ValueError:
                holder = {}
            os.close(fd)
            return holder
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
              "since": datetime.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self.fd = fd
        return None

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_free(run_dir: Path) -> None:
    """One usage line naming the holder when another process is writing into ``run_dir`` (checked
    before anything else, so a second writer learns that first)."""
    if not (Path(run_dir) / LOCK).exists():
        return
    lock = RunLock(run_dir)
    lock.acquire()
    lock.release()


def describe_holder(holder: dict) -> str:
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
            f"({holder.get('command', 'unknown command')}) since {holder.get('since', '?')}")


def slug(text: str) -> str:
    """``text`` as a file-name part: runs of other characters than letters, digits, ``_.-`` as ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def new_run_dir(arch: str, dataset: str) -> Path:
    name = slug(dataset.split(":")[0])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = RUNS / f"{arch}-{name}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = RUNS / f"{arch}-{name}-{stamp}-{n}"
    return path


def write_text(path: Path, text: str) -> None:
    """``path`` replaced whole or not at all (a temporary file renamed over it): a process killed
    while writing never leaves a truncated ``config.json``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_dataset(run_dir: Path, source, train_spec: str, eval_spec: str) -> None:
    """What the labels mean and how images were prepared, so a run can predict and name classes
    without its dataset (``dataset.json``)."""
    write_text(run_dir / "dataset.json", json.dumps(
        {"dataset": source.name, "ids": list(source.class_ids), "names": list(source.class_names),
         "image_shape": list(source.image_shape) if source.image_shape else None,
         "train_spec": train_spec, "eval_spec": eval_spec}, indent=1))


def read_dataset(run_dir: Path) -> dict | None:
    return read_json(Path(run_dir) / "dataset.json", required=False)


class MetricsLog:
    """Appends JSON lines (and the same scalars as TensorBoard events in ``tensorboard/``); a
    resumed run drops JSON records past the step it resumes from, so the log reads as if the run
    had never stopped."""

    def __init__(self, path: Path, resume_step: int | None = None, enabled: bool = True,
                 tensorboard: bool = True):
        self.path, self.enabled = path, enabled
        self.board = None
        if enabled and tensorboard:
            from cnnbench.runs.tensorboard import TensorBoard

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


def _parse(text: str, path: Path | None = None) -> list[dict]:
    """The records of a ``metrics.jsonl``; a broken line (torn by a killed process, or damaged) is
    skipped, and counted in one warning per file."""
    records, broken = [], 0
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif line.strip():
            broken += 1
    if broken and path is not None and str(path) not in _REPORTED:
        from cnnbench.output import warn

        _REPORTED.add(str(path))
        warn(f"{path}: {broken} broken line(s) skipped")
    return records


_REPORTED: set[str] = set()


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return _parse(path.read_text(), path) if path.exists() else []


class History:
    """A run's ``metrics.jsonl`` read once: its validation and training records, the best and the
    last validation, the median training rate: what ``summary.json`` and `cnnbench compare` report."""

    def __init__(self, run_dir: Path):
        self.records = read_metrics(run_dir)
        self.validation = [r for r in self.records if r["kind"] == "validation"]
        self.train = [r for r in self.records if r["kind"] == "train"]

    @property
    def best(self) -> dict:
        """The validation record of highest top-1 (the first of equals); empty before one."""
        return max(self.validation, key=lambda r: r["top1"]) if self.validation else {}

    @property
    def final(self) -> dict:
        return self.validation[-1] if self.validation else {}

    @property
    def images_per_sec(self) -> float | None:
        """The median training rate over the logged steps."""
        return statistics.median(r["images_per_sec"] for r in self.train) if self.train else None

    @property
    def wall_time(self) -> float | None:
        return max((r["wall_time"] for r in self.records), default=None)
