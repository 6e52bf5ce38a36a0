"""The AMX convolution kernels (cnnbench.kernels.amx): where they run, they equal XLA's convolution of
the same bf16-rounded operands (forward, input and weight gradients, through fastops' plan); everywhere,
which layers it is chosen for, and that a machine without it says why and keeps the other
formulations."""

import platform
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnnbench.kernels import amx, fastops

needs_amx = pytest.mark.skipif(not amx.available(), reason=f"no AMX kernel here: {amx.reason}")


def _rounded(v):
    return jnp.asarray(v).astype(jnp.bfloat16).astype(jnp.float32)


def _conv(x, w, pads, stride=1):
    return lax.conv_general_dilated(x, w, (stride, stride), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    precision=lax.Precision.HIGHEST)


@needs_amx
@pytest.mark.parametrize("n, hw, cin, cout, k, pads", [
    (3, 9, 32, 32, 3, ((1, 1), (1, 1))),      # one 32-channel block each way, "same"
    (2, 14, 64, 96, 3, ((1, 1), (1, 1))),     # several blocks; 14x16 padded grid: a partial last 32-pixel block
    (2, 7, 48, 40, 3, ((1, 1), (1, 1))),      # channels padded to 64 in, 64 out (cut back to 40)
    (2, 13, 64, 64, 5, ((2, 2), (2, 2))),     # 5x5 (AlexNet's conv2)
    (2, 10, 32, 64, 3, ((0, 0), (0, 0))),     # "valid"
    (2, 11, 32, 32, 3, ((0, 2), (2, 1))),     # lopsided padding up to k - 1
    (5, 6, 32, 64, 2, ((0, 1), (1, 0))),      # an even kernel; more images than threads
    (1, 4, 512, 512, 3, ((1, 1), (1, 1))),    # 7x7x512-like: weights in several output groups; one image
    (3, 40, 64, 32, 3, ((1, 1), (1, 1))),     # weight gradient: an image in several chunks of pixels
    (9, 5, 32, 32, 3, ((1, 1), (1, 1))),      # weight gradient: several images a chunk, split by images
    (2, 7, 64, 96, 1, ((0, 0), (0, 0))),      # 1x1 (ResNet's bottlenecks): one run of C values a pixel
    (3, 6, 48, 40, 1, ((0, 0), (0, 0))),      # 1x1 on 48 channels: a tile row reads 16 values of the next pixel
    (2, 5, 528, 128, 1, ((0, 0), (0, 0))),    # 1x1 on GoogLeNet's 528 channels (17 tiles a pixel)
])
def test_forward_and_input_gradient_equal_xla_on_bf16_operands(n, hw, cin, cout, k, pads):
    rng = np.random.default_rng(n * hw + cin)
    x = jnp.asarray(rng.standard_normal((n, hw, hw + 1, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin), jnp.float32)
    y = jax.jit(lambda x, w: amx.conv(x, w, 1, pads))(x, w)
    expected = _conv(_rounded(x), _rounded(w), pads)
    assert y.shape == expected.shape and y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y), np.asarray(expected), rtol=0, atol=2e-5 * float(jnp.abs(expected).max()))
    assert float(jnp.abs(y).max()) > 0.1  # not zeros: real sums
    # the bf16 output (what the layers take): the same sums, each rounded once
    low = jax.jit(lambda x, w: amx.conv(x, w, 1, pads, jnp.bfloat16))(x, w)
    assert low.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(low), np.asarray(y.astype(jnp.bfloat16)))

    # through the layer's plan: the input gradient turns the kernel round and runs it again; the
    # weight gradient packs the input and the output gradient its own way
    plan = {"forward": "amx", "input_grad": "amx", "weight_grad": "amx"}
    dy = jnp.asarray(rng.standard_normal(expected.shape), jnp.float32)
    dx, dw = jax.jit(lambda x, w, dy: jax.vjp(lambda x, w: fastops.conv(x, w, 1, pads, plan), x, w)[1](dy))(x, w, dy)
    ref_dx, ref_dw = jax.vjp(lambda x, w: _conv(x, w, pads), _rounded(x), _rounded(w))[1](_rounded(dy))
    for got, ref in ((dx, ref_dx), (dw, ref_dw)):
        assert got.shape == ref.shape and got.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=0, atol=2e-5 * float(jnp.abs(ref).max()))
    # the plan keeps the input in bf16 for the weight gradient; from float32 operands (the kernel
    # rounding them itself) it is the same bit for bit
    from_f32 = jax.jit(lambda x, dy: amx.weight_grad(x, dy, k, pads))(x, dy)
    np.testing.assert_array_equal(np.asarray(from_f32), np.asarray(dw))


