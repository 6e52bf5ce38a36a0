"""ResNet (He et al. 2016): torchvision's ImageNet nets, their plain twins, and the CIFAR-10 nets."""

import functools

from flax import nnx

from cnnbench.archs.layers import (Act, BatchNorm, Conv, Dense, GlobalAvgPool, MaxPool, Sequential,
                                   ShortcutA, add, he_fan_out, init)
from cnnbench.archs.net import Net
from cnnbench.archs.registry import Reference, register


def _conv(cin, cout, kernel, stride, rngs):
    return Conv(cin, cout, kernel, stride, kernel // 2, bias=False, kernel_init=he_fan_out, rngs=rngs)


def _last_bn(width, zero_init, rngs):
    """Batch norm closing a residual branch; zero scale makes the block start as the identity."""
    return BatchNorm(width, scale_init=init.zeros if zero_init else init.ones, rngs=rngs)


class _Block(nnx.Module):
    """Shared residual plumbing: ``relu(branch(x) + shortcut(x))``, or ``relu(branch(x))`` when
    ``residual`` is off (the paper's plain networks)."""

    def __init__(self, cin, cout, stride, shortcut, residual, rngs):
        self.residual = residual
        downsample = None
        if residual and (stride != 1 or cin != cout):
            if shortcut == "A":
                downsample = ShortcutA(cin, cout, stride)
            else:  # option B: projection by a strided 1x1 convolution (torchvision)
                downsample = Sequential(conv=_conv(cin, cout, 1, stride, rngs), bn=BatchNorm(cout, rngs=rngs))
        self.downsample = downsample
        self.relu = Act("relu")

    def _merge(self, y, x, train):
        if self.residual:
            y = add(y, x if self.downsample is None else self.downsample(x, train=train))
        return self.relu(y, train=train)


class BasicBlock(_Block):
    expansion = 1

    def __init__(self, cin, planes, stride=1, *, shortcut="B", residual=True, zero_init=False, rngs):
        super().__init__(cin, planes, stride, shortcut, residual, rngs)
        self.conv1, self.bn1, self.relu1 = _conv(cin, planes, 3, stride, rngs), BatchNorm(planes, rngs=rngs), Act()
        self.conv2, self.bn2 = _conv(planes, planes, 3, 1, rngs), _last_bn(planes, zero_init, rngs)

    def __call__(self, x, train: bool = False):
        y = self.relu1(self.bn1(self.conv1(x), train=train))
        return self._merge(self.bn2(self.conv2(y), train=train), x, train)


class Bottleneck(_Block):
    """1x1 reduce, 3x3 (carrying the stride, "ResNet v1.5" as torchvision), 1x1 expand by 4.
    ``stride_in_1x1`` strides the 1x1 reduce instead, as the paper's Caffe models and Keras's
    ResNet50 ("v1") do."""

    expansion = 4

    def __init__(self, cin, planes, stride=1, *, shortcut="B", residual=True, zero_init=False,
                 stride_in_1x1=False, rngs):
        super().__init__(cin, planes * 4, stride, shortcut, residual, rngs)
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1, self.bn1, self.relu1 = _conv(cin, planes, 1, s1, rngs), BatchNorm(planes, rngs=rngs), Act()
        self.conv2, self.bn2, self.relu2 = _conv(planes, planes, 3, s3, rngs), BatchNorm(planes, rngs=rngs), Act()
        self.conv3, self.bn3 = _conv(planes, planes * 4, 1, 1, rngs), _last_bn(planes * 4, zero_init, rngs)

    def __call__(self, x, train: bool = False):
        y = self.relu1(self.bn1(self.conv1(x), train=train))
        y = self.relu2(self.bn2(self.conv2(y), train=train))
        return self._merge(self.bn3(self.conv3(y), train=train), x, train)


def _stages(block, cin, widths, depths, first_stride, rngs, **block_kw):
    """Stages ``layer1..`` of ``depth`` blocks; every stage but the first halves the resolution."""
    stages = []
    for i, (width, depth) in enumerate(zip(widths, depths), start=1):
        blocks = []
        for j in range(depth):
            stride = (first_stride if i == 1 else 2) if j == 0 else 1
            blocks.append((str(j), block(cin, width, stride, rngs=rngs, **block_kw)))
            cin = width * block.expansion
        stages.append((f"layer{i}", Sequential(*blocks)))
    return stages, cin


def resnet(*, num_classes, input_size, in_channels, rngs, block, depths, residual=True,
           zero_init_residual=False, stride_in_1x1=False):
    """torchvision's ResNet: 7x7/2 stem, 3x3/2 max pool, four stages, global average pooling."""
    extra = {"stride_in_1x1": True} if stride_in_1x1 else {}
    if extra and block is not Bottleneck:
        from cnnbench.errors import UsageError

        raise UsageError("stride_in_1x1 applies to bottleneck blocks (resnet50, resnet101, resnet152)")
    stages, channels = _stages(block, 64, (64, 128, 256, 512), depths, 1, rngs, residual=residual,
                               zero_init=zero_init_residual, **extra)
    features = Sequential(("conv1", _conv(in_channels, 64, 7, 2, rngs)), ("bn1", BatchNorm(64, rngs=rngs)),
                          ("relu", Act()), ("maxpool", MaxPool(3, 2, 1)), *stages)
    head = Sequential(avgpool=GlobalAvgPool(), fc=Dense(channels, num_classes, rngs=rngs))
    return Net(features, head, num_classes=num_classes, input_size=input_size, in_channels=in_channels)


def resnet_cifar(*, num_classes, input_size, in_channels, rngs, n, residual=True, zero_init_residual=False):
    """He et al. section 4.2: 3x3 conv with 16 maps, three stages of 2n layers on 32/16/8 maps with
    16/32/64 filters, global average pooling, fc: 6n+2 layers, option A (parameter-free) shortcuts."""
    stages, channels = _stages(BasicBlock, 16, (16, 32, 64), (n, n, n), 1, rngs, shortcut="A",
                               residual=residual, zero_init=zero_init_residual)
    features = Sequential(("conv1", _conv(in_channels, 16, 3, 1, rngs)), ("bn1", BatchNorm(16, rngs=rngs)),
                          ("relu", Act()), *stages)
    head = Sequential(avgpool=GlobalAvgPool(), fc=Dense(channels, num_classes, rngs=rngs))
    return Net(features, head, num_classes=num_classes, input_size=input_size, in_channels=in_channels)


_PAPER = 'He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016'
_T34, _T6 = "He et al. 2016, Tables 2-4 (10-crop)", "He et al. 2016, Table 6"
_OPTIONS = {"zero_init_residual": False}


def _tv(top1, top5, weights):
    return Reference("ILSVRC-2012", round(100 - top1, 3), round(100 - top5, 3), "centre 224 crop",
                     f"torchvision {weights}.IMAGENET1K_V1")


_IMAGENET_NETS = {
    # name: (block, depths, params, G multiply-adds, paper (top-1, top-5) error, torchvision acc)
    "resnet18": (BasicBlock, (2, 2, 2, 2), 11_689_512, 1.814, (27.88, None), (69.758, 89.078)),
    "resnet34": (BasicBlock, (3, 4, 6, 3), 21_797_672, 3.664, (25.03, 7.76), (73.314, 91.420)),
    "resnet50": (Bottleneck, (3, 4, 6, 3), 25_557_032, 4.089, (22.85, 6.71), (76.130, 92.862)),
    "resnet101": (Bottleneck, (3, 4, 23, 3), 44_549_160, 7.801, (21.75, 6.05), (77.374, 93.546)),
    "resnet152": (Bottleneck, (3, 8, 36, 3), 60_192_808, 11.514, (21.43, 5.71), (78.312, 94.046)),
}
for _name, (_block, _depths, _params, _gmacs, _paper, _acc) in _IMAGENET_NETS.items():
    _depth = _name.removeprefix("resnet")
    register(_name, functools.partial(resnet, block=_block, depths=_depths), family="ResNet",
             year=2015, input_size=224, paper=_PAPER + " (torchvision definition)",
             description=f"{_depth} layers, {_block.__name__} blocks {'-'.join(map(str, _depths))}",
             params=_params, gmacs=_gmacs,
             references=(Reference("ILSVRC-2012", *_paper, "1 model, 10-crop", _T34),
                         _tv(*_acc, f"ResNet{_depth}_Weights")),
             options={**_OPTIONS, "stride_in_1x1": False} if _block is Bottleneck else _OPTIONS)

for _name, _depths, _err in (("plain18", (2, 2, 2, 2), 27.94), ("plain34", (3, 4, 6, 3), 28.54)):
    register(_name, functools.partial(resnet, block=BasicBlock, depths=_depths, residual=False),
             family="ResNet", year=2015, input_size=224, paper=_PAPER,
             description=f"{_name.removeprefix('plain')} layers without shortcuts (the degradation baseline)",
             references=(Reference("ILSVRC-2012", _err, None, "1 model, 10-crop", "He et al. 2016, Table 2"),),
             options=_OPTIONS)

# Table 6 test errors on CIFAR-10 (best of 5 runs for ResNet-110).
for _name, _n, _err in (("resnet20", 3, 8.75), ("resnet32", 5, 7.51), ("resnet44", 7, 7.17),
                        ("resnet56", 9, 6.97), ("resnet110", 18, 6.43), ("plain20", 3, None),
                        ("plain56", 9, None)):
    _residual = _name.startswith("resnet")
    register(_name, functools.partial(resnet_cifar, n=_n, residual=_residual), family="ResNet",
             year=2015, input_size=32, num_classes=10, paper=_PAPER + ", section 4.2",
             description=f"CIFAR-10 net, {6 * _n + 2} layers" + ("" if _residual else ", no shortcuts"),
             references=(Reference("CIFAR-10", _err, None, "1 model", _T6, split="test"),) if _err else (),
             options=_OPTIONS)
