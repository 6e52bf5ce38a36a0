"""A real forward pass of every architecture: output shapes, finiteness, train/eval behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cnnbench.archs import create_model, list_archs

# Reduced input sizes where the architecture allows; the smallest that keeps every map non-empty.
SMALL = {"alexnet": 67, "alexnet-owt": 64, "zfnet": 64, "nin": 96, "googlenet": 96}


@pytest.mark.parametrize("info", list_archs(), ids=lambda i: i.name)
def test_forward_shape_and_values(info):
    size = SMALL.get(info.name, 32)
    model = create_model(info.name, num_classes=7, input_size=size)
    x = jax.random.normal(jax.random.key(1), (2, size, size, info.in_channels))
    # Op by op, each new layer shape compiles on its own. GoogLeNet's (and AlexNet's) layers nearly
    # all differ, so one compile of the whole net is faster; deep ResNets and VGGs repeat theirs.
    def eager(m, x):
        return m(x)

    forward = nnx.jit(eager) if info.family in ("GoogLeNet", "AlexNet", "ZFNet") else eager
    y = forward(model, x)
    assert y.shape == (2, 7)
    assert bool(jnp.all(jnp.isfinite(y)))
    # Relative to the logits' scale: untrained nets can be nearly input-blind (the paper AlexNet's
    # N(0, 0.01) weights beside biases of 1 give logits that differ by ~1e-5; googlenet-bn's are ~1e-12).
    assert float(jnp.max(jnp.abs(y[0] - y[1]))) > 1e-7 * float(jnp.max(jnp.abs(y))), \
        "different images must give different logits"
    np.testing.assert_array_equal(forward(model, x), y)  # eval mode is deterministic


def test_default_input_sizes_give_the_papers_layer_sizes():
    model = create_model("alexnet")
    x = jnp.zeros((1, 227, 227, 3))
    sizes = []
    for name, layer in model.features.named_layers():
        x = layer(x)
        if name.startswith("conv"):
            sizes.append(x.shape[1:])
    assert sizes == [(55, 55, 96), (27, 27, 256), (13, 13, 384), (13, 13, 384), (13, 13, 256)]


def test_dropout_follows_the_train_flag():
    model = create_model("alexnet-owt", num_classes=5, input_size=64)
    x = jnp.ones((2, 64, 64, 3))
    a, b = model(x, train=True), model(x, train=True)
    assert not np.allclose(a, b), "dropout must draw new masks in training"
    np.testing.assert_array_equal(model(x), model(x))


def test_batch_norm_follows_the_train_flag():
    model = create_model("resnet20")
    x = 3.0 + jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
    before = model.features.bn1.mean[...].copy()
    model(x)  # eval: running statistics untouched
    np.testing.assert_array_equal(model.features.bn1.mean[...], before)
    model(x, train=True)
    assert not np.allclose(model.features.bn1.mean[...], before)


def test_googlenet_aux_logits():
    model = create_model("googlenet", num_classes=4, input_size=96)
    x = jax.random.normal(jax.random.key(0), (2, 96, 96, 3))
    (logits, aux), plain = nnx.jit(lambda m, x: (m.forward_with_aux(x, train=False), m(x)))(model, x)
    np.testing.assert_allclose(logits, plain, rtol=1e-6)  # same main path as a plain call
    assert [a.shape for a in aux] == [(2, 4), (2, 4)]
    assert create_model("lenet5").forward_with_aux(jnp.ones((1, 32, 32, 1)))[1] == ()


def test_googlenet_bn_has_no_aux_heads_by_default_but_can_have_them():
    assert nnx.eval_shape(lambda: create_model("googlenet-bn", num_classes=3, input_size=32)).aux is None
    # shapes only: traced abstractly, nothing is initialised or compiled
    model = nnx.eval_shape(lambda: create_model("googlenet-bn", num_classes=3, input_size=64, aux_logits=True))
    _, aux = nnx.eval_shape(lambda m, x: m.forward_with_aux(x), model, jnp.ones((1, 64, 64, 3)))
    assert [a.shape for a in aux] == [(1, 3), (1, 3)]


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu", "leaky_relu", "elu"])
def test_lenet_activation_choice(activation):
    model = create_model("lenet5", activation=activation)
    assert model(jnp.ones((1, 32, 32, 1))).shape == (1, 10)
    assert model.features.act1.fn == activation


def test_nin_fc_head_ablation():
    gap = create_model("nin-cifar")
    fc = create_model("nin-cifar", head="fc", head_dropout=0.5)
    x = jnp.ones((2, 32, 32, 3))
    assert gap(x).shape == fc(x).shape == (2, 10)
    assert "fc" in fc.head.names and "gap" in gap.head.names
    assert "drop_fc" in fc.head.names


def test_models_are_reproducible_from_the_seed():
    a = nnx.state(create_model("lenet5", seed=3), nnx.Param)
    b = nnx.state(create_model("lenet5", seed=3), nnx.Param)
    c = nnx.state(create_model("lenet5", seed=4), nnx.Param)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c)))


def test_alexnet_paper_initialisation():
    model = create_model("alexnet")
    f, h = model.features, model.head
    for layer in (f.conv2, f.conv4, f.conv5, h.fc6, h.fc7):
        np.testing.assert_array_equal(layer.bias[...], 1.0)
    for layer in (f.conv1, f.conv3, h.fc8):
        np.testing.assert_array_equal(layer.bias[...], 0.0)
    assert abs(float(jnp.std(h.fc6.kernel[...])) - 0.01) < 1e-3
