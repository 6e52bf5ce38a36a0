"""The inference model (batch norm folded into its convolution, dense kernels stored [out, in] on a
CPU) computes what the trained model computes in eval mode, for every family; evaluation,
prediction, features and bench use it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cnnbench.archs import create_model
from cnnbench.archs.inference import Identity, fold_batch_norm, inference_model
from cnnbench.archs.layers import BatchNorm, Dense

#: one network of every family and block shape, at a small input it accepts, with the number of
#: batch norms that follow a convolution (all of them: every one is folded)
CASES = [("lenet5-1998", 32, 0), ("mlp2", 32, 0), ("nin-cifar", 32, 0), ("vgg11-bn", 32, 8),
         ("googlenet-bn", 32, 57), ("resnet50", 32, 53), ("resnet20", 32, 19), ("plain20", 32, 19)]


def trained_statistics(model):
    """Batch-norm statistics and affine parameters as training leaves them (not 0 and 1)."""
    for index, (_, module) in enumerate(nnx.iter_modules(model)):
        if isinstance(module, BatchNorm):
            k1, k2, k3, k4 = jax.random.split(jax.random.key(index), 4)
            shape = module.mean.shape
            module.mean[...] = 0.3 * jax.random.normal(k1, shape)
            module.var[...] = jax.random.uniform(k2, shape, minval=0.2, maxval=3.0)
            module.scale[...] = jax.random.uniform(k3, shape, minval=0.5, maxval=1.5)
            module.bias[...] = 0.2 * jax.random.normal(k4, shape)
    return model


def eval_mode(model):
    """The model's jitted forward pass in eval mode, its weights arguments (not constants), with
    XLA's own convolutions (the fold is algebra; they compile fastest; evaluation's fast forms are
    checked below)."""
    from cnnbench.kernels import fastops

    graphdef, state = nnx.split(model)
    forward = jax.jit(fastops.within(lambda state, x: nnx.merge(graphdef, state)(x, train=False), on=False))
    return lambda x: forward(state, x)


@pytest.mark.parametrize("arch,size,expected", CASES, ids=[c[0] for c in CASES])
def test_folded_model_computes_the_trained_model_in_eval_mode(arch, size, expected):
    model = trained_statistics(create_model(arch, input_size=size, seed=0))
    before = jax.tree.map(np.asarray, nnx.state(model, (nnx.Param, nnx.BatchStat)))
    folded, report = inference_model(model)  # (on a CPU: the dense kernels re-laid out too)
    assert len(report) == expected
    dense = [m for _, m in nnx.iter_modules(folded) if isinstance(m, Dense)]
    assert all(m.transposed and m.kernel.shape == (m.out_features, m.in_features) for m in dense)
    bns = sum(isinstance(m, BatchNorm) for _, m in nnx.iter_modules(model))
    left = sum(isinstance(m, BatchNorm) for _, m in nnx.iter_modules(folded))
    assert left == bns - expected and sum(isinstance(m, Identity) for _, m in nnx.iter_modules(folded)) == expected
    x = jax.random.normal(jax.random.key(1), (2, size, size, model.in_channels))
    want, got = (np.asarray(eval_mode(m)(x), np.float64) for m in (model, folded))
    scale = np.abs(want).max()
    assert scale > 0 and np.abs(got - want).max() <= 2e-5 * scale, (np.abs(got - want).max(), scale)
    # the trained model is untouched (fold works on a copy)
    assert jax.tree.all(jax.tree.map(np.array_equal, before, jax.tree.map(np.asarray, nnx.state(model, (nnx.Param, nnx.BatchStat)))))


@pytest.mark.parametrize("arch", ["alexnet", "alexnet-owt", "zfnet", "vgg16", "googlenet", "nin"])
def test_networks_without_batch_norm_are_left_as_they_are(arch):
    model = create_model(arch)
    folded, report = fold_batch_norm(model)
    assert len(report) == 0 and not any(isinstance(m, Identity) for _, m in nnx.iter_modules(folded))


def test_a_layer_being_read_keeps_its_own_output():
    """Features at a convolution are its output before batch norm: that pair is not folded, the
    others are, and the output read is the trained model's."""
    from cnnbench.viz.taps import Taps

    model = trained_statistics(create_model("resnet20", seed=0))
    shape = (32, 32, 3)
    name = Taps(model, shape).resolve("features.layer2.0.conv1")
    folded, report = fold_batch_norm(model, keep=(name,))
    assert len(report) == 18 and name not in {conv for conv, _ in report}
    x = jax.random.normal(jax.random.key(2), (2, *shape))
    want_taps, got_taps = Taps(model, shape), Taps(folded, shape)
    (want, want_store), (got, got_store) = (t.apply(t.state, x, [name, "features.layer3"])
                                            for t in (want_taps, got_taps))
    for a, b in ((want, got), (want_store[name], got_store[name]),
                 (want_store["features.layer3"], got_store["features.layer3"])):
        assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 2e-5 * np.abs(np.asarray(a)).max()


