"""Published ImageNet weights as cnnbench run directories (`cnnbench weights import`).

Two sources:

- torchvision state dicts (``.pth`` pickles read with ``torch.load(..., weights_only=True)``, so a
  malicious pickle cannot run code, or ``.safetensors``) for ``alexnet-owt``, ``vgg11``-``vgg19``
  and their ``-bn`` variants, ``googlenet-bn`` and ``resnet18``-``resnet152``;
- the Keras applications' ``.h5`` weight files of VGG16, VGG19 and ResNet50, read with h5py (no
  Keras); ResNet50 becomes ``resnet50`` with ``stride_in_1x1`` (Keras's is ResNet v1).

What the conversion has to get right: convolution kernels go from PyTorch's OIHW to HWIO, dense
kernels from (out, in) to (in, out); the first dense layer after the convolutional base (``fc6``
of AlexNet and VGG) reads a flattened C,H,W map in PyTorch and an H,W,C map here, so its input
axis is permuted; batch norm's ``weight``/``bias``/``running_mean``/``running_var`` become
``scale``/``bias``/``mean``/``var`` (cnnbench's epsilons already equal torchvision's: 1e-5, and
1e-3 in GoogLeNet's ``BasicConv2d``). torchvision's published GoogLeNet weights expect
``transform_input=True``, which ``googlenet-bn`` reproduces as a model option. Keras's VGG
and ResNet50 expect BGR images minus the Caffe mean: the channel order is folded into the first
convolution (exact) and the mean subtraction recorded as the run's preprocessing
(``normalize(caffe)``).

PyTorch is needed only for ``.pth`` files and imported here lazily; TensorFlow is never imported.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
from pathlib import Path

import numpy as np

from cnnbench.errors import UsageError, setting

KERAS_UNSUPPORTED: dict[str, str] = {}
SOURCES = ("torchvision", "keras")
IMAGENET_SIZE = 224


@dataclasses.dataclass
class Converted:
    """Weights mapped onto a cnnbench architecture, ready for :func:`write_run` or :func:`build_model`."""

    arch: str
    arch_options: dict
    num_classes: int
    params: dict[str, np.ndarray]       # "features/conv1/kernel" -> array
    batch_stats: dict[str, np.ndarray]  # "features/bn1/mean" -> array
    eval_spec: str
    source: str
    ignored: list[str]                  # entries of the file that have no place in the model
    input_size: int = IMAGENET_SIZE
    abstract: object = dataclasses.field(default=None, repr=False)  # the shape-only model it was mapped on

    @property
    def num_params(self) -> int:
        return int(sum(v.size for v in self.params.values()))


# --------------------------------------------------------------------------- reading files

def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A torchvision state dict from ``.safetensors`` or a ``torch.save`` pickle, as float32 NumPy
    arrays. Pickles are read with ``weights_only=True``; anything but a plain mapping of names to
    tensors (a pickled model, an optimiser checkpoint) is refused."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"weight file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise UsageError("reading .safetensors needs the safetensors package: pip install safetensors") from None
        try:
            tensors = load_file(str(path))
        except Exception as e:  # noqa: BLE001  (the library's own errors vary by version)
            raise UsageError(f"{path} is not a readable safetensors file: {_first_line(e)}") from None
        return {k: _float32(v, k, path) for k, v in tensors.items()}
    try:
        import torch
    except ImportError:
        raise UsageError("reading a PyTorch .pth file needs PyTorch: pip install 'cnnbench[torch]' "
                         "(or give the weights as .safetensors)") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (UnpicklingError, RuntimeError, EOFError ...)
        if type(e).__name__ == "UnpicklingError":  # (torch's own message runs to a dozen lines)
            raise UsageError(f"{path} holds Python objects besides tensors (a pickled model or code), which "
                             f"could run code when loaded; refused. Save model.state_dict() instead, or "
                             f"convert to .safetensors") from None
        raise UsageError(f"{path} is not a readable PyTorch state dict ({_first_line(e)}); refused") from None
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        what = type(obj).__name__
        if isinstance(obj, dict):
            odd = next((k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))), None)
            what = "an empty dict" if not obj else f"a dict whose entry {odd!r} is not a tensor"
        raise UsageError(f"{path} is not a plain state dict (a mapping of parameter names to tensors) "
                         f"but {what}; refused")
    return {k: _float32(v.detach().cpu().float().numpy() if v.is_floating_point() else v.numpy(), k, path)
            for k, v in obj.items()}


def _float32(array, key: str, path: Path) -> np.ndarray:
    array = np.asarray(array)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise UsageError(f"{path}: tensor {key} has dtype {array.dtype}, not a number")
    return array if key.endswith("num_batches_tracked") else array.astype(np.float32)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def load_keras_h5(path: str | Path) -> dict[str, list[np.ndarray]]:
    """Layer name -> its weight arrays in Keras's order (kernel, bias), from a Keras applications
    weight file (the legacy HDF5 layout: ``layer_names`` / ``weight_names`` attributes, as
    ``keras.applications`` downloads them, also inside a full-model ``model_weights`` group) or a
    Keras 3 ``.weights.h5`` file (``layers/<name>/vars/<i>``)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"weight file {path} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise UsageError(f"{path} is not an HDF5 file: {_first_line(e)}") from None
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        layers: dict[str, list[np.ndarray]] = {}
        if "layer_names" in root.attrs:
            for name in root.attrs["layer_names"]:
                name = name.decode() if isinstance(name, bytes) else str(name)
                group = root[name]
                names = [w.decode() if isinstance(w, bytes) else str(w) for w in group.attrs.get("weight_names", [])]
                if names:
                    layers[name] = [np.asarray(group[w], np.float32) for w in names]
        elif "layers" in root:
            for name, group in root["layers"].items():
                variables = group.get("vars")
                if variables is not None and len(variables):
                    layers[name] = [np.asarray(variables[str(i)], np.float32) for i in range(len(variables))]
        else:
            raise UsageError(f"{path} is not a Keras weight file (no layer_names attribute, no layers group)")
    return layers


