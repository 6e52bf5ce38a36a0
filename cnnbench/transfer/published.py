"""Published ImageNet weights by name (`cnnbench weights download NAME`, ``--pretrained NAME``).

A registry of the files torchvision and the Keras applications publish for the architectures
cnnbench has: where each file is, how to check it, what its licence says and what accuracy its
publisher measured. A file is downloaded once into the cache (``$CNNBENCH_CACHE_DIR/weights/
downloads``), resumed with an HTTP range request when a download was cut off, checked against the
registry's digest, then converted with the safe readers of :mod:`cnnbench.transfer.weights` into a
run directory (``$CNNBENCH_CACHE_DIR/weights/runs/NAME``) that `eval`, `predict`, `finetune` and
`train --pretrained` read.

The digests are what the publishers give: torchvision names its files with the first 8 hex digits
of their SHA-256 (what ``torch.hub`` checks), Keras gives an MD5. The full SHA-256 of the file that
passed is recorded in the run directory (``published.json``). ``$CNNBENCH_WEIGHTS_MIRROR`` (or
``--mirror URL``) fetches the same file names from another server: a local mirror, a proxy, a
folder served on a machine without internet.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import os
import shutil
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from cnnbench.cache import cache_dir
from cnnbench.errors import CnnbenchError, UsageError, setting
from cnnbench.progress import SILENT, Progress

MIRROR_ENV = "CNNBENCH_WEIGHTS_MIRROR"
CHUNK = 1 << 20
TIMEOUT_S = 30

@dataclasses.dataclass(frozen=True)
class Published:
    """One published weight file and the cnnbench architecture it converts to."""

    name: str            # what the user types: resnet50, vgg16-keras
    source: str          # a reader of cnnbench.transfer.weights: "torchvision" or "keras"
    arch: str            # the cnnbench architecture it fills
    url: str
    digest: str          # "sha256:<hex prefix or all 64 digits>" or "md5:<32 hex digits>"
    licence: str
    top1: float | None   # the publisher's ImageNet validation accuracy (%), single centre crop
    top5: float | None
    size_mb: float       # the file's size as published (MB)
    eval_resize: int = 256  # shorter side before the 224 centre crop, as the publisher evaluated
    note: str = ""

    @property
    def filename(self) -> str:
        return urllib.parse.urlsplit(self.url).path.rsplit("/", 1)[-1]


_TORCH = "https://download.pytorch.org/models/"
_KERAS = "https://storage.googleapis.com/tensorflow/keras-applications/"
_TORCH_LICENCE = ("torchvision (BSD-3-Clause code); the weights come with no licence of their own and were "
                  "trained on ImageNet, whose terms allow non-commercial research: check them for your use")
_VGG_LICENCE = "CC BY 4.0 (ported by Keras from the weights VGG at Oxford released)"
_RESNET_LICENCE = "MIT (ported by Keras from the weights Kaiming He released)"

#: name -> entry; add one with :func:`register`.
PUBLISHED: dict[str, Published] = {}


def register(entry: Published) -> Published:
    from cnnbench.transfer.naming import KERAS, TORCHVISION

    known = {"torchvision": TORCHVISION, "keras": KERAS}
    if entry.arch not in known.get(entry.source, ()):
        raise ValueError(f"{entry.name}: no {entry.source} reader for {entry.arch}")
    algorithm, _, value = entry.digest.partition(":")
    if algorithm not in ("sha256", "md5") or len(value) < 8 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"{entry.name}: digest {entry.digest!r} is not sha256:HEX or md5:HEX")
    PUBLISHED[entry.name] = entry
    return entry


def _torchvision(name, arch, file, top1, top5, size_mb, *, eval_resize=256, note=""):
    digest = file.rsplit("-", 1)[1].split(".")[0]
    register(Published(name, "torchvision", arch, _TORCH + file, f"sha256:{digest}", _TORCH_LICENCE,
                       top1, top5, size_mb, eval_resize, note))


# torchvision 0.28's IMAGENET1K_V1 weights (acc@1, acc@5, _file_size from its model builders), and
# the V2 ResNets trained with its 2021 recipe, which it evaluates at resize 232.
_torchvision("alexnet-owt", "alexnet-owt", "alexnet-owt-7be5be79.pth", 56.522, 79.066, 233.087)
_torchvision("vgg11", "vgg11", "vgg11-8a719046.pth", 69.020, 88.628, 506.840)
_torchvision("vgg13", "vgg13", "vgg13-19584684.pth", 69.928, 89.246, 507.545)
_torchvision("vgg16", "vgg16", "vgg16-397923af.pth", 71.592, 90.382, 527.796)
_torchvision("vgg19", "vgg19", "vgg19-dcbb9e9d.pth", 72.376, 90.876, 548.051)
_torchvision("vgg11-bn", "vgg11-bn", "vgg11_bn-6002323d.pth", 70.370, 89.810, 506.881)
_torchvision("vgg13-bn", "vgg13-bn", "vgg13_bn-abd245e5.pth", 71.586, 90.374, 507.590)
_torchvision("vgg16-bn", "vgg16-bn", "vgg16_bn-6c64b313.pth", 73.360, 91.516, 527.866)
_torchvision("vgg19-bn", "vgg19-bn", "vgg19_bn-c79401a0.pth", 74.218, 91.842, 548.143)
_torchvision("googlenet-bn", "googlenet-bn", "googlenet-1378be20.pth", 69.778, 89.530, 49.731,
             note="with batch norm; transform_input")
_torchvision("resnet18", "resnet18", "resnet18-f37072fd.pth", 69.758, 89.078, 44.661)
_torchvision("resnet34", "resnet34", "resnet34-b627a593.pth", 73.314, 91.420, 83.275)
_torchvision("resnet50", "resnet50", "resnet50-0676ba61.pth", 76.130, 92.862, 97.781, note="ResNet v1.5")
_torchvision("resnet101", "resnet101", "resnet101-63fe2227.pth", 77.374, 93.546, 170.511, note="ResNet v1.5")
_torchvision("resnet152", "resnet152", "resnet152-394f9c45.pth", 78.312, 94.046, 230.434, note="ResNet v1.5")
_torchvision("resnet50-v2", "resnet50", "resnet50-11ad3fa6.pth", 80.858, 95.434, 97.790, eval_resize=232,
             note="torchvision's 2021 recipe")
_torchvision("resnet101-v2", "resnet101", "resnet101-cd907fc2.pth", 81.886, 95.780, 170.530, eval_resize=232,
             note="torchvision's 2021 recipe")
_torchvision("resnet152-v2", "resnet152", "resnet152-f82ba261.pth", 82.284, 96.002, 230.474, eval_resize=232,
             note="torchvision's 2021 recipe")
# The Keras applications' files (URLs and MD5s from keras 3's vgg16.py, vgg19.py and resnet.py;
# accuracies from the table on keras.io/api/applications).
register(Published("vgg16-keras", "keras", "vgg16", _KERAS + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels.h5",
                   "md5:64373286793e3c8b2b4e3219cbf3544b", _VGG_LICENCE, 71.3, 90.1, 528.0,
                   note="Caffe preprocessing"))
register(Published("vgg19-keras", "keras", "vgg19", _KERAS + "vgg19/vgg19_weights_tf_dim_ordering_tf_kernels.h5",
                   "md5:cbe5617147190e668d6c5d5026f83318", _VGG_LICENCE, 71.3, 90.0, 549.0,
                   note="Caffe preprocessing"))
register(Published("resnet50-keras", "keras", "resnet50",
                   _KERAS + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels.h5",
                   "md5:2cb95161c43110f7111970584f804107", _RESNET_LICENCE, 74.9, 92.1, 98.0,
                   note="ResNet v1, Caffe preprocessing"))


def get(name: str) -> Published:
    if name not in PUBLISHED:
        import difflib

        close = difflib.get_close_matches(name, PUBLISHED, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UsageError(f"no published weights named {name!r}; {hint}see `cnnbench weights download --list`")
    return PUBLISHED[name]


def weights_dir() -> Path:
    return cache_dir() / "weights"


def mirror_url(entry: Published, mirror: str | None = None) -> str:
    """The entry's URL, or its file name under ``mirror`` (``--mirror``, else ``$CNNBENCH_WEIGHTS_MIRROR``)."""
    mirror = mirror or os.environ.get(MIRROR_ENV, "").strip() or None
    return f"{mirror.rstrip('/')}/{entry.filename}" if mirror else entry.url


