"""Matplotlib without a display (Agg) and one way to save a figure: shared by the visualisations,
the evaluation report's confusion matrix and the findings' figures."""

from __future__ import annotations

import textwrap
from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path, title: str | None = None) -> Path:
    plt = pyplot()
    if title:  # wrapped to the figure's width (about 15 characters of 9-point text per inch)
        fig.suptitle(textwrap.fill(title, max(40, int(fig.get_figwidth() * 15))), fontsize=9)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
