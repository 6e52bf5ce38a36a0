"""Matplotlib (Agg) helpers shared by the visualisations: images shown as they were before
normalisation, heat maps over images with colour bars, grids, saving."""

from __future__ import annotations

import numpy as np

from cnnbench.plotting import pyplot, save  # noqa: F401  (the figures' own pyplot and save)


def as_display(image: np.ndarray) -> np.ndarray:
    """HWC on the 0-255 scale -> what imshow takes: HxW for grey, HxWx3 in [0, 1] for colour."""
    view = np.clip(np.asarray(image, np.float32) / 255.0, 0.0, 1.0)
    return view[..., 0] if view.shape[-1] == 1 else view


def show_image(ax, image: np.ndarray, title: str | None = None) -> None:
    view = as_display(image)
    ax.imshow(view, cmap="gray" if view.ndim == 2 else None, vmin=0.0, vmax=1.0)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=8)


def rescale(a: np.ndarray) -> np.ndarray:
    """Linearly to [0, 1] (a constant array becomes zeros)."""
    a = np.asarray(a, np.float32)
    span = float(a.max() - a.min())
    return (a - a.min()) / span if span > 0 else np.zeros_like(a)


def overlay(fig, ax, image: np.ndarray, heat: np.ndarray, *, label: str, cmap: str = "jet",
            alpha: float = 0.5, vmin=None, vmax=None, title: str | None = None) -> None:
    """``heat`` (any resolution, stretched over the whole image) on top of ``image``, with a
    colour bar saying what the colours mean."""
    h, w = image.shape[:2]
    view = as_display(image)
    ax.imshow(view, cmap="gray" if view.ndim == 2 else None, vmin=0.0, vmax=1.0)
    shown = ax.imshow(heat, cmap=cmap, alpha=alpha, extent=(0, w, h, 0), vmin=vmin, vmax=vmax,
                      interpolation="bilinear")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=8)
    colorbar(fig, ax, shown, label)


def heat(fig, ax, values: np.ndarray, *, label: str, cmap: str = "viridis", title: str | None = None,
         extent=None, vmin=None, vmax=None) -> None:
    shown = ax.imshow(values, cmap=cmap, extent=extent, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=8)
    colorbar(fig, ax, shown, label)


def colorbar(fig, ax, mappable, label: str) -> None:
    bar = fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=6)


def grid(count: int, cols: int, *, cell: float = 1.4, extra_height: float = 0.6):
    """A figure of ``count`` axes (``cols`` per row), all axes off."""
    plt = pyplot()
    cols = max(1, min(cols, count))
    rows = max(1, -(-count // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols, cell * rows + extra_height), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, list(axes.flat)


def short(name: str, n: int = 18) -> str:
    return name if len(name) <= n else name[:n - 1] + "…"


def class_map(ax, labels: np.ndarray, names: list[str], *, title: str | None = None, most: int = 8) -> None:
    """A map of class indices in categorical colours, with a legend of its ``most`` commonest classes."""
    from matplotlib.patches import Patch

    plt = pyplot()
    values, counts = np.unique(labels, return_counts=True)
    order = values[np.argsort(-counts)]
    palette = plt.get_cmap("tab10" if len(order) <= 10 else "tab20")
    colours = {int(c): palette(i % palette.N) for i, c in enumerate(order)}
    rgb = np.array([[colours[int(v)] for v in row] for row in labels])
    ax.imshow(rgb, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=8)
    handles = [Patch(color=colours[int(c)], label=short(names[int(c)], 22)) for c in order[:most]]
    ax.legend(handles=handles, fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
