"""Network in Network (Lin, Chen & Yan 2014): mlpconv blocks and global average pooling."""

import functools

from cnnbench.archs.layers import (Act, AvgPool, Conv, Dense, Dropout, Flatten, GlobalAvgPool,
                                   MaxPool, Sequential, he_fan_out)
from cnnbench.archs.net import Net, feature_shape, flat_size
from cnnbench.archs.registry import Reference, register


def mlpconv(i, cin, widths, kernel, stride, pad, rngs):
    """One mlpconv block: a KxK convolution and two 1x1 convolutions ("cccp" layers, named as in
    the authors' Caffe models), each followed by ReLU."""
    (w0, w1, w2), n = widths, 2 * i - 1
    conv = functools.partial(Conv, kernel_init=he_fan_out, rngs=rngs)
    return [(f"conv{i}", conv(cin, w0, kernel, stride, pad)), (f"relu{i}", Act("relu")),
            (f"cccp{n}", conv(w0, w1, 1)), (f"relu_cccp{n}", Act("relu")),
            (f"cccp{n + 1}", conv(w1, w2, 1)), (f"relu_cccp{n + 1}", Act("relu"))]


def _net(features, last_block, *, head, head_dropout, num_classes, input_size, in_channels, rngs):
    """The classifier is the last mlpconv block (one feature map per class) followed by global
    average pooling, or, for the paper's ablation (Table 2), by a fully connected layer."""
    if head == "gap":
        tail = [("gap", GlobalAvgPool())]
    elif head == "fc":
        maps = flat_size(feature_shape(Sequential(*features, *last_block), input_size, in_channels))
        tail = [("flatten", Flatten())]
        if head_dropout:
            tail.append(("drop_fc", Dropout(head_dropout, rngs=rngs)))
        tail.append(("fc", Dense(maps, num_classes, rngs=rngs)))
    else:
        from cnnbench.errors import UsageError

        raise UsageError(f"head must be 'gap' or 'fc', not {head!r}")
    return Net(Sequential(*features), Sequential(*last_block, *tail), num_classes=num_classes,
               input_size=input_size, in_channels=in_channels)


def nin(*, num_classes, input_size, in_channels, rngs, head="gap", head_dropout=0.0, dropout=0.5):
    """ImageNet NiN as in the lecture notes (Dive into Deep Learning's re-implementation)."""
    features = [
        *mlpconv(1, in_channels, (96, 96, 96), 11, 4, 0, rngs), ("pool1", MaxPool(3, 2)),
        *mlpconv(2, 96, (256, 256, 256), 5, 1, 2, rngs), ("pool2", MaxPool(3, 2)),
        *mlpconv(3, 256, (384, 384, 384), 3, 1, 1, rngs), ("pool3", MaxPool(3, 2)),
        ("drop3", Dropout(dropout, rngs=rngs)),
    ]
    last = mlpconv(4, 384, (num_classes,) * 3, 3, 1, 1, rngs)
    return _net(features, last, head=head, head_dropout=head_dropout, num_classes=num_classes,
                input_size=input_size, in_channels=in_channels, rngs=rngs)


def nin_cifar(*, num_classes, input_size, in_channels, rngs, head="gap", head_dropout=0.0, dropout=0.5):
    """The paper's CIFAR-10 model (the authors' Caffe definition): 192-160-96, 192-192-192,
    192-192-classes, 3x3/2 max then average pooling (ceil mode), dropout 0.5 after each."""
    features = [
        *mlpconv(1, in_channels, (192, 160, 96), 5, 1, 2, rngs),
        ("pool1", MaxPool(3, 2, ceil_mode=True)), ("drop1", Dropout(dropout, rngs=rngs)),
        *mlpconv(2, 96, (192, 192, 192), 5, 1, 2, rngs),
        ("pool2", AvgPool(3, 2, ceil_mode=True)), ("drop2", Dropout(dropout, rngs=rngs)),
    ]
    last = mlpconv(3, 192, (192, 192, num_classes), 3, 1, 1, rngs)
    return _net(features, last, head=head, head_dropout=head_dropout, num_classes=num_classes,
                input_size=input_size, in_channels=in_channels, rngs=rngs)


_PAPER = 'Lin, Chen & Yan, "Network In Network", ICLR 2014'
_T = "Lin et al. 2014, Tables 2 and 3"
_OPTIONS = {"head": "gap", "head_dropout": 0.0, "dropout": 0.5}
register("nin", nin, family="NiN", year=2013, input_size=224, paper=_PAPER,
         description="4 mlpconv blocks (11x11, 5x5, 3x3, 3x3) with global average pooling",
         options=_OPTIONS)
register("nin-cifar", nin_cifar, family="NiN", year=2013, input_size=32, num_classes=10, paper=_PAPER,
         description="the CIFAR-10 model: 3 mlpconv blocks, global average pooling",
         references=(
             Reference("CIFAR-10", 10.41, None, "GAP head, dropout", _T, split="test"),
             Reference("CIFAR-10", 8.81, None, "GAP head, dropout, augmentation", _T, split="test"),
             Reference("CIFAR-10", 11.59, None, "head=fc", _T, split="test"),
             Reference("CIFAR-10", 10.88, None, "head=fc, dropout before fc", _T, split="test"),
         ),
         options=_OPTIONS)
