"""GoogLeNet (Szegedy et al. 2015): the paper's network and torchvision's batch-norm version."""

import functools

import jax.numpy as jnp
from flax import nnx

from cnnbench.archs import trace
from cnnbench.archs.layers import (LRN, Act, AdaptiveAvgPool, AvgPool, BatchNorm, Conv, Dense,
                                   Dropout, Flatten, GlobalAvgPool, MaxPool, Sequential, concat,
                                   init, normal)
from cnnbench.archs.net import Net, feature_shape, flat_size
from cnnbench.archs.registry import Reference, register

# Table 1 of the paper: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj
INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}
AUX_TAPS = ("inception4a", "inception4d")


def conv_relu(cin, cout, kernel, stride=1, pad=0, *, rngs):
    """The paper's unit: convolution + ReLU (Caffe's bvlc_googlenet init: Xavier, bias 0.2)."""
    return Sequential(conv=Conv(cin, cout, kernel, stride, pad, kernel_init=init.glorot_uniform(),
                                bias_init=init.constant(0.2), rngs=rngs), relu=Act("relu"))


def conv_bn_relu(cin, cout, kernel, stride=1, pad=0, *, rngs):
    """torchvision's ``BasicConv2d``: bias-free conv, batch norm (eps 1e-3), ReLU. torchvision draws
    weights with ``trunc_normal_(std=0.01, a=-2, b=2)``: bounds at 200 sigma, i.e. N(0, 0.01)."""
    return Sequential(conv=Conv(cin, cout, kernel, stride, pad, bias=False, kernel_init=normal(0.01),
                                rngs=rngs),
                      bn=BatchNorm(cout, eps=1e-3), relu=Act("relu"))


