"""`summary` numbers derived from the models: receptive fields, multiply-adds, observations."""

import jax
import pytest

from cnnbench.analysis.summary import summarize
from cnnbench.archs import REGISTRY


def test_alexnet_owt_receptive_fields_at_227():
    """The seeds' "AlexNet (modified): Stats" slide."""
    s = summarize("alexnet-owt", input_size=227)
    got = {r.name.split(".")[-1]: (r.geometry.receptive_field, r.geometry.effective_stride)
           for r in s.shown if r.name.startswith("features.")}
    assert got == {"conv1": (11, 4), "pool1": (19, 8), "conv2": (51, 8), "pool2": (67, 16),
                   "conv3": (99, 16), "conv4": (131, 16), "conv5": (163, 16), "pool5": (195, 32)}
    sizes = {r.name.split(".")[-1]: r.output_shape[1:] for r in s.shown}
    assert sizes["conv1"] == (56, 56, 64) and sizes["pool5"] == (6, 6, 256)


@pytest.mark.parametrize("name", ["alexnet-owt", "vgg16", "googlenet-bn", "resnet50", "resnet18",
                                  "vgg11", "resnet152"])
def test_multiply_adds_match_torchvision(name):
    macs = summarize(name).macs
    assert abs(macs / 1e9 / REGISTRY[name].gmacs - 1) < 0.01


def test_multiply_adds_are_exact_for_lenet5():
    # C1 28*28*6*25, C3 10*10*16*150, C5 120*400, F6 120*84, output 84*10
    expected = 28 * 28 * 6 * 25 + 10 * 10 * 16 * 150 + 120 * 400 + 120 * 84 + 84 * 10
    assert summarize("lenet5").macs == expected


def test_per_layer_rows_add_up_to_the_totals():
    s = summarize("vgg11-bn")
    assert sum(r.params for r in s.layers) == s.params
    assert sum(r.macs for r in s.shown) == s.macs  # element-wise layers do no multiply-adds


def test_paper_alexnet_layer_table():
    s = summarize("alexnet")
    convs = [r for r in s.shown if r.kind == "conv"]
    assert [r.output_shape[1:] for r in convs] == [(55, 55, 96), (27, 27, 256), (13, 13, 384),
                                                   (13, 13, 384), (13, 13, 256)]
    assert [r.output_shape[1:] for r in s.shown if r.kind == "dense"] == [(4096,), (4096,), (1000,)]
    assert [r.name for r in s.shown if r.kind == "lrn"] == ["features.norm1", "features.norm2"]


def test_ablation_options_change_the_model():
    no_lrn = summarize("alexnet", lrn=False)
    assert not [r for r in no_lrn.layers if r.kind == "lrn"]
    non_overlap = summarize("alexnet", overlap_pool=False)
    assert {r.kernel for r in non_overlap.layers if r.kind == "maxpool"} == {2}


def test_observations_are_computed_from_the_numbers():
    notes = summarize("alexnet-owt", input_size=227).observations()
    assert notes[0].startswith("Memory: the first 3 of 13 layers (up to features.conv2)")
    assert notes[1] == "Parameters: dense layers hold 96.0% of the parameters."
    assert notes[2] == "Multiply-adds: convolution layers do 91.8% of the multiply-adds."
    # a GAP network has no dense-heavy parameter budget
    assert summarize("resnet20").observations()[1].startswith("Parameters: convolution layers")


def test_branching_blocks_take_the_widest_receptive_field():
    """Inception concatenates branches of different reach; what follows sees the widest one."""
    s = summarize("googlenet")  # the paper's model: a 5x5 branch beside 1x1 and 3x3 ones
    block = {r.name.removeprefix("features.inception3a."): r.geometry.receptive_field
             for r in s.layers if r.name.startswith("features.inception3a.")}
    assert block["branch3.conv.conv"] > block["branch2.conv.conv"] > block["branch1.conv"]
    next_1x1 = next(r for r in s.layers if r.name == "features.inception3b.branch1.conv")
    assert next_1x1.geometry.receptive_field == block["branch3.conv.conv"]


def test_auxiliary_classifiers_are_not_in_the_inference_table():
    s = summarize("googlenet")
    assert not [r for r in s.layers if r.name.startswith("aux")]
    assert s.params - s.inference_params == s.params - summarize("googlenet", aux_logits=False).params


def test_input_too_small_is_a_usage_error():
    from cnnbench.errors import UsageError

    with pytest.raises(UsageError, match="too small"):
        summarize("alexnet", input_size=32)


@pytest.mark.parametrize("name, depth", [("lenet5", 5), ("alexnet", 8), ("zfnet", 8), ("vgg16", 16),
                                         ("vgg19", 19), ("googlenet", 22), ("resnet18", 18),
                                         ("resnet50", 50), ("resnet56", 56), ("plain20", 20)])
def test_depth_is_the_papers_layer_count(name, depth):
    """Weight layers on the longest path: Inception's parallel branches and ResNet's shortcut
    projections do not add to it, so the papers' "8", "22", "152 layers" come out."""
    assert summarize(name).depth == depth


def test_abstract_models_leave_jaxs_tracer_messages_as_they_were():
    """abstract_model drops the costly "origin" part of tracer errors only while it builds."""
    from jax._src.interpreters import partial_eval

    from cnnbench.archs.state import abstract_model

    before = partial_eval.DynamicJaxprTracer.__dict__["_origin_msg"]
    model = abstract_model("lenet5")
    assert isinstance(model.features.c1.kernel.get_value(), jax.ShapeDtypeStruct)
    assert partial_eval.DynamicJaxprTracer.__dict__["_origin_msg"] is before
