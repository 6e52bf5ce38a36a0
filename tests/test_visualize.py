"""`cnnbench visualize`: layer taps, the maps' defining identities (occlusion, saliency, CAM, FCN),
shapes and ranges, and every subcommand writing a PNG from a run directory."""

import functools
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from click.testing import CliRunner
from flax import nnx

from cnnbench.archs import create_model
from cnnbench.archs.layers import Dense
from cnnbench.cli import cli
from cnnbench.errors import UsageError
from cnnbench.pipeline.ops import NORMALIZATION
from cnnbench.pipeline.preprocess import Finish
from cnnbench.viz import features as feat
from cnnbench.viz import maps
from cnnbench.viz.inputs import Subject
from cnnbench.viz.taps import Taps


def _random_model(arch, size=32, classes=10, seed=0):
    """The architecture with random weights drawn by NumPy: no initialiser is compiled (that takes
    seconds per model on 2 busy cores), and biases and batch-norm statistics are not zero, so
    every identity below is checked with them in play."""
    abstract = nnx.eval_shape(lambda: create_model(arch, num_classes=classes, input_size=size))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = [getattr(k, "key", None) for k in path if hasattr(k, "key")][-1]
        if leaf.dtype == np.uint32:
            return np.zeros(leaf.shape, np.uint32)
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.key(seed)
        if name == "kernel":
            return rng.normal(0, 1 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape).astype(np.float32)
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        return rng.normal(0, 0.1, leaf.shape).astype(np.float32)

    model = nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))
    model.eval()
    return model


@functools.cache
def _taps(arch, size=32, classes=10):
    """One model per architecture for the whole file."""
    model = _random_model(arch, size, classes)
    return model, Taps(model, (size, size, model.in_channels), arch)


def _forward(model, x):
    """The model's own forward pass (no taps), jitted."""
    graphdef, state = nnx.split(model)
    return np.asarray(jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, x))


