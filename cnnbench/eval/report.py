"""What a researcher reads after the headline numbers: per-class accuracy, the hardest classes,
the most confused pairs, calibration, and the AlexNet paper's Figure 4 (sample images with their
five most probable labels). As a JSON-ready dict, as Markdown, and as a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnbench.output import plural
from cnnbench.eval import metrics
from cnnbench.eval.evaluate import Predictions


def analyse(p: Predictions, class_names: list[str], *, hardest: int = 10, pairs: int = 10) -> dict:
    classes = metrics.per_class(p.probs, p.labels, len(class_names))
    for c in classes:
        c["name"] = class_names[c["class"]]
    matrix = metrics.confusion(p.probs, p.labels, len(class_names))
    confused = metrics.confused_pairs(matrix, pairs)
    for pair in confused:
        pair["true_name"], pair["predicted_name"] = class_names[pair["true"]], class_names[pair["predicted"]]
    return {"per_class": classes, "hardest": metrics.hardest(classes, hardest), "confused": confused,
            "calibration": metrics.calibration(p.probs, p.labels)}


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def markdown(result: dict, analysis: dict, *, figure: str | None = None, matrix: list[str] = ()) -> str:
    lines = [f"# Evaluation: {', '.join(m['model'] for m in result['models'])}", "",
             f"{result['dataset']} `{result['split']}`, {plural(result['num_examples'], 'image')}, "
             f"{result['protocol']}." + (f" {plural(result['skipped_images'], 'image')} could not be decoded "
                                         f"and were skipped." if result["skipped_images"] else ""), "",
             "| model | top-1 % | top-5 % | top-1 error % | top-5 error % |", "| --- | --- | --- | --- | --- |"]
    rows = list(result["models"])
    if result["ensemble"]:
        rows.append({**{k: result[k] for k in ("top1", "top5", "top1_error", "top5_error")},
                     "model": f"ensemble of {len(result['models'])} (softmax averaged)"})
    for r in rows + result["paper"]:
        label = r["model"] + (f" ({r['protocol']}; {r['source']})" if "source" in r else "")
        lines.append(f"| {label} | {_pct(r['top1'])} | {_pct(r['top5'])} | {_pct(r['top1_error'])} | "
                     f"{_pct(r['top5_error'])} |")
    lines += ["", "## Hardest classes (lowest top-1)", "", "| class | images | top-1 % | top-5 % |",
              "| --- | --- | --- | --- |"]
    lines += [f"| {c['name']} | {c['examples']} | {_pct(c['top1'])} | {_pct(c['top5'])} |"
              for c in analysis["hardest"]]
    lines += ["", "## Most confused pairs (top-1 prediction)", "",
              "| true class | predicted as | images | share of the class % |", "| --- | --- | --- | --- |"]
    lines += [f"| {c['true_name']} | {c['predicted_name']} | {c['count']} | {_pct(c['share'])} |"
              for c in analysis["confused"]] or ["| (no mistakes) | | | |"]
    cal = analysis["calibration"]
    lines += ["", "## Calibration", "",
              f"Mean top-1 confidence {_pct(cal['mean_confidence'])}% vs. top-1 accuracy {_pct(cal['accuracy'])}%; "
              f"expected calibration error (10 bins) {_pct(cal['ece'])}%.", "",
              "| confidence | images | mean confidence % | accuracy % |", "| --- | --- | --- | --- |"]
    lines += [f"| {b['low']:.1f}–{b['high']:.1f} | {b['examples']} | {_pct(b['confidence'])} | {_pct(b['accuracy'])} |"
              for b in cal["bins"]]
    if figure:
        lines += ["", "## Sample predictions", "", f"![sample images with their five most probable labels]({figure})"]
    if matrix:
        lines += ["", "## Confusion matrix", "", f"Counts per true (row) and predicted (column) class: [{matrix[0]}]({matrix[0]})."]
        lines += [f"![confusion matrix, each row normalised]({name})" for name in matrix[1:]]
    lines += ["", "<details><summary>Per-class accuracy</summary>", "", "| class | images | top-1 % | top-5 % |",
              "| --- | --- | --- | --- |"]
    lines += [f"| {c['name']} | {c['examples']} | {_pct(c['top1'])} | {_pct(c['top5'])} |"
              for c in analysis["per_class"]]
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def sample_figure(p: Predictions, class_names: list[str], out: Path, *, count: int = 8, title: str = "") -> Path:
    """Krizhevsky et al. Figure 4: each image with its five most probable labels as bars; the
    true label's bar is red, and when it is not among the five it is added as a sixth, below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = min(count, len(p.samples))
    cols = min(4, count)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows * 2, cols, figsize=(3.2 * cols, 4.4 * rows),
                             gridspec_kw={"height_ratios": [3, 2] * rows}, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    top = metrics.top_k(p.probs[:count], 5)
    for i in range(count):
        image_ax, bar_ax = axes[2 * (i // cols), i % cols], axes[2 * (i // cols) + 1, i % cols]
        image = p.samples[i].astype(np.float32)
        if image.max() > 1.0 or image.min() < 0.0:
            image = (image - image.min()) / max(float(image.max() - image.min()), 1e-6)
        image_ax.imshow(image[..., 0] if image.shape[-1] == 1 else image,
                        cmap="gray" if image.shape[-1] == 1 else None)
        true = int(p.labels[i])
        image_ax.set_title(class_names[true][:28], fontsize=9)
        shown = list(top[i]) + ([true] if true not in top[i] else [])
        values = [float(p.probs[i, c]) for c in shown]
        colours = ["tab:red" if c == true else "tab:blue" for c in shown]
        bar_ax.axis("on")
        y = np.arange(len(shown))[::-1]
        bar_ax.barh(y, values, color=colours)
        bar_ax.set_yticks(y, [class_names[c][:22] for c in shown], fontsize=8)
        bar_ax.set_xlim(0, 1)
        bar_ax.tick_params(axis="x", labelsize=7)
        for spine in ("top", "right"):
            bar_ax.spines[spine].set_visible(False)
    fig.suptitle(title or "five most probable labels (true label in red)", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


MATRIX_FIGURE_CLASSES = 100  # a confusion-matrix picture with more classes shows nothing legible


def write_confusion(p: Predictions, class_names: list[str], stem: Path, title: str) -> list[Path]:
    """The confusion matrix (rows: true class, columns: predicted) as ``<stem>-confusion.csv`` and,
    up to :data:`MATRIX_FIGURE_CLASSES` classes, as ``<stem>-confusion.png`` (rows normalised)."""
    import csv

    matrix = metrics.confusion(p.probs, p.labels, len(class_names))
    table = stem.with_name(stem.name + "-confusion.csv")
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *class_names])
        writer.writerows([name, *map(int, row)] for name, row in zip(class_names, matrix))
    written = [table]
    if len(class_names) <= MATRIX_FIGURE_CLASSES:
        from cnnbench.plotting import pyplot, save

        plt = pyplot()
        rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        side = min(4 + 0.25 * len(class_names), 24)
        fig, ax = plt.subplots(figsize=(side, side))
        shown = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        ticks = np.arange(len(class_names))
        labels = [n[:16] for n in class_names]
        ax.set_xticks(ticks, labels, rotation=90, fontsize=7)
        ax.set_yticks(ticks, labels, fontsize=7)
        ax.set(xlabel="predicted", ylabel="true", title=title)
        fig.colorbar(shown, ax=ax, fraction=0.046, label="share of the true class")
        written.append(save(fig, stem.with_name(stem.name + "-confusion.png")))
    return written


def write_report(result: dict, p: Predictions, class_names: list[str], path: Path) -> tuple[Path, Path]:
    """The Markdown report at ``path``, its figure beside it (``<name>-samples.png``) and the
    confusion matrix (``<name>-confusion.csv``, ``.png``)."""
    figure = sample_figure(p, class_names, path.with_name(path.stem + "-samples.png"),
                           title=f"{result['dataset']} {result['split']}: five most probable labels "
                                 f"(true label in red)")
    matrix = write_confusion(p, class_names, path.with_name(path.stem),
                             title=f"{result['dataset']} {result['split']}: confusion matrix")
    path.write_text(markdown(result, result["report"], figure=figure.name, matrix=[m.name for m in matrix]))
    return path, figure
