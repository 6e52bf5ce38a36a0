"""Every fast formulation in cnnbench.kernels.fastops equals the plain lax op: outputs and gradients,
random inputs, float tolerance (and exact tie handling for max pooling)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from cnnbench.archs import create_model
from cnnbench.archs.layers import Conv, MaxPool
from cnnbench.errors import UsageError
from cnnbench.kernels import fastops

#: every pass through the matmul formulation, and a mix as :func:`fastops.choose` makes them
PLANS = [{"forward": "matmul", "input_grad": "matmul", "weight_grad": "matmul"},
         {"forward": "xla", "input_grad": "xla", "weight_grad": "matmul"}]
WINOGRAD = {"forward": "winograd", "input_grad": "winograd", "weight_grad": "winograd"}


def _close(a, b, rtol=2e-5):
    scale = float(jnp.abs(b).max()) or 1.0
    assert float(jnp.abs(a - b).max()) <= rtol * scale * 10, float(jnp.abs(a - b).max()) / scale


@pytest.mark.parametrize("n, hw, cin, cout, k, s, pads", [
    (2, 13, 5, 7, 3, 1, ((1, 1), (1, 1))),     # 3x3 "same"
    (2, 15, 3, 4, 5, 2, ((2, 2), (2, 2))),     # strided 5x5
    (2, 9, 4, 6, 1, 2, ((0, 0), (0, 0))),      # ResNet's strided 1x1 projection
    (2, 10, 3, 5, 1, 3, ((0, 0), (0, 0))),     # a strided 1x1 whose last input row is used
    (3, 6, 5, 3, 1, 1, ((1, 0), (0, 1))),      # 1x1, padded on two sides
    (2, 6, 5, 3, 1, 1, ((0, 0), (0, 0))),      # 1x1 (ResNet's bottlenecks): the two-half weight gradient
    (3, 5, 4, 6, 1, 1, ((0, 0), (0, 0))),      # 1x1 on an odd number of positions (no halves)
    (2, 8, 4, 4, 4, 3, ((2, 2), (2, 2))),      # the last window overhangs the padded edge
    (3, 9, 6, 5, 3, 1, ((1, 1), (1, 1))),      # Winograd: odd output size (a partial last tile)
    (4, 8, 3, 2, 3, 1, ((0, 0), (0, 0))),      # Winograd, "valid"
    (2, 7, 2, 3, 3, 1, ((2, 0), (1, 2))),      # Winograd, lopsided padding
    (3, 11, 4, 6, 5, 1, ((2, 2), (2, 2))),     # Winograd F(2x2, 5x5): "same", odd size (a partial tile)
    (2, 8, 3, 2, 5, 1, ((0, 3), (4, 1))),      # 5x5, lopsided padding up to k - 1
    (2, 9, 4, 6, 5, 1, ((2, 2), (2, 2))),      # Winograd F(3x3, 5x5): "same", as AlexNet's 27x27 conv2
    (3, 7, 3, 2, 5, 1, ((2, 1), (0, 3))),      # F(3x3, 5x5), lopsided padding up to k - 1
])
def test_conv_every_plan_matches_lax(n, hw, cin, cout, k, s, pads):
    x = jax.random.normal(jax.random.key(0), (n, hw, hw, cin))
    w = jax.random.normal(jax.random.key(1), (k, k, cin, cout))

    def ref(x, w):
        return lax.conv_general_dilated(x, w, (s, s), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def value_and_grads(f):
        def run(x, w, dy):
            y, vjp = jax.vjp(f, x, w)
            return (y, *vjp(dy))
        return jax.jit(run)  # compiled: op by op, 121 slices take seconds

    dy = jax.random.normal(jax.random.key(2), jax.eval_shape(ref, x, w).shape)
    expected = value_and_grads(ref)(x, w, dy)
    plans = PLANS + ([WINOGRAD] if (k, s) in ((3, 1), (5, 1)) else [])
    for plan in plans:
        got = value_and_grads(lambda x, w: fastops.conv(x, w, s, pads, plan))(x, w, dy)
        for a, b in zip(got, expected):
            _close(a, b)


def test_winograd_transform_points_are_written_a_group_per_computation():
    """The a*a transformed points go to the products in groups of at most 8, and XLA:CPU computes
    each group in one fused computation that writes the stacked points (BENCHMARKS.md, issue 6):
    16 single-point computations plus a copy into the stack before (18 instructions for F(2x2, 3x3))."""
    from cnnbench.kernels import winograd
    assert winograd.groups(16) == [(0, 8), (8, 16)]
    assert winograd.groups(25) == [(0, 6), (6, 12), (12, 19), (19, 25)]
    assert [hi - lo for lo, hi in winograd.groups(49)] == [7] * 7 and winograd.groups(4) == [(0, 4)]
    pads = ((1, 1), (1, 1))
    x = jnp.ones((2, 8, 8, 16))
    for f in (winograd.FORMS[3][0], winograd.WEIGHT_FORMS[3][0]):  # 16 and 25 points
        tiles = jax.jit(lambda x: winograd._input_tiles(f, x, pads))
        assert [t.shape[0] for t in tiles(x)] == [hi - lo for lo, hi in winograd.groups(f.a * f.a)]
        entry = tiles.lower(x).compile().as_text().split("ENTRY", 1)[1]
        computed = [line for line in entry.splitlines() if " fusion(" in line or " concatenate(" in line]
        assert len(computed) <= len(winograd.groups(f.a * f.a)) + 1, computed  # + the padding


def test_winograd_in_chunks_of_the_batch_matches_lax(monkeypatch):
    """With a tiny cache budget every Winograd pass loops over the batch 1-2 images at a time;
    forward, input and weight gradients still equal XLA's, and the chunk sizes follow the budget."""
    from cnnbench.kernels import winograd
    monkeypatch.setattr(winograd, "CHUNK_BYTES", 16 * 16 * 4 * 7 * 2)  # two images of 16 tiles x 7
    assert winograd.chunk(6, 16, 7) == 2 and winograd.chunk(5, 16, 7) == 1
    assert winograd.chunk(32, 28 * 28, 64, budget=4 ** 2 * 28 * 28 * 64 * 4 * 2) == 2
    x = jax.random.normal(jax.random.key(7), (6, 9, 6, 5))
    for k in (3, 5):  # F(2x2, 3x3) and F(3x3, 5x5)
        w = jax.random.normal(jax.random.key(8), (k, k, 5, 7))
        pads = ((k // 2, k // 2), (k // 2, k // 2))

        def ref(x, w):
            return lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))

        y, vjp = jax.vjp(ref, x, w)
        dy = jax.random.normal(jax.random.key(9), y.shape)
        expected = (y, *vjp(dy))
        got = jax.jit(lambda x, w, dy: (lambda y, f: (y, *f(dy)))(*jax.vjp(
            lambda x, w: fastops.conv(x, w, 1, pads, WINOGRAD), x, w)))(x, w, dy)
        for a, b in zip(got, expected):
            _close(a, b)
    assert fastops.choose(5, 1, 64, 192, (27, 27), "cpu", pads) == WINOGRAD  # AlexNet conv2
    # F(3x3, 5x5) where its 3x3 blocks overhang the map by at most 11% (26x26: 8%, 20x20: 10%)
    assert [winograd.form(5, hw).m for hw in ((27, 27), (9, 6), (26, 26), (20, 20))] == [3, 3, 3, 3]
    assert [winograd.form(5, hw).m for hw in ((17, 17), (16, 16), (27, 16))] == [2, 2, 2]
    assert winograd.form(3, (27, 27)).m == 2
    assert fastops.choose(5, 1, 6, 16, (10, 10), "cpu", pads)["forward"] == "xla"  # LeNet-5's conv2
    pads = ((1, 1), (1, 1))
    assert fastops.choose(3, 1, 64, 64, (56, 56), "cpu", pads) == WINOGRAD
    assert fastops.choose(3, 1, 3, 64, (224, 224), "cpu", pads) == PLANS[1] | {"input_grad": "matmul"}  # VGG's conv1
    assert fastops.choose(3, 1, 16, 16, (32, 32), "cpu", pads) == {"forward": "xla", "input_grad": "matmul",
                                                                  "weight_grad": "winograd"}  # ResNet-20's
    assert fastops.choose(3, 2, 64, 128, (28, 28), "cpu", pads) == PLANS[0]  # ResNet's strided 3x3
    assert fastops.choose(3, 2, 16, 32, (16, 16), "cpu", pads)["forward"] == "xla"  # CIFAR ResNet's
    assert fastops.choose(3, 1, 64, 64, (56, 56), "cpu", pads, jnp.bfloat16)["forward"] == "xla"
    assert fastops.choose(3, 1, 64, 64, (56, 56), "gpu", pads)["forward"] == "xla"
    none = ((0, 0), (0, 0))
    assert fastops.choose(1, 1, 256, 64, (56, 56), "cpu", none) == PLANS[0]  # 1x1: matrix products
    assert fastops.choose(1, 2, 256, 512, (28, 28), "cpu", none) == PLANS[0]
    assert fastops.choose(1, 1, 256, 64, (56, 56), "cpu", none, jnp.bfloat16)["forward"] == "xla"
    assert fastops.choose(1, 1, 256, 64, (56, 56), "gpu", none)["forward"] == "xla"


