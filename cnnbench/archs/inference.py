"""The inference model: a trained network rewritten for evaluation only, with batch norm folded
into the convolution before it.

In inference mode a batch-norm layer is a fixed per-channel multiply-add, ``y = x * a + b`` with
``a = scale / sqrt(var + eps)`` and ``b = bias - mean * a``; after a convolution ``x = w * i + c``
that is the convolution with kernel ``w * a`` (each output channel scaled) and bias ``c * a + b``.
:func:`fold_batch_norm` makes that convolution once (in float64 on the host, then in the weights'
dtype) and puts an :class:`Identity` where the batch norm was, so the compiled forward pass does one
pass over each activation less and XLA can fuse the bias with the ReLU after it. Training keeps the
model as it is (batch norm's statistics change while it trains); evaluation, prediction, feature
extraction, the visualisations (but the kernels shown by `visualize filters`) and `cnnbench bench
--mode infer` use this one.

Which convolution a batch norm follows is read from a shape-only trace of the model
(:func:`cnnbench.archs.trace.trace_model`: the layer whose output is the batch norm's input), and a
pair is folded only where nothing else takes the convolution's output. Layers named in ``keep``
(a layer whose output is being read, e.g. for features) are left as they are.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from cnnbench.archs import trace
from cnnbench.archs.layers import BatchNorm, Conv, Dense
from cnnbench.archs.net import Net, module_at, set_module


class Identity(nnx.Module):
    """Where a folded batch norm was: its input, unchanged."""

    def __call__(self, x, train: bool = False):
        trace.record(self, x, x, kind="identity")
        return x


def fold_batch_norm(model: nnx.Module, input_shape: tuple[int, ...] | None = None, *,
                    keep: tuple[str, ...] = ()) -> tuple[nnx.Module, list[tuple[str, str]]]:
    """A copy of ``model`` with every batch norm that directly follows a convolution folded into
    it; the model itself is not changed. Only for inference: the copy has no batch statistics left
    to train. Returns the copy and the (convolution, batch norm) pairs folded, by layer name.
    ``input_shape`` (HWC): what the trace feeds it (default: what a :class:`Net` was
    built for)."""
    if input_shape is None:
        input_shape = (model.input_size, model.input_size, model.in_channels)
    if getattr(model, "model_parallel", 1) > 1 or any(
            getattr(m, "partition", None) is not None for _, m in nnx.iter_modules(model)):
        raise ValueError("fold batch norm before splitting the model over devices (parallel.plan)")
    model = nnx.clone(model)
    records = {r.name: r for r in trace.trace_model(model, input_shape)}
    pairs = []
    for name, record in records.items():
        conv = records.get(record.source)  # the layer whose output this one takes
        if (record.kind != "batchnorm" or conv is None or conv.kind != "conv" or conv.uses != 1
                or {name, conv.name} & set(keep)):
            continue
        conv_layer, bn_layer = module_at(model, conv.name), module_at(model, name)
        if isinstance(conv_layer, Conv) and isinstance(bn_layer, BatchNorm):  # (not LeNet's table layers)
            _fold(conv_layer, bn_layer)
            set_module(model, name, Identity())
            pairs.append((conv.name, name))
    return model, pairs


def _fold(conv: Conv, bn: BatchNorm) -> None:
    """``conv`` followed by ``bn`` (inference mode) as one convolution, computed in float64."""
    var, mean = np.asarray(bn.var[...], np.float64), np.asarray(bn.mean[...], np.float64)
    a = 1.0 / np.sqrt(var + bn.epsilon)
    if bn.scale is not None:
        a = a * np.asarray(bn.scale[...], np.float64)
    b = -mean * a
    if bn.bias is not None:
        b = b + np.asarray(bn.bias[...], np.float64)
    # New arrays, never ``[...] =``: that writes into a NumPy array in place, and a cloned model
    # shares its arrays with the original (a restored checkpoint's weights are NumPy arrays).
    kernel = conv.kernel[...]
    conv.kernel.set_value((np.asarray(kernel, np.float64) * a).astype(kernel.dtype))  # HWIO: O scales
    if conv.bias is not None:
        bias = conv.bias[...]
        conv.bias.set_value((np.asarray(bias, np.float64) * a + b).astype(bias.dtype))
    else:
        conv.bias = nnx.Param(np.asarray(b, kernel.dtype))
        conv.use_bias = True


def transpose_dense(model: nnx.Module) -> int:
    """Store every dense layer's kernel ``[out, in]`` (as PyTorch keeps it) instead of ``[in, out]``,
    in place; the layers then compute ``kernel @ x.T`` (:func:`cnnbench.kernels.products.dense_out_in`).
    Returns how many. Only for a model used whole on each device: split over a ``model`` axis
    (:func:`cnnbench.parallel.plan`), a layer's kernel is cut along its output axis, the last."""
    count = 0
    for _, module in nnx.iter_modules(model):
        if isinstance(module, Dense) and not module.transposed:
            if getattr(module.partition, "ways", 1) > 1:
                raise ValueError("transpose dense kernels of a model used whole on each device, "
                                 "not one split over devices")
            module.kernel.set_value(np.ascontiguousarray(np.asarray(module.kernel[...]).T))
            module.transposed = True
            count += 1
    return count


