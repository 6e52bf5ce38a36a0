"""Datasets a user can name with ``--dataset``, resolved to one uniform :class:`Source`.

Every source yields examples ``{"image": <encoded bytes or uint8 HWC>, "label": int64}`` (plus
``"id"``, the file name, where the source has one) for a
TFDS-style split string (``train``, ``train[:90%]``, ``train[100:200]+test``), and knows its
class names and split sizes. Decoding and augmentation happen later, in one place
(:mod:`cnnbench.pipeline.preprocess`), so corrupt images are handled the same for every source.

Names: ``digits`` (offline default), ``imagenet2012`` (from the manual download), ``folder:PATH``,
``synthetic[:HxWxC[:CLASSES[:N]]]`` (tests and benchmarks), and any TFDS image-classification name.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import os
import sys
from pathlib import Path

from cnnbench.errors import CnnbenchError, UsageError, setting
from cnnbench.pipeline.source import Source, ranges_spec
from cnnbench.pipeline.synthetic import synthetic_source
from cnnbench.pipeline.tfenv import tf, tfds

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
ILSVRC_TARS = {"train": "ILSVRC2012_img_train.tar", "validation": "ILSVRC2012_img_val.tar"}
OWN_NAMES = ("digits", "imagenet2012", "folder:PATH", "synthetic")

# --------------------------------------------------------------------------- resolution

def resolve(name: str, *, data_dir: str | None = None, manual_dir: str | None = None,
            prepare: bool = True) -> Source:
    """Turn a ``--dataset`` value into a :class:`Source`, preparing the TFDS files if needed."""
    if name.startswith("folder:"):
        return folder_source(name.removeprefix("folder:"))
    if name == "synthetic" or name.startswith("synthetic:"):
        return synthetic_source(name)
    lib = tfds()
    if name == "digits":
        from cnnbench.pipeline.digits import builder_class

        builder = builder_class()(data_dir=data_dir)
    else:
        base = name.split("/")[0].split(":")[0]
        # (TFDS's community catalogue would query Google Cloud Storage and print an auth warning)
        known = lib.list_builders(with_community_datasets=False)
        if base not in known:
            close = difflib.get_close_matches(base, list(OWN_NAMES) + known, n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise UsageError(f"unknown dataset {name!r}; {hint}(digits, imagenet2012, folder:PATH, "
                             f"or any TFDS image-classification name)")
        builder = lib.builder(name, data_dir=data_dir)
    if prepare and not _is_prepared(builder):
        _prepare(builder, name, manual_dir)
    return tfds_source(builder, name)


def _is_prepared(builder) -> bool:
    return tf().io.gfile.exists(os.path.join(builder.data_dir, "dataset_info.json"))


def _prepare(builder, name: str, manual_dir: str | None) -> None:
    lib = tfds()
    config = None
    if name.startswith("imagenet2012"):
        root = Path(builder.data_dir).parents[1]  # <data_dir>/imagenet2012/<version>
        manual_dir = check_ilsvrc_manual_dir(manual_dir or str(root / "downloads" / "manual"))
        config = lib.download.DownloadConfig(manual_dir=manual_dir)
    try:
        # TFDS prints its progress on stdout; keep stdout for results (`--format json`).
        with contextlib.redirect_stdout(sys.stderr):
            builder.download_and_prepare(download_config=config)
    except Exception as e:  # network, disk, a malformed archive: one line, not a TF traceback
        raise CnnbenchError(f"could not prepare {name}: {type(e).__name__}: {str(e).splitlines()[0]}") from e


def check_ilsvrc_manual_dir(manual_dir: str) -> str:
    present = [f for f in ILSVRC_TARS.values() if os.path.isfile(os.path.join(manual_dir, f))]
    if not present:
        raise UsageError(f"imagenet2012 needs the ILSVRC-2012 archives in {manual_dir}: expected "
                         f"{' and '.join(ILSVRC_TARS.values())} (from image-net.org); "
                         f"point {setting('manual_dir')} at the folder that holds them")
    return manual_dir


@functools.cache
def imagenet_class_names() -> dict[str, str]:
    """Synset id -> human-readable name ('n01440764' -> 'tench'), the 1,000 ILSVRC-2012 classes."""
    table = Path(__file__).with_name("imagenet_classes.tsv").read_text().splitlines()
    return dict(line.split("\t", 1) for line in table)


def _keys(info) -> tuple[str, str]:
    """The dataset's own image and label feature names."""
    if info.supervised_keys and len(info.supervised_keys) == 2 and all(
            isinstance(k, str) for k in info.supervised_keys):
        return info.supervised_keys
    lib, features = tfds(), info.features
    images = [k for k, f in features.items() if isinstance(f, lib.features.Image)]
    labels = [k for k, f in features.items() if isinstance(f, lib.features.ClassLabel)]
    if not images or not labels:
        raise UsageError(f"{info.name} is not an image-classification dataset "
                         f"(features: {', '.join(features)})")
    return images[0], labels[0]