def test_evaluation_runs_the_inference_model_and_leaves_the_run_model_alone():
    from cnnbench.eval.evaluate import probabilities_fn
    from cnnbench.parallel import make_mesh
    from cnnbench.train.step import probabilities

    graphdef, state = nnx.split(trained_statistics(create_model("resnet20", seed=0)))
    model = nnx.merge(graphdef, jax.tree.map(np.array, state))  # NumPy weights, as a restored run's
    before = jax.tree.map(np.copy, nnx.state(model, (nnx.Param, nnx.BatchStat)))
    images = jax.random.normal(jax.random.key(3), (8, 32, 32, 3))
    want = np.asarray(probabilities(model, images))
    for _ in range(2):  # e.g. centre crop, then 10 crops: each folds the run's model afresh
        got = np.asarray(probabilities_fn(model, None, make_mesh(None, 2))(images, None))
        assert got.shape == (8, 10) and np.abs(got - want).max() < 1e-5
    after = jax.tree.map(np.asarray, nnx.state(model, (nnx.Param, nnx.BatchStat)))
    assert jax.tree.all(jax.tree.map(np.array_equal, before, after))
    assert all(getattr(m, "partition", None) is None for _, m in nnx.iter_modules(model))  # not split


def test_fold_leaves_a_model_of_numpy_weights_alone():
    """A restored checkpoint's weights are NumPy arrays, which ``[...] =`` would change in place in
    the original too (a clone shares them): the fold makes new arrays instead."""
    model = trained_statistics(create_model("resnet20", seed=0))
    graphdef, state = nnx.split(model)
    host = nnx.merge(graphdef, jax.tree.map(np.array, state))
    before = jax.tree.map(np.copy, nnx.state(host, (nnx.Param, nnx.BatchStat)))
    folded, report = fold_batch_norm(host)
    assert len(report) == 19
    after = nnx.state(host, (nnx.Param, nnx.BatchStat))
    assert jax.tree.all(jax.tree.map(np.array_equal, before, jax.tree.map(np.asarray, after)))
    x = jax.random.normal(jax.random.key(4), (2, 32, 32, 3))
    want, got = eval_mode(host)(x), eval_mode(folded)(x)
    assert np.abs(np.asarray(got) - np.asarray(want)).max() <= 2e-5 * np.abs(np.asarray(want)).max()


def test_fold_refuses_a_model_already_split_over_devices():
    from cnnbench import parallel
    from cnnbench.parallel import make_mesh

    model = create_model("resnet20", seed=0)
    mesh = make_mesh(None, 2)
    parallel.plan(model, parallel.model_size(mesh), mesh)
    with pytest.raises(ValueError, match="before splitting"):
        fold_batch_norm(model)


# --------------------------------------------------------------------------- bf16 products on a CPU

def test_bf16_products_multiply_bf16_operands_into_float32_sums():
    """Under --precision bf16 on a CPU a float32 product takes bf16 operands and sums in float32:
    exactly the float64 product of the bf16-rounded operands, up to float32 summation; the
    compiled program's product has bf16 operands and a float32 result."""
    from cnnbench.kernels import fastops
    from cnnbench.kernels.products import product

    a = jax.random.normal(jax.random.key(0), (64, 300))
    b = jax.random.normal(jax.random.key(1), (300, 48))
    dims = (((1,), (0,)), ((), ()))
    f = jax.jit(fastops.within(lambda a, b: product(a, b, dims), products="bfloat16"))
    got = np.asarray(f(a, b))
    rounded = [np.asarray(v.astype(jnp.bfloat16).astype(jnp.float32), np.float64) for v in (a, b)]
    want, plain = rounded[0] @ rounded[1], np.asarray(a, np.float64) @ np.asarray(b, np.float64)
    assert got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-5 * np.abs(want).max()
    assert np.abs(got - plain).max() > 1e-4 * np.abs(plain).max()  # (it did round the operands)
    text = f.lower(a, b).as_text()
    assert "bf16" in text and "-> tensor<64x48xf32>" in text
    # without the choice, float32 stays float32
    assert "bf16" not in jax.jit(lambda a, b: product(a, b, dims)).lower(a, b).as_text()


