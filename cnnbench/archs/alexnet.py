"""AlexNet: the 2012 paper's network (both towers on one device) and torchvision's single tower."""

from cnnbench.archs.layers import (LRN, Act, AdaptiveAvgPool, Conv, Dense, Dropout, Flatten,
                                   MaxPool, Sequential, init, normal)
from cnnbench.archs.net import Net, feature_shape, flat_size
from cnnbench.archs.registry import Reference, register
from cnnbench.errors import UsageError

INITS = ("paper", "he")
KRIZHEVSKY_2012 = ('Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep '
                   'Convolutional Neural Networks", NeurIPS 2012')


def alexnet(*, num_classes, input_size, in_channels, rngs, lrn=True, overlap_pool=True, groups=2,
            dropout=0.5, activation="relu", weight_init="paper"):
    """Krizhevsky et al. (2012), Figure 2 and section 3-5.

    ``groups=2`` reproduces the two-GPU connectivity: conv2, conv4 and conv5 only see the kernel
    maps of their own tower, conv3 and the dense layers see both, and each tower's response
    normalisation runs over its own maps (each GPU normalised what it held). On one device the
    towers are channel groups; with ``--model-parallel 2`` each tower runs on its own device
    (:mod:`cnnbench.parallel.partition`). Weights are
    N(0, 0.01); biases are 1 in conv2, conv4, conv5 and the hidden dense layers, 0 elsewhere.
    ``lrn`` and ``overlap_pool`` (3x3 windows, stride 2, vs. 2x2 stride 2) are the paper's
    ablations of sections 3.3 and 3.4. ``weight_init="he"`` (He et al. 2015's N(0, 2/fan-in),
    zero biases) lets the network start learning within a few hundred steps, where the paper's
    initialisation, whose biases of 1 drown the signal, needs many thousands (its 90 epochs).
    """
    if weight_init not in INITS:
        raise UsageError(f"weight_init must be one of {', '.join(INITS)}, not {weight_init!r}")
    w, one = (normal(0.01), init.ones) if weight_init == "paper" else \
        (init.variance_scaling(2.0, "fan_in", "normal"), init.zeros)

    def conv(cin, cout, k, stride=1, pad=0, g=1, bias_init=init.zeros):
        return Conv(cin, cout, k, stride, pad, groups=g, kernel_init=w, bias_init=bias_init, rngs=rngs)

    def pool():
        return MaxPool(3, 2) if overlap_pool else MaxPool(2, 2)

    def norm(i):
        return [(f"norm{i}", LRN(5, 1e-4, 0.75, 2.0, groups=groups))] if lrn else []

    features = Sequential(
        ("conv1", conv(in_channels, 96, 11, 4)), ("relu1", Act(activation)),
        *norm(1), ("pool1", pool()),
        ("conv2", conv(96, 256, 5, pad=2, g=groups, bias_init=one)), ("relu2", Act(activation)),
        *norm(2), ("pool2", pool()),
        ("conv3", conv(256, 384, 3, pad=1)), ("relu3", Act(activation)),
        ("conv4", conv(384, 384, 3, pad=1, g=groups, bias_init=one)), ("relu4", Act(activation)),
        ("conv5", conv(384, 256, 3, pad=1, g=groups, bias_init=one)), ("relu5", Act(activation)),
        ("pool5", pool()),
    )
    head = Sequential(
        flatten=Flatten(),
        fc6=Dense(flat_size(feature_shape(features, input_size, in_channels)), 4096, kernel_init=w,
                  bias_init=one, rngs=rngs),
        relu6=Act(activation), drop6=Dropout(dropout, rngs=rngs),
        fc7=Dense(4096, 4096, kernel_init=w, bias_init=one, rngs=rngs),
        relu7=Act(activation), drop7=Dropout(dropout, rngs=rngs),
        fc8=Dense(4096, num_classes, kernel_init=w, rngs=rngs),
    )
    return Net(features, head, num_classes=num_classes, input_size=input_size, in_channels=in_channels)


def alexnet_owt(*, num_classes, input_size, in_channels, rngs, dropout=0.5, activation="relu"):
    """torchvision's ``alexnet``: the single-tower variant of "One weird trick" (Krizhevsky 2014)."""
    features = Sequential(
        conv1=Conv(in_channels, 64, 11, 4, 2, rngs=rngs), relu1=Act(activation), pool1=MaxPool(3, 2),
        conv2=Conv(64, 192, 5, 1, 2, rngs=rngs), relu2=Act(activation), pool2=MaxPool(3, 2),
        conv3=Conv(192, 384, 3, 1, 1, rngs=rngs), relu3=Act(activation),
        conv4=Conv(384, 256, 3, 1, 1, rngs=rngs), relu4=Act(activation),
        conv5=Conv(256, 256, 3, 1, 1, rngs=rngs), relu5=Act(activation), pool5=MaxPool(3, 2),
    )
    head = Sequential(
        avgpool=AdaptiveAvgPool(6), flatten=Flatten(),
        drop6=Dropout(dropout, rngs=rngs), fc6=Dense(256 * 6 * 6, 4096, rngs=rngs), relu6=Act(activation),
        drop7=Dropout(dropout, rngs=rngs), fc7=Dense(4096, 4096, rngs=rngs), relu7=Act(activation),
        fc8=Dense(4096, num_classes, rngs=rngs),
    )
    return Net(features, head, num_classes=num_classes, input_size=input_size, in_channels=in_channels)


_IMAGENET = "ILSVRC-2012"
register(
    "alexnet", alexnet, family="AlexNet", year=2012, input_size=227, paper=KRIZHEVSKY_2012,
    description="96-256-384-384-256 with LRN, overlapping pooling and the two-tower groups",
    params=60_965_224,
    references=(
        Reference(_IMAGENET, 40.7, 18.2, "1 CNN, 10-crop", "Krizhevsky et al. 2012, Table 2"),
        Reference(_IMAGENET, 38.1, 16.4, "ensemble of 5 CNNs", "Krizhevsky et al. 2012, Table 2"),
        Reference(_IMAGENET, 36.7, 15.4, "ensemble of 7 CNNs (2 pre-trained on Fall 2011)",
                  "Krizhevsky et al. 2012, Table 2"),
        Reference(_IMAGENET, None, 15.3, "ensemble of 7 CNNs", "Krizhevsky et al. 2012, Table 2",
                  split="test"),
        Reference("ILSVRC-2010", 37.5, 17.0, "1 CNN", "Krizhevsky et al. 2012, Table 1", split="test"),
    ),
    options={"lrn": True, "overlap_pool": True, "groups": 2, "dropout": 0.5, "activation": "relu",
             "weight_init": "paper"},
)
register(
    "alexnet-owt", alexnet_owt, family="AlexNet", year=2014, input_size=224,
    paper='Krizhevsky, "One weird trick for parallelizing convolutional neural networks", '
          'arXiv 2014 (torchvision alexnet)',
    description="single tower 64-192-384-256-256, adaptive 6x6 average pooling",
    params=61_100_840, gmacs=0.714,
    references=(Reference(_IMAGENET, 43.478, 20.934, "centre 224 crop",
                          "torchvision AlexNet_Weights.IMAGENET1K_V1"),),
    options={"dropout": 0.5, "activation": "relu"},
)