@needs_amx
@pytest.mark.parametrize("n, hw, cin, cout, k, s, pads", [
    (2, 30, 3, 64, 7, 2, ((3, 3), (3, 3))),    # ResNet's stem: a 21-value run a kernel row, padded to 32
    (2, 35, 3, 64, 11, 4, ((2, 2), (2, 2))),   # AlexNet's conv1, stride 4
    (3, 14, 64, 128, 3, 2, ((1, 1), (1, 1))),  # ResNet's strided 3x3: a 7-pixel row in a 32-pixel block
    (2, 40, 32, 32, 3, 2, ((1, 1), (1, 1))),   # rows of 20 outputs: one block of 32 a row
    (1, 70, 32, 32, 3, 2, ((1, 1), (1, 1))),   # rows of 35 outputs: a row's first block stored straight from the tiles
    (2, 9, 3, 32, 3, 1, ((1, 1), (1, 1))),     # VGG's conv1: an RGB layer at stride 1
])
def test_strided_and_few_channel_layers_equal_xla(n, hw, cin, cout, k, s, pads):
    rng = np.random.default_rng(hw + k)
    x = jnp.asarray(rng.standard_normal((n, hw, hw - 1, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin), jnp.float32)
    y = jax.jit(lambda x, w: amx.conv(x, w, s, pads))(x, w)
    expected = _conv(_rounded(x), _rounded(w), pads, s)
    assert y.shape == expected.shape
    np.testing.assert_allclose(np.asarray(y), np.asarray(expected), rtol=0, atol=2e-5 * float(jnp.abs(expected).max()))


@needs_amx
@pytest.mark.parametrize("hw", [14, 15])
def test_a_strided_1x1_layers_gradients_equal_xla(hw):
    """ResNet's projections (1x1, stride 2, on an even and an odd map): both gradients from the
    stride-1 kernel on the pixels the stride reads, spread back between zeros."""
    rng = np.random.default_rng(hw)
    x = jnp.asarray(rng.standard_normal((3, hw, hw, 64)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((1, 1, 64, 96)) / 8, jnp.float32)
    none = ((0, 0), (0, 0))
    plan = fastops.choose(1, 2, 64, 96, (8, 8), "cpu", none, amx_products=True)
    assert plan["input_grad"] == plan["weight_grad"] == "amx"
    y, pull = jax.vjp(lambda x, w: fastops.conv(x, w, 2, none, plan), x, w)
    dy = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    dx, dw = jax.jit(pull)(dy)
    ref_dx, ref_dw = jax.vjp(lambda x, w: _conv(x, w, none, 2), _rounded(x), _rounded(w))[1](_rounded(dy))
    for got, ref in ((dx, ref_dx), (dw, ref_dw)):
        assert got.shape == ref.shape and got.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=0, atol=2e-5 * float(jnp.abs(ref).max()))
    assert float(jnp.abs(dx[:, 1::2]).max()) == 0 and float(jnp.abs(dx[:, ::2]).max()) > 0.1


@needs_amx
@pytest.mark.parametrize("n, hw, cin, cout, k, s, pads", [
    (2, 16, 64, 64, 3, 2, ((1, 1), (1, 1))),   # ResNet's 3x3/2: 2x2 on 256 channels
    (3, 15, 64, 96, 3, 2, ((1, 1), (1, 1))),   # an odd map: the last block half padding
    (2, 13, 32, 64, 5, 2, ((2, 1), (1, 2))),   # 5x5/2, lopsided padding: 3x3 blocks
    (1, 14, 32, 32, 3, 3, ((0, 0), (0, 0))),   # stride 3 (one block a tap), no padding
])
def test_strided_layers_gradients_by_space_to_depth_equal_xla(n, hw, cin, cout, k, s, pads):
    """A strided layer's gradients as those of the stride-1 layer space-to-depth makes of it, on the
    kernel, carried back through the rearrangements: XLA's gradients of the strided layer."""
    rng = np.random.default_rng(hw + k + s)
    x = jnp.asarray(rng.standard_normal((n, hw, hw + 1, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin), jnp.float32)
    plan = {"forward": "amx", "input_grad": "amx_s2d", "weight_grad": "amx_s2d"}
    y, pull = jax.vjp(lambda x, w: fastops.conv(x, w, s, pads, plan), x, w)
    dy = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    dx, dw = jax.jit(pull)(dy)
    ref_dx, ref_dw = jax.vjp(lambda x, w: _conv(x, w, pads, s), _rounded(x), _rounded(w))[1](_rounded(dy))
    for got, ref in ((dx, ref_dx), (dw, ref_dw)):
        assert got.shape == ref.shape and got.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=0, atol=2e-5 * float(jnp.abs(ref).max()))
        assert float(jnp.abs(ref).max()) > 0.1


@needs_amx
@pytest.mark.parametrize("n, hw, cin, cout, k, s, pads", [
    (2, 30, 3, 64, 7, 2, ((3, 3), (3, 3))),    # ResNet's stem
    (1, 160, 3, 64, 7, 2, ((3, 3), (3, 3))),   # an image in several chunks of pixels (80x81 > 5440)
    (3, 17, 3, 32, 3, 1, ((1, 1), (1, 1))),    # VGG's conv1
    (2, 35, 3, 64, 11, 4, ((2, 2), (2, 2))),   # AlexNet's conv1 (121 values a row: 4 tiles)
    (2, 12, 16, 40, 3, 2, ((1, 0), (1, 1))),   # lopsided padding; output channels cut back
    (40, 6, 1, 32, 5, 1, ((2, 2), (2, 2))),    # one channel (LeNet); more images than threads
])
def test_weight_gradient_by_kernel_rows_equals_xla(n, hw, cin, cout, k, s, pads):
    """An RGB (few-channel) layer's weight gradient, any stride, through fastops' plan."""
    rng = np.random.default_rng(hw + k + cin)
    x = jnp.asarray(rng.standard_normal((n, hw, hw + 1, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, cin, cout)), jnp.float32)
    y = _conv(x, w, pads, s)
    dy = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    plan = {"forward": "xla", "input_grad": "xla", "weight_grad": "amx_run"}
    dw = jax.jit(lambda x, w, dy: jax.vjp(lambda w: fastops.conv(x, w, s, pads, plan), w)[1](dy)[0])(x, w, dy)
    ref = jax.vjp(lambda w: _conv(_rounded(x), w, pads, s), w)[1](_rounded(dy))[0]
    assert dw.shape == ref.shape
    np.testing.assert_allclose(np.asarray(dw), np.asarray(ref), rtol=0, atol=2e-5 * float(jnp.abs(ref).max()))


@needs_amx
def test_a_bf16_products_model_runs_its_convolutions_on_amx_and_matches_float32():
    """resnet18-like blocks under ``--precision bf16`` (products): the compiled program calls the
    kernel, and its outputs and gradients stay within bf16 rounding of the float32 model's."""
    from flax import nnx

    from cnnbench.archs import create_model

    model = create_model("resnet18", num_classes=10, rngs=nnx.Rngs(0))
    model.eval()
    graph, state = nnx.split(model)
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))

    def logits(state, x):
        return nnx.merge(graph, state)(x)

    bf16 = jax.jit(fastops.within(logits, products="bfloat16"))
    assert amx.BF16_TARGET in bf16.lower(state, x).as_text()
    got, want = bf16(state, x), jax.jit(logits)(state, x)
    assert float(jnp.abs(got - want).max()) <= 0.05 * float(jnp.abs(want).max())
    assert int(jnp.argmax(got[0])) == int(jnp.argmax(want[0])) or float(jnp.abs(got - want).max()) < 1e-2


