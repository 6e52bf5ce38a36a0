"""Layers against straightforward NumPy references of the formulas they implement."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cnnbench.archs import initializers
from cnnbench.archs.layers import (LRN, AdaptiveAvgPool, AvgPool, Conv, Dropout, MaxPool, ShortcutA,
                                   _window_bounds)


def rand(*shape, seed=0):
    return np.asarray(jax.random.normal(jax.random.key(seed), shape), np.float64)


def test_lrn_matches_the_paper_formula():
    x = rand(2, 4, 4, 9)
    n, alpha, beta, k = 5, 1e-2, 0.75, 2.0  # a large alpha so the normalisation matters
    expected = np.empty_like(x)
    channels = x.shape[-1]
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
        expected[..., i] = x[..., i] / (k + alpha * (x[..., lo:hi + 1] ** 2).sum(-1)) ** beta
    got = LRN(n, alpha, beta, k)(jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def _torch_pool_size(n, k, s, p, ceil_mode):
    """PyTorch's documented MaxPool2d output size, including its ceil_mode correction."""
    out = ((n + 2 * p - k + (s - 1 if ceil_mode else 0)) // s) + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


@pytest.mark.parametrize("n,k,s,p", [(112, 3, 2, 0), (56, 3, 2, 0), (14, 2, 2, 0), (13, 3, 2, 0),
                                     (32, 3, 2, 0), (16, 3, 2, 0), (7, 3, 2, 1), (6, 3, 3, 1)])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_pool_output_size_matches_pytorch(n, k, s, p, ceil_mode):
    assert _window_bounds(n, k, s, p, ceil_mode)[0] == _torch_pool_size(n, k, s, p, ceil_mode)
    y = MaxPool(k, s, p, ceil_mode=ceil_mode)(jnp.zeros((1, n, n, 1)))
    assert y.shape[1] == _torch_pool_size(n, k, s, p, ceil_mode)


def _reference_pool(x, k, s, p, ceil_mode, op):
    """Loop reference: max over the window inside the padded input; average divides by the
    window's size clipped to the padded input (PyTorch's count_include_pad with ceil_mode)."""
    n = x.shape[1]
    out = _torch_pool_size(n, k, s, p, ceil_mode)
    padded = np.pad(x, [(0, 0), (p, p), (p, p), (0, 0)],
                    constant_values=-np.inf if op == "max" else 0.0)
    y = np.zeros((x.shape[0], out, out, x.shape[3]))
    for i in range(out):
        for j in range(out):
            win = padded[:, i * s:i * s + k, j * s:j * s + k, :]
            if op == "max":
                y[:, i, j] = win.max(axis=(1, 2))
            else:
                y[:, i, j] = win.sum(axis=(1, 2)) / (win.shape[1] * win.shape[2])
    return y


@pytest.mark.parametrize("cls,op", [(MaxPool, "max"), (AvgPool, "avg")])
@pytest.mark.parametrize("n,k,s,p,ceil_mode", [(16, 3, 2, 0, True), (13, 3, 2, 0, False),
                                               (7, 3, 2, 1, False), (8, 3, 3, 1, True)])
def test_pooling_values_match_reference(cls, op, n, k, s, p, ceil_mode):
    x = rand(2, n, n, 3)
    got = cls(k, s, p, ceil_mode=ceil_mode)(jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(got, _reference_pool(x, k, s, p, ceil_mode, op), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n,out", [(13, 6), (6, 6), (7, 3), (1, 7), (10, 4)])
def test_adaptive_average_pooling_matches_pytorch_bins(n, out):
    x = rand(1, n, n, 2)
    expected = np.zeros((1, out, out, 2))
    bins = [((i * n) // out, -(-((i + 1) * n) // out)) for i in range(out)]
    for i, (h0, h1) in enumerate(bins):
        for j, (w0, w1) in enumerate(bins):
            expected[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
    np.testing.assert_allclose(AdaptiveAvgPool(out)(jnp.asarray(x, jnp.float32)), expected, rtol=1e-5,
                               atol=1e-6)


def test_grouped_convolution_is_two_independent_towers():
    """groups=2 must equal two convolutions on the two halves of the channels, concatenated:
    the one-device form of AlexNet's two GPUs."""
    conv = Conv(8, 6, 3, 1, 1, groups=2, rngs=nnx.Rngs(0))
    x = jnp.asarray(rand(2, 5, 5, 8), jnp.float32)
    kernel, bias = conv.kernel[...], conv.bias[...]  # HWIO with I = 8 / 2
    halves = []
    for g in range(2):
        y = jax.lax.conv_general_dilated(x[..., 4 * g:4 * g + 4], kernel[..., 3 * g:3 * g + 3], (1, 1),
                                         [(1, 1), (1, 1)], dimension_numbers=("NHWC", "HWIO", "NHWC"))
        halves.append(y + bias[3 * g:3 * g + 3])
    np.testing.assert_allclose(conv(x), jnp.concatenate(halves, -1), rtol=1e-5, atol=1e-5)


def test_option_a_shortcut_subsamples_and_zero_pads():
    x = jnp.asarray(rand(1, 8, 8, 16), jnp.float32)
    y = ShortcutA(16, 32, 2)(x)
    assert y.shape == (1, 4, 4, 32)
    np.testing.assert_array_equal(y[..., 8:24], x[:, ::2, ::2, :])
    assert float(jnp.abs(y[..., :8]).sum()) == 0 and float(jnp.abs(y[..., 24:]).sum()) == 0


@pytest.mark.parametrize("name, ours, theirs", [
    ("normal", lambda: initializers.normal(0.01), lambda: jax.nn.initializers.normal(0.01)),
    ("lecun", initializers.lecun_normal, jax.nn.initializers.lecun_normal),
    ("glorot", initializers.glorot_uniform, jax.nn.initializers.glorot_uniform),
    ("he_fan_out", lambda: initializers.variance_scaling(2.0, "fan_out", "normal"),
     lambda: jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")),
    ("constant", lambda: initializers.constant(0.2), lambda: jax.nn.initializers.constant(0.2)),
])
@pytest.mark.parametrize("shape", [(3, 3, 5, 7), (11, 11, 3, 64), (64, 64), (64,)])
def test_initializers_give_jaxs_values_bit_for_bit(name, ours, theirs, shape, monkeypatch):
    """Bucketed draws sliced to shape are the numbers JAX's initializers give, exactly (the
    (64, 64) kernel fills its bucket; (11, 11, 3, 64) is drawn at its own size here)."""
    monkeypatch.setattr(initializers, "_BUCKETED_UP_TO", 16_384)
    key = jax.random.key(7)
    if len(shape) == 1 and name in ("lecun", "glorot", "he_fan_out"):
        for init in (ours(), theirs()):  # fans need a 2-D (or larger) kernel, in both
            with pytest.raises(ValueError):
                init(key, shape, jnp.float32)
        return
    expected = theirs()(key, shape, jnp.float32)
    got = ours()(key, shape, jnp.float32)
    assert isinstance(got, jax.Array) and got.dtype == jnp.float32 and got.shape == shape
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    if shape == (3, 3, 5, 7) and name == "lecun":  # traced (nnx.eval_shape, jit), ours hands over to JAX's own
        np.testing.assert_array_equal(jax.jit(lambda k: ours()(k, shape, jnp.float32))(key),
                                      jax.jit(lambda k: theirs()(k, shape, jnp.float32))(key))


def test_initializers_share_one_compiled_draw_per_bucket():
    initializers._draw_fn.cache_clear()
    key = jax.random.key(0)
    for cout in range(26, 36):  # ten shapes of 2,106-2,835 weights: one bucket of 4,096
        initializers.glorot_uniform()(key, (3, 3, 9, cout))
    assert initializers._draw_fn.cache_info().currsize == 1


@pytest.mark.parametrize("rate, broadcast_dims", [(0.5, ()), (0.7, ()), (0.2, (1, 2))])
def test_dropout_keeps_flaxs_mask_and_gradient(rate, broadcast_dims):
    """The dropout whose mask is a buffer against Flax's own: the same elements dropped for the same
    key (jitted, as in a training step), the same scaling (to one rounding: x * (1/p) against x / p,
    exact at 0.5), the same gradient, new masks from the layer's stream, and identity in evaluation."""
    x = jnp.asarray(rand(4, 6, 6, 8, seed=3), jnp.float32)
    g = jnp.asarray(rand(4, 6, 6, 8, seed=4), jnp.float32)
    ours = Dropout(rate, broadcast_dims=broadcast_dims, rngs=nnx.Rngs(dropout=0))
    theirs = nnx.Dropout(rate, broadcast_dims=broadcast_dims, rngs=nnx.Rngs(dropout=0))

    @jax.jit
    def both(x, g, key):
        a, pull_a = jax.vjp(lambda x: ours(x, train=True, rngs=key), x)
        b, pull_b = jax.vjp(lambda x: theirs(x, deterministic=False, rngs=key), x)
        return a, b, pull_a(g)[0], pull_b(g)[0]

    for seed in range(3):
        a, b, ga, gb = both(x, g, jax.random.key(seed))
        np.testing.assert_array_equal(a == 0, b == 0)
        np.testing.assert_allclose(a, b, rtol=0 if rate == 0.5 else 2e-7)
        np.testing.assert_allclose(ga, gb, rtol=0 if rate == 0.5 else 2e-7)
        assert abs(float((a == 0).mean()) - rate) < 0.1
    if broadcast_dims:  # one mask per image and channel, shared over the spatial axes
        assert ((a == 0) == (a[:, :1, :1] == 0)).all()
    first, second = ours(x, train=True), ours(x, train=True)  # the layer's own stream advances
    np.testing.assert_array_equal(first == 0, theirs(x, deterministic=False) == 0)
    assert (second == 0).any() and not np.array_equal(first == 0, second == 0)
    assert ours(x) is x
    raw = jax.random.PRNGKey(7)  # a legacy uint32 key works as with Flax
    np.testing.assert_array_equal(ours(x, train=True, rngs=raw) == 0, theirs(x, deterministic=False, rngs=raw) == 0)