#: On a CPU, the images of each device's share of a batch that the inference program's
#: convolutional base takes at a time (:attr:`cnnbench.archs.net.Net.chunk`; None: the whole
#: batch; ``benchmarks/inference_pieces.py`` compares sizes)
CPU_CHUNK = 2


def inference_model(model: nnx.Module, input_shape: tuple[int, ...] | None = None, *, keep: tuple[str, ...] = (),
                    platform: str = "cpu", ways: int = 1,
                    devices: int = 1) -> tuple[nnx.Module, list[tuple[str, str]]]:
    """The program every inference command runs: a copy of ``model`` with batch norm folded
    (:func:`fold_batch_norm`, which says what ``input_shape`` and ``keep`` are) and, on a CPU, its
    dense kernels stored ``[out, in]`` (:func:`transpose_dense`), unless the copy will be split
    over ``ways`` > 1 devices. Returns the copy and the folded pairs.

    On a CPU (and not split over devices) the convolutional base also takes each device's images
    :data:`CPU_CHUNK` at a time (``devices``: how many devices a batch is split over; the same
    values): a whole batch's early feature maps (resnet18's 112x112x64 after the stem: 51 MB in
    bf16 at batch 32) do not stay in the caches, and the element-wise passes between the
    convolutions run at the speed of memory. Whole inference steps at batch 32 on two per-core
    devices (2-core Intel Xeon with AMX, in one process), pieces of 2 against the whole batch:
    bf16 resnet18 104 -> 86 ms, resnet50 403 -> 302, googlenet-bn 166 -> 116, vgg11 288 -> 248,
    alexnet-owt level; float32 googlenet-bn 364 -> 312, resnet50 1094 -> 1039, alexnet-owt 152 -> 139,
    resnet18 and vgg11 level (medians; pieces of 4 and 8 were no better; BENCHMARKS.md, issue 26).
    The visualisations' and feature extraction's taps run their layers as they are.

    Why the dense layout: XLA:CPU multiplies a small batch by a large kernel 2-3x faster as
    ``kernel @ x.T``. Whole inference steps at batch 32 (2-core Intel Xeon with AMX, one process,
    interleaved): alexnet-owt 1.28-1.38x (float32), 1.37x (bf16 products), vgg11 1.10-1.11x; the
    ResNets and GoogLeNet (one small classifier) level (BENCHMARKS.md, issue 26). Accelerators keep
    the layout they were trained in."""
    model, pairs = fold_batch_norm(model, input_shape, keep=keep)
    if platform == "cpu" and ways == 1:
        transpose_dense(model)
        if isinstance(model, Net):
            model.chunk = (CPU_CHUNK, devices) if CPU_CHUNK else None
    return model, pairs