def test_choose_takes_the_kernel_for_stride_1_layers_with_bf16_products(monkeypatch):
    """The policy, on any machine (availability pretended): with bf16 products every layer of 2x2 to
    11x11 (and 1x1 at stride 1) runs forward on the kernel, and a stride-1 layer of 16+ channels its gradients too;
    never for float32 products, strided 1x1 layers (products of the subsampled input), wide padding,
    or an accelerator."""
    monkeypatch.setattr(amx, "available", lambda: True)
    same = ((1, 1), (1, 1))
    plan = fastops.choose(3, 1, 64, 64, (56, 56), "cpu", same, amx_products=True)
    assert plan == {"forward": "amx", "input_grad": "amx", "weight_grad": "amx"}
    assert fastops.choose(5, 1, 64, 192, (27, 27), "cpu", ((2, 2), (2, 2)), amx_products=True)["forward"] == "amx"
    assert fastops.choose(3, 1, 64, 64, (56, 56), "cpu", same, amx_products=False)["forward"] == "winograd"
    # strided layers: the forward pass; on a 28x28+ output of 64+ channels each way the gradients
    # too, by space-to-depth; on smaller maps the gradients as before
    assert fastops.choose(3, 2, 64, 128, (28, 28), "cpu", same, amx_products=True) == {
        "forward": "amx", "input_grad": "amx_s2d", "weight_grad": "amx_s2d"}
    assert fastops.choose(3, 2, 256, 256, (14, 14), "cpu", same, amx_products=True) == {
        "forward": "amx", "input_grad": "matmul", "weight_grad": "matmul"}
    # an RGB layer: its weight gradient by kernel rows (7x7x3: 21 values a row), any stride
    assert fastops.choose(7, 2, 3, 64, (112, 112), "cpu", ((3, 3), (3, 3)), amx_products=True) == {
        "forward": "amx", "input_grad": "matmul", "weight_grad": "amx_run"}
    assert fastops.choose(3, 1, 3, 64, (224, 224), "cpu", same, amx_products=True) == {
        "forward": "amx", "input_grad": "matmul", "weight_grad": "amx_run"}
    # 1x1 at stride 1 (16+ channels each way): every pass; strided, or on fewer channels: products
    none = ((0, 0), (0, 0))
    assert fastops.choose(1, 1, 256, 64, (56, 56), "cpu", none, amx_products=True) == {
        "forward": "amx", "input_grad": "amx", "weight_grad": "amx"}
    assert fastops.choose(1, 2, 256, 512, (28, 28), "cpu", none, amx_products=True) == {
        "forward": "matmul", "input_grad": "amx", "weight_grad": "amx"}
    assert fastops.choose(1, 1, 64, 8, (28, 28), "cpu", none, amx_products=True)["forward"] == "matmul"
    assert fastops.choose(1, 1, 256, 64, (56, 56), "cpu", none, amx_products=False)["forward"] == "matmul"
    assert fastops.choose(3, 1, 64, 64, (58, 58), "cpu", ((3, 3), (3, 3)), amx_products=True)["forward"] != "amx"
    assert fastops.choose(3, 1, 64, 64, (56, 56), "gpu", same, amx_products=True)["forward"] == "xla"
    with fastops.use(products="bfloat16"):  # the default follows the products in force
        assert fastops.choose(3, 1, 64, 64, (56, 56), "cpu", same)["forward"] == "amx"
    monkeypatch.setattr(amx, "available", lambda: False)
    assert fastops.choose(3, 1, 64, 64, (56, 56), "cpu", same, amx_products=True)["forward"] == "winograd"