def test_bf16_precision_on_a_cpu_keeps_float32_layers_and_close_results():
    from cnnbench.train.step import precision_plan

    plan = precision_plan("bf16", "cpu", bf16_units=True)
    assert (plan.compute, plan.products, plan.note) == (jnp.float32, "bfloat16", None)
    assert "no bf16 instructions" in precision_plan("bf16", "cpu", bf16_units=False).note
    assert precision_plan("bf16", "gpu").compute == jnp.bfloat16 and precision_plan("bf16", "gpu").products is None
    assert precision_plan("fp32", "cpu").products is None

    model = trained_statistics(create_model("resnet20", seed=0))
    graphdef, state = nnx.split(model)
    x = jax.random.normal(jax.random.key(4), (2, 32, 32, 3))

    def loss(state, x):
        return jnp.mean(nnx.merge(graphdef, state)(x, train=False) ** 2)

    (l32, g32), (l16, g16) = (jax.jit(fn)(state, x) for fn in (jax.value_and_grad(loss),
                                                               plan.step(jax.value_and_grad(loss))))
    assert abs(float(l16) / float(l32) - 1) < 0.02
    # bf16 operands (8 significant bits) through 19 convolutions: every gradient points where
    # float32's does (cosine; a wrong product, an operand on the wrong axis, would not), its size
    # within a few per cent
    for a, b in zip(jax.tree.leaves(g32), jax.tree.leaves(g16)):
        assert b.dtype == np.float32
        a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
        cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        assert cosine > 0.98 and abs(np.linalg.norm(b) / np.linalg.norm(a) - 1) < 0.05, cosine


def test_bf16_inference_rounds_dense_kernels_once_with_bit_identical_outputs():
    """With bf16 products the inference model stores its dense kernels in bf16 once (what every
    product would round them to), and computes exactly what the per-call rounding computed;
    convolution kernels and every other weight stay float32. Without low-precision products
    nothing changes."""
    from cnnbench.train.step import precision_plan

    plan = precision_plan("bf16", "cpu", bf16_units=True)
    model, _ = fold_batch_norm(create_model("alexnet-owt", num_classes=10, input_size=67, seed=0))
    prepared = nnx.clone(model)
    plan.prepare_inference(prepared)
    kinds = {}
    for path, value in nnx.to_flat_state(nnx.state(prepared, nnx.Param)):
        kinds.setdefault(path[-2], set()).add((path[-1], str(value[...].dtype)))
    assert kinds["fc6"] == kinds["fc7"] == kinds["fc8"] == {("kernel", "bfloat16"), ("bias", "float32")}
    assert all(dtype == "float32" for name, found in kinds.items() if not name.startswith("fc")
               for _, dtype in found)
    x = jax.random.normal(jax.random.key(5), (2, 67, 67, 3))

    def forward(model):
        graphdef, state = nnx.split(model)
        return np.asarray(jax.jit(plan.step(lambda s, x: nnx.merge(graphdef, s)(x, train=False)))(state, x))

    assert np.array_equal(forward(prepared), forward(model))
    unchanged = nnx.clone(model)
    precision_plan("fp32", "cpu").prepare_inference(unchanged)
    assert all(v[...].dtype == np.float32 for _, v in nnx.to_flat_state(nnx.state(unchanged, nnx.Param)))


def test_transposed_dense_kernels_compute_the_same_outputs():
    """The inference model stores dense kernels [out, in]: same parameters, same trace, the same
    outputs within float32 rounding (the product sums in another order), a second call changes
    nothing, and a model split over devices refuses it (its kernels are cut along the last axis)."""
    from cnnbench.archs.inference import transpose_dense
    from cnnbench.archs.trace import count_params, trace_model
    from cnnbench.parallel import plan

    model = create_model("alexnet-owt", num_classes=10, input_size=67, seed=0)
    moved = nnx.clone(model)
    assert transpose_dense(moved) == 3 and transpose_dense(moved) == 0
    assert moved.head.fc6.kernel[...].shape == (4096, 9216) and model.head.fc6.kernel[...].shape == (9216, 4096)
    np.testing.assert_array_equal(moved.head.fc8.kernel[...], np.asarray(model.head.fc8.kernel[...]).T)
    assert count_params(moved) == count_params(model)
    shape = (67, 67, 3)
    assert [(r.name, r.output_shape, r.macs) for r in trace_model(moved, shape)] == \
        [(r.name, r.output_shape, r.macs) for r in trace_model(model, shape)]
    x = jax.random.normal(jax.random.key(6), (3, *shape))

    def run(m):  # the weights as arguments: closed over, XLA folded 244 MB of constants (35 s)
        graphdef, state = nnx.split(m)
        return np.asarray(jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, train=False))(state, x))

    want, got = run(model), run(moved)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    with pytest.raises(ValueError, match="cannot split"):
        plan(moved, 2)


