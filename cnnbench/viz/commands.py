"""`cnnbench visualize ...`: each function computes one visualisation of a run, draws it and writes
PNG files into ``out``; it returns what it wrote, one line each, for the command to print."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import numpy as np

from cnnbench.output import plural
from cnnbench.errors import UsageError, setting
from cnnbench.progress import SILENT, Progress
from cnnbench.viz import features as feat
from cnnbench.viz import figures as fg
from cnnbench.viz import maps
from cnnbench.viz.inputs import Subject, dataset_batches, load_image

@dataclasses.dataclass
class Written:
    path: Path
    note: str
    data: dict = dataclasses.field(default_factory=dict)   # the numbers behind it (for --format json)

    def as_dict(self) -> dict:
        return {"path": str(self.path), "note": self.note, **self.data}


def _stage(progress: Progress, description: str, total: int) -> Callable[[int], None]:
    progress.start(description, total)
    return progress.advance


def _name(subject: Subject, c: int) -> str:
    return subject.class_names[c]


def _image(subject: Subject, path: str, spec: str | None = None):
    """(display image, shift, model input (1, H, W, C)) of an image file."""
    image, shift = load_image(subject, path, spec)
    x = image[None].astype(np.float32) if subject.finish is None else subject.finish(image[None], shift[None])
    return image, shift, np.asarray(x, np.float32)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _predicted(subject: Subject, x: np.ndarray, wanted: str | None) -> tuple[int, np.ndarray]:
    probs = _softmax(maps.logits(subject.taps, x))[0]
    return subject.class_index(wanted, int(np.argmax(probs))), probs


def _label(subject: Subject, c: int, probs: np.ndarray) -> str:
    return f"{_name(subject, c)} (p={probs[c]:.3g})"


# --------------------------------------------------------------------------- filters

def filters(subject: Subject, out: Path, *, layer: str | None = None, limit: int = 96,
            progress: Progress = SILENT) -> list[Written]:
    taps = subject.taps
    layer = taps.resolve(layer) if layer else feat.default_filter_layer(taps)
    f = feat.filters(taps, layer)
    layer = f.layer
    k = f.kernels
    size = "x".join(map(str, k.shape[:3]))
    path = out / f"filters-{layer}.png"
    if k.shape[2] in (1, 3):
        tiles = feat.kernel_images(k)[:limit]
        fig, axes = fg.grid(len(tiles), 12 if len(tiles) > 48 else 8, cell=0.9 if k.shape[0] <= 11 else 1.2)
        for i, (ax, tile) in enumerate(zip(axes, tiles)):
            ax.imshow(tile[..., 0] if tile.shape[-1] == 1 else tile, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            if f.dense and len(tiles) <= len(subject.class_names):
                ax.set_title(fg.short(_name(subject, i), 12), fontsize=6)
        what = "class templates" if f.dense else "kernels"
        title = (f"{subject.title}: {layer}, {len(tiles)} of {k.shape[-1]} {what} {size}, "
                 f"each scaled to its own range")
    else:
        # Deeper layers: one grey tile per (output, input) channel pair, each output's row scaled
        # to its own symmetric range (mid-grey = 0).
        outs, ins = min(k.shape[-1], 16), min(k.shape[2], 16)
        fig, axes = fg.grid(outs * ins, ins, cell=0.55, extra_height=0.8)
        for o in range(outs):
            row = k[..., o]
            scale = float(np.abs(row).max()) or 1.0
            for i in range(ins):
                axes[o * ins + i].imshow(row[..., i], cmap="gray", vmin=-scale, vmax=scale,
                                         interpolation="nearest")
        title = (f"{subject.title}: {layer} kernels {size}, outputs (rows) {outs} of {k.shape[-1]} x "
                 f"inputs (columns) {ins} of {k.shape[2]}; grey = 0, each row its own scale")
    return [Written(fg.save(fig, path, title), f"{layer}: {k.shape[-1]} filters {size}")]


# --------------------------------------------------------------------------- activations

def activations(subject: Subject, image_path: str, out: Path, *, layers: list[str] | None = None,
                count: int = 8, progress: Progress = SILENT) -> list[Written]:
    taps = subject.taps
    names = taps.resolve_all(layers) if layers else feat.default_activation_layers(taps)
    subject = subject.reading(names)
    image, shift, x = _image(subject, image_path)
    acts = feat.activations(subject, image[None], shift[None], names)
    plt = fg.pyplot()
    fig, axes = plt.subplots(len(names), count + 1, figsize=(1.3 * (count + 1) + 1.2, 1.5 * len(names) + 0.6),
                             squeeze=False, layout="constrained")
    notes = []
    for r, name in enumerate(names):
        a = acts[name][0]
        row = axes[r]
        for ax in row:
            ax.axis("off")
        if r == 0:
            fg.show_image(row[0], image, "input")
        maps_ = a[..., :count] if a.ndim == 3 else a[None, None, :count]
        shape = "x".join(map(str, a.shape))
        row[0].text(-0.12, 0.5, f"{fg.short(name, 24)}\n{shape}, {maps_.shape[-1]} of {a.shape[-1]}",
                    transform=row[0].transAxes, rotation=90, va="center", ha="right", fontsize=7)
        low, high = float(maps_.min()), float(maps_.max())
        shown = None
        for i in range(maps_.shape[-1]):
            shown = row[i + 1].imshow(maps_[..., i], cmap="viridis", vmin=low, vmax=high, interpolation="nearest")
            row[i + 1].set_title(f"channel {i}", fontsize=6)
        if shown is not None:
            bar = fig.colorbar(shown, ax=list(row[1:]), fraction=0.02, pad=0.01)
            bar.set_label("activation", fontsize=7)
            bar.ax.tick_params(labelsize=6)
        notes.append(f"{name} {shape}")
    path = out / f"activations-{Path(image_path).stem}.png"
    title = f"{subject.title}: feature maps of {Path(image_path).name} (first {count} channels per layer)"
    return [Written(fg.save(fig, path, title), "; ".join(notes))]


# --------------------------------------------------------------------------- top patches

def top_patches(subject: Subject, out: Path, *, dataset: str | None, split: str | None, limit: int,
                layer: str | None, channels: list[int] | None, top: int = 9, data_dir: str | None = None,
                progress: Progress = SILENT) -> list[Written]:
    taps = subject.taps
    layer = taps.resolve(layer) if layer else maps.default_gradcam_layer(taps)
    subject = subject.reading([layer])
    width = taps.by_name[layer].shape[-1]
    channels = list(channels) if channels else list(range(min(8, width)))
    batches, source, split = dataset_batches(subject, dataset, split=split, limit=limit, data_dir=data_dir)
    total = min(limit, source.num_examples(split))
    best, seen = feat.top_patches(subject, batches, layer, channels, top=top,
                                  advance=_stage(progress, f"top patches of {layer}", total))
    g = taps.by_name[layer].geometry
    plt = fg.pyplot()
    fig, axes = plt.subplots(len(channels), top, figsize=(1.1 * top, 1.25 * len(channels) + 0.6), squeeze=False)
    for r, (c, patches) in enumerate(zip(channels, best)):
        for i, ax in enumerate(axes[r]):
            ax.axis("off")
            if i < len(patches):
                p = patches[i]
                fg.show_image(ax, p.pixels)
                ax.set_title(f"{fg.short(source.class_names[p.label], 10)} ({p.value:.2g})", fontsize=5)
        axes[r][0].text(-0.15, 0.5, f"ch {c}", transform=axes[r][0].transAxes, rotation=90, va="center",
                        ha="right", fontsize=7)
    path = out / f"top-patches-{layer}.png"
    title = (f"{subject.title}: the {top} {source.name} {split} patches (of {plural(seen, 'image')}) that excite "
             f"{layer} channels most; receptive field {g.receptive_field}px")
    return [Written(fg.save(fig, path, title), f"{layer}, channels {', '.join(map(str, channels))}, {plural(seen, 'image')}",
                    {"layer": layer, "images": seen,
                     "channels": {str(c): [p.value for p in ps] for c, ps in zip(channels, best)}})]


# --------------------------------------------------------------------------- maps over one image

def occlusion(subject: Subject, image_path: str, out: Path, *, patch: int = 32, stride: int = 8,
              wanted: str | None = None, progress: Progress = SILENT) -> list[Written]:
    subject = subject.reading()
    image, shift, x = _image(subject, image_path)
    h, w = image.shape[:2]
    positions = (-(-h // stride)) * (-(-w // stride))
    started = time.perf_counter()
    result = maps.occlusion(subject, image, shift, patch=patch, stride=stride,
                            advance=_stage(progress, f"occlusion ({positions} positions)", positions))
    seconds = time.perf_counter() - started
    c = subject.class_index(wanted, int(np.argmax(result.clean)))
    p = result.probs[..., c]
    plt = fg.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    fg.show_image(axes[0], image, f"{Path(image_path).name}: {_label(subject, c, result.clean)}")
    fg.heat(fig, axes[1], p, label=f"p({fg.short(_name(subject, c), 20)})", cmap="jet", vmin=0.0,
            vmax=max(float(p.max()), float(result.clean[c])), extent=(0, w, h, 0),
            title=f"p({_name(subject, c)}) with a {patch}x{patch} grey square centred there")
    fg.class_map(axes[2], result.probs.argmax(-1), subject.class_names, title="most probable class there")
    path = out / f"occlusion-{Path(image_path).stem}.png"
    title = f"{subject.title}: occlusion sensitivity, stride {stride} ({positions} positions, {seconds:.1f} s)"
    return [Written(fg.save(fig, path, title),
                    f"{_name(subject, c)}: p={result.clean[c]:.3f} unoccluded, {p.min():.3f}..{p.max():.3f} occluded; "
                    f"{positions} positions in {seconds:.1f} s",
                    {"class": _name(subject, c), "clean": float(result.clean[c]), "min": float(p.min()),
                     "max": float(p.max()), "positions": positions, "seconds": seconds})]


def saliency(subject: Subject, image_path: str, out: Path, *, wanted: str | None = None,
             progress: Progress = SILENT) -> list[Written]:
    subject = subject.reading()
    image, _, x = _image(subject, image_path)
    c, probs = _predicted(subject, x, wanted)
    s = maps.saliency_map(maps.saliency(subject.taps, x, [c]))[0]
    plt = fg.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    fg.show_image(axes[0], image, f"{Path(image_path).name}: {_label(subject, c, probs)}")
    fg.heat(fig, axes[1], s, label="max over channels of |d score / d pixel|", cmap="hot",
            title=f"saliency of {_name(subject, c)}")
    fg.overlay(fig, axes[2], image, fg.rescale(s), label="saliency (scaled to [0, 1])", cmap="hot",
               title="over the image")
    path = out / f"saliency-{Path(image_path).stem}.png"
    return [Written(fg.save(fig, path, f"{subject.title}: image-specific class saliency (Simonyan et al. 2014)"),
                    f"{_name(subject, c)}: gradient of its logit, max |.| {s.max():.3g}")]


def cam(subject: Subject, image_path: str, out: Path, *, wanted: str | None = None, classes: int = 3,
        progress: Progress = SILENT) -> list[Written]:
    subject = subject.reading([maps.cam_layers(subject.taps)[0]])
    image, _, x = _image(subject, image_path)
    maps_, logits = maps.cam(subject.taps, x)
    probs = _softmax(logits)[0]
    first = subject.class_index(wanted, int(np.argmax(probs)))
    shown = [first] + [int(k) for k in np.argsort(-probs) if k != first][:classes - 1]
    low, high = float(maps_[0][..., shown].min()), float(maps_[0][..., shown].max())
    plt = fg.pyplot()
    fig, axes = plt.subplots(1, len(shown) + 1, figsize=(3.7 * (len(shown) + 1), 3.6))
    fg.show_image(axes[0], image, Path(image_path).name)
    for ax, k in zip(axes[1:], shown):
        fg.overlay(fig, ax, image, maps_[0][..., k], label="class activation (logit - bias)", vmin=low,
                   vmax=high, title=_label(subject, k, probs))
    source = maps.cam_layers(subject.taps)[0]
    path = out / f"cam-{Path(image_path).stem}.png"
    h, w = maps_.shape[1:3]
    return [Written(fg.save(fig, path, f"{subject.title}: class activation maps of {source} ({h}x{w}), Zhou et al. 2016"),
                    f"{_name(subject, first)}: CAM of {source} {h}x{w}")]


def gradcam(subject: Subject, image_path: str, out: Path, *, layer: str | None = None,
            wanted: str | None = None, progress: Progress = SILENT) -> list[Written]:
    taps = subject.taps
    layer = taps.resolve(layer) if layer else maps.default_gradcam_layer(taps)
    subject = subject.reading([layer])
    image, _, x = _image(subject, image_path)
    c, probs = _predicted(subject, x, wanted)
    m, _ = maps.gradcam(subject.taps, x, [c], layer)
    plt = fg.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    fg.show_image(axes[0], image, f"{Path(image_path).name}: {_label(subject, c, probs)}")
    fg.heat(fig, axes[1], m[0], label="Grad-CAM", cmap="jet", title=f"{layer} ({m.shape[1]}x{m.shape[2]})")
    fg.overlay(fig, axes[2], image, m[0], label="Grad-CAM", title=f"for {_name(subject, c)}")
    path = out / f"gradcam-{Path(image_path).stem}.png"
    return [Written(fg.save(fig, path, f"{subject.title}: Grad-CAM (Selvaraju et al. 2017)"),
                    f"{_name(subject, c)} at {layer} {m.shape[1]}x{m.shape[2]}")]


def heatmap(subject: Subject, image_path: str, out: Path, *, size: int | None = None,
            wanted: str | None = None, progress: Progress = SILENT) -> list[Written]:
    """The fully-convolutional view on the image with its shorter side at ``size`` (default twice
    the training size), checked against the plain model at the training size."""
    from cnnbench.pipeline.spec import split_spec, unparse

    subject = subject.reading()
    taps, run = subject.taps, subject.run
    size = size or 2 * subject.input_size
    if size < subject.input_size:
        raise UsageError(f"{setting('size')} must be at least the training size {subject.input_size}")
    # The check: at the training size the score map is one position, the model's logits.
    _, _, x = _image(subject, image_path)
    plain = maps.logits(taps, x)
    single = maps.fcn(taps, x)
    error = float(np.abs(single.reshape(plain.shape) - plain).max())
    scale = float(np.abs(plain).max()) or 1.0
    if single.shape[1:3] != (1, 1) or error > 1e-3 * scale + 1e-4:
        raise UsageError(f"the fully-convolutional head of {taps.arch} does not reproduce its logits "
                         f"at the training size (max difference {error:.3g})")
    _, tail = split_spec(run.eval_spec)
    spec = f"resize_shorter({size})" + "".join("|" + unparse(s) for s in tail)
    image, _, big = _image(subject, image_path, spec)
    scores = maps.fcn(taps, big)[0]
    probs = _softmax(scores)
    mean = probs.mean(axis=(0, 1))
    c = subject.class_index(wanted, int(np.argmax(mean)))
    h, w = image.shape[:2]
    plt = fg.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    fg.show_image(axes[0], image, f"{Path(image_path).name} at {h}x{w}")
    fg.heat(fig, axes[1], probs[..., c], label=f"p({fg.short(_name(subject, c), 20)})", cmap="jet",
            vmin=0.0, vmax=max(float(probs[..., c].max()), 1e-6), title=f"{_name(subject, c)}: {scores.shape[0]}x{scores.shape[1]} positions")
    fg.class_map(axes[2], probs.argmax(-1), subject.class_names, title="most probable class per position")
    path = out / f"heatmap-{Path(image_path).stem}.png"
    title = (f"{subject.title}: the classifier applied convolutionally ({subject.input_size}px windows); "
             f"at {subject.input_size}px it equals the logits (max diff {error:.1e})")
    return [Written(fg.save(fig, path, title),
                    f"{scores.shape[0]}x{scores.shape[1]} score map for {_name(subject, c)}; at the training "
                    f"size max |FCN - logits| = {error:.2e}",
                    {"rows": int(scores.shape[0]), "cols": int(scores.shape[1]), "class": _name(subject, c),
                     "training_size_max_difference": error})]


# --------------------------------------------------------------------------- feature space

def tsne(subject: Subject, out: Path, *, dataset: str | None, split: str | None, limit: int = 2000,
         layer: str | None = None, data_dir: str | None = None, seed: int = 0,
         progress: Progress = SILENT) -> list[Written]:
    taps = subject.taps
    layer = taps.resolve(layer) if layer else feat.default_feature_layer(taps)
    subject = subject.reading([layer])
    batches, source, split = dataset_batches(subject, dataset, split=split, limit=limit, data_dir=data_dir)
    total = min(limit, source.num_examples(split))
    features, labels = feat.collect(subject, batches, layer, advance=_stage(progress, f"features of {layer}", total))
    points = feat.tsne(features, seed=seed)
    plt = fg.pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 6))
    classes = np.unique(labels)
    palette = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    if len(classes) <= 20:
        for i, c in enumerate(classes):
            keep = labels == c
            ax.scatter(points[keep, 0], points[keep, 1], s=6, color=palette(i % palette.N),
                       label=fg.short(source.class_names[int(c)], 22))
        ax.legend(fontsize=6, markerscale=2, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    else:
        shown = ax.scatter(points[:, 0], points[:, 1], s=4, c=labels, cmap="nipy_spectral")
        fg.colorbar(fig, ax, shown, "class index")
    ax.set_xticks([])
    ax.set_yticks([])
    path = out / f"tsne-{layer}.png"
    title = (f"{subject.title}: t-SNE of {layer} features ({features.shape[1]}-d) of {len(features)} "
             f"{source.name} {split} images, coloured by class")
    return [Written(fg.save(fig, path, title), f"{plural(len(features), 'image')}, {layer} ({features.shape[1]}-d)")]


def neighbors(subject: Subject, image_path: str, out: Path, *, dataset: str | None, split: str | None,
              limit: int = 2000, k: int = 8, layer: str | None = None, data_dir: str | None = None,
              progress: Progress = SILENT) -> list[Written]:
    taps = subject.taps
    layer = taps.resolve(layer) if layer else feat.default_feature_layer(taps)
    subject = subject.reading([layer])
    image, shift, x = _image(subject, image_path)
    query = feat.feature_fn(subject, layer)(image[None], shift[None])[0]
    c, probs = _predicted(subject, x, None)
    run_split = split
    if run_split is None:
        run = subject.run
        run_split = run.cfg.source(dataset=dataset, data_dir=data_dir).train_split
    batches, source, split = dataset_batches(subject, dataset, split=run_split, limit=limit, data_dir=data_dir)
    total = min(limit, source.num_examples(split))
    best, seen = feat.neighbours(subject, query, batches, layer, k=k,
                                 advance=_stage(progress, f"searching {source.name} {split}", total))
    fig, axes = fg.grid(len(best) + 1, len(best) + 1, cell=1.6, extra_height=0.7)
    fg.show_image(axes[0], image, f"query: {fg.short(_label(subject, c, probs), 24)}")
    for ax, n in zip(axes[1:], best):
        fg.show_image(ax, n.image, f"{fg.short(source.class_names[n.label], 14)}\nd={n.distance:.3g}")
    path = out / f"neighbors-{Path(image_path).stem}.png"
    title = (f"{subject.title}: the {len(best)} {source.name} {split} images (of {seen}) nearest to "
             f"{Path(image_path).name} in {layer} space (Euclidean)")
    return [Written(fg.save(fig, path, title),
                    f"{len(best)} nearest of {seen} {split} images in {layer}: "
                    + ", ".join(source.class_names[n.label] for n in best))]


#: `cnnbench visualize NAME`: every figure, each ``(subject, [image_path,] out, *, ..., progress)``
FIGURES = {"filters": filters, "activations": activations, "top-patches": top_patches, "occlusion": occlusion,
           "saliency": saliency, "cam": cam, "gradcam": gradcam, "heatmap": heatmap, "tsne": tsne,
           "neighbors": neighbors}
