"""Synthetic data for tests and benchmarks: random images, image folders, and a fake ILSVRC-2012
manual download directory that the real TFDS ``imagenet2012`` builder accepts."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

from cnnbench.errors import UsageError
from cnnbench.pipeline.source import Source
from cnnbench.pipeline.tfenv import tf, tfds


def synthetic_source(name: str) -> Source:
    """``synthetic[:HxWxC[:CLASSES[:N]]]``, default ``synthetic:64x64x3:10:512``: uint8 noise whose
    mean brightness encodes the class (so a model can learn it), generated on the fly from the
    example index; the ``test`` split uses other indices than ``train``."""
    parts = name.split(":")[1:]
    try:
        h, w, c = (int(v) for v in (parts[0] if parts else "64x64x3").split("x"))
        classes = int(parts[1]) if len(parts) > 1 else 10
        n = int(parts[2]) if len(parts) > 2 else 512
    except ValueError:
        raise UsageError(f"bad synthetic dataset {name!r}; use synthetic:HxWxC:CLASSES:N, "
                         f"e.g. synthetic:224x224x3:1000:256") from None
    offsets = {"train": 0, "test": n}

    def read(ranges, shuffle_files, seed):
        lib = tf()
        index = np.concatenate([np.arange(a, b) + offsets[s] for s, a, b in ranges]).astype(np.int64)
        ds = lib.data.Dataset.from_tensor_slices(index)
        if shuffle_files:
            ds = ds.shuffle(len(index), seed=seed, reshuffle_each_iteration=False)

        def make(i):
            label = i % classes
            noise = lib.random.stateless_uniform((h, w, c), seed=lib.stack([i, i]), maxval=96, dtype="int32")
            level = lib.cast(label * 160 // max(classes - 1, 1), "int32")
            return {"image": lib.cast(noise + level, "uint8"), "label": label}

        return ds.map(make, num_parallel_calls=lib.data.AUTOTUNE, deterministic=True)

    return Source(name, [str(k) for k in range(classes)], [f"class {k}" for k in range(classes)],
                  {"train": n, "test": n}, False, (h, w, c), read)


def random_jpeg(rng: np.random.Generator, size=(48, 64), mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    """A real encoded image with some structure (a gradient plus noise)."""
    from PIL import Image

    h, w = size
    grad = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
    pixels = np.clip(grad + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, fmt)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_fake_ilsvrc(manual_dir, *, synsets=("n01440764", "n01443537", "n02105855", "n01739381"),
                      train_per_class: int = 3, num_val: int = 8, size=(48, 64), seed: int = 0) -> Path:
    """Write ``ILSVRC2012_img_train.tar`` (one tar of JPEGs per synset, as ImageNet ships it) and
    ``ILSVRC2012_img_val.tar`` (``ILSVRC2012_val_00000001.JPEG`` ...; their labels are the first
    ``num_val`` lines of TFDS's validation label file). Includes the two oddities the real archive
    has: a CMYK JPEG (``n01739381_1309.JPEG``) and a PNG named ``.JPEG`` (``n02105855_2933.JPEG``)."""
    rng = np.random.default_rng(seed)
    out = Path(manual_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "ILSVRC2012_img_train.tar", "w") as train:
        for synset in synsets:
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for k in range(train_per_class):
                    _add(inner, f"{synset}_{k}.JPEG", random_jpeg(rng, size))
                if synset == "n01739381":
                    _add(inner, "n01739381_1309.JPEG", random_jpeg(rng, size, mode="CMYK"))
                if synset == "n02105855":
                    _add(inner, "n02105855_2933.JPEG", random_jpeg(rng, size, fmt="PNG"))
            _add(train, f"{synset}.tar", buf.getvalue())
    with tarfile.open(out / "ILSVRC2012_img_val.tar", "w") as val:
        for k in range(1, num_val + 1):
            _add(val, f"ILSVRC2012_val_{k:08d}.JPEG", random_jpeg(rng, size))
    return out


def validation_synsets(n: int) -> list[str]:
    """Ground truth of the first ``n`` validation images, from the file TFDS's builder uses."""
    path = tfds().core.tfds_path("datasets/imagenet2012/validation_labels.txt")
    return path.read_text().split()[:n]


def write_image_folder(root, *, splits=("train", "test"), classes=("cat", "dog"), per_class: int = 3,
                       size=(24, 24), seed: int = 0) -> Path:
    """``root/<split>/<class>/<k>.jpg`` with real JPEG files (PNG for every third image)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split in splits:
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                png = k % 3 == 2
                (folder / f"{k}.{'png' if png else 'jpg'}").write_bytes(
                    random_jpeg(rng, size, fmt="PNG" if png else "JPEG"))
    return root
