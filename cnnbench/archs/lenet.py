"""LeNet-5 (LeCun et al. 1998): ``lenet5`` in its modern form (full C3 connectivity, parameter-free
pooling, a dense output) and ``lenet5-1998`` as the paper built it."""

import numpy as np

from cnnbench.archs.layers import (Act, AvgPool, Conv, Dense, EuclideanRBF, Flatten, Sequential, Subsampling,
                                   TableConv, uniform_fan_in)
from cnnbench.archs.net import Net, feature_shape, flat_size
from cnnbench.archs.registry import register
from cnnbench.errors import UsageError


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


# --------------------------------------------------------------------------- LeNet-5 as published (1998)

#: Table I: the S2 maps each C3 map sees (six of three neighbours, six of four, three of four
#: non-neighbours, one of all six): 60 connections, so C3 has 60 x 25 + 16 = 1,516 parameters
C3_TABLE = ((0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (4, 5, 0), (5, 0, 1),
            (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (3, 4, 5, 0), (4, 5, 0, 1), (5, 0, 1, 2),
            (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
            (0, 1, 2, 3, 4, 5))

#: Section II-B: the output units' parameter vectors are "a stylized image of the corresponding
#: character class drawn on a 7x12 bitmap" (+1 ink, -1 background); these are digits 0-9
DIGIT_BITMAPS = (
    ("..###..", ".#...#.", "#.....#", "#.....#", "#.....#", "#.....#", "#.....#", "#.....#", "#.....#",
     "#.....#", ".#...#.", "..###.."),
    ("...#...", "..##...", ".#.#...", "...#...", "...#...", "...#...", "...#...", "...#...", "...#...",
     "...#...", "...#...", ".#####."),
    (".####..", "#....#.", "......#", "......#", ".....#.", "....#..", "...#...", "..#....", ".#.....",
     "#......", "#......", "#######"),
    (".####..", "#....#.", "......#", "......#", ".....#.", "..###..", ".....#.", "......#", "......#",
     "......#", "#....#.", ".####.."),
    ("....#..", "...##..", "..#.#..", ".#..#..", "#...#..", "#...#..", "#######", "....#..", "....#..",
     "....#..", "....#..", "....#.."),
    ("#######", "#......", "#......", "#......", "#####..", ".....#.", "......#", "......#", "......#",
     "......#", "#....#.", ".####.."),
    ("..###..", ".#.....", "#......", "#......", "#.###..", "##...#.", "#.....#", "#.....#", "#.....#",
     "#.....#", ".#...#.", "..###.."),
    ("#######", "......#", ".....#.", ".....#.", "....#..", "....#..", "...#...", "...#...", "..#....",
     "..#....", "..#....", "..#...."),
    ("..###..", ".#...#.", "#.....#", "#.....#", ".#...#.", "..###..", ".#...#.", "#.....#", "#.....#",
     "#.....#", ".#...#.", "..###.."),
    ("..###..", ".#...#.", "#.....#", "#.....#", "#.....#", ".#...##", "..###.#", "......#", "......#",
     ".....#.", "....#..", ".###..."),
)


def lenet5_1998(*, num_classes, input_size, in_channels, rngs):
    """LeCun, Bottou, Bengio & Haffner (1998), section II-B: C1 (6 maps 5x5), S2 (2x2 sums times a
    trainable coefficient plus a trainable bias, per map), C3 (16 maps, each on the S2 maps of
    Table I), S4, C5 (120 maps 5x5, all of S4), F6 (84 units), each followed by the scaled tanh
    1.7159 tanh(2/3 a); the output is 10 Euclidean RBF units whose fixed parameter vectors are 7x12
    bitmaps of the digits. 60,000 trainable parameters. Trained here with softmax cross-entropy on
    the negated RBF distances (the paper's MAP criterion is not implemented)."""
    if num_classes > len(DIGIT_BITMAPS):
        raise UsageError(f"lenet5-1998's RBF output has the bitmaps of the {len(DIGIT_BITMAPS)} digits; "
                         f"{num_classes} classes need lenet5")
    w = uniform_fan_in(2.4)  # "uniformly distributed random numbers between -2.4/F_i and 2.4/F_i"
    features = Sequential(
        c1=Conv(in_channels, 6, 5, kernel_init=w, rngs=rngs), act1=Act("lecun_tanh"),
        s2=Subsampling(6, rngs=rngs), act2=Act("lecun_tanh"),
        c3=TableConv(C3_TABLE, 6, 5, kernel_init=w, rngs=rngs), act3=Act("lecun_tanh"),
        s4=Subsampling(16, rngs=rngs), act4=Act("lecun_tanh"),
        c5=Conv(16, 120, 5, kernel_init=w, rngs=rngs), act5=Act("lecun_tanh"),
    )
    head = Sequential(
        flatten=Flatten(),
        f6=Dense(flat_size(feature_shape(features, input_size, in_channels)), 84, kernel_init=w, rngs=rngs),
        act6=Act("lecun_tanh"),
        output=EuclideanRBF(bitmaps(DIGIT_BITMAPS[:num_classes])),
    )
    return Net(features, head, num_classes=num_classes, input_size=input_size, in_channels=in_channels)


def bitmaps(rows) -> np.ndarray:
    """(84, classes): each class's 7x12 bitmap, row by row, +1 for ink and -1 for background."""
    return np.stack([np.array([1.0 if c == "#" else -1.0 for line in bitmap for c in line], np.float32)
                     for bitmap in rows], axis=1)


register(
    "lenet5-1998", lenet5_1998, family="LeNet", year=1998, input_size=32, in_channels=1, num_classes=10,
    paper='LeCun, Bottou, Bengio & Haffner, "Gradient-based learning applied to document '
          'recognition", Proc. IEEE 1998',
    description="as published: C3's connection table, trainable subsampling, scaled tanh, RBF output",
    params=60_000, options={},
)