def _x(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# --------------------------------------------------------------------------- taps

def test_taps_read_named_layers_without_changing_the_model():
    model, taps = _taps("resnet20")
    x = _x((2, 32, 32, 3))
    names = ["features.conv1", "features.layer2", "features.layer3.2.relu", "head.avgpool"]
    logits, acts = jax.jit(lambda s, x: taps.apply(s, x, names))(taps.state, x)
    np.testing.assert_allclose(logits, _forward(model, x), rtol=1e-5, atol=1e-5)   # the model itself is untouched
    assert {k: v.shape for k, v in acts.items()} == {
        "features.conv1": (2, 32, 32, 16), "features.layer2": (2, 16, 16, 32),
        "features.layer3.2.relu": (2, 8, 8, 64), "head.avgpool": (2, 64)}
    np.testing.assert_allclose(acts["head.avgpool"], np.asarray(acts["features.layer3.2.relu"]).mean(axis=(1, 2)),
                               rtol=1e-5, atol=1e-6)
    assert taps.by_name["features.conv1"].geometry.receptive_field == 3
    assert taps.resolve("conv1") == "features.conv1" and taps.resolve("fc") == "head.fc"


def test_unknown_and_ambiguous_layer_names_are_one_line():
    _, taps = _taps("lenet5")
    with pytest.raises(UsageError) as e:
        taps.resolve("conv9")
    assert "no layer 'conv9'" in str(e.value) and "features.c1" in str(e.value) and "\n" not in str(e.value)
    _, taps = _taps("resnet20")
    with pytest.raises(UsageError, match="ambiguous"):
        taps.resolve("bn2")


# --------------------------------------------------------------------------- the identities

def test_saliency_of_a_linear_model_is_its_weight_row():
    model, taps = _taps("linear", size=8)
    x = _x((3, 8, 8, 3))
    g = maps.saliency(taps, x, [0, 4, 9])
    kernel = np.asarray(model.head.output.kernel[...])
    for i, c in enumerate((0, 4, 9)):
        np.testing.assert_allclose(g[i], kernel[:, c].reshape(8, 8, 3), rtol=1e-6, atol=1e-7)
    s = maps.saliency_map(g)
    assert s.shape == (3, 8, 8) and (s >= 0).all()


@pytest.mark.parametrize("arch", ["resnet20", "nin-cifar"])
def test_cam_averaged_over_space_is_the_logit_minus_the_bias(arch):
    model, taps = _taps(arch)
    x = _x((2, 32, 32, 3))
    cams, logits = maps.cam(taps, x)
    assert cams.shape == (2, 8, 8, 10)
    bias = np.asarray(model.head.fc.bias[...]) if arch == "resnet20" else np.zeros(10)
    h, w = cams.shape[1:3]
    np.testing.assert_allclose(cams.sum(axis=(1, 2)) / (h * w), logits - bias, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits, _forward(model, x), rtol=1e-5, atol=1e-5)


def test_fcn_heatmap_of_the_inference_model_with_dense_kernels_stored_out_in():
    _, subject = _subject()  # lenet5
    moved = subject.reading()  # on a CPU: dense kernels [out, in]
    assert moved.taps.module("head.f6").transposed
    x = _x((1, 48, 40, 1))
    np.testing.assert_allclose(maps.fcn(moved.taps, x), maps.fcn(subject.taps, x), rtol=1e-4, atol=1e-5)


def test_cam_needs_global_average_pooling():
    _, taps = _taps("lenet5")
    with pytest.raises(UsageError, match="gradcam"):
        maps.cam(taps, _x((1, 32, 32, 1)))


@pytest.mark.parametrize("arch,size", [("lenet5", 32), ("resnet20", 32), ("nin-cifar", 32)])
def test_fcn_heatmap_equals_the_logits_at_the_training_size(arch, size):
    model, taps = _taps(arch, size=size)
    c = model.in_channels
    x = _x((2, size, size, c))
    scores = maps.fcn(taps, x)
    assert scores.shape == (2, 1, 1, 10)
    np.testing.assert_allclose(scores[:, 0, 0], _forward(model, x), rtol=1e-4, atol=1e-5)
    big = _x((1, 2 * size, 2 * size + 8, c))
    scores = maps.fcn(taps, big)
    assert scores.shape[1] > 1 and scores.shape[2] > scores.shape[1]
    if arch == "lenet5":  # no padding anywhere: the top-left position scores exactly that crop
        corner = maps.fcn(taps, big[:, :size, :size])
        np.testing.assert_allclose(scores[:, 0, 0], corner[:, 0, 0], rtol=1e-4, atol=1e-5)


def _subject(arch="lenet5", size=32, classes=10):
    model, taps = _taps(arch, size=size, classes=classes)
    finish = Finish(*NORMALIZATION["mnist" if model.in_channels == 1 else "cifar10"])
    return model, Subject(taps, [f"class {k}" for k in range(classes)], finish, arch)


def test_occlusion_by_a_patch_covering_nothing_is_the_unoccluded_score():
    model, subject = _subject()
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 1)).astype(np.uint8)
    shift = np.zeros(1, np.float32)
    nothing = maps.occlusion(subject, image, shift, patch=0, stride=4, chunk=7)
    assert nothing.probs.shape == (8, 8, 10)
    x = subject.finish(image[None], shift[None])
    clean = _softmax(_forward(model, x))[0]
    np.testing.assert_allclose(nothing.clean, clean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(nothing.probs, np.broadcast_to(clean, nothing.probs.shape), rtol=1e-5, atol=1e-6)
    some = maps.occlusion(subject, image, shift, patch=12, stride=8)
    assert some.probs.shape == (4, 4, 10)
    assert np.allclose(some.probs.sum(-1), 1, atol=1e-5) and (some.probs >= 0).all()
    assert not np.allclose(some.probs, clean, atol=1e-6)
    # one position checked by hand: the square centred at (4, 4) covers rows/cols -2..9
    covered = image.astype(np.float32).copy()
    covered[0:10, 0:10] = subject.grey()
    expected = _softmax(_forward(model, subject.finish(covered[None], shift[None])))[0]
    np.testing.assert_allclose(some.probs[0, 0], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch, size, patch, stride", [
    ("lenet5", 32, 9, 3),            # no padding anywhere; squares hang over every edge
    ("alexnet-owt", 95, 24, 12),     # strided 11x11 conv1, overlapping pooling, Winograd 3x3 convs
                                     # on the windows, FC head
    ("resnet20", 32, 8, 6),          # the window stops at the first residual block and is pasted
])
def test_incremental_occlusion_equals_full_forward_passes(arch, size, patch, stride):
    """Recomputing only what the square can reach gives the same probabilities as full passes."""
    model, subject = _subject(arch, size)
    from cnnbench.viz import incremental
    assert incremental.supported(model)
    image = np.random.default_rng(1).integers(0, 256, (size, size, model.in_channels)).astype(np.uint8)
    shift = np.zeros(model.in_channels, np.float32)
    fast = maps.occlusion(subject, image, shift, patch=patch, stride=stride, chunk=16)
    full = maps.occlusion(subject, image, shift, patch=patch, stride=stride, chunk=16, incremental=False)
    assert fast.probs.shape == full.probs.shape
    scale = float(full.probs.max())
    np.testing.assert_allclose(fast.probs, full.probs, atol=2e-5 * scale)
    np.testing.assert_allclose(fast.clean, full.clean, atol=2e-5 * scale)
    assert not np.allclose(full.probs, full.clean, atol=1e-4 * scale)  # the squares do change things