# --------------------------------------------------------------------------- downloading

def download(entry: Published, *, mirror: str | None = None, progress: Progress = SILENT,
             timeout: float = TIMEOUT_S, folder: Path | None = None) -> Path:
    """The entry's file in the cache, downloaded (or the rest of it, after a cut-off download) and
    checked. A file that fails its digest is deleted; one that stops short stays as ``.part`` for
    the next call to resume. Every failure is one :class:`CnnbenchError` line. ``progress``: a
    stage of bytes downloading, one checking."""
    folder = Path(folder) if folder else weights_dir() / "downloads"
    target = folder / entry.filename
    if target.is_file():
        verify(target, entry, progress)
        return target
    part = target.with_name(target.name + ".part")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CnnbenchError(f"cannot write the weights cache {folder}: {e.strerror}") from None
    url = mirror_url(entry, mirror)
    have = part.stat().st_size if part.is_file() else 0
    total = _fetch(url, part, have, progress, timeout)
    if have and total is not None and part.stat().st_size != total:  # (a server that restarted the file)
        raise CnnbenchError(f"the download of {entry.filename} from {url} ended at {part.stat().st_size:,} of "
                            f"{total:,} bytes; run the command again to resume")
    try:
        verify(part, entry, progress)
    except CnnbenchError:
        part.unlink(missing_ok=True)
        raise
    part.replace(target)
    return target


