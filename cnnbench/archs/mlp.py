"""Fully connected baselines: a linear (softmax) classifier and multi-layer perceptrons."""

import functools

from cnnbench.archs.layers import Act, Dense, Flatten, Sequential
from cnnbench.archs.net import Net
from cnnbench.archs.registry import register


def mlp(*, num_classes, input_size, in_channels, rngs, hidden=(), activation="relu"):
    """``features`` flattens the image and applies the hidden layers; ``head`` is the last layer."""
    width = input_size * input_size * in_channels
    layers = [("flatten", Flatten())]
    for i, units in enumerate(hidden, start=1):
        layers += [(f"fc{i}", Dense(width, units, rngs=rngs)), (f"act{i}", Act(activation))]
        width = units
    head = Sequential(output=Dense(width, num_classes, rngs=rngs))
    return Net(Sequential(*layers), head, num_classes=num_classes, input_size=input_size,
               in_channels=in_channels)


_MLP = dict(family="MLP", input_size=32, num_classes=10)
register("linear", functools.partial(mlp, hidden=()), year=1958, **_MLP,
         paper='Rosenblatt, "The perceptron", Psychological Review 1958 (as a softmax classifier)',
         description="softmax regression on raw pixels (3072-10 on CIFAR-sized input)",
         options={})
register("mlp2", functools.partial(mlp, hidden=(100,)), year=1986, **_MLP,
         paper='Rumelhart, Hinton & Williams, "Learning representations by back-propagating '
               'errors", Nature 1986',
         description="two-layer net 3072-100-10", params=308_310,
         options={"hidden": (100,), "activation": "relu"})
register("mlp3", functools.partial(mlp, hidden=(100, 100)), year=1986, **_MLP,
         paper='Rumelhart, Hinton & Williams, "Learning representations by back-propagating '
               'errors", Nature 1986',
         description="three-layer net 3072-100-100-10",
         options={"hidden": (100, 100), "activation": "relu"})
