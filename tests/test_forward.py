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


def _flax_batch_norm_twin(bn):
    """Flax's own nnx.BatchNorm with ``bn``'s hyper-parameters and variables (the reference)."""
    ref = nnx.BatchNorm(bn.num_features, epsilon=bn.epsilon, momentum=bn.momentum, dtype=bn.dtype,
                        rngs=nnx.Rngs(0))
    for name in ("scale", "bias", "mean", "var"):
        getattr(ref, name)[...] = getattr(bn, name)[...]
    return ref


@pytest.mark.parametrize("train, frozen", [(True, False), (False, False), (True, True)])
def test_batch_norm_matches_flax(train, frozen):
    # cnnbench normalises as x * a + b (one multiply-add); Flax as (x - mean) * a + bias. Same
    # outputs, gradients and running statistics, on an input whose mean is far from zero.
    from cnnbench.archs.layers import BatchNorm

    k = jax.random.split(jax.random.key(3), 5)
    bn = BatchNorm(6, momentum=0.3)
    bn.scale[...] = 1 + 0.5 * jax.random.normal(k[0], (6,))
    bn.bias[...] = jax.random.normal(k[1], (6,))
    bn.mean[...], bn.var[...] = jax.random.normal(k[2], (6,)), 0.5 + jax.random.uniform(k[3], (6,))
    if frozen:
        bn.frozen = True
    ref = _flax_batch_norm_twin(bn)
    x = 3.0 + 2.0 * jax.random.normal(k[4], (4, 5, 7, 6))
    dy = jax.random.normal(jax.random.key(4), x.shape)

    def loss(m, x, call):
        return jnp.sum(call(m, x) * dy)

    ours = nnx.grad(loss, argnums=(0, 1))(bn, x, lambda m, x: m(x, train=train))
    theirs = nnx.grad(loss, argnums=(0, 1))(ref, x, lambda m, x: m(x, use_running_average=not train or frozen))
    np.testing.assert_allclose(bn(x, train=False), ref(x, use_running_average=True), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-4, atol=1e-5)  # input gradient
    for name in ("scale", "bias"):
        np.testing.assert_allclose(ours[0][name][...], theirs[0][name][...], rtol=1e-4, atol=1e-4)
    for name in ("mean", "var"):  # running statistics: updated in training (unless frozen) alike
        np.testing.assert_allclose(getattr(bn, name)[...], getattr(ref, name)[...], rtol=1e-6)
    y = bn(x, train=train)
    np.testing.assert_allclose(y, ref(x, use_running_average=not train or frozen), rtol=1e-5, atol=1e-5)
    if train and not frozen:  # normalised by the batch's own statistics
        np.testing.assert_allclose(y.mean((0, 1, 2)), bn.bias[...], atol=1e-5)


def test_batch_norm_gradient_is_as_precise_as_flax():
    # Against the textbook gradient in float64, on a map whose mean is 30x its spread (where
    # float32 sums cancel): x * a + b's errors are no larger than Flax's (x - mean) * a + bias's.
    from cnnbench.kernels import fastops
    from cnnbench.archs.layers import BatchNorm

    rng = np.random.default_rng(0)
    c = 16
    scale, bias = 1 + 0.5 * rng.standard_normal(c), rng.standard_normal(c)
    x = (30 + rng.standard_normal((32, 6, 6, c))).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    mean = x64.mean((0, 1, 2))
    rstd = 1 / np.sqrt(x64.var((0, 1, 2)) + 1e-5)
    xhat, n = (x64 - mean) * rstd, x.size // c
    want = {"bias": dy64.sum((0, 1, 2)), "scale": (dy64 * xhat).sum((0, 1, 2))}
    want["x"] = scale * rstd * (dy64 - want["bias"] / n - xhat * want["scale"] / n)

    def errors(ops):
        bn = BatchNorm(c)
        bn.scale[...], bn.bias[...] = jnp.asarray(scale, jnp.float32), jnp.asarray(bias, jnp.float32)
        with fastops.use(ops):
            g = nnx.grad(lambda m, x: jnp.sum(m(x, train=True) * dy), argnums=(0, 1))(bn, jnp.asarray(x))
        got = {"bias": g[0]["bias"][...], "scale": g[0]["scale"][...], "x": g[1]}
        return {k: np.abs(np.asarray(got[k], np.float64) - want[k]).max() / np.abs(want[k]).max() for k in want}

    ours, flax = errors(True), errors(("conv", "pool", "lrn"))
    for k in want:
        assert ours[k] <= 1.5 * flax[k] + 1e-7, (k, ours[k], flax[k])
        assert ours[k] < 1e-3, (k, ours[k])


def test_batch_norm_in_bf16():
    # a bf16 layer (--precision bf16): bf16 in and out, float32 inside, as Flax's own
    from cnnbench.archs.layers import BatchNorm

    bn = BatchNorm(4)
    bn.dtype = jnp.bfloat16
    ref = _flax_batch_norm_twin(bn)
    x = (100.3 + jax.random.normal(jax.random.key(5), (8, 3, 3, 4))).astype(jnp.bfloat16)
    y = bn(x, train=True)
    assert y.dtype == jnp.bfloat16
    want = ref(x, use_running_average=False)
    assert want.dtype == jnp.bfloat16
    # within bf16's precision (2^-7 relative) of Flax's bf16 layer and of a float32 one
    np.testing.assert_allclose(y.astype(jnp.float32), want.astype(jnp.float32), rtol=2 ** -7, atol=2 ** -7)
    exact = nnx.BatchNorm(4, rngs=nnx.Rngs(0))(x.astype(jnp.float32), use_running_average=False)
    np.testing.assert_allclose(y.astype(jnp.float32), exact, rtol=2 ** -7, atol=2 ** -7)


def test_batch_norm_keeps_no_full_size_temporary_for_its_gradient():
    # Flax's (x - mean) * a + bias: XLA keeps x - mean for the backward pass, a full-size buffer;
    # x * a + b needs none beyond x. CNNBENCH_FASTOPS without "batchnorm" picks Flax's form.
    from cnnbench.kernels import fastops
    from cnnbench.archs.layers import BatchNorm

    x = jax.random.normal(jax.random.key(0), (8, 16, 16, 32))
    graphdef, state = nnx.split(BatchNorm(32))

    def temp_bytes(ops):
        def grads(state, x):
            loss = lambda m, x: jnp.sum(jax.nn.relu(m(x, train=True)) ** 2)  # noqa: E731
            return nnx.grad(loss, argnums=(0, 1))(nnx.merge(graphdef, state), x)
        with fastops.use(ops):
            return jax.jit(grads).lower(state, x).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes(True) < x.nbytes // 4
    assert temp_bytes(("conv", "pool", "lrn")) >= x.nbytes


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