class Inception(nnx.Module):
    """Four parallel branches concatenated on channels. ``wide_kernel`` is 5 in the paper; torchvision
    uses 3 in that branch (a bug it keeps for weight compatibility), so ``googlenet-bn`` does too."""

    def __init__(self, cin, spec, unit, wide_kernel, *, rngs):
        n1, n3r, n3, n5r, n5, proj = spec
        self.branch1 = unit(cin, n1, 1, rngs=rngs)
        self.branch2 = Sequential(reduce=unit(cin, n3r, 1, rngs=rngs), conv=unit(n3r, n3, 3, 1, 1, rngs=rngs))
        self.branch3 = Sequential(reduce=unit(cin, n5r, 1, rngs=rngs),
                                  conv=unit(n5r, n5, wide_kernel, 1, wide_kernel // 2, rngs=rngs))
        self.branch4 = Sequential(pool=MaxPool(3, 1, 1, ceil_mode=True), proj=unit(cin, proj, 1, rngs=rngs))
        self.out_channels = n1 + n3 + n5 + proj

    def __call__(self, x, train: bool = False):
        return concat([b(x, train=train) for b in (self.branch1, self.branch2, self.branch3, self.branch4)])


class InputTransform(nnx.Module):
    """torchvision's ``GoogLeNet(transform_input=True)``, which its published weights were trained
    with: inputs normalised with the ImageNet mean and std are re-normalised per channel to
    ``(x - 0.5) / 0.5`` (pixels in [0, 1]), i.e. ``x * std / 0.5 + (mean - 0.5) / 0.5``, before the
    first convolution pads them. An affine map applied before zero padding cannot be folded into
    conv1's weights exactly (the border would differ), so it is a layer of its own."""

    MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __call__(self, x, train: bool = False):
        scale = jnp.asarray([s / 0.5 for s in self.STD], x.dtype)
        shift = jnp.asarray([(m - 0.5) / 0.5 for m in self.MEAN], x.dtype)
        y = x * scale + shift
        trace.record(self, x, y, kind="affine", params=0)
        return y


class GoogLeNet(Net):
    """A :class:`Net` with the paper's two auxiliary classifiers on inception4a and inception4d.

    ``model(x)`` never runs them; ``model.forward_with_aux(x)`` returns their logits too, for the
    training loss that weights them 0.3 (section 6).
    """

    def __init__(self, features, head, aux, **kw):
        super().__init__(features, head, **kw)
        self.aux = aux

    def forward_with_aux(self, x, train: bool = True):
        taps = dict(self.aux.named_layers()) if self.aux is not None else {}
        aux_logits = []
        for name, layer in self.features.named_layers():
            x = layer(x, train=train)
            if name in taps:
                aux_logits.append(taps[name](x, train=train))
        return self.head(x, train=train), tuple(aux_logits)


def _aux_head(cin, num_classes, map_size, unit, pool, rngs):
    """Auxiliary classifier: pool, 1x1 conv to 128, fc 1024 + ReLU, dropout 0.7, linear."""
    pooled = Sequential(pool=pool, conv=unit(cin, 128, 1, rngs=rngs))
    size = flat_size(feature_shape(pooled, map_size, cin))
    return Sequential(*pooled.named_layers(), ("flatten", Flatten()),
                      ("fc1", Dense(size, 1024, rngs=rngs)), ("relu", Act("relu")),
                      ("drop", Dropout(0.7, rngs=rngs)), ("fc2", Dense(1024, num_classes, rngs=rngs)))


def googlenet(*, num_classes, input_size, in_channels, rngs, batch_norm=False, aux_logits=True,
              dropout=0.4, transform_input=False):
    if batch_norm:  # torchvision's googlenet
        unit, wide, norms, last_pool = conv_bn_relu, 3, False, MaxPool(2, 2, ceil_mode=True)
    else:           # the paper, with Caffe's LRN (alpha divided by the window size)
        unit, wide, norms, last_pool = conv_relu, 5, True, MaxPool(3, 2, ceil_mode=True)
    u, pool = functools.partial(unit, rngs=rngs), functools.partial(MaxPool, 3, 2, ceil_mode=True)
    lrn = functools.partial(LRN, 5, 1e-4 / 5, 0.75, 1.0)
    if transform_input and in_channels != 3:
        from cnnbench.errors import UsageError

        raise UsageError("transform_input re-normalises RGB images; it needs 3 input channels")
    layers = [("transform_input", InputTransform())] if transform_input else []
    layers += [("conv1", u(in_channels, 64, 7, 2, 3)), ("pool1", pool())]
    layers += [("norm1", lrn())] if norms else []
    layers += [("conv2_reduce", u(64, 64, 1)), ("conv2", u(64, 192, 3, 1, 1))]
    layers += [("norm2", lrn())] if norms else []
    layers += [("pool2", pool())]
    channels = 192
    for stage, pool_after in (("3", pool()), ("4", last_pool), ("5", None)):
        for key in (k for k in INCEPTION if k[0] == stage):
            block = Inception(channels, INCEPTION[key], unit, wide, rngs=rngs)
            layers.append((f"inception{key}", block))
            channels = block.out_channels
        if pool_after is not None:
            layers.append((f"pool{int(stage)}", pool_after))
    features = Sequential(*layers)
    head = Sequential(gap=GlobalAvgPool(), drop=Dropout(dropout, rngs=rngs),
                      fc=Dense(channels, num_classes, rngs=rngs))
    aux = None
    if aux_logits:
        heads = []
        for tap in AUX_TAPS:
            prefix = Sequential(*features.named_layers()[:features.names.index(tap) + 1])
            shape = feature_shape(prefix, input_size, in_channels)
            aux_pool = AdaptiveAvgPool(4) if batch_norm else AvgPool(5, 3)
            heads.append((tap, _aux_head(shape[-1], num_classes, shape[0], unit, aux_pool, rngs)))
        aux = Sequential(*heads)
    return GoogLeNet(features, head, aux, num_classes=num_classes, input_size=input_size,
                     in_channels=in_channels)


_PAPER = 'Szegedy et al., "Going Deeper with Convolutions", CVPR 2015'
_T = "Szegedy et al. 2015, Tables 3 and 5"
register("googlenet", googlenet, family="GoogLeNet", year=2014, input_size=224, paper=_PAPER,
         description="22 layers, 9 Inception modules, LRN, two auxiliary classifiers (weight 0.3)",
         references=(
             Reference("ILSVRC-2012", None, 10.07, "1 model, 1 crop", _T),
             Reference("ILSVRC-2012", None, 9.15, "1 model, 10 crops", _T),
             Reference("ILSVRC-2012", None, 7.89, "1 model, 144 crops", _T),
             Reference("ILSVRC-2012", None, 6.67, "7 models, 144 crops", _T),
         ),
         options={"aux_logits": True, "dropout": 0.4})
register("googlenet-bn", functools.partial(googlenet, batch_norm=True), family="GoogLeNet",
         year=2015, input_size=224,
         paper=_PAPER + " with batch normalization (Ioffe & Szegedy 2015), torchvision googlenet",
         description="torchvision's definition: batch norm, no LRN, 3x3 in the '5x5' branch",
         params=6_624_904, gmacs=1.498,
         references=(Reference("ILSVRC-2012", 30.222, 10.470, "centre 224 crop",
                               "torchvision GoogLeNet_Weights.IMAGENET1K_V1"),),
         options={"aux_logits": False, "dropout": 0.2, "transform_input": False})