def tfds_source(builder, name: str, splits: dict[str, int] | None = None) -> Source:
    """A prepared TFDS builder as a :class:`Source` (``splits`` overrides the sizes, for tests)."""
    lib, info = tfds(), builder.info
    splits = splits or {str(k): v.num_examples for k, v in info.splits.items()}
    if not splits:
        raise UsageError(f"{name} is not prepared; run `cnnbench data prepare {name}` first")
    image_key, label_key = _keys(info)
    ids = list(info.features[label_key].names)
    names = ids
    if name.startswith("imagenet2012"):
        table = imagenet_class_names()
        names = [table.get(i, i).split(",")[0] for i in ids]
    shape = info.features[image_key].shape
    fixed = shape if shape and all(d is not None for d in shape) else None

    def read(ranges, shuffle_files, seed):
        ds = builder.as_dataset(
            split=ranges_spec(ranges), shuffle_files=shuffle_files,
            decoders={image_key: lib.decode.SkipDecoding()},
            read_config=lib.ReadConfig(shuffle_seed=seed, add_tfds_id=False))
        named = "file_name" in info.features  # ILSVRC: submissions are in file-name order

        def example(ex):
            out = {"image": ex[image_key], "label": tf().cast(ex[label_key], "int64")}
            if named:
                out["id"] = ex["file_name"]
            return out

        return ds.map(example)

    return Source(name, ids, names, splits, True, fixed, read)


def folder_source(root: str) -> Source:
    """``PATH/<split>/<class>/*.jpg|png``: class names are the sorted folder names of all splits."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise UsageError(f"folder dataset {root!r} does not exist")
    splits = sorted(p for p in path.iterdir() if p.is_dir())
    if not splits:
        raise UsageError(f"folder dataset {root!r} has no split folders; expected {root}/<split>/<class>/*.jpg")
    classes = sorted({c.name for s in splits for c in s.iterdir() if c.is_dir()})
    if not classes:
        raise UsageError(f"folder dataset {root!r} has no class folders; expected {root}/<split>/<class>/*.jpg")
    files: dict[str, list[tuple[str, int]]] = {}
    for split in splits:
        items = []
        for label, cls in enumerate(classes):
            folder = split / cls
            images = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) \
                if folder.is_dir() else []
            if folder.is_dir() and not images:
                raise UsageError(f"class folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)})")
            items += [(p, label) for p in images]
        files[split.name] = items

    def read(ranges, shuffle_files, seed):
        items = [item for split, start, stop in ranges for item in files[split][start:stop]]
        ds = tf().data.Dataset.from_tensor_slices(
            ([p for p, _ in items], [label for _, label in items]))
        if shuffle_files:
            ds = ds.shuffle(len(items), seed=seed, reshuffle_each_iteration=False)
        return ds.map(lambda p, label: {"image": tf().io.read_file(p), "label": tf().cast(label, "int64"), "id": p},
                      num_parallel_calls=tf().data.AUTOTUNE, deterministic=True)

    return Source(f"folder:{root}", classes, classes, {k: len(v) for k, v in files.items()}, True, None, read)
