"""ZFNet: Zeiler & Fergus (2013), Figure 3: AlexNet with a 7x7 stride-2 first layer."""

from cnnbench.archs.layers import LRN, Act, Conv, Dense, Dropout, Flatten, MaxPool, Sequential, normal
from cnnbench.archs.net import Net, feature_shape, flat_size
from cnnbench.archs.registry import Reference, register


def zfnet(*, num_classes, input_size, in_channels, rngs, dropout=0.5, activation="relu"):
    """Layer sizes of Fig. 3 at 224: 110x110x96, 55, 26x26x256, 13, 13x13x384, 13x13x384,
    13x13x256, 6x6x256, 4096, 4096. Each of the first two layers is conv -> ReLU -> 3x3/2 max
    pooling -> contrast normalisation across feature maps (AlexNet's LRN parameters); weights
    N(0, 0.01), biases 0 (section 3)."""
    w = normal(0.01)

    def conv(cin, cout, k, stride, pad):
        return Conv(cin, cout, k, stride, pad, kernel_init=w, rngs=rngs)

    features = Sequential(
        conv1=conv(in_channels, 96, 7, 2, 1), relu1=Act(activation), pool1=MaxPool(3, 2, 1), norm1=LRN(),
        conv2=conv(96, 256, 5, 2, 0), relu2=Act(activation), pool2=MaxPool(3, 2, 1), norm2=LRN(),
        conv3=conv(256, 384, 3, 1, 1), relu3=Act(activation),
        conv4=conv(384, 384, 3, 1, 1), relu4=Act(activation),
        conv5=conv(384, 256, 3, 1, 1), relu5=Act(activation), pool5=MaxPool(3, 2),
    )
    head = Sequential(
        flatten=Flatten(),
        fc6=Dense(flat_size(feature_shape(features, input_size, in_channels)), 4096, kernel_init=w, rngs=rngs),
        relu6=Act(activation), drop6=Dropout(dropout, rngs=rngs),
        fc7=Dense(4096, 4096, kernel_init=w, rngs=rngs), relu7=Act(activation),
        drop7=Dropout(dropout, rngs=rngs),
        fc8=Dense(4096, num_classes, kernel_init=w, rngs=rngs),
    )
    return Net(features, head, num_classes=num_classes, input_size=input_size, in_channels=in_channels)


_SRC = "Zeiler & Fergus 2014, Table 2"
register(
    "zfnet", zfnet, family="ZFNet", year=2013, input_size=224,
    paper='Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014',
    description="AlexNet-like with a 7x7 stride-2 first layer (Fig. 3)",
    references=(
        Reference("ILSVRC-2012", 38.4, 16.5, "1 convnet", _SRC),
        Reference("ILSVRC-2012", 36.0, 14.7, "ensemble of 6 convnets", _SRC),
        Reference("ILSVRC-2012", None, 14.8, "ensemble of 6 convnets", _SRC, split="test"),
    ),
    options={"dropout": 0.5, "activation": "relu"},
)
