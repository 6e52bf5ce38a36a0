"""`cnnbench compare`: architectures and runs side by side, and the papers' comparison figures.

An item is a run directory, or an architecture name. A name with runs under ``./runs`` stands
for its latest run (so ``cnnbench compare plain20 plain56 resnet20 resnet56`` compares the runs
of He et al.'s Figure 1), unless ``archs_only``. Every item gets the architecture's counted
numbers at the input size and class count it is used with; runs add their training record and
saved evaluations; a short synthetic-data benchmark adds measured throughput.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnbench.errors import UsageError
from cnnbench.progress import SILENT, Progress
from cnnbench.runs.loaded import is_run
from cnnbench.runs.layout import RUNS, History, read_dataset, read_json, read_metrics


def resolve_items(items: list[str], *, root: Path = RUNS, archs_only: bool = False) -> list[dict]:
    """Each item as ``{"name", "arch", "run_dir" (or None)}``; unknown names are one error."""
    from cnnbench.archs import REGISTRY, get_arch
    from cnnbench.runs.config import from_run

    if not items:
        raise UsageError("name architectures or run directories to compare, e.g. cnnbench compare resnet20 resnet56")
    out = []
    for item in items:
        path = Path(item)
        if is_run(path):
            out.append({"name": path.name, "arch": from_run(path).arch, "run_dir": path})
            continue
        if item not in REGISTRY:
            if path.exists():
                raise UsageError(f"{item} is not a run directory (no config.json)")
            get_arch(item)  # raises with close matches
        runs = [] if archs_only or not root.is_dir() else \
            [p for p in root.iterdir() if is_run(p) and from_run(p).arch == item]
        latest = max(runs, key=lambda p: (p / "config.json").stat().st_mtime) if runs else None
        out.append({"name": item, "arch": item, "run_dir": latest})
    return out


def architecture_facts(arch: str, *, input_size: int | None = None, num_classes: int | None = None,
                       in_channels: int | None = None, options: dict | None = None) -> dict:
    from cnnbench.analysis.summary import summarize

    s = summarize(arch, input_size=input_size, num_classes=num_classes, in_channels=in_channels, **(options or {}))
    convs = [r for r in s.layers if r.kind == "conv"]
    return {"input_size": s.input_shape[0], "num_classes": s.num_classes, "params": s.params, "macs": s.macs,
            "activation_bytes": s.activation_bytes, "depth": s.depth,
            "receptive_field": max((r.geometry.receptive_field for r in convs), default=None)}


def run_facts(run_dir: Path) -> dict:
    """What a run's own records say: dataset, epochs, best validation top-1/5, wall time, images/s,
    and what every evaluator kept in it (its best result: evaluation top-1, probe top-1 ...)."""

    history = History(run_dir)
    best = history.best
    dataset = (read_dataset(run_dir) or {}).get("dataset")
    facts = {"dataset": dataset, "epochs": len(history.validation), "best_top1": best.get("top1"),
             "best_top5": best.get("top5"), "best_epoch": best.get("epoch"), "final_top1": history.final.get("top1"),
             "wall_time": history.wall_time, "train_images_per_sec": history.images_per_sec}
    transfer = run_dir / "transfer.json"
    if transfer.is_file():  # a fine-tune: where it started, what it froze
        info = read_json(transfer)
        facts.update(started_from=Path(info["init_from"]).name if info.get("init_from") else None,
                     frozen_params=info.get("frozen_params"))
    facts.update(evaluator_facts(run_dir))
    return facts


def evaluators() -> dict:
    """Every registered evaluator: cnnbench's own (each registers where it lives: eval, transfer)
    and those of installed packages (entry point group ``cnnbench.evaluators``)."""
    import cnnbench.eval.evaluate  # noqa: F401 (registers accuracy)
    import cnnbench.transfer.probe  # noqa: F401 (registers the probe evaluator)
    from cnnbench.eval.evaluators import EVALUATORS, load_plugins

    load_plugins()
    return EVALUATORS


def evaluator_facts(run_dir: Path) -> dict:
    """What each evaluator shows of the results it kept in the run (its best one)."""
    from cnnbench.runs import results

    facts = {}
    for evaluator in evaluators().values():
        records = results.read(run_dir, evaluator.name)
        if records:
            facts.update(evaluator.facts(records))
    return facts


def published(arch: str) -> dict:
    """The architecture's first published top-1 result (ILSVRC-2012 or CIFAR-10), for items
    without a run."""
    from cnnbench.archs import get_arch

    for ref in get_arch(arch).references:
        if ref.top1 is not None:
            return {"paper_top1": ref.top1 / 100, "paper_top5": None if ref.top5 is None else ref.top5 / 100,
                    "paper_dataset": ref.dataset, "paper_protocol": f"{ref.protocol} ({ref.source})"}
    return {}


def compare(items: list[str], *, bench: bool = True, batch_size: int = 8, steps: int = 3,
            archs_only: bool = False, root: Path = RUNS,
            progress: Progress = SILENT) -> list[dict]:
    """One row per item, in the given order (``progress``: a stage per item counted or benchmarked)."""
    from cnnbench.runs.config import from_run

    rows = []
    for item in resolve_items(items, root=root, archs_only=archs_only):
        row = {"name": item["name"], "arch": item["arch"], "kind": "run" if item["run_dir"] else "architecture",
               "run_dir": str(item["run_dir"]) if item["run_dir"] else None}
        progress.start(f"counting {item['name']}")
        if item["run_dir"]:
            cfg = from_run(item["run_dir"])
            classes = (read_dataset(item["run_dir"]) or {}).get("names")
            row.update(architecture_facts(cfg.arch, input_size=cfg.input_size, in_channels=cfg.in_channels,
                                          num_classes=len(classes) if classes else None, options=cfg.arch_options))
            row.update(run_facts(item["run_dir"]))
            row["dataset"] = row["dataset"] or cfg.dataset
        else:
            row.update(architecture_facts(item["arch"]))
            row.update(published(item["arch"]))
        if bench:
            progress.start(f"benchmarking {item['name']}")
            row.update(throughput(item["arch"], row["input_size"], row["num_classes"], batch_size=batch_size,
                                  steps=steps))
        rows.append(row)
    return rows


def throughput(arch: str, input_size: int, num_classes: int, *, batch_size: int, steps: int) -> dict:
    """Forward and training images/s on synthetic data (cnnbench bench's measurement, short)."""
    from cnnbench.perf.bench import measure

    out = {}
    for mode, key in (("infer", "forward_images_per_sec"), ("train", "train_step_images_per_sec")):
        result = measure(arch, mode, batch_size, input_size=input_size, steps=steps, warmup=1)
        out[key] = result["samples_per_sec"]
    return out


def sort_rows(rows: list[dict], key: str | None) -> list[dict]:
    if key is None:
        return rows
    if not any(key in r for r in rows):
        raise UsageError(f"cannot sort by {key!r}; columns: {', '.join(k for k in rows[0] if not isinstance(rows[0][k], (list, dict)))}")
    present = [r for r in rows if r.get(key) is not None]
    missing = [r for r in rows if r.get(key) is None]
    reverse = isinstance(present[0][key], (int, float)) if present else False
    return sorted(present, key=lambda r: r[key], reverse=reverse) + missing


# --------------------------------------------------------------------------- figures

def plots(rows: list[dict], out: Path) -> list[Path]:
    """PNG figures into ``out``: training/validation curves of the runs (He et al. Fig. 1 style),
    top-1 vs multiply-adds (bubble area = parameters), throughput vs accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    runs = [r for r in rows if r["run_dir"]]
    if runs:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
        for i, r in enumerate(runs):
            records = read_metrics(Path(r["run_dir"]))
            steps_per_epoch = _steps_per_epoch(records)
            train = [x for x in records if x["kind"] == "train"]
            val = [x for x in records if x["kind"] == "validation"]
            colour = colours[i % len(colours)]
            epochs = np.array([x["step"] / steps_per_epoch for x in train])
            errors = np.array([100 * (1 - x["top1"]) for x in train])
            left.plot(epochs, errors, color=colour, linewidth=0.6, alpha=0.3)
            left.plot(epochs, _smooth(errors, max(1, len(train) // max(len(val), 1))), color=colour,
                      label=r["name"], linewidth=1.5)
            right.plot([x["epoch"] for x in val], [100 * (1 - x["top1"]) for x in val], color=colour,
                       label=r["name"], linewidth=2, marker="o" if len(val) < 30 else None, markersize=3)
        left.set(title="training error (top-1 of the logged batches, smoothed over an epoch)", xlabel="epoch",
                 ylabel="error %")
        right.set(title="validation error (top-1)", xlabel="epoch", ylabel="error %")
        for ax in (left, right):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, out / "curves.png"))
    scored = [(r, _accuracy(r)) for r in rows if _accuracy(r) is not None]
    if scored:
        fig, ax = plt.subplots(figsize=(7, 5))
        biggest = max(r["params"] for r, _ in scored)
        for i, (r, (acc, measured)) in enumerate(scored):
            ax.scatter(r["macs"] / 1e9, 100 * acc, s=30 + 1500 * r["params"] / biggest, alpha=0.5,
                       color=colours[i % len(colours)], edgecolors="black" if measured else "grey")
            ax.annotate(r["name"], (r["macs"] / 1e9, 100 * acc), fontsize=8, ha="center", va="bottom")
        macs = [r["macs"] for r, _ in scored]
        if max(macs) > 20 * max(min(macs), 1):
            ax.set_xscale("log")  # LeNet's 0.4 M next to VGG's 15 G
        ax.margins(0.15)
        ax.set(xlabel="G multiply-adds per image", ylabel="top-1 accuracy %",
               title="top-1 vs multiply-adds (bubble area = parameters; grey edge = published)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(_save(fig, out / "accuracy_vs_macs.png"))
    timed = [(r, _accuracy(r)) for r in rows if r.get("train_step_images_per_sec") and _accuracy(r) is not None]
    if timed:
        fig, ax = plt.subplots(figsize=(7, 5))
        for i, (r, (acc, _)) in enumerate(timed):
            ax.scatter(r["train_step_images_per_sec"], 100 * acc, color=colours[i % len(colours)], s=60)
            ax.annotate(r["name"], (r["train_step_images_per_sec"], 100 * acc), fontsize=8, ha="left", va="bottom")
        ax.set_xscale("log")
        ax.set(xlabel="training images/s on this machine (synthetic data)", ylabel="top-1 accuracy %",
               title="throughput vs accuracy")
        ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
        written.append(_save(fig, out / "throughput_vs_accuracy.png"))
    return written


def _accuracy(row: dict) -> tuple[float, bool] | None:
    """(top-1, measured?): a run's evaluation or best validation, else the published number."""
    for key, measured in (("eval_top1", True), ("best_top1", True), ("paper_top1", False)):
        if row.get(key) is not None:
            return row[key], measured
    return None


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` points (shorter at the start)."""
    sums = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (sums[idx] - sums[lo]) / (idx - lo)


def _steps_per_epoch(records: list[dict]) -> float:
    ends = [x["step"] for x in records if x["kind"] == "validation"]
    return ends[0] if ends else max((x["step"] for x in records), default=1) or 1


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