def _fetch(url: str, part: Path, have: int, progress: Progress | None, timeout: float) -> int | None:
    """Download ``url`` into ``part``, from byte ``have`` on when the server honours the range;
    returns the file's full size when the server said it."""
    host = urllib.parse.urlsplit(url).netloc or url
    headers = {"User-Agent": "cnnbench"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing after byte `have`: the part is whole
            return have
        raise CnnbenchError(f"{url} answered HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        reason = getattr(e.reason, "strerror", None) or str(e.reason)
        raise CnnbenchError(f"cannot reach {host} ({reason}): check the network, set {MIRROR_ENV} to a "
                            f"mirror, or fetch {url} yourself and run `cnnbench weights import`") from None
    except (TimeoutError, socket.timeout, ConnectionError, http.client.HTTPException) as e:
        raise CnnbenchError(f"cannot download {url}: {e or type(e).__name__}") from None
    progress.start(f"downloading {part.name.removesuffix('.part')}", None, unit="bytes")
    with response:
        length = response.headers.get("Content-Length")
        if response.status == 206:
            mode, done = "ab", have
            total = _range_total(response.headers.get("Content-Range"))
        else:  # the whole file (a server that ignores ranges, or a fresh start)
            mode, done = "wb", 0
            total = int(length) if length and length.isdigit() else None
        if total is None and length and length.isdigit():
            total = done + int(length)
        try:
            with open(part, mode) as out:
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except (http.client.IncompleteRead, TimeoutError, socket.timeout, ConnectionError) as e:
                        chunk = getattr(e, "partial", b"")
                        out.write(chunk)
                        done += len(chunk)
                        break
                    if not chunk:
                        break
                    out.write(chunk)
                    done += len(chunk)
                    progress.update(done, total=total)
        except OSError as e:
            raise CnnbenchError(f"cannot write {part}: {e.strerror}") from None
    if total is not None and done < total:
        raise CnnbenchError(f"the download of {part.name.removesuffix('.part')} from {url} stopped at "
                            f"{done:,} of {total:,} bytes; run the command again to resume")
    return total


def _range_total(content_range: str | None) -> int | None:
    """``bytes 100-999/1000`` -> 1000."""
    if content_range and "/" in content_range:
        size = content_range.rsplit("/", 1)[1].strip()
        return int(size) if size.isdigit() else None
    return None


def digests(path: Path, algorithm: str, progress: Progress = SILENT) -> tuple[str, str]:
    """(the ``algorithm`` digest, the SHA-256) of a file, read once."""
    wanted, sha256 = hashlib.new(algorithm), hashlib.sha256()
    total, done = path.stat().st_size, 0
    progress.start(f"checking {path.name.removesuffix('.part')}", total, unit="bytes")
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            wanted.update(chunk)
            sha256.update(chunk)
            done += len(chunk)
            progress.update(done)
    return wanted.hexdigest(), sha256.hexdigest()


def verify(path: Path, entry: Published, progress: Progress = SILENT) -> str:
    """Check ``path`` against the entry's digest; returns its full SHA-256."""
    algorithm, _, expected = entry.digest.partition(":")
    actual, sha256 = digests(path, algorithm, progress)
    if not actual.startswith(expected):
        raise CnnbenchError(f"{entry.filename} has {algorithm} {actual[:len(expected)]}..., not the published "
                            f"{expected}: the download was corrupted or the file changed upstream; deleted")
    return sha256


# --------------------------------------------------------------------------- run directories

def run_dir(name: str) -> Path:
    return weights_dir() / "runs" / name


def pretrained(name: str, *, out: str | Path | None = None, mirror: str | None = None,
               progress: Progress = SILENT, timeout: float = TIMEOUT_S) -> dict:
    """The run directory of the published weights ``name``: downloaded and converted on first use
    (into ``out``, default the cache's ``weights/runs/NAME``), reused afterwards. Returns a summary:
    ``run_dir``, ``name``, ``file``, ``sha256``, ``created`` (False when it was already there) ..."""
    from cnnbench.runs.config import from_run, write_config
    from cnnbench.transfer.weights import import_weights

    entry = get(name)
    target = Path(out) if out else run_dir(name)
    record = target / "published.json"
    if record.is_file():
        return {**json.loads(record.read_text()), "run_dir": str(target), "created": False}
    if out and target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(f"{target} already exists and is not an empty directory; choose another {setting('out')}")
    file = download(entry, mirror=mirror, progress=progress, timeout=timeout)
    progress.start(f"converting {entry.filename}")
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        result = import_weights(entry.source, entry.arch, file, staging,
                                eval_spec=_eval_spec(entry) if entry.eval_resize != 256 else None)
        summary = {"name": entry.name, "source": entry.source, "arch": entry.arch, "url": entry.url,
                   "file": str(file), "digest": entry.digest, "sha256": result["sha256"], "licence": entry.licence,
                   "published_top1": entry.top1, "published_top5": entry.top5, "params": result["params"],
                   "eval_spec": result["eval_spec"], "note": entry.note}
        (staging / "published.json").write_text(json.dumps(summary, indent=1))
        write_config(staging, from_run(staging), home=target)
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        staging.replace(target)
    except OSError as e:
        raise CnnbenchError(f"cannot write {target}: {e.strerror}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {**summary, "run_dir": str(target), "created": True}


def _eval_spec(entry: Published) -> str:
    from cnnbench.pipeline.recipes import expand

    return expand("center", size=224, norm="imagenet").replace("resize_shorter(256)",
                                                              f"resize_shorter({entry.eval_resize})")


def resolve(name: str, **kwargs) -> Path:
    """``--pretrained NAME`` on train/finetune/predict: its run directory, fetched when missing."""
    return Path(pretrained(name, **kwargs)["run_dir"])
