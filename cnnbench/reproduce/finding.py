"""What a finding is: the paper's claim and numbers, the variants to train, the budgets, the test.

A :class:`Finding` names the runs it needs (its :class:`Variant` s, each trained once per seed
under a :class:`Budget`) and how to turn the finished runs into a verdict (``analyse``). The
findings themselves are in :mod:`cnnbench.reproduce.findings`; how they run, in
:mod:`cnnbench.reproduce.run`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable

from cnnbench.errors import UsageError
from cnnbench.progress import SILENT, Progress
from cnnbench.reproduce.verdict import Stats, Test

BUDGETS = ("smoke", "small", "paper")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One setting of the experiment: an architecture and its training settings (fields of
    :class:`~cnnbench.runs.config.TrainConfig`). A value ``"@NAME"`` is the run directory of
    variant NAME with the same seed (``init_from="@source"``: fine-tune the source run)."""

    name: str
    arch: str
    settings: dict = dataclasses.field(default_factory=dict)
    label: str = ""  # how the report names it (default: the name)

    @property
    def title(self) -> str:
        return self.label or self.name


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much of the experiment to run: the dataset, the seeds, the settings every variant shares
    (its own settings win), and what it costs."""

    dataset: str
    seeds: int
    settings: dict
    minutes: float | None   # estimated wall time on a 2-core CPU (None: needs a cluster)
    note: str = ""          # how it departs from the paper's setup
    arch: str | None = None  # the architecture of every variant, where the budget changes it (the paper's)
    variant_settings: dict = dataclasses.field(default_factory=dict)  # variant name -> its settings here


@dataclasses.dataclass
class Runs:
    """The finished runs of a reproduction, handed to a finding's ``analyse``."""

    finding: Finding
    budget_name: str
    budget: Budget
    dataset: str
    seeds: int
    dirs: dict[str, list[Path]]  # variant name -> one run directory per seed (seed order)
    out: Path                    # the reproduction's folder (figures go here)
    progress: Progress = SILENT  # the analysis's: a note per evaluation, the evaluation's bar below it

    def note(self, what: str) -> Progress:
        """Say what the analysis evaluates now; returns the progress for that evaluation."""
        self.progress.note(f"analysis: {what}")
        return self.progress.nested()

    def finding_variant(self, name: str) -> Variant:
        return next(v for v in self.finding.variants if v.name == name)

    def records(self, variant: str) -> list[list[dict]]:
        """Each seed's metrics records; a run that stopped on a NaN loss ends with a ``stopped``
        record (its summary's), which the final-error measures count as wholly wrong."""
        from cnnbench.runs.layout import read_json, read_metrics

        out = []
        for d in self.dirs[variant]:
            records = read_metrics(d)
            summary = read_json(d / "summary.json", required=False) or {}
            if summary.get("stopped"):
                records.append({"kind": "stopped", **summary["stopped"]})
            out.append(records)
        return out

    def per_seed(self, variant: str, measure: Callable[[list[dict]], float]) -> Stats:
        from cnnbench.reproduce.verdict import stats

        return stats(measure(records) for records in self.records(variant))


@dataclasses.dataclass
class Analysis:
    """What a finding measured and concluded."""

    measured: dict[str, Stats]   # quantity (usually a variant) -> per-seed values
    tests: list[Test]
    verdict: str
    unit: str                    # "error %", "epochs", ...
    figures: list[Path] = dataclasses.field(default_factory=list)
    details: dict = dataclasses.field(default_factory=dict)  # finding-specific tables


@dataclasses.dataclass(frozen=True)
class Finding:
    name: str
    paper: str
    claim: str                   # one sentence
    paper_numbers: tuple[dict, ...]  # {"what", "value", "unit", "source"} as the paper prints them
    metric: str                  # what is measured, in words
    rule: str                    # the stated test behind the verdict
    variants: tuple[Variant, ...]
    budgets: dict[str, Budget]
    analyse: Callable[[Runs], Analysis]
    prepare: Callable[[Path, str], dict] | None = None  # writes data a budget needs; returns settings

    def budget(self, name: str) -> Budget:
        if name not in self.budgets:
            raise UsageError(f"unknown budget {name!r}; budgets: {', '.join(self.budgets)}")
        return self.budgets[name]

    def datasets(self) -> dict[str, str]:
        return {name: b.dataset for name, b in self.budgets.items()}

    def describe(self) -> dict:
        """The ``reproduce --list`` entry."""
        return {"name": self.name, "paper": self.paper, "claim": self.claim,
                "paper_numbers": list(self.paper_numbers), "metric": self.metric, "rule": self.rule,
                "variants": [v.title for v in self.variants], "datasets": self.datasets(),
                "budgets": {name: {"dataset": b.dataset, "seeds": b.seeds,
                                   "epochs": b.settings.get("epochs"), "estimated_minutes": b.minutes,
                                   "note": b.note} for name, b in self.budgets.items()}}


FINDINGS: dict[str, Finding] = {}


def register(finding: Finding) -> Finding:
    if finding.name in FINDINGS:
        raise ValueError(f"finding {finding.name!r} registered twice")
    missing = set(BUDGETS) - set(finding.budgets)
    if missing:
        raise ValueError(f"finding {finding.name!r} lacks budget(s) {', '.join(sorted(missing))}")
    FINDINGS[finding.name] = finding
    return finding


# ---------------------------------------------------------------- what the analyses read from runs

def _stopped(records: list[dict]) -> bool:
    return any(r["kind"] == "stopped" for r in records)


def final_test_error(records: list[dict]) -> float:
    """Top-1 error (%) on the evaluation split after the last epoch; 100 for a run that diverged."""
    val = [r for r in records if r["kind"] == "validation"]
    return 100.0 * (1.0 - val[-1]["top1"]) if val and not _stopped(records) else 100.0


def final_train_error(records: list[dict]) -> float:
    """Top-1 error (%) on the training batches of the last epoch (mean over the epoch); 100 for a
    run that diverged."""
    val = [r for r in records if r["kind"] == "validation" and "train_top1" in r]
    return 100.0 * (1.0 - val[-1]["train_top1"]) if val and not _stopped(records) else 100.0


def steps_per_epoch(records: list[dict]) -> int:
    return max((r["step_in_epoch"] for r in records if r["kind"] == "train" and r["epoch"] == 1), default=1)


def epochs_to(records: list[dict], error: float) -> float:
    """Epochs (fractional, at the training log's resolution of a tenth of an epoch) until the mean
    training error of the logged window is at most ``error`` %; ``inf`` when it never is."""
    per_epoch = steps_per_epoch(records)
    for r in records:
        if r["kind"] == "train" and 100.0 * (1.0 - r["top1"]) <= error:
            return r["step"] / per_epoch
    return math.inf