def test_dense_kernels_keep_their_layout_on_an_accelerator_or_split_over_devices():
    model = create_model("alexnet-owt", num_classes=10, input_size=67, seed=0)
    for kwargs in ({"platform": "gpu"}, {"platform": "tpu"}, {"platform": "cpu", "ways": 2}):
        copy, _ = inference_model(model, **kwargs)
        assert not copy.head.fc6.transposed and copy.head.fc6.kernel.shape == (9216, 4096), kwargs
    copy, _ = inference_model(model)
    assert copy.head.fc6.transposed and copy.head.fc6.kernel.shape == (4096, 9216)
    np.testing.assert_array_equal(copy.head.fc6.kernel_in_out(), model.head.fc6.kernel[...])
    assert not model.head.fc6.transposed  # the trained model is left as it is


def test_bf16_products_of_transposed_dense_kernels_match_the_trained_layout():
    """With bf16 products (--precision bf16 on a CPU) the [out, in] product rounds the same operands:
    outputs equal the [in, out] layer's within float32 summation order."""
    from cnnbench.kernels import fastops
    from cnnbench.train.step import precision_plan

    model = create_model("mlp2", num_classes=10, input_size=32, seed=0)
    x = jax.random.normal(jax.random.key(3), (5, 32, 32, 3))
    outs = []
    for moved in (False, True):
        copy = nnx.clone(model)
        if moved:
            copy, _ = inference_model(copy)
        plan = precision_plan("bf16", "cpu", bf16_units=True)
        plan.prepare_inference(copy)
        graphdef, state = nnx.split(copy)
        outs.append(np.asarray(jax.jit(plan.step(lambda s, x: nnx.merge(graphdef, s)(x, train=False)))(state, x)))
    want, got = outs
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    full = np.asarray(jax.jit(fastops.within(lambda x: model(x, train=False), products=None))(x))
    assert np.abs(want - full).max() > 1e-5 * np.abs(full).max()  # (bf16 operands did change the outputs)


@pytest.mark.parametrize("arch", ["resnet20", "googlenet-bn"])
def test_the_cpu_inference_program_takes_each_devices_images_in_pieces_with_the_same_outputs(arch):
    """On a CPU the inference program's convolutional base takes each device's images CPU_CHUNK at a
    time (a loop in the compiled program); the outputs are the whole batch's, on one device and on a
    2-device mesh (each piece split over the devices as the batch is: no collective), and for a batch
    the pieces do not divide. An accelerator's program takes the batch whole. (XLA's own
    convolutions: the pieces are the model's business, not the layers'; they compile fastest.)"""
    from cnnbench import parallel
    from cnnbench.archs.inference import CPU_CHUNK
    from cnnbench.kernels import fastops
    from cnnbench.parallel.collectives import collectives

    model = trained_statistics(create_model(arch, input_size=32, seed=0))
    assert inference_model(model, platform="gpu")[0].chunk is None
    folded, _ = inference_model(model, devices=2)
    assert folded.chunk == (CPU_CHUNK, 2)
    whole = nnx.clone(folded)
    whole.chunk = None
    x = jax.random.normal(jax.random.key(4), (4 * CPU_CHUNK, 32, 32, 3))

    def program(m):
        graph, state = nnx.split(m)
        return jax.jit(fastops.within(lambda s, x: nnx.merge(graph, s)(x), on=False)), state

    (pieces, state), (one, whole_state) = program(folded), program(whole)
    assert "while" in pieces.lower(state, x).as_text() and "while" not in one.lower(whole_state, x).as_text()
    want = np.asarray(one(whole_state, x))
    np.testing.assert_allclose(np.asarray(pieces(state, x)), want, rtol=0, atol=1e-6 * np.abs(want).max())
    odd = x[:2 * CPU_CHUNK + 1]  # does not divide into pieces of 2 devices: taken whole
    np.testing.assert_array_equal(np.asarray(pieces(state, odd)), np.asarray(one(whole_state, odd)))

    mesh = parallel.make_mesh(2, 1)
    split = parallel.plan(nnx.clone(folded), 1, mesh)
    graph, state = nnx.split(split)
    forward = jax.jit(fastops.within(lambda s, x: nnx.merge(graph, s)(x), on=False),
                      out_shardings=parallel.batch_sharding(mesh))
    args = (parallel.place(state, mesh), jax.device_put(x, parallel.batch_sharding(mesh)))
    compiled = forward.lower(*args).compile().as_text()
    assert "while" in compiled and collectives(compiled) == []
    np.testing.assert_allclose(np.asarray(forward(*args)), want, rtol=0, atol=1e-5 * np.abs(want).max())