def test_figures_compute_on_the_inference_model():
    """Once a figure knows which layers it reads, it computes on the inference model (batch norm
    folded into its convolution, the layers read kept as they are): the same activations and
    occlusion maps within float32 rounding, occlusion's incremental passes included. A network
    without batch norm is left as it is."""
    from cnnbench.archs.inference import Identity
    from cnnbench.viz import incremental

    def folded_pairs(subject):
        model = nnx.merge(subject.taps.graphdef, subject.taps._host_state)
        return model, sum(isinstance(m, Identity) for _, m in nnx.iter_modules(model))

    _, subject = _subject("resnet20", 32)
    inference, pairs = folded_pairs(subject.reading())
    assert pairs == 19 and incremental.supported(inference)
    names = ["features.bn1", "features.layer2"]  # the stem's batch norm (read, so kept) and a stage
    reading = subject.reading(names)
    assert folded_pairs(reading)[1] == 18
    image = np.random.default_rng(2).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    shift = np.zeros(3, np.float32)
    want = feat.activations(subject, image[None], shift[None], names)
    got = feat.activations(reading, image[None], shift[None], names)
    for name in names:
        assert got[name].shape == want[name].shape
        np.testing.assert_allclose(got[name], want[name], atol=2e-5 * float(np.abs(want[name]).max()))
    fast = maps.occlusion(subject.reading(), image, shift, patch=8, stride=8, chunk=16)
    full = maps.occlusion(subject, image, shift, patch=8, stride=8, chunk=16, incremental=False)
    np.testing.assert_allclose(fast.probs, full.probs, atol=2e-5)
    np.testing.assert_allclose(fast.clean, full.clean, atol=2e-5)
    # lenet5: nothing to fold, but on a CPU its dense kernels are stored [out, in]: the same outputs
    _, plain = _subject()
    moved = plain.reading()
    dense = [m for _, m in nnx.iter_modules(folded_pairs(moved)[0]) if isinstance(m, Dense)]
    assert folded_pairs(moved)[1] == 0 and len(dense) == 2 and all(m.transposed for m in dense)
    image = np.random.default_rng(3).integers(0, 256, (32, 32, 1)).astype(np.uint8)
    names = ["head.f6", "head.output"]
    want = feat.activations(plain, image[None], np.zeros((1, 1), np.float32), names)
    got = feat.activations(moved, image[None], np.zeros((1, 1), np.float32), names)
    for name in names:
        np.testing.assert_allclose(got[name], want[name], atol=2e-5 * float(np.abs(want[name]).max()))
    _, nin = _subject("nin-cifar", 32)
    assert nin.reading() is nin  # no batch norm, no dense layer: nothing to change


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_gradcam_maps_and_their_ranges():
    _, taps = _taps("lenet5")
    layer = maps.default_gradcam_layer(taps)
    assert layer == "features.act3"
    m, a = maps.gradcam(taps, _x((2, 32, 32, 1)), [1, 2], layer)
    assert m.shape == (2, 10, 10) and a.shape == (2, 10, 10, 16) and (m >= 0).all()
    with pytest.raises(UsageError, match="spatial"):
        maps.gradcam(taps, _x((1, 32, 32, 1)), [0], "head.f6")


