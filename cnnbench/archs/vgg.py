"""VGG: Simonyan & Zisserman (2015). Configurations A-E exactly as Table 1 of the paper writes them."""

import functools

from cnnbench.archs.layers import (LRN, Act, AdaptiveAvgPool, BatchNorm, Conv, Dense, Dropout,
                                   Flatten, MaxPool, Sequential, he_fan_out, normal)
from cnnbench.archs.net import Net
from cnnbench.archs.registry import Reference, register

# Table 1: "convK-N" is a KxK convolution (stride 1, 'same' padding) with N channels, each followed
# by ReLU; "LRN" is local response normalisation; "maxpool" is 2x2 with stride 2.
CONFIGS = {
    "A": ["conv3-64", "maxpool",
          "conv3-128", "maxpool",
          "conv3-256", "conv3-256", "maxpool",
          "conv3-512", "conv3-512", "maxpool",
          "conv3-512", "conv3-512", "maxpool"],
    "A-LRN": ["conv3-64", "LRN", "maxpool",
              "conv3-128", "maxpool",
              "conv3-256", "conv3-256", "maxpool",
              "conv3-512", "conv3-512", "maxpool",
              "conv3-512", "conv3-512", "maxpool"],
    "B": ["conv3-64", "conv3-64", "maxpool",
          "conv3-128", "conv3-128", "maxpool",
          "conv3-256", "conv3-256", "maxpool",
          "conv3-512", "conv3-512", "maxpool",
          "conv3-512", "conv3-512", "maxpool"],
    "C": ["conv3-64", "conv3-64", "maxpool",
          "conv3-128", "conv3-128", "maxpool",
          "conv3-256", "conv3-256", "conv1-256", "maxpool",
          "conv3-512", "conv3-512", "conv1-512", "maxpool",
          "conv3-512", "conv3-512", "conv1-512", "maxpool"],
    "D": ["conv3-64", "conv3-64", "maxpool",
          "conv3-128", "conv3-128", "maxpool",
          "conv3-256", "conv3-256", "conv3-256", "maxpool",
          "conv3-512", "conv3-512", "conv3-512", "maxpool",
          "conv3-512", "conv3-512", "conv3-512", "maxpool"],
    "E": ["conv3-64", "conv3-64", "maxpool",
          "conv3-128", "conv3-128", "maxpool",
          "conv3-256", "conv3-256", "conv3-256", "conv3-256", "maxpool",
          "conv3-512", "conv3-512", "conv3-512", "conv3-512", "maxpool",
          "conv3-512", "conv3-512", "conv3-512", "conv3-512", "maxpool"],
}


def vgg_features(config, in_channels, rngs, batch_norm=False):
    """The convolutional base; layers are named like the paper's blocks: conv3_2, pool3, ..."""
    layers, channels, block, index = [], in_channels, 1, 1
    for entry in CONFIGS[config]:
        if entry == "maxpool":
            layers.append((f"pool{block}", MaxPool(2, 2)))
            block, index = block + 1, 1
        elif entry == "LRN":
            # Krizhevsky's LRN parameters, as section 2.2 says.
            layers.append((f"norm{block}", LRN(5, 1e-4, 0.75, 2.0)))
        else:
            kernel, width = (int(v) for v in entry.removeprefix("conv").split("-"))
            name = f"{block}_{index}"
            layers.append((f"conv{name}", Conv(channels, width, kernel, 1, kernel // 2,
                                               kernel_init=he_fan_out, rngs=rngs)))
            if batch_norm:
                layers.append((f"bn{name}", BatchNorm(width, rngs=rngs)))
            layers.append((f"relu{name}", Act("relu")))
            channels, index = width, index + 1
    return Sequential(*layers), channels


