"""Running a finding: its variants x seeds as ordinary run directories, then its analysis and report.

``OUT/runs/BUDGET[-DATASET]/VARIANT-seedK`` holds each run; a finished run is reused, an unfinished
one continued (the training loop resumes from its checkpoint), so the same command can be run
again after an interruption. The report goes to ``OUT/report.{md,json}`` with its figures.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from cnnbench.errors import UsageError, setting
from cnnbench.output import plural
from cnnbench.progress import SILENT, Progress
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


class _Epochs(Progress):
    """A run's training as a reproduction shows it: its epoch bar under the overall one, and its
    warnings; not its validation lines (the report has them)."""

    def __init__(self, below: Progress, name: str):
        self.below, self.name = below, name

    def start(self, description, total=None, *, unit="items"):
        self.below.start(f"  {self.name} {description}", total, unit=unit)

    def advance(self, n=1):
        self.below.advance(n)

    def update(self, completed=None, *, total=None, status=None):
        self.below.update(completed, total=total)

    def warn(self, text):
        self.below.warn(text)


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


def execute(p: Plan, progress: Progress = SILENT) -> dict:
    """Train what is not finished, analyse, and write the report; returns ``report.json``'s document.
    ``progress``: one stage counting the epochs of every run (a continued run's earlier epochs
    count as it ends), a note per run, each run's epochs one level below."""
    from cnnbench.reproduce.report import write_report
    from cnnbench.train.loop import NonFiniteLoss, train

    started = time.time()
    progress.start(f"{p.finding.name}: epochs of {plural(len(p.runs), 'run')}", p.epochs_total)
    below = progress.nested()
    for index, planned in enumerate(p.runs):
        verb = {"done": "finished, reused", "diverged": "diverged earlier, kept", "partial": "continuing",
                "new": "training"}[planned.state]
        progress.note(f"[{index + 1}/{len(p.runs)}] {planned.name}: {verb} ({planned.run_dir})")
        if planned.state in ("new", "partial"):
            try:
                train(planned.cfg, run_dir=planned.run_dir, progress=_Epochs(below, planned.name))
                planned.state = "done"
            except NonFiniteLoss:  # the report counts it as diverged (summary.json records the stop)
                planned.state = "diverged"
        progress.update(sum(r.cfg.epochs for r in p.runs[:index + 1]))
    dirs: dict[str, list[Path]] = {}
    for planned in p.runs:
        dirs.setdefault(planned.variant, []).append(planned.run_dir)
    runs = Runs(p.finding, p.budget_name, p.budget, p.dataset, p.seeds, dirs, p.out, progress)
    analysis = p.finding.analyse(runs)
    return write_report(p, analysis, time.time() - started)