def test_filters_activations_patches_and_features():
    _, subject = _subject()
    taps = subject.taps
    f = feat.filters(taps, feat.default_filter_layer(taps))
    assert f.layer == "features.c1" and f.kernels.shape == (5, 5, 1, 6)
    tiles = feat.kernel_images(f.kernels)
    assert tiles.shape == (6, 5, 5, 1) and tiles.min() == 0.0 and tiles.max() == 1.0
    with pytest.raises(UsageError, match="no filters"):
        feat.filters(taps, "features.s2")
    images = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 1)).astype(np.uint8)
    shift = np.zeros((5, 1), np.float32)
    acts = feat.activations(subject, images, shift, ["features.c1", "head.f6"])
    assert acts["features.c1"].shape == (5, 28, 28, 6) and acts["head.f6"].shape == (5, 84)
    assert feat.default_activation_layers(taps) == ["features.act1", "features.act3"]  # act5 is 1x1
    assert _taps("resnet20")[1].stages() == ["features.relu", "features.layer1", "features.layer2",
                                             "features.layer3"]
    assert feat.default_feature_layer(taps) == "head.act6"
    from cnnbench.viz.inputs import Batch

    batch = Batch(images, shift, np.arange(5), np.array([True, True, True, True, False]))
    best, seen = feat.top_patches(subject, [batch], "features.c3", [0, 3], top=3)
    assert seen == 4 and [len(b) for b in best] == [3, 3]
    acts_c3 = feat.activations(subject, images, shift, ["features.c3"])["features.c3"]
    for k, c in enumerate((0, 3)):
        strongest = np.sort(acts_c3[:4, ..., c].reshape(4, -1).max(axis=1))[::-1][:3]
        np.testing.assert_allclose([p.value for p in best[k]], strongest, rtol=1e-5)
        for p in best[k]:   # c3 units see 14x14 pixels (5 + 4 * 2 + ... with the 2x2 pooling)
            t, left, b, r = p.box
            assert (b - t, r - left) == (14, 14) and p.pixels.shape == (14, 14, 1)
    assert acts_c3.shape == (5, 10, 10, 16)
    feats = feat.feature_fn(subject, "head.act6")(images, shift)
    near, seen = feat.neighbours(subject, feats[2], [batch], "head.act6", k=2)
    assert near[0].distance == pytest.approx(0.0, abs=1e-4) and near[0].label == 2
    points = feat.tsne(np.random.default_rng(0).normal(size=(30, 8)))
    assert points.shape == (30, 2)


# --------------------------------------------------------------------------- the command line

def _fake_run(root: Path, arch: str, dataset: str, seed: int = 0) -> Path:
    """A run directory as training writes it (config, dataset.json, a checkpoint) holding random
    weights: enough for every visualisation, in a fraction of a second."""
    from cnnbench.archs import get_arch
    from cnnbench.pipeline.recipes import default_recipe
    from cnnbench.pipeline.sources import resolve
    from cnnbench.runs.checkpoint import Checkpoints
    from cnnbench.runs.config import TrainConfig
    from cnnbench.runs.layout import write_dataset

    run_dir = root / f"{arch}-run"
    run_dir.mkdir(parents=True)
    cfg = TrainConfig(arch=arch, dataset=dataset, seed=seed, run_dir=str(run_dir))
    (run_dir / "config.json").write_text(cfg.to_json())
    info = get_arch(arch)
    source = resolve(dataset)
    eval_spec = default_recipe(source, train=False, size=info.input_size, channels=info.in_channels)
    write_dataset(run_dir, source, eval_spec, eval_spec)
    model = _random_model(arch, info.input_size, source.num_classes, seed)
    _, params, stats, _ = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    checkpoints = Checkpoints(run_dir)
    checkpoints.save(0, {"params": params, "batch_stats": stats}, {"epoch": 0}, best=True)
    checkpoints.wait()
    checkpoints.close()
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("viz")
    from PIL import Image

    rng = np.random.default_rng(0)
    grey, colour = root / "grey.png", root / "colour.png"
    Image.fromarray(rng.integers(0, 256, (40, 36), dtype=np.uint8)).save(grey)
    Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)).save(colour)
    return {"lenet5": (_fake_run(root, "lenet5", "synthetic:32x32x1:10:64"), grey),
            "nin-cifar": (_fake_run(root, "nin-cifar", "synthetic:32x32x3:10:64"), colour),
            "resnet20": (_fake_run(root, "resnet20", "synthetic:32x32x3:10:64"), colour)}