def vgg(*, num_classes, input_size, in_channels, rngs, config="D", batch_norm=False, dropout=0.5):
    """torchvision's VGG: the paper's base, adaptive 7x7 pooling (so 32x32 CIFAR-style inputs work),
    then fc6/fc7 with ReLU and dropout 0.5 and fc8. Init as torchvision: He normal (fan-out) for
    convolutions, N(0, 0.01) for the dense layers."""
    features, channels = vgg_features(config, in_channels, rngs, batch_norm)
    w = normal(0.01)
    head = Sequential(
        avgpool=AdaptiveAvgPool(7), flatten=Flatten(),
        fc6=Dense(channels * 7 * 7, 4096, kernel_init=w, rngs=rngs), relu6=Act("relu"),
        drop6=Dropout(dropout, rngs=rngs),
        fc7=Dense(4096, 4096, kernel_init=w, rngs=rngs), relu7=Act("relu"),
        drop7=Dropout(dropout, rngs=rngs),
        fc8=Dense(4096, num_classes, kernel_init=w, rngs=rngs),
    )
    return Net(features, head, num_classes=num_classes, input_size=input_size, in_channels=in_channels)


_PAPER = ('Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image '
          'Recognition", ICLR 2015')
_T3, _T4 = "Simonyan & Zisserman 2015, Table 3", "Simonyan & Zisserman 2015, Table 4"
_SINGLE, _MULTI = "single scale, Q=S=256", "multi-scale Q={256,384,512}, S in [256,512]"


def _tv(top1, top5, weights):
    return Reference("ILSVRC-2012", round(100 - top1, 3), round(100 - top5, 3), "centre 224 crop",
                     f"torchvision {weights}.IMAGENET1K_V1")


def _register(name, config, description, batch_norm=False, **meta):
    builder = functools.partial(vgg, config=config, batch_norm=batch_norm)
    register(name, builder, family="VGG", year=2014, input_size=224, paper=_PAPER,
             description=f"configuration {config}: {description}", options={"dropout": 0.5}, **meta)


_register("vgg11", "A", "8 conv + 3 fc", params=132_863_336, gmacs=7.609, references=(
    Reference("ILSVRC-2012", 29.6, 10.4, _SINGLE, _T3), _tv(69.020, 88.628, "VGG11_Weights")))
_register("vgg11-lrn", "A-LRN", "A with LRN after the first layer", references=(
    Reference("ILSVRC-2012", 29.7, 10.5, _SINGLE, _T3),))
_register("vgg13", "B", "10 conv + 3 fc", params=133_047_848, gmacs=11.308, references=(
    Reference("ILSVRC-2012", 28.7, 9.9, _SINGLE, _T3), _tv(69.928, 89.246, "VGG13_Weights")))
_register("vgg16-c", "C", "13 conv (three of them 1x1) + 3 fc")
_register("vgg16", "D", "13 conv + 3 fc", params=138_357_544, gmacs=15.470, references=(
    Reference("ILSVRC-2012", 27.0, 8.8, _SINGLE, _T3), Reference("ILSVRC-2012", 24.8, 7.5, _MULTI, _T4),
    _tv(71.592, 90.382, "VGG16_Weights")))
_register("vgg19", "E", "16 conv + 3 fc", params=143_667_240, gmacs=19.632, references=(
    Reference("ILSVRC-2012", 27.3, 9.0, _SINGLE, _T3), Reference("ILSVRC-2012", 24.8, 7.5, _MULTI, _T4),
    _tv(72.376, 90.876, "VGG19_Weights")))
_register("vgg11-bn", "A", "with batch norm after every conv", batch_norm=True, params=132_868_840,
          gmacs=7.609, references=(_tv(70.370, 89.810, "VGG11_BN_Weights"),))
_register("vgg13-bn", "B", "with batch norm after every conv", batch_norm=True, params=133_053_736,
          gmacs=11.308)
_register("vgg16-bn", "D", "with batch norm after every conv", batch_norm=True, params=138_365_992,
          gmacs=15.470)
_register("vgg19-bn", "E", "with batch norm after every conv", batch_norm=True, params=143_678_248,
          gmacs=19.632)