@pytest.mark.skipif(shutil.which("g++") is None or platform.machine() != "x86_64", reason="needs g++ on x86-64")
def test_the_kernel_source_builds():
    """Wherever g++ can build it, the kernel builds (on a CPU without AMX too: only running it needs
    AMX), so a broken source fails here instead of every AMX test skipping with "did not build"."""
    try:
        path = amx.build()
    except subprocess.CalledProcessError as e:
        pytest.fail(f"amx_conv.cc did not build:\n{e.stderr[-3000:]}")
    assert path.stat().st_size > 0


@pytest.mark.parametrize("env, flags, reason", [
    ({"CNNBENCH_AMX": "0"}, "fpu avx512f amx_bf16 amx_tile", "CNNBENCH_AMX=0"),
    ({}, "fpu avx2 avx512f avx512_bf16", "this CPU has no amx_bf16"),
])
def test_without_amx_it_says_why_and_stays_off(env, flags, reason, monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    read = amx.cpu_flags
    monkeypatch.setattr(amx, "cpu_flags", lambda: read(str(cpuinfo)))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    amx.available.cache_clear()
    try:
        assert amx.available() is False and amx.reason == reason
    finally:
        monkeypatch.undo()
        amx.available.cache_clear()
        amx.available()


def test_a_kernel_that_does_not_build_is_reported_not_raised(monkeypatch, tmp_path):
    """No compiler (or a failed build): the kernel is off, with the cause in one line."""
    monkeypatch.setattr(amx, "cpu_flags", lambda: {"amx_bf16"})
    monkeypatch.setenv("CNNBENCH_CACHE_DIR", str(tmp_path))
    build = amx.build
    monkeypatch.setattr(amx, "build", lambda: build("no-such-compiler-cnnbench"))
    amx.available.cache_clear()
    try:
        assert amx.available() is False
        assert amx.reason.startswith("the AMX kernel did not build: ") and "\n" not in amx.reason
        # --precision bf16 says so in one line (the forms it falls back to still run)
        from cnnbench.train.step import precision_plan
        plan = precision_plan("bf16", "cpu", bf16_units=True)
        assert plan.products == "bfloat16" and "AMX convolution is off (the AMX kernel did not build" in plan.note
    finally:
        monkeypatch.undo()
        amx.available.cache_clear()
        amx.available()


@needs_amx
def test_on_a_mesh_each_device_runs_the_kernel_on_its_own_images():
    """Data parallel over 4 devices: the layers call the kernel inside ``shard_map`` on each
    device's images (an opaque custom call in XLA's own partitioning would gather the batch), with
    no collective in the forward pass, and the outputs of one device."""
    from flax import nnx

    from cnnbench import parallel
    from cnnbench.archs import create_model
    from cnnbench.parallel.collectives import collectives

    model = create_model("resnet18", num_classes=10, input_size=64, seed=0)
    model.eval()
    images = jax.random.normal(jax.random.key(2), (8, 64, 64, 3))
    graph, state = nnx.split(model)
    one = jax.jit(fastops.within(lambda s, x: nnx.merge(graph, s)(x), products="bfloat16"))(state, images)

    mesh = parallel.make_mesh(4, 1)
    split = parallel.plan(create_model("resnet18", num_classes=10, input_size=64, seed=0), 1, mesh)
    split.eval()
    graph, state = nnx.split(split)
    forward = jax.jit(fastops.within(lambda s, x: nnx.merge(graph, s)(x), products="bfloat16"),
                      out_shardings=parallel.batch_sharding(mesh))
    args = (parallel.place(state, mesh), jax.device_put(images, parallel.batch_sharding(mesh)))
    compiled = forward.lower(*args).compile().as_text()
    assert amx.BF16_TARGET in compiled and collectives(compiled) == []
    np.testing.assert_allclose(np.asarray(forward(*args)), np.asarray(one), rtol=0, atol=1e-5)


@needs_amx
def test_the_inference_program_packs_its_kernels_once_with_the_same_outputs():
    """``Precision.prepare_inference`` with bf16 products packs the kernel of every layer whose forward
    pass runs on AMX (resnet18: the 7x7 stem and the 16 3x3 layers) once, and rounds the 1x1
    projections' kernels (products) to bf16 once, so the compiled program no longer re-packs them: its outputs are the unpacked program's, bit for
    bit, on one device and on a mesh; traced without bf16 products the layers take their float32
    kernels as before."""
    from flax import nnx

    from cnnbench import parallel
    from cnnbench.archs import create_model
    from cnnbench.archs.inference import inference_model
    from cnnbench.archs.layers import Conv
    from cnnbench.train.step import precision_plan

    base, _ = inference_model(create_model("resnet18", num_classes=10, input_size=64, seed=0), (64, 64, 3))
    plan = precision_plan("bf16", "cpu", bf16_units=True)
    plain = nnx.clone(base)
    plan.prepare_inference(plain)  # the dense kernels rounded, as the packed one's
    for conv in (m for _, m in nnx.iter_modules(plain) if isinstance(m, Conv)):
        conv.packed = None
    packed = nnx.clone(base)
    plan.prepare_inference(packed)
    kernels = {m.k for _, m in nnx.iter_modules(packed) if isinstance(m, Conv) and m.packed is not None}
    assert sum(isinstance(m, Conv) and m.packed is not None for _, m in nnx.iter_modules(packed)) == 17
    assert kernels == {7, 3}
    pointwise = [m for _, m in nnx.iter_modules(packed) if isinstance(m, Conv) and m.k == 1]
    assert len(pointwise) == 3 and all(m.kernel[...].dtype == jnp.bfloat16 for m in pointwise)  # products' operands
    images = jax.random.normal(jax.random.key(3), (4, 64, 64, 3))

    def program(model, products="bfloat16"):
        graph, state = nnx.split(model)
        return jax.jit(fastops.within(lambda s, x: nnx.merge(graph, s)(x), products=products)), state

    repack = "dims = [0, 1, 4, 2, 5, 3]"  # amx.pack's transpose
    (fwd_plain, s_plain), (fwd_packed, s_packed) = program(plain), program(packed)
    assert repack in fwd_plain.lower(s_plain, images).as_text()
    assert repack not in fwd_packed.lower(s_packed, images).as_text()
    want = np.asarray(fwd_plain(s_plain, images))
    np.testing.assert_array_equal(np.asarray(fwd_packed(s_packed, images)), want)

    mesh = parallel.make_mesh(2, 1)
    split = parallel.plan(nnx.clone(packed), 1, mesh)
    graph, state = nnx.split(split)
    forward = jax.jit(fastops.within(lambda s, x: nnx.merge(graph, s)(x), products="bfloat16"),
                      out_shardings=parallel.batch_sharding(mesh))
    args = (parallel.place(state, mesh), jax.device_put(images, parallel.batch_sharding(mesh)))
    assert repack not in forward.lower(*args).as_text()
    np.testing.assert_array_equal(np.asarray(forward(*args)), want)

    f32_packed, f32_plain = program(packed, None), program(plain, None)
    np.testing.assert_array_equal(np.asarray(f32_packed[0](f32_packed[1], images)),
                                  np.asarray(f32_plain[0](f32_plain[1], images)))