# --------------------------------------------------------------------------- the cnnbench side

def _abstract_model(arch: str, num_classes: int, input_size: int, options: dict):
    from cnnbench.archs.state import abstract_model

    return abstract_model(arch, num_classes=num_classes, input_size=input_size, in_channels=3, **options)


def _flat(state) -> dict[str, tuple]:
    """``"features/conv1/kernel" -> shape`` of an ``nnx.State`` (abstract or concrete)."""
    import jax

    from cnnbench.archs.state import path_key

    return {path_key(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}


def _template(model):
    from flax import nnx

    _, params, batch_stats, _ = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    return _flat(params), _flat(batch_stats)


# --------------------------------------------------------------------------- torchvision

def _dense_from_torch(w: np.ndarray, flat_map: tuple[int, int] | None) -> np.ndarray:
    """(out, in) -> (in, out); with ``flat_map=(S, C)`` the input axis is re-ordered from PyTorch's
    flattened C,S,S to cnnbench's S,S,C."""
    if flat_map is None:
        return w.T
    size, channels = flat_map
    out = w.shape[0]
    return w.reshape(out, channels, size, size).transpose(2, 3, 1, 0).reshape(size * size * channels, out)


def _torchvision_names(arch: str):
    from cnnbench.transfer.naming import TORCHVISION

    if arch not in TORCHVISION:
        from cnnbench.archs import get_arch

        get_arch(arch)  # an unknown name gets the registry's suggestions
        raise UsageError(f"no torchvision weights map onto {arch}; importable: {', '.join(TORCHVISION)}")
    return TORCHVISION[arch]


def convert_torchvision(arch: str, state_dict: dict[str, np.ndarray], *, input_size: int = IMAGENET_SIZE,
                        transform_input: bool | None = None) -> Converted:
    """Map a torchvision state dict onto cnnbench's ``arch``. The class count is read from the
    classifier; a tensor of another shape, a missing one, or one the architecture does not have
    (other than BN's ``num_batches_tracked`` and GoogLeNet's untrained ``aux1``/``aux2`` heads)
    is a :class:`UsageError` naming the first ones."""
    names = _torchvision_names(arch)
    sd = dict(state_dict)
    if sd and all(k.startswith("module.") for k in sd):  # saved from nn.DataParallel
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    head = names.head
    if head not in sd or sd[head].ndim != 2:
        found = ", ".join(list(sd)[:3]) + (" ..." if len(sd) > 3 else "")
        raise UsageError(f"this is not a torchvision {arch} state dict: it has no 2-D {head} "
                         f"(its tensors: {found})")
    num_classes = int(sd[head].shape[0])
    options = {}
    if names.transform_input:
        options["transform_input"] = True if transform_input is None else bool(transform_input)
    elif transform_input:
        raise UsageError(f"{setting('transform_input')} only applies to googlenet-bn")
    model = _abstract_model(arch, num_classes, input_size, options)
    params_t, stats_t = _template(model)
    flat_map = None
    if names.flatten:
        size = model.head.avgpool.size
        flat_map = (size, params_t[names.flatten][0] // (size * size))

    used, bad, missing = set(), [], []
    out: dict[str, dict[str, np.ndarray]] = {"params": {}, "batch_stats": {}}
    for kind, template in (("params", params_t), ("batch_stats", stats_t)):
        for path, shape in template.items():
            key = names.key(path, model)
            if key not in sd:
                missing.append(f"{key} (for {path}, {_shape(shape)})")
                continue
            used.add(key)
            w = sd[key]
            expected = _torch_shape_of(shape)
            if tuple(w.shape) != expected:
                bad.append(f"{key} {_shape(w.shape)} vs {_shape(expected)} for {path}")
                continue
            if path.endswith("/kernel") and w.ndim == 4:
                w = w.transpose(2, 3, 1, 0)
            elif path.endswith("/kernel") and w.ndim == 2:
                w = _dense_from_torch(w, flat_map if path == names.flatten else None)
            out[kind][path] = np.ascontiguousarray(w, np.float32)
    ignorable = re.compile(names.ignore)
    unexpected = [k for k in sd if k not in used and not ignorable.fullmatch(k)]
    problems = []
    if bad:
        problems.append(f"{len(bad)} tensor(s) of another shape (file vs {arch}, in PyTorch's layout): "
                        + "; ".join(bad[:3]) + (" ..." if len(bad) > 3 else ""))
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing: " + "; ".join(missing[:3])
                        + (" ..." if len(missing) > 3 else ""))
    if unexpected:
        problems.append(f"{len(unexpected)} tensor(s) {arch} does not have: " + ", ".join(unexpected[:3])
                        + (" ..." if len(unexpected) > 3 else ""))
    if problems:
        raise UsageError(f"the weights do not fit {arch}: " + "; ".join(problems))
    from cnnbench.pipeline.recipes import expand

    ignored = sorted(k for k in sd if k not in used)
    return Converted(arch, options, num_classes, out["params"], out["batch_stats"],
                     expand("center", size=input_size, norm="imagenet"), "torchvision", ignored,
                     input_size, model)


def _shape(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _torch_shape_of(shape: tuple) -> tuple:
    """A cnnbench shape written in PyTorch's layout (HWIO -> OIHW, (in, out) -> (out, in))."""
    if len(shape) == 4:
        h, w, i, o = shape
        return (o, i, h, w)
    if len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)


# --------------------------------------------------------------------------- Keras

def convert_keras(arch: str, layers: dict[str, list[np.ndarray]]) -> Converted:
    """Map Keras applications weights onto cnnbench, at 224x224.

    VGG16/VGG19: Keras's VGG flattens 7x7x512 H,W,C-first like cnnbench, so no permutation; at
    224 cnnbench's adaptive 7x7 pooling is the identity. ResNet50: Keras's is ResNet v1 (the
    stride on each stage's first 1x1 convolution), so it becomes ``resnet50`` with the
    ``stride_in_1x1`` option; its convolution biases are folded into the batch norm that follows
    (``mean - bias``, exact) and its batch-norm epsilon 1.001e-5 into the variance (``var +
    1e-8``). For all three, the first convolution's input channels are reversed so the model takes
    RGB, and the run's preprocessing subtracts the Caffe mean without scaling, as Keras's
    ``preprocess_input`` does (after which it flips RGB to BGR)."""
    from cnnbench.transfer.naming import KERAS

    if arch in KERAS_UNSUPPORTED:
        raise UsageError(f"cannot import Keras {arch}: {KERAS_UNSUPPORTED[arch]}")
    if arch not in KERAS:
        from cnnbench.archs import get_arch

        get_arch(arch)
        raise UsageError(f"no Keras applications weights map onto {arch}; importable: {', '.join(KERAS)}")
    names = KERAS[arch]
    refused = names.refuse(layers)
    if refused:
        raise UsageError(refused)
    layers = names.rename(layers)
    if "predictions" not in layers:
        raise UsageError(f"the weights have no classifier (layer 'predictions'): an include_top=False "
                         f"(notop) file cannot make a classifier; use the file with the top layers "
                         f"(layers found: {', '.join(list(layers)[:4])} ...)")
    num_classes = int(layers["predictions"][-1].shape[0])
    options = dict(names.options)
    model = _abstract_model(arch, num_classes, IMAGENET_SIZE, options)
    params_t, stats_t = _template(model)
    used, bad, missing = set(), [], []
    out: dict[str, dict[str, np.ndarray]] = {"params": {}, "batch_stats": {}}
    for kind, template in (("params", params_t), ("batch_stats", stats_t)):
        for path, shape in template.items():
            layer, index = names.name(path)
            if layer not in layers or index >= len(layers[layer]):
                missing.append(f"{layer}[{index}] (for {path}, {_shape(shape)})")
                continue
            used.add(layer)
            w = layers[layer][index]
            if tuple(w.shape) != shape:
                bad.append(f"{layer}[{index}] {_shape(w.shape)} vs {path} {_shape(shape)}")
                continue
            if path == names.first_conv:
                w = w[:, :, ::-1, :]  # BGR -> RGB
            elif names.adjust is not None:
                w = names.adjust(path, layer, w, layers, used)
            out[kind][path] = np.ascontiguousarray(w, np.float32)
    unexpected = [layer for layer in layers if layer not in used]
    problems = []
    if bad:
        problems.append(f"{len(bad)} tensor(s) of another shape (file vs {arch}): " + "; ".join(bad[:3]))
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing: " + "; ".join(missing[:3]))
    if unexpected:
        problems.append(f"layer(s) {arch} does not have: " + ", ".join(unexpected[:3]))
    if problems:
        raise UsageError(f"the weights do not fit {arch}: " + "; ".join(problems))
    from cnnbench.pipeline.recipes import expand

    return Converted(arch, options, num_classes, out["params"], out["batch_stats"],
                     expand("center", size=IMAGENET_SIZE, norm="caffe"), "keras", [], IMAGENET_SIZE, model)


# --------------------------------------------------------------------------- models and run directories

def _states(converted: Converted, input_size: int | None = None):
    """(graphdef, params, batch_stats, rest) of the architecture with the converted values, without
    drawing a random initialisation (the model is built abstractly)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from cnnbench.archs.state import concrete_rest, path_key

    input_size = input_size or converted.input_size
    model = converted.abstract if converted.abstract is not None and input_size == converted.input_size \
        else _abstract_model(converted.arch, converted.num_classes, input_size, converted.arch_options)
    graphdef, params, batch_stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)

    def fill(values):
        return lambda path, x: jnp.asarray(values[path_key(path)])

    params = jax.tree_util.tree_map_with_path(fill(converted.params), params)
    batch_stats = jax.tree_util.tree_map_with_path(fill(converted.batch_stats), batch_stats)
    return graphdef, params, batch_stats, concrete_rest(rest)


def build_model(converted: Converted, *, input_size: int | None = None):
    """The converted network as a cnnbench model in evaluation mode."""
    from flax import nnx

    model = nnx.merge(*_states(converted, input_size))
    model.eval()
    return model


def write_run(converted: Converted, out: str | Path, *, source_file: str | Path | None = None) -> dict:
    """Write ``out`` as a run directory (``config.json``, ``dataset.json``, a step-0 checkpoint in
    ``checkpoints/best`` and ``checkpoints/latest``) that `eval`, `predict`, `compare` and
    fine-tuning read like a trained run. A 1000-class classifier gets the ILSVRC-2012 classes
    (sorted synsets, torchvision's and Keras's order) and their names; another class count gets
    numbered classes."""
    from cnnbench.runs.checkpoint import Checkpoints
    from cnnbench.runs.config import TrainConfig, write_config
    from cnnbench.runs.layout import write_dataset

    input_size = converted.input_size
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} already exists and is not an empty directory; choose another {setting('out')}")
    from cnnbench.pipeline.recipes import expand
    from cnnbench.pipeline.sources import imagenet_class_names

    if converted.num_classes == 1000:
        table = imagenet_class_names()
        ids = sorted(table)
        names = [table[i].split(",")[0] for i in ids]
        dataset = "imagenet2012"
    else:
        ids = names = [str(i) for i in range(converted.num_classes)]
        dataset = f"imported-{converted.num_classes}-classes"
    _, params, batch_stats, _ = _states(converted, input_size)
    # the published weights' training crops, with the normalisation they expect (the recipe's own
    # normalize step replaced: Keras's VGG wants the Caffe mean, unscaled)
    train_spec = expand("inception", size=input_size).rsplit("|normalize(", 1)[0] + \
        "|" + converted.eval_spec.rsplit("|", 1)[1]
    out.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(arch=converted.arch, arch_options=converted.arch_options, dataset=dataset,
                      input_size=input_size, in_channels=3, train_ops=train_spec, eval_ops=converted.eval_spec,
                      epochs=0, run_dir=str(out))
    write_config(out, cfg)
    source = types.SimpleNamespace(name=dataset, class_ids=ids, class_names=names, image_shape=None)
    write_dataset(out, source, train_spec, converted.eval_spec)
    imported = {"source": converted.source, "arch": converted.arch, "arch_options": converted.arch_options,
                "num_classes": converted.num_classes, "tensors": len(converted.params) + len(converted.batch_stats),
                "params": converted.num_params, "ignored": converted.ignored}
    if source_file is not None:
        source_file = Path(source_file)
        imported["file"] = str(source_file.absolute())
        with open(source_file, "rb") as f:
            imported["sha256"] = hashlib.file_digest(f, "sha256").hexdigest()
    checkpoints = Checkpoints(out, keep=1)
    try:
        checkpoints.save(0, {"params": params, "batch_stats": batch_stats}, {"imported": imported}, best=True)
        checkpoints.wait()
    finally:
        checkpoints.close()
    (out / "imported.json").write_text(json.dumps(imported, indent=1))
    return {"run_dir": str(out), "dataset": dataset, "eval_spec": converted.eval_spec, **imported,
            "ignored_summary": describe_ignored(converted.ignored)}


def describe_ignored(ignored: list[str]) -> str:
    """``aux1.*, aux2.* (20 tensors), num_batches_tracked (57)``: what the conversion left out."""
    groups: dict[str, int] = {}
    for key in ignored:
        group = "num_batches_tracked" if key.endswith("num_batches_tracked") else \
            key.split(".")[0] + ".*" if key.startswith(("aux1.", "aux2.")) else key
        groups[group] = groups.get(group, 0) + 1
    return ", ".join(f"{g} ({n})" if n > 1 else g for g, n in sorted(groups.items()))


def import_weights(source: str, arch: str, path: str | Path, out: str | Path, *,
                   transform_input: bool | None = None, eval_spec: str | None = None) -> dict:
    """`cnnbench weights import SOURCE ARCH FILE --out DIR`: read, convert, write; returns a summary.
    ``eval_spec`` replaces the source's usual evaluation preprocessing (torchvision's V2 weights
    were evaluated at resize 232)."""
    path = Path(path)
    if source == "torchvision":
        _torchvision_names(arch)
        converted = convert_torchvision(arch, load_state_dict(path), transform_input=transform_input)
    elif source == "keras":
        if transform_input:
            raise UsageError(f"{setting('transform_input')} only applies to torchvision's googlenet-bn")
        if arch in KERAS_UNSUPPORTED:
            raise UsageError(f"cannot import Keras {arch}: {KERAS_UNSUPPORTED[arch]}")
        converted = convert_keras(arch, load_keras_h5(path))
    else:
        raise UsageError(f"unknown weight source {source!r}; choose one of {', '.join(SOURCES)}")
    if eval_spec:
        converted.eval_spec = eval_spec
    return write_run(converted, out, source_file=path)
