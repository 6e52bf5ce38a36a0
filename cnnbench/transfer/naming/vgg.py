"""AlexNet (torchvision's one-weird-trick form) and VGG: ``features.N`` / ``classifier.N`` in
torchvision (N counts every module of the ``nn.Sequential``, ReLUs and pools included);
``blockB_convK`` / ``fc1``, ``fc2``, ``predictions`` in Keras."""

from __future__ import annotations

import re

from cnnbench.transfer.naming.base import keras, torchvision

_VGG = ("vgg11", "vgg13", "vgg16", "vgg19")


def _sequential(classifier: dict[str, int]):
    def prefix(part: str, rest: list[str], model) -> str:
        if part == "features":
            return f"features.{model.features.names.index(rest[0])}"
        return f"classifier.{classifier[rest[0]]}"
    return prefix


torchvision("alexnet-owt", prefix=_sequential({"fc6": 1, "fc7": 4, "fc8": 6}), head="classifier.6.weight",
            flatten="head/fc6/kernel")
torchvision(*_VGG, *(f"{v}-bn" for v in _VGG), prefix=_sequential({"fc6": 0, "fc7": 3, "fc8": 6}),
            head="classifier.6.weight", flatten="head/fc6/kernel")


def _keras_name(path: str) -> tuple[str, int]:
    *module, leaf = path.split("/")
    name = module[-1]
    match = re.fullmatch(r"conv(\d)_(\d)", name)
    layer = f"block{match[1]}_conv{match[2]}" if match else {"fc6": "fc1", "fc7": "fc2", "fc8": "predictions"}[name]
    return layer, {"kernel": 0, "bias": 1}[leaf]


def _keras3_names(config: str):
    """A Keras 3 ``.weights.h5`` file names layers by class and creation order (``conv2d``,
    ``conv2d_1``, ..., ``dense``, ``dense_1``, ``dense_2``), not as ``keras.applications`` does
    (``block1_conv1`` ... ``predictions``): give them the applications' names, in creation order."""
    def rename(layers: dict) -> dict:
        if not any(re.fullmatch(r"conv2d(_\d+)?", k) for k in layers):
            return layers
        from cnnbench.archs.vgg import CONFIGS

        blocks, block, index = [], 1, 1
        for entry in CONFIGS[config]:
            if entry == "maxpool":
                block, index = block + 1, 1
            else:
                blocks.append(f"block{block}_conv{index}")
                index += 1

        def order(prefix):
            found = [k for k in layers if re.fullmatch(prefix + r"(_\d+)?", k)]
            return sorted(found, key=lambda k: int(k.rsplit("_", 1)[1]) if k != prefix else 0)

        convs, denses = order("conv2d"), order("dense")
        renamed = {name: layers[k] for name, k in zip(blocks, convs)}
        renamed.update({name: layers[k] for name, k in zip(("fc1", "fc2", "predictions"), denses)})
        renamed.update({k: layers[k] for k in layers if k not in convs[:len(blocks)] + denses[:3]})
        return renamed
    return rename


keras("vgg16", name=_keras_name, first_conv="features/conv1_1/kernel", rename=_keras3_names("D"))
keras("vgg19", name=_keras_name, first_conv="features/conv1_1/kernel", rename=_keras3_names("E"))
