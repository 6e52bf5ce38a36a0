"""LeNet-5 (LeCun et al. 1998) in its modern form: full C3 connectivity, parameter-free pooling."""

from cnnbench.archs.layers import Act, AvgPool, Conv, Dense, Flatten, Sequential
from cnnbench.archs.net import Net, feature_shape, flat_size
from cnnbench.archs.registry import register


def lenet5(*, num_classes, input_size, in_channels, rngs, activation="tanh"):
    features = Sequential(
        c1=Conv(in_channels, 6, 5, rngs=rngs), act1=Act(activation), s2=AvgPool(2),
        c3=Conv(6, 16, 5, rngs=rngs), act3=Act(activation), s4=AvgPool(2),
        c5=Conv(16, 120, 5, rngs=rngs), act5=Act(activation),
    )
    head = Sequential(
        flatten=Flatten(),
        f6=Dense(flat_size(feature_shape(features, input_size, in_channels)), 84, rngs=rngs),
        act6=Act(activation),
        output=Dense(84, num_classes, rngs=rngs),
    )
    return Net(features, head, num_classes=num_classes, input_size=input_size, in_channels=in_channels)


register(
    "lenet5", lenet5, family="LeNet", year=1998, input_size=32, in_channels=1, num_classes=10,
    paper='LeCun, Bottou, Bengio & Haffner, "Gradient-based learning applied to document '
          'recognition", Proc. IEEE 1998',
    description="C1-S2-C3-S4-C5-F6-output on 32x32 grey images; 2x2 average subsampling",
    params=61_706, options={"activation": "tanh"},
)
