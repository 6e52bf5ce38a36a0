"""The inference model (batch norm folded into its convolution) computes what the trained model
computes in eval mode, for every family; evaluation, prediction, features and bench use it."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from cnnbench.archs import create_model
from cnnbench.archs.inference import Identity, fold_batch_norm
from cnnbench.archs.layers import BatchNorm

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
    """The model's jitted forward pass in eval mode, its weights arguments (not constants)."""
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x, train=False))
    return lambda x: forward(state, x)


@pytest.mark.parametrize("arch,size,expected", CASES, ids=[c[0] for c in CASES])
def test_folded_model_computes_the_trained_model_in_eval_mode(arch, size, expected):
    model = trained_statistics(create_model(arch, input_size=size, seed=0))
    before = jax.tree.map(np.asarray, nnx.state(model, (nnx.Param, nnx.BatchStat)))
    folded, report = fold_batch_norm(model)
    assert len(report) == expected
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

    model = trained_statistics(create_model("resnet20", seed=0))
    before = jax.tree.map(np.asarray, nnx.state(model, (nnx.Param, nnx.BatchStat)))
    images = jax.random.normal(jax.random.key(3), (8, 32, 32, 3))
    got = np.asarray(probabilities_fn(model, None, make_mesh(None, 2))(images, None))
    want = np.asarray(probabilities(model, images))
    assert got.shape == (8, 10) and np.abs(got - want).max() < 1e-5
    after = jax.tree.map(np.asarray, nnx.state(model, (nnx.Param, nnx.BatchStat)))
    assert jax.tree.all(jax.tree.map(np.array_equal, before, after))
    assert all(getattr(m, "partition", None) is None for _, m in nnx.iter_modules(model))  # not split


def test_fold_refuses_a_model_already_split_over_devices():
    from cnnbench import parallel
    from cnnbench.parallel import make_mesh

    model = create_model("resnet20", seed=0)
    mesh = make_mesh(None, 2)
    parallel.plan(model, parallel.model_size(mesh), mesh)
    with pytest.raises(ValueError, match="before splitting"):
        fold_batch_norm(model)