@pytest.mark.parametrize("k, pads", [(3, ((1, 1), (1, 1))), (3, ((0, 2), (2, 1))), (5, ((2, 2), (2, 2)))])
def test_every_weight_gradient_form_matches_lax(k, pads, monkeypatch):
    """The weight gradient by each form it may take (F(3x3, .) where its chunks hold enough tiles,
    else F(2x2, .)), partial last tiles included, against lax's; and which one shapes get."""
    from cnnbench.kernels import winograd
    x = jax.random.normal(jax.random.key(3), (3, 10, 8, 6))
    w = jax.random.normal(jax.random.key(4), (k, k, 6, 5))

    def ref(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    y, vjp = jax.vjp(ref, x, w)
    dy = jax.random.normal(jax.random.key(5), y.shape)
    expected = vjp(dy)[1]
    for f in winograd.WEIGHT_FORMS[k]:
        monkeypatch.setitem(winograd.WEIGHT_FORMS, k, (f,))
        _close(jax.jit(lambda x, dy: winograd.weight_grad(x, dy, pads, k))(x, dy), expected)
    monkeypatch.undo()
    assert [f.m for f in winograd.WEIGHT_FORMS[k]] == [3, 2]
    assert winograd.weight_form(3, 32, (56, 56), 64).m == 3  # ResNet's layer1: 2 images, 722 tiles a chunk
    assert winograd.weight_form(3, 32, (28, 28), 512).m == 2  # VGG's 512-channel 28x28: 100 tiles a chunk


@pytest.mark.parametrize("hw, k, s, pad", [(35, 11, 4, 2), (16, 6, 2, 1)])
def test_space_to_depth_stem_matches_lax(hw, k, s, pad):
    """A strided RGB stem (AlexNet's 11x11 stride-4 conv1) computed as a 3x3 stride-1 convolution
    of 4x4 (or 2x2) pixel blocks: same outputs, input and weight gradients as lax."""
    assert fastops._space_to_depth_blocks(k, s, 3, "cpu", jnp.float32) == 3
    assert fastops._space_to_depth_blocks(k, s, 3, "gpu", jnp.float32) is None
    x = jax.random.normal(jax.random.key(10), (2, hw, hw + 3, 3))
    w = jax.random.normal(jax.random.key(11), (k, k, 3, 4))
    pads = ((pad, pad), (pad, pad))

    def ref(x, w):
        return lax.conv_general_dilated(x, w, (s, s), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    y, vjp = jax.vjp(ref, x, w)
    dy = jax.random.normal(jax.random.key(12), y.shape)
    got = jax.jit(lambda x, w, dy: (lambda y, f: (y, *f(dy)))(*jax.vjp(
        lambda x, w: fastops._space_to_depth_conv(x, w, s, pads, 3), x, w)))(x, w, dy)
    for a, b in zip(got, (y, *vjp(dy))):
        assert a.shape == b.shape
        _close(a, b)


def test_patch_passes_in_chunks_of_the_batch_match_lax():
    """The patch-based passes loop over the batch a few images at a time: every chunk size (and
    the size chosen for a map) gives XLA's own output, weight and input gradients."""
    n, k, s, pads = 6, 3, 2, ((1, 1), (1, 1))
    x = jax.random.normal(jax.random.key(4), (n, 11, 11, 5))
    w = jax.random.normal(jax.random.key(5), (k, k, 5, 4))

    def ref(w):
        return lax.conv_general_dilated(x, w, (s, s), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    y, vjp = jax.vjp(ref, w)
    dy = jax.random.normal(jax.random.key(6), y.shape)
    expected = vjp(dy)[0]
    expected_dx = jax.vjp(lambda x: lax.conv_general_dilated(x, w, (s, s), pads, dimension_numbers=(
        "NHWC", "HWIO", "NHWC")), x)[1](dy)[0]
    for chunk in (1, 2, 3, 6, None):
        _close(jax.jit(lambda x: fastops._matmul_forward(x, w, s, pads, chunk))(x), y)
        _close(jax.jit(lambda x, dy: fastops._matmul_weight_grad(x, dy, k, s, pads, chunk))(x, dy), expected)
        _close(jax.jit(lambda dy: fastops._matmul_input_grad(dy, w, s, pads, x.shape, chunk))(dy), expected_dx)
    assert fastops._patch_chunk(32, (56, 56)) == 2
    assert fastops._patch_chunk(32, (7, 7)) == 8
    assert fastops._patch_chunk(6, (6, 6)) == 6


@pytest.mark.parametrize("cin, k, s, pad", [(3, 7, 2, 3), (3, 3, 1, 1), (1, 5, 1, 0), (8, 3, 2, 1)])
def test_few_channel_weight_gradient_builds_its_patches_transposed(cin, k, s, pad):
    """An RGB layer's weight gradient (ResNet's 7x7/2 stem, VGG's 3x3 conv1, LeNet's one channel)
    is a plain [k*k*C, P] x [P, O] product per chunk, patches built transposed, and equals XLA's;
    from FEW_CHANNELS input channels on, the patches keep their [P, k*k*C] layout."""
    n, hw, cout, pads = 4, 17, 6, ((pad, pad), (pad, pad))
    x = jax.random.normal(jax.random.key(7), (n, hw, hw, cin))
    w = jax.random.normal(jax.random.key(8), (k, k, cin, cout))

    def ref(w):
        return lax.conv_general_dilated(x, w, (s, s), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    y, vjp = jax.vjp(ref, w)
    dy = jax.random.normal(jax.random.key(9), y.shape)
    for chunk in (1, 2, None):
        _close(jax.jit(lambda x, dy: fastops._matmul_weight_grad(x, dy, k, s, pads, chunk))(x, dy), vjp(dy)[0])
    jaxpr = jax.make_jaxpr(lambda x, dy: fastops._matmul_weight_grad(x, dy, k, s, pads, 2))(x, dy)
    body = next(e for e in jaxpr.eqns if e.primitive.name == "scan").params["jaxpr"].jaxpr
    dims = [e.params["dimension_numbers"][0] for e in body.eqns if e.primitive.name == "dot_general"]
    assert dims == [((1,), (0,)) if cin <= 3 else ((0, 1, 2), (0, 1, 2))], dims


@pytest.mark.parametrize("hw, k, s, extra", [(13, 3, 2, 0), (14, 3, 2, 1), (9, 2, 2, 0), (8, 3, 1, 0), (12, 3, 2, 2)])
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_matches_select_and_scatter(hw, k, s, extra, ties):
    """Rounded inputs tie often: the gradient must reach the same single position per window."""
    x = jax.random.normal(jax.random.key(3), (2, hw, hw, 3))
    if ties:
        x = jnp.round(x)
    pads = ((0, 0), (extra // 2, extra - extra // 2), (extra // 2, extra - extra // 2), (0, 0))

    def ref(x):
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, k, k, 1), (1, s, s, 1), pads)

    y0, vjp0 = jax.vjp(ref, x)
    y, vjp = jax.vjp(lambda x: fastops.max_pool(x, k, s, pads), x)
    dy = jax.random.normal(jax.random.key(4), y0.shape)
    assert jnp.array_equal(y, y0)
    # Overlapping windows add into one position in another order: equal up to rounding, and
    # zero exactly where select-and-scatter puts nothing.
    fast, plain = vjp(dy)[0], vjp0(dy)[0]
    np.testing.assert_allclose(fast, plain, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(fast == 0, plain == 0)


def test_max_pool_gradient_reads_its_inputs_from_their_own_buffers():
    """The gradient's first-maximum indices and incoming gradient leave a conditional XLA cannot
    remove (its predicate is always true, which XLA cannot prove), so XLA:CPU does not fuse the
    window maximum and the producers of ``dy`` into the scatter. With ties, the result is still
    select-and-scatter's."""
    x = jnp.round(jax.random.normal(jax.random.key(5), (2, 9, 9, 4)))
    pads = ((0, 0), (0, 0), (0, 0), (0, 0))
    scale = jnp.arange(1.0, 5.0)

    def loss(x, pool):  # dy comes out of element-wise work, as batch norm's gradient does
        return (jnp.tanh(pool(jax.nn.relu(x * 0.5 + 0.1), 3, 2, pads)) * scale).sum()

    def select_and_scatter(x, k, s, pads):
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, k, k, 1), (1, s, s, 1), pads)

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    fast, plain = grad(x, fastops.max_pool), grad(x, select_and_scatter)
    np.testing.assert_allclose(fast, plain, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(fast == 0, plain == 0)
    assert "cond" in str(jax.make_jaxpr(jax.grad(loss), static_argnums=1)(x, fastops.max_pool))
    assert " conditional(" in grad.lower(x, fastops.max_pool).compile().as_text()


def test_pointwise_weight_gradient_is_one_batched_product():
    """An unpadded 1x1 layer's weight gradient (strided too, on its subsampled input) is two
    half-batch products in one dot_general (its batch dimension keeps XLA:CPU off the transposing
    path), not a loop over chunks; a padded one, or an odd number of positions, keeps the chunks."""
    def weight_grad_ops(n, hw, s, pads):
        x = jnp.ones((n, hw, hw, 4))
        dy = jnp.ones(jax.eval_shape(lambda x: fastops._lax_conv(x, jnp.ones((1, 1, 4, 6)), s, pads), x).shape)
        jaxpr = jax.make_jaxpr(lambda x, dy: fastops._matmul_weight_grad(x, dy, 1, s, pads))(x, dy)
        dots = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
        return [e.params["dimension_numbers"][1] for e in dots], any(e.primitive.name == "scan" for e in jaxpr.eqns)

    assert weight_grad_ops(8, 6, 1, ((0, 0), (0, 0))) == ([((0,), (0,))], False)
    assert weight_grad_ops(8, 60, 2, ((0, 0), (0, 0))) == ([((0,), (0,))], False)
    for n, hw, s, pads in ((8, 30, 1, ((1, 0), (0, 0))), (3, 25, 1, ((0, 0), (0, 0)))):
        batch_dims, looped = weight_grad_ops(n, hw, s, pads)
        assert looped and all(b == ((), ()) for b in batch_dims), (n, hw, s, pads)


def test_layers_dispatch_and_fallback():
    """Conv (grouped too) and MaxPool layers take the fast path, with the plain path's results."""
    x = jax.random.normal(jax.random.key(5), (2, 12, 12, 8))
    for layer in (Conv(8, 6, 3, 1, 1, rngs=nnx.Rngs(0)), Conv(8, 6, 3, 2, 1, groups=2, rngs=nnx.Rngs(0)),
                  MaxPool(3, 2, ceil_mode=True)):
        def f(layer, x):
            return jnp.sum(jnp.sin(layer(x)))

        with fastops.use(True):
            fast = nnx.jit(lambda layer, x: nnx.value_and_grad(f, argnums=(0, 1))(layer, x))(layer, x)
        with fastops.use(False):
            plain = nnx.jit(lambda layer, x: nnx.value_and_grad(f, argnums=(0, 1))(layer, x))(layer, x)
        for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(plain)):
            _close(a, b)


def test_whole_model_gradients_match():
    """A small real network (NiN for CIFAR: 5x5 and 3x3 convs, 1x1 convs, max pooling) end to end."""
    model = create_model("nin-cifar", num_classes=10, input_size=16)
    x = jax.random.normal(jax.random.key(6), (1, 16, 16, 3))

    def loss(m, x):
        return jnp.mean(m(x, train=False) ** 2)

    # A new function per setting: the switch is read when tracing, and jit caches traces.
    with fastops.use(True):
        fast = nnx.jit(lambda m, x: nnx.value_and_grad(loss)(m, x))(model, x)
    with fastops.use(False):
        plain = nnx.jit(lambda m, x: nnx.value_and_grad(loss)(m, x))(model, x)
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(plain)):
        _close(a, b, rtol=1e-4)


def test_the_choice_is_part_of_the_compiled_functions_key():
    """One jitted function, called under both choices: traced again, not the stale program."""
    layer = Conv(8, 6, 3, 1, 1, rngs=nnx.Rngs(0))
    traced = []

    @nnx.jit
    def f(layer, x):
        traced.append(fastops.enabled("conv"))
        return layer(x)

    x = jax.random.normal(jax.random.key(7), (2, 12, 12, 8))
    with fastops.use(True):
        fast = f(layer, x)
    with fastops.use(False):
        plain = f(layer, x)
    with fastops.use(True):
        f(layer, x)
    assert traced == [True, False]  # the third call found the first program
    _close(fast, plain)


def test_accelerators_keep_the_plain_ops():
    """Chosen as for a GPU, every layer's training program (forward and gradients) is the plain
    lax program: the CPU formulations (Winograd, patch products, per-group convolutions,
    strided-view pooling) stay off. On the CPU each program differs from the plain one."""
    x = jax.random.normal(jax.random.key(8), (2, 12, 12, 8))
    for layer in (Conv(8, 16, 3, 1, 1, rngs=nnx.Rngs(0)), Conv(8, 6, 3, 2, 1, groups=2, rngs=nnx.Rngs(0)),
                  Conv(8, 16, 1, 1, 0, rngs=nnx.Rngs(0)), MaxPool(3, 2, ceil_mode=True)):
        def step(layer, x):
            return nnx.grad(lambda layer, x: jnp.sum(layer(x) ** 2), argnums=(0, 1))(layer, x)

        def program():
            return nnx.jit(step).lower(layer, x).as_text()

        with fastops.use(False):
            plain = program()
        with fastops.use(True):
            cpu = program()
        with fastops.use(True, platform="gpu"):
            assert fastops.platform() == "gpu"
            gpu = program()
        assert gpu == plain and cpu != plain, type(layer).__name__
    assert fastops.platform() == jax.default_backend() == "cpu"
    with fastops.use(True, platform="gpu"):
        assert all(v == "xla" for v in fastops.choose(3, 1, 64, 64, (56, 56), fastops.platform()).values())


def test_env_switch():
    assert fastops._from_env("0") == frozenset()
    assert fastops._from_env("1") == frozenset(fastops.OPS)
    assert fastops._from_env("pool") == frozenset({"pool"})
    assert fastops._from_env("conv, batchnorm") == frozenset({"conv", "batchnorm"})
    fastops.check_env({"CNNBENCH_FASTOPS": "conv,pool,lrn,batchnorm"})
    with pytest.raises(UsageError, match="names lnr"):
        fastops.check_env({"CNNBENCH_FASTOPS": "conv,lnr"})


@pytest.mark.parametrize("groups, k, s, pads", [(2, 5, 1, ((2, 2), (2, 2))), (2, 3, 1, ((1, 1), (1, 1))),
                                                (3, 3, 2, ((1, 0), (0, 1)))])
def test_grouped_conv_is_one_conv_per_group(groups, k, s, pads):
    """AlexNet's two towers (conv2 5x5, conv4/5 3x3 with groups=2) and an odd case: the drop-in
    splits a grouped convolution into per-group fast convolutions, with lax's outputs and gradients,
    and no grouped convolution is left in the compiled step."""
    x = jax.random.normal(jax.random.key(20), (2, 9, 9, 4 * groups))
    w = jax.random.normal(jax.random.key(21), (k, k, 4, 5 * groups))

    def run(conv):
        def f(x, w, dy):
            y, vjp = jax.vjp(lambda x, w: conv(x, w, (s, s), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                                 feature_group_count=groups), x, w)
            return (y, *vjp(dy))
        return f

    y = lax.conv_general_dilated(x, w, (s, s), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                 feature_group_count=groups)
    dy = jax.random.normal(jax.random.key(22), y.shape)
    expected = jax.jit(run(lax.conv_general_dilated))(x, w, dy)
    got = jax.jit(run(fastops.conv_general_dilated))(x, w, dy)
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        _close(a, b)
    jaxpr = str(jax.make_jaxpr(run(fastops.conv_general_dilated))(x, w, dy))
    assert f"feature_group_count={groups}" not in jaxpr


@pytest.mark.parametrize("size, beta", [(5, 0.75), (4, 0.6)])
def test_lrn_gradient_matches_autodiff_of_the_formula(size, beta):
    """The hand-written LRN gradient against differentiating the paper's formula (an even window
    too, whose channel window is lopsided), with an alpha large enough that the normalisation
    matters; and switched off, the formula itself."""
    x = 3 * jax.random.normal(jax.random.key(23), (2, 5, 5, 11))
    dy = jax.random.normal(jax.random.key(24), x.shape)
    args = (size, 1e-2, beta, 2.0)

    def grads(f):
        return jax.jit(lambda x, dy: (lambda y, vjp: (y, vjp(dy)[0]))(*jax.vjp(lambda x: f(x, *args), x)))(x, dy)

    expected = grads(fastops._lrn_plain)
    for a, b in zip(grads(fastops.lrn), expected):
        _close(a, b)
    with fastops.use(("conv", "pool")):
        assert "custom_vjp" not in str(jax.make_jaxpr(lambda x: fastops.lrn(x, *args))(x))
    assert "custom_vjp" in str(jax.make_jaxpr(lambda x: fastops.lrn(x, *args))(x))


@pytest.mark.parametrize("dims", [(1, 0), (1, 1), (0, 0), (0, 1)])
def test_low_precision_matrix_products_take_bf16_gradients(dims):
    """A dense layer's product under bf16 products: its gradients are bf16 x bf16 products summing
    in float32 too (no float32 product of an upcast operand), equal to float32 arithmetic on the
    rounded operands within the gradients' bf16 rounding, in every contraction layout."""
    import jax.extend.core

    from cnnbench.kernels import products

    ca, cb = dims
    rng = np.random.default_rng(ca * 2 + cb)
    a = jnp.asarray(rng.standard_normal((24, 40) if ca == 1 else (40, 24)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((40, 12) if cb == 0 else (12, 40)), jnp.float32)
    spec = (((ca,), (cb,)), ((), ()))
    ct = jnp.asarray(rng.standard_normal((24, 12)), jnp.float32)

    def grads(a, b, ct):
        return jax.vjp(lambda a, b: products.product(a, b, spec), a, b)[1](ct)

    with fastops.use(products="bfloat16"):
        jaxpr = jax.make_jaxpr(grads)(a, b, ct)
        da, db = jax.jit(grads)(a, b, ct)
    dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
    dots += [e for eq in jaxpr.jaxpr.eqns for sub in jax.extend.core.jaxprs_in_params(eq.params)
             for e in sub.eqns if e.primitive.name == "dot_general"]
    assert len(dots) >= 2
    for e in dots:
        assert [v.aval.dtype for v in e.invars] == [jnp.bfloat16] * 2
        assert e.params["preferred_element_type"] == jnp.float32

    def rounded(v):
        return v.astype(jnp.bfloat16).astype(jnp.float32)

    ref_da, ref_db = jax.vjp(lambda a, b: lax.dot_general(a, b, spec, precision=lax.Precision.HIGHEST),
                             rounded(a), rounded(b))[1](rounded(ct))
    for got, ref in ((da, ref_da), (db, ref_db)):
        assert got.shape == ref.shape and got.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=8e-3, atol=1e-2)
