"""The figures of a reproduction: error curves on shared axes (He et al. Fig. 1 and 6, Krizhevsky
et al. Fig. 1) and bars with the seed spread beside the paper's numbers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cnnbench.reproduce.finding import Runs, steps_per_epoch
from cnnbench.reproduce.verdict import Stats
from cnnbench.plotting import pyplot, save


def _mean_curve(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, mean and std over seeds of curves logged at the same points (cut to the shortest)."""
    n = min(len(x) for x, _ in curves)
    ys = np.stack([y[:n] for _, y in curves])
    return curves[0][0][:n], ys.mean(0), ys.std(0)


def curves(runs: Runs, variants: list[str], path: Path, *, title: str, threshold: float | None = None) -> Path:
    """Training error (the logged windows, a tenth of an epoch each) and test error per epoch, one
    line per variant (mean over seeds, band: +-1 std), on shared axes."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True, sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = {v.name: v.title for v in runs.finding.variants}
    for i, name in enumerate(variants):
        colour, seeds = colours[i % len(colours)], runs.records(name)
        train, test = [], []
        for records in seeds:
            per_epoch = steps_per_epoch(records)
            t = [r for r in records if r["kind"] == "train"]
            v = [r for r in records if r["kind"] == "validation"]
            train.append((np.array([r["step"] / per_epoch for r in t]), np.array([100 * (1 - r["top1"]) for r in t])))
            test.append((np.array([r["epoch"] for r in v], float), np.array([100 * (1 - r["top1"]) for r in v])))
        for ax, data, marker in ((left, train, None), (right, test, "o")):
            if not data or min(len(x) for x, _ in data) == 0:
                continue
            x, mean, std = _mean_curve(data)
            ax.plot(x, mean, color=colour, label=labels.get(name, name), linewidth=1.6, marker=marker, markersize=3)
            if len(data) > 1:
                ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.15, linewidth=0)
    if threshold is not None:
        left.axhline(threshold, color="black", linestyle="--", linewidth=0.8, label=f"{threshold:g}% error")
    seeds = f"{runs.seeds} seed{'s' if runs.seeds != 1 else ''}" + (" (band: +-1 std)" if runs.seeds > 1 else "")
    left.set(title="training error (mean over each tenth of an epoch)", xlabel="epoch", ylabel="top-1 error %")
    right.set(title=f"test error ({runs.dataset})", xlabel="epoch")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title} - {runs.budget_name} budget, {seeds}", fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def bars(measured: dict[str, Stats], path: Path, *, unit: str, title: str, dataset: str,
         paper: dict[str, float] | None = None, paper_title: str = "") -> Path:
    """Measured means with +-1 std and every seed's value as a dot; the paper's numbers beside them
    (another dataset and scale, so on their own axes)."""
    plt = pyplot()
    panels = 2 if paper else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2), squeeze=False)
    ax = axes[0][0]
    names = list(measured)
    x = np.arange(len(names))
    means = [measured[n].mean for n in names]
    stds = [0.0 if math.isnan(measured[n].std) else measured[n].std for n in names]
    finite = [m if math.isfinite(m) else np.nan for m in means]
    ax.bar(x, finite, yerr=stds, capsize=4, color="#8fb3d9", edgecolor="black", linewidth=0.6)
    for i, n in enumerate(names):
        values = [v for v in measured[n].values if math.isfinite(v)]
        ax.scatter(np.full(len(values), i) + np.linspace(-0.12, 0.12, len(values)), values, color="black",
                   s=12, zorder=3)
    ax.set_xticks(x, names, rotation=20 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center",
                  fontsize=8)
    ax.set(title=f"measured on {dataset} (bars: mean +-1 std; dots: seeds)", ylabel=unit)
    ax.grid(alpha=0.3, axis="y")
    if paper:
        right = axes[0][1]
        px = np.arange(len(paper))
        right.bar(px, list(paper.values()), color="#d9b38f", edgecolor="black", linewidth=0.6)
        right.set_xticks(px, list(paper), rotation=20 if len(paper) > 3 else 0,
                         ha="right" if len(paper) > 3 else "center", fontsize=8)
        right.set(title=paper_title or "the paper", ylabel=unit)
        right.grid(alpha=0.3, axis="y")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path)
