"""Running a finding: its variants x seeds as ordinary run directories, then its analysis and report.

``OUT/runs/BUDGET[-DATASET]/VARIANT-seedK`` holds each run; a finished run is reused, an unfinished
one continued (the training loop resumes from its checkpoint), so the same command can be run
again after an interruption. The report goes to ``OUT/report.{md,json}`` with its figures.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

from cnnbench.errors import UsageError, setting
from cnnbench.reproduce.finding import Budget, Finding, Runs
from cnnbench.runs.config import TrainConfig
from cnnbench.runs.layout import slug

DEFAULT_ROOT = Path("reproductions")


@dataclasses.dataclass
class Planned:
    variant: str
    seed: int
    run_dir: Path
    cfg: TrainConfig
    state: str  # "done", "diverged", "partial" (to continue) or "new"

    @property
    def name(self) -> str:
        return f"{self.variant}-seed{self.seed}"


@dataclasses.dataclass
class Plan:
    finding: Finding
    budget_name: str
    budget: Budget
    dataset: str
    seeds: int
    out: Path
    runs: list[Planned]

    @property
    def epochs_total(self) -> int:
        return sum(p.cfg.epochs for p in self.runs)


@dataclasses.dataclass
class Progress:
    """What a reproduction reports while it runs (the CLI draws it)."""

    run_start: Callable[[Planned, int, int], None] = lambda planned, index, total: None
    train_events: Callable[[Planned], object] = lambda planned: None  # a train.loop.Events, or None
    run_end: Callable[[Planned], None] = lambda planned: None
    analysis: Callable[[str], None] = lambda what: None


def _state(run_dir: Path, epochs: int) -> str:
    from cnnbench.runs.layout import read_json

    try:
        summary = read_json(run_dir / "summary.json", required=False)
    except UsageError:  # damaged: the run is continued from its checkpoint and writes it again
        summary = None
    if isinstance(summary, dict):
        if summary.get("stopped"):
            return "diverged"
        if summary.get("epochs", 0) >= epochs:
            return "done"
    return "partial" if (run_dir / "config.json").exists() else "new"


def plan(finding: Finding, budget_name: str, *, seeds: int | None = None, dataset: str | None = None,
         out: Path | None = None, prepare: bool = True) -> Plan:
    """Every run the finding needs under ``budget_name``, each with its configuration and whether it
    is finished, to continue, or new. ``prepare`` writes the data a budget builds (transfer's tasks)."""
    budget = finding.budget(budget_name)
    seeds = budget.seeds if seeds is None else seeds
    if seeds < 1:
        raise UsageError(f"{setting('seeds')} must be at least 1, not {seeds}")
    if dataset and finding.prepare:
        raise UsageError(f"{finding.name} builds its own source and target tasks; {setting('dataset')} does not apply")
    dataset = dataset or budget.dataset
    out = Path(out or DEFAULT_ROOT / finding.name)
    tag = budget_name if dataset == budget.dataset else f"{budget_name}-{slug(dataset)}"
    root = out / "runs" / tag
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot write {out}: {e.strerror or e}; choose a writable {setting('out')}") from None
    places = finding.prepare(out / "data", budget_name) if (finding.prepare and prepare) else {}
    planned: list[Planned] = []
    for variant in finding.variants:
        for seed in range(seeds):
            run_dir = root / f"{variant.name}-seed{seed}"
            layers = [budget.settings, variant.settings, budget.variant_settings.get(variant.name, {})]
            values = {"dataset": dataset, **{k: v for layer in layers for k, v in layer.items()}, "seed": seed}
            values["arch_options"] = {k: v for layer in layers for k, v in layer.get("arch_options", {}).items()}
            for key, value in list(values.items()):
                if isinstance(value, str) and value.startswith("$"):
                    values[key] = places.get(value[1:], value)
                elif isinstance(value, str) and value.startswith("@"):
                    values[key] = str(root / f"{value[1:]}-seed{seed}")
            cfg = TrainConfig(arch=budget.arch or variant.arch, run_dir=str(run_dir), **values).validate()
            planned.append(Planned(variant.name, seed, run_dir, cfg, _state(run_dir, cfg.epochs)))
    return Plan(finding, budget_name, budget, dataset, seeds, out, planned)


def execute(p: Plan, progress: Progress = Progress()) -> dict:
    """Train what is not finished, analyse, and write the report; returns ``report.json``'s document."""
    from cnnbench.reproduce.report import write_report
    from cnnbench.train.loop import Events, NonFiniteLoss, train

    started = time.time()
    for index, planned in enumerate(p.runs):
        progress.run_start(planned, index, len(p.runs))
        if planned.state in ("new", "partial"):
            try:
                train(planned.cfg, run_dir=planned.run_dir, events=progress.train_events(planned) or Events())
                planned.state = "done"
            except NonFiniteLoss:  # the report counts it as diverged (summary.json records the stop)
                planned.state = "diverged"
        progress.run_end(planned)
    dirs: dict[str, list[Path]] = {}
    for planned in p.runs:
        dirs.setdefault(planned.variant, []).append(planned.run_dir)
    runs = Runs(p.finding, p.budget_name, p.budget, p.dataset, p.seeds, dirs, p.out, progress.analysis)
    analysis = p.finding.analyse(runs)
    return write_report(p, analysis, time.time() - started)
