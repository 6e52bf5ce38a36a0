"""Exact parameter counts against published numbers and independent hand derivations."""

import pytest

from cnnbench.analysis.summary import abstract_model
from cnnbench.archs import REGISTRY, list_archs
from cnnbench.archs.trace import count_params

# Every name the foundation issue asks for.
EXPECTED_NAMES = {
    "lenet5", "lenet5-1998", "alexnet", "alexnet-owt", "zfnet",
    "vgg11", "vgg11-lrn", "vgg13", "vgg16-c", "vgg16", "vgg19",
    "vgg11-bn", "vgg13-bn", "vgg16-bn", "vgg19-bn",
    "nin", "nin-cifar", "googlenet", "googlenet-bn",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "plain18", "plain34",
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "plain20", "plain56",
    "linear", "mlp2", "mlp3",
}


def test_registry_has_exactly_the_promised_names():
    assert set(REGISTRY) == EXPECTED_NAMES


@pytest.mark.parametrize("name", [i.name for i in list_archs() if i.params is not None])
def test_published_parameter_count(name):
    """REFERENCE.md / torchvision counts, e.g. alexnet 60,965,224 and googlenet-bn 6,624,904."""
    assert count_params(abstract_model(name)) == REGISTRY[name].params


def test_published_counts_cover_the_reference_table():
    published = {n: i.params for n, i in REGISTRY.items() if i.params}
    assert published["alexnet"] == 60_965_224
    assert published["alexnet-owt"] == 61_100_840
    assert published["lenet5"] == 61_706
    assert published["lenet5-1998"] == 60_000
    assert published["mlp2"] == 308_310
    assert published["vgg16"] == 138_357_544
    assert published["resnet50"] == 25_557_032
    assert published["googlenet-bn"] == 6_624_904


def _cifar_resnet_params(n):
    """He et al. section 4.2 counted by hand: 3x3 convs without bias, batch norm (2 per channel),
    option A shortcuts (no parameters), fc 64 -> 10."""
    conv = lambda cin, cout: 9 * cin * cout + 2 * cout  # noqa: E731  conv + its batch norm
    total = conv(3, 16)
    for cin, width in ((16, 16), (16, 32), (32, 64)):
        total += conv(cin, width) + conv(width, width)            # first block of the stage
        total += (n - 1) * 2 * conv(width, width)                  # the other n-1 blocks
    return total + 64 * 10 + 10


@pytest.mark.parametrize("name,n", [("resnet20", 3), ("resnet32", 5), ("resnet44", 7),
                                    ("resnet56", 9), ("resnet110", 18), ("plain20", 3), ("plain56", 9)])
def test_cifar_resnets_match_hand_count(name, n):
    assert count_params(abstract_model(name)) == _cifar_resnet_params(n)


def test_cifar_resnet_counts_match_the_paper_rounding():
    # He et al. Table 6: 0.27M, 0.46M, 0.66M, 0.85M, 1.7M
    for name, millions in (("resnet20", 0.27), ("resnet32", 0.46), ("resnet44", 0.66),
                           ("resnet56", 0.85), ("resnet110", 1.7)):
        digits = 1 if millions >= 1 else 2
        assert round(count_params(abstract_model(name)) / 1e6, digits) == millions


def test_plain_nets_only_lack_the_projection_shortcuts():
    # resnet18's three strided 1x1 projections (+ their batch norms): 64->128, 128->256, 256->512
    projections = sum(cin * cout + 2 * cout for cin, cout in ((64, 128), (128, 256), (256, 512)))
    assert count_params(abstract_model("resnet18")) - count_params(abstract_model("plain18")) == projections


def test_vgg_c_matches_the_paper_table_2():
    # Table 2 of Simonyan & Zisserman: C has 134M parameters, and differs from D only by 1x1 vs 3x3
    c, d = count_params(abstract_model("vgg16-c")), count_params(abstract_model("vgg16"))
    assert round(c / 1e6) == 134
    assert d - c == 8 * (256 * 256 + 512 * 512 + 512 * 512)  # three 3x3 kernels replace 1x1 ones


def test_googlenet_aux_heads_are_counted_only_when_present():
    with_aux = count_params(abstract_model("googlenet"))
    without = count_params(abstract_model("googlenet", aux_logits=False))
    # each aux head: 1x1 conv to 128 (+bias), fc 2048 -> 1024, fc 1024 -> 1000
    aux = lambda cin: cin * 128 + 128 + 2048 * 1024 + 1024 + 1024 * 1000 + 1000  # noqa: E731
    assert with_aux - without == aux(512) + aux(528)


def test_num_classes_changes_only_the_last_layer():
    base = count_params(abstract_model("resnet18"))
    assert count_params(abstract_model("resnet18", num_classes=10)) == base - 990 * 512 - 990


def test_alexnet_two_towers_halve_the_grouped_layers():
    one_tower = count_params(abstract_model("alexnet", groups=1))
    two_towers = count_params(abstract_model("alexnet"))
    # conv2, conv4, conv5 see half of their input maps with groups=2
    assert one_tower - two_towers == (5 * 5 * 48 * 256) + (3 * 3 * 192 * 384) + (3 * 3 * 192 * 256)


def test_lenet5_1998_has_the_papers_parameters_and_connections():
    """Section II-B: C1 156, S2 12, C3 1,516, S4 32, C5 48,120, F6 10,164 trainable parameters
    (60,000; the RBF output's bitmaps are fixed) and C1 122,304, S2 5,880, C3 151,600, S4 2,000,
    C5 48,120, F6 10,164 connections."""
    from cnnbench.analysis.summary import summarize

    layers = {r.name.split(".")[-1]: r for r in summarize("lenet5-1998").layers}
    expected = {"c1": (156, 122_304), "s2": (12, 5_880), "c3": (1_516, 151_600), "s4": (32, 2_000),
                "c5": (48_120, 48_120), "f6": (10_164, 10_164)}
    assert {name: (layers[name].params, layers[name].connections) for name in expected} == expected
    assert layers["output"].params == 0 and layers["output"].connections == 840
    from click.testing import CliRunner

    from cnnbench.cli import cli

    table = CliRunner().invoke(cli, ["summary", "lenet5-1998"]).stdout
    assert "connections" in table and "151,600" in table and "60,000" in table