def _viz(*args):
    result = CliRunner().invoke(cli, ["visualize", *map(str, args), "--format", "json"])
    assert result.exit_code == 0, result.output
    written = json.loads(result.stdout)
    for w in written:
        path = Path(w["path"])
        assert path.suffix == ".png" and path.stat().st_size > 1000
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return written


def test_every_subcommand_writes_a_png(runs, tmp_path):
    lenet, grey = runs["lenet5"]
    nin, colour = runs["nin-cifar"]
    out = tmp_path / "figs"
    common = ["--out", out]
    _viz("filters", lenet, *common)
    _viz("filters", lenet, "--layer", "c3", *common)   # a deeper layer: a grid of channel pairs
    _viz("activations", lenet, grey, "--layers", "c1,s2,c5,f6", "--maps", "4", *common)
    _viz("top-patches", lenet, "--layer", "c3", "--channels", "0,5", "--n", "40", *common)
    occ = _viz("occlusion", lenet, grey, "--patch", "8", "--stride", "4", *common)[0]
    assert occ["positions"] == 64 and 0 <= occ["min"] <= occ["max"] <= 1
    _viz("saliency", lenet, grey, "--class", "class 3", *common)
    _viz("gradcam", lenet, grey, *common)
    _viz("cam", nin, colour, *common)
    _viz("tsne", lenet, "--n", "40", *common)
    _viz("neighbors", lenet, grey, "--n", "30", "-k", "4", *common)
    heat = _viz("heatmap", lenet, grey, "--size", "48", *common)[0]
    assert heat["training_size_max_difference"] < 1e-4 and heat["rows"] >= 5
    assert len(list(out.glob("*.png"))) == 11


def test_subcommands_on_a_batch_norm_network_run_the_inference_program(runs, tmp_path):
    """On a run with batch norm every figure that computes folds it first (the layers it reads
    keep their outputs): the subcommands still write their figures, and the fully-convolutional
    head of the folded model reproduces the folded model's logits."""
    resnet, colour = runs["resnet20"]
    common = ["--out", tmp_path / "figs"]
    acts = _viz("activations", resnet, colour, "--layers", "bn1,layer2", "--maps", "4", *common)[0]
    assert acts["note"] == "features.bn1 32x32x16; features.layer2 16x16x32"
    occ = _viz("occlusion", resnet, colour, "--patch", "8", "--stride", "8", *common)[0]
    assert occ["positions"] == 16 and 0 <= occ["min"] <= occ["max"] <= 1
    _viz("gradcam", resnet, colour, *common)
    _viz("cam", resnet, colour, *common)
    heat = _viz("heatmap", resnet, colour, "--size", "48", *common)[0]
    assert heat["training_size_max_difference"] < 1e-4
    assert len(list((tmp_path / "figs").glob("*.png"))) == 5


def test_default_output_folder_is_in_the_run(runs):
    lenet, _ = runs["lenet5"]
    result = CliRunner().invoke(cli, ["visualize", "filters", str(lenet)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote {lenet / 'viz' / 'filters-features.c1.png'}")


def _error(*args):
    result = CliRunner().invoke(cli, ["visualize", *map(str, args)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    return lines[0]


def test_bad_input_is_one_line(runs, tmp_path):
    lenet, grey = runs["lenet5"]
    nin, colour = runs["nin-cifar"]
    assert "no layer 'conv9'" in _error("gradcam", lenet, grey, "--layer", "conv9", "--out", tmp_path)
    assert "features.c1" in _error("activations", lenet, grey, "--layers", "c1,nope", "--out", tmp_path)
    assert "use `cnnbench visualize gradcam`" in _error("cam", lenet, grey, "--out", tmp_path)
    assert "no class 'zebra'" in _error("saliency", lenet, grey, "--class", "zebra", "--out", tmp_path)
    assert "cannot read image" in _error("occlusion", lenet, tmp_path / "none.png", "--out", tmp_path)
    (tmp_path / "x.txt").write_text("no image")
    assert "not an image" in _error("saliency", lenet, tmp_path / "x.txt", "--out", tmp_path)
    assert "not a run directory" in _error("filters", tmp_path, "--out", tmp_path)
    assert "channels" in _error("top-patches", nin, "--channels", "999", "--n", "4", "--out", tmp_path)
