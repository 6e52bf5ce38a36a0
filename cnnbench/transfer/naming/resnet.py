"""ResNet: torchvision's ``layerS.B.convK`` / ``bnK`` / ``downsample.0|1`` for 18-152; Keras's
ResNet50 (v1) ``conv{stage}_block{n}_{k}_conv`` / ``_bn``, whose convolution biases fold into the
batch norm after them and whose batch-norm epsilon (1.001e-5) into the variance."""

from __future__ import annotations

import re

import numpy as np

from cnnbench.transfer.naming.base import keras, torchvision

#: Keras's BatchNormalization epsilon in its ResNets; cnnbench's (torchvision's) is 1e-5
KERAS_EPS = 1.001e-5


def _prefix(part: str, rest: list[str], model) -> str:
    names = list(rest)
    if "downsample" in names:
        i = names.index("downsample")
        names[i + 1] = {"conv": "0", "bn": "1"}[names[i + 1]]
    return ".".join(names)


torchvision("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", prefix=_prefix)


def _keras_name(path: str) -> tuple[str, int]:
    """Keras's layer and weight index: kernel, bias (convolutions, dense) and gamma, beta, moving
    mean, moving variance (batch norm); ``_0_`` is the projection shortcut."""
    *module, leaf = path.split("/")
    if module[0] == "head":
        return "predictions", {"kernel": 0, "bias": 1}[leaf]
    names = module[1:]
    if names[0] in ("conv1", "bn1"):
        layer = "conv1_conv" if names[0] == "conv1" else "conv1_bn"
    else:
        stage, block = int(names[0].removeprefix("layer")) + 1, int(names[1]) + 1
        if names[2] == "downsample":
            k, kind = 0, names[3]
        else:
            k, kind = int(names[2][-1]), names[2][:-1]
        layer = f"conv{stage}_block{block}_{k}_{'conv' if kind == 'conv' else 'bn'}"
    return layer, {"kernel": 0, "bias": 1, "scale": 0, "mean": 2, "var": 3}[leaf]


def _refuse(layers: dict) -> str | None:
    if any(re.fullmatch(r"conv2d(_\d+)?", k) for k in layers):
        return ("this is a Keras 3 .weights.h5 file, which names ResNet50's layers by class and "
                "graph order (conv2d_17 ...); use the keras.applications weight file "
                "(resnet50_weights_tf_dim_ordering_tf_kernels.h5) or save with the legacy HDF5 format")
    if "res2a_branch2a" in layers:
        return ("this is the 2016 Keras ResNet50 file (fchollet/deep-learning-models, layer names "
                "res2a_branch2a ...), whose batch-norm epsilon (1e-3) and first pooling's padding "
                "changed between Keras versions; it is not converted: use the keras.applications "
                "file of TensorFlow 2 / Keras 3 (layer names conv2_block1_1_conv ...)")
    return None


def _adjust(path: str, layer: str, w: np.ndarray, layers: dict, used: set) -> np.ndarray:
    if path.endswith("/mean"):
        conv_name = layer.removesuffix("_bn") + "_conv"
        conv = layers.get(conv_name, [])
        if len(conv) > 1:  # BN(conv(x) + b) with running mean m is BN(conv(x)) with m - b
            used.add(conv_name)
            return w.astype(np.float64) - conv[1]
    elif path.endswith("/var"):
        return w.astype(np.float64) + (KERAS_EPS - 1e-5)
    return w


keras("resnet50", name=_keras_name, first_conv="features/conv1/kernel", options={"stride_in_1x1": True},
      refuse=_refuse, adjust=_adjust)
