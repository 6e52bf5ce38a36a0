"""Input pipelines on data the tests build: digits offline, a fake ILSVRC-2012 archive through the
real TFDS builder, image folders with broken files, crop geometry, order, sharding."""

import os
import re
from pathlib import Path

import numpy as np
import pytest

from cnnbench.errors import UsageError
from cnnbench.pipeline import fused, recipes
from cnnbench.pipeline.loader import Pipeline
from cnnbench.pipeline.preprocess import compile_ops
from cnnbench.pipeline.recipes import expand
from cnnbench.pipeline.sources import resolve, tfds_source
from cnnbench.pipeline.synthetic import validation_synsets, write_fake_ilsvrc, write_image_folder
from cnnbench.pipeline.tfenv import tf, tfds


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def digits(data_dir):
    return resolve("digits", data_dir=data_dir)


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory, data_dir):
    manual = write_fake_ilsvrc(tmp_path_factory.mktemp("ilsvrc") / "manual")
    return resolve("imagenet2012", data_dir=data_dir, manual_dir=str(manual))


def test_digits_loads_offline_with_the_fixed_split(digits):
    assert digits.splits == {"train": 1437, "test": 360}
    assert digits.num_classes == 10 and digits.image_shape == (8, 8, 1)
    labels = np.array([int(e["label"]) for e in digits.read(digits.ranges("test")).as_numpy_iterator()])
    assert len(labels) == 360
    assert np.bincount(labels).min() >= 35  # stratified: 36 or so of every digit


def test_fake_ilsvrc_through_the_real_imagenet2012_builder(imagenet, data_dir):
    assert imagenet.splits == {"train": 14, "validation": 8}
    assert imagenet.class_names[0] == "tench" and imagenet.class_ids[0] == "n01440764"
    builder = tfds().builder("imagenet2012", data_dir=data_dir)
    ids = builder.info.features["label"].names
    val = {e["file_name"].decode(): ids[e["label"]]
           for e in builder.as_dataset(split="validation").as_numpy_iterator()}
    truth = validation_synsets(8)
    assert val == {f"ILSVRC2012_val_{k + 1:08d}.JPEG": truth[k] for k in range(8)}
    for e in builder.as_dataset(split="train").as_numpy_iterator():
        assert ids[e["label"]] == e["file_name"].decode().split("_")[0]
        assert e["image"].shape[-1] == 3  # the CMYK and the PNG-named-JPEG files are RGB JPEGs now


def test_imagenet_batches_carry_the_right_labels(imagenet):
    pipeline = Pipeline(imagenet, "train", 7, expand("alexnet", size=32), train=True)
    batches = list(pipeline.epoch(0))
    assert [b["image"].shape for b in batches] == [(7, 32, 32, 3)] * 2
    seen = {imagenet.class_ids[label] for b in batches for label in b["label"]}
    assert seen == {"n01440764", "n01443537", "n02105855", "n01739381"}
    assert pipeline.skipped == 0


def test_missing_manual_dir_names_the_expected_files(tmp_path):
    with pytest.raises(UsageError, match="ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar"):
        resolve("imagenet2012", data_dir=str(tmp_path / "empty"), manual_dir=str(tmp_path))


def test_folder_dataset_skips_and_counts_broken_images(tmp_path):
    root = write_image_folder(tmp_path / "pets", classes=("cat", "dog"), per_class=4)
    good = (root / "test" / "cat" / "0.jpg").read_bytes()
    (root / "test" / "cat" / "9_truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "test" / "dog" / "9_garbage.jpg").write_bytes(b"definitely not a jpeg")
    source = resolve(f"folder:{root}")
    assert source.class_names == ["cat", "dog"] and source.splits == {"test": 10, "train": 8}
    pipeline = Pipeline(source, "test", 4, expand("small", size=16), train=False)
    batches = list(pipeline.epoch())
    labels = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
    assert pipeline.skipped == 2
    assert sorted(labels.tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert len(batches) == pipeline.steps_per_epoch == 3
    named = pipeline.undecodable()  # which ones, and why
    assert [Path(name).name for name, _ in named] == ["9_truncated.jpg", "9_garbage.jpg"]
    assert all(error and "Traceback" not in error for _, error in named)


def test_parallel_decoding_is_fixed_and_still_counts_every_broken_image(tmp_path):
    """tf.data's autotuner dropped the map to one call at a time for a third of the epochs on a
    2-core machine (BENCHMARKS.md, issue 3): the parallelism is fixed and the tuner off."""
    root = write_image_folder(tmp_path / "pets", classes=("cat", "dog"), per_class=6)
    good = (root / "test" / "dog" / "0.jpg").read_bytes()
    for i in range(3):
        (root / "test" / "dog" / f"9_broken{i}.jpg").write_bytes(good[: len(good) // (3 + i)])
    source = resolve(f"folder:{root}")
    pipeline = Pipeline(source, "test", 4, expand("small", size=16), train=False, threads=3)
    assert pipeline.parallelism == 3
    assert Pipeline(source, "test", 4, "", train=False).parallelism == len(os.sched_getaffinity(0))
    assert pipeline.dataset().options().autotune.enabled is False
    for _ in range(2):  # the counts accumulate over epochs
        labels = np.concatenate([b["label"][b["mask"] > 0] for b in pipeline.epoch()])
        assert sorted(labels.tolist()) == [0] * 6 + [1] * 6
    assert pipeline.skipped == 2 * 3


def test_folder_dataset_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        resolve(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "flat").mkdir()
    with pytest.raises(UsageError, match="no split folders"):
        resolve(f"folder:{tmp_path / 'flat'}")
    (tmp_path / "emptyclass" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(UsageError, match="has no images"):
        resolve(f"folder:{tmp_path / 'emptyclass'}")


def test_unknown_dataset_and_split_are_clear(digits):
    with pytest.raises(UsageError, match="did you mean cifar10"):
        resolve("cifar1")
    with pytest.raises(UsageError, match=r"its splits: train \(1,437\), test \(360\)"):
        digits.ranges("validation")
    assert digits.num_examples("train[:10%]+test[10:20]") == 144 + 10


def _run(spec, image, seed=(0, 0)):
    return compile_ops(spec)(tf().constant(image, "float32"), tf().constant(seed, "int64")).numpy()


def test_ten_crop_geometry_matches_hand_computed_crops():
    image = np.arange(6 * 8 * 3, dtype=np.float32).reshape(6, 8, 3)
    crops = _run("ten_crop(4)", image)
    expected = [image[0:4, 0:4], image[0:4, 4:8], image[2:6, 0:4], image[2:6, 4:8], image[1:5, 2:6]]
    expected += [c[:, ::-1] for c in expected]
    assert crops.shape == (10, 4, 4, 3)
    np.testing.assert_array_equal(crops, np.stack(expected))


def test_resize_shorter_center_crop_and_multiscale_shapes():
    image = np.random.default_rng(0).uniform(0, 255, (300, 400, 3)).astype(np.float32)
    assert _run("resize_shorter(256)", image).shape == (256, 341, 3)
    assert _run("resize_shorter(256)|center_crop(224)", image).shape == (224, 224, 3)
    assert _run("multiscale(256, 384, 224)", image).shape == (4, 224, 224, 3)
    jittered = {_run("resize_shorter(256, 512)", image, (s, 1)).shape[0] for s in range(6)}
    assert len(jittered) > 1 and all(256 <= h <= 512 for h in jittered)
    for s in range(4):
        assert _run("random_resized_crop(64)|flip|lighting(0.1)", image, (s, 2)).shape == (64, 64, 3)


def test_normalize_and_lighting():
    image = np.full((2, 2, 3), 128.0, np.float32)
    out = _run("normalize(imagenet)", image)
    np.testing.assert_allclose(out[0, 0], (128 - np.array([123.675, 116.28, 103.53])) / np.array(
        [58.395, 57.12, 57.375]), rtol=1e-5)
    np.testing.assert_array_equal(_run("lighting(0.0)", image), image)
    shifted = _run("lighting(0.1)", image)
    assert np.allclose(shifted, shifted[0, 0]) and not np.allclose(shifted, image)  # one shift per image


def test_order_and_augmentation_are_deterministic(imagenet):
    make = lambda seed: Pipeline(imagenet, "train", 4, expand("inception", size=24), train=True, seed=seed)  # noqa: E731
    a, b, c = (list(make(s).epoch(0)) for s in (3, 3, 4))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert not all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))
    resumed = list(make(3).epoch(0, start_step=1))
    np.testing.assert_array_equal(resumed[0]["image"], a[1]["image"])


def test_processes_split_every_global_batch():
    """Process i of P keeps every P-th example of the global order: the union of the local batches
    of a step is the global batch one process would build (same images, same augmentation)."""
    source = resolve("synthetic:8x8x3:4:64")
    spec = "pad_crop(8, 2)|flip"
    single = list(Pipeline(source, "train", 16, spec, train=True, seed=1).epoch(0))
    parts = [list(Pipeline(source, "train", 16, spec, train=True, seed=1, process_index=i,
                           process_count=4).epoch(0)) for i in range(4)]
    assert len(single) == 4 and all(len(p) == 4 for p in parts)
    for step, whole in enumerate(single):
        union = sorted(img.tobytes() for p in parts for img in p[step]["image"])
        assert union == sorted(img.tobytes() for img in whole["image"])


def test_two_processes_evaluate_each_image_once():
    source = resolve("synthetic:8x8x3:4:51")
    fingerprints, batch_counts = [], []
    for index in range(2):
        p = Pipeline(source, "test", 10, "", train=False, process_index=index, process_count=2)
        batches = list(p.epoch())
        batch_counts.append(len(batches))
        for b in batches:
            fingerprints += [img.tobytes() for img, m in zip(b["image"], b["mask"]) if m]
    assert batch_counts == [6, 6]  # 26 and 25 examples, 5 per process per step
    assert len(fingerprints) == len(set(fingerprints)) == 51


def test_batch_must_divide_over_processes():
    with pytest.raises(UsageError, match="does not divide"):
        Pipeline(resolve("synthetic"), "train", 10, "", train=True, process_count=3)


def test_tfds_names_with_mock_data(tmp_path):
    """A TFDS dataset that would need a download: keys discovered, images decoded and resized."""
    with tfds().testing.mock_data(num_examples=12, data_dir=str(tmp_path)):
        builder = tfds().builder("oxford_flowers102", data_dir=str(tmp_path))
        source = tfds_source(builder, "oxford_flowers102", splits={"train": 12, "test": 12})
        assert source.num_classes == 102 and source.class_names[0] == "pink primrose"
        pipeline = Pipeline(source, "train", 4, expand("inception", size=32), train=True)
        batch = next(pipeline.epoch(0))
    assert batch["image"].shape == (4, 32, 32, 3) and batch["label"].max() < 102


_SMOOTH = ["resize_shorter(64)|random_crop(56)", "resize_shorter(64)|center_crop(56)",
           "resize_shorter(60, 90)|random_crop(48)|flip"]
_BILINEAR = ["resize_shorter(64, antialias=False)|random_crop(56)",
             "resize_shorter(64, antialias=False)|center_crop(56)|flip",
             "resize_shorter(60, 90, antialias=False)|random_crop(48)|flip",
             "resize_shorter(120, antialias=False)|random_crop(118)|flip",  # enlarging, edges
             "resize_shorter(75, antialias=False)|random_crop(74)",  # scale 1, edges
             "resize_shorter(50, antialias=False)|random_crop(50)|flip"]  # shrinking, edges


# plain bilinear crops both ways: the whole photo resized (the default for these sizes), the crop alone
@pytest.mark.parametrize("spec, resize_area", [(s, 3.0) for s in _SMOOTH + _BILINEAR] + [(s, 0.0) for s in _BILINEAR])
def test_fused_resize_and_crop_equals_the_ops_as_written(spec, resize_area, monkeypatch):
    """The fused op (ScaleAndTranslate, or OpenCV for plain bilinear, which absorbs a following flip)
    against resize, crop and flip as written, on float noise: float rounding only. On uint8 noise:
    one of the two grey levels around the exact value (OpenCV's fixed-point weights), mostly the
    nearest. Both OpenCV paths: the whole photo resized, or the crop alone sampled."""
    monkeypatch.setattr(fused, "RESIZE_AREA", resize_area)
    fused_op, plain_op = compile_ops(spec), compile_ops(spec, fuse=False)
    rng = np.random.default_rng(1)
    image = tf().constant(rng.uniform(0, 255, (75, 100, 3)), "float32")
    pixels = tf().constant(rng.integers(0, 256, (75, 100, 3)), "uint8")
    flips = set()
    for s in range(8):
        seed = tf().constant([s, 7], "int64")
        plain = plain_op(image, seed).numpy()
        np.testing.assert_allclose(fused_op(image, seed).numpy(), plain, atol=0.05)  # sample positions' rounding
        flips.add(bool(np.abs(plain - compile_ops(spec.replace("|flip", ""), fuse=False)(image, seed).numpy()).max()))
        exact = plain_op(pixels, seed).numpy()
        got = fused_op(pixels, seed).numpy()
        if "antialias=False" not in spec:  # ScaleAndTranslate resamples in float
            np.testing.assert_allclose(got, exact, atol=0.05)
            continue
        assert np.abs(got - exact).max() < 1 and (got == np.round(exact)).mean() > 0.8
    assert flips == ({True, False} if "flip" in spec else {False})  # both ways seen: the flip is the seed's


def test_a_missing_opencv_is_one_clear_error_when_the_ops_are_built(monkeypatch):
    """Not image by image inside tf.data, where every image would be skipped as undecodable."""
    from cnnbench.errors import CnnbenchError

    monkeypatch.setitem(__import__("sys").modules, "cv2", None)  # as if not installed
    fused._cv2.cache_clear()
    try:
        with pytest.raises(CnnbenchError, match="pip install opencv-python-headless"):
            compile_ops(expand("alexnet", size=56))
        compile_ops(expand("inception", size=56))  # the antialiased recipes do not need it
    finally:
        fused._cv2.cache_clear()


@pytest.mark.parametrize("recipe", ["alexnet", "vgg", "inception", "center", "ten_crop", "cifar"])
def test_device_finish_equals_the_host_pipeline(imagenet, recipe):
    """uint8 on the wire + lighting/normalize where the batch lands == everything on the host,
    up to rounding the host part to whole grey levels (half a level / std)."""
    spec = expand(recipe, size=24)
    host = Pipeline(imagenet, "train", 7, spec, train=True, seed=5)
    split = Pipeline(imagenet, "train", 7, spec, train=True, seed=5, device_finish=True)
    for a, b in zip(host.epoch(1), split.epoch(1)):
        assert b["image"].dtype == np.uint8 and b["shift"].shape == (7, 3)
        np.testing.assert_allclose(split.finish(b["image"], b["shift"]), a["image"], atol=0.51 / 57.1)
        np.testing.assert_array_equal(a["label"], b["label"])


def test_finish_runs_in_jax_too():
    import jax.numpy as jnp

    from cnnbench.pipeline.preprocess import Finish

    finish = Finish((10.0, 20.0, 30.0), (2.0, 4.0, 5.0))
    images = np.arange(2 * 3 * 2 * 2 * 3, dtype=np.uint8).reshape(2, 3, 2, 2, 3)  # a crop axis of 3
    shift = np.array([[1, 2, 3], [0, 0, 0]], np.float32)
    expected = (images.astype(np.float32) + shift[:, None, None, None, :] - [10, 20, 30]) / [2, 4, 5]
    np.testing.assert_allclose(finish(images, shift), expected, rtol=1e-6)
    np.testing.assert_allclose(finish(jnp.asarray(images), jnp.asarray(shift), xp=jnp), expected, rtol=1e-6)


def _photo_jpeg(mode: str, seed: int = 0, size=(150, 200)) -> bytes:
    """A photo-like JPEG (smooth colour plus noise) in PIL mode RGB, L (grey) or CMYK."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(7 * (xx + c) * np.pi) * np.cos(5 * yy * np.pi) for c in range(3)], -1)
    pixels = np.clip(127 + 100 * base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_jpeg_window_decoding_gives_the_same_pixels(mode):
    """From JPEG bytes the first crop decodes only its window (decode_and_crop_jpeg); the result
    equals decoding the whole image and running the same ops, bit for bit, for colour, grey and
    CMYK files (CMYK takes the whole-image path), into 3 or 1 channels."""
    from cnnbench.pipeline.preprocess import decode

    data = tf().constant(_photo_jpeg(mode))
    for channels in (3, 1):
        for recipe in ("alexnet", "vgg", "inception", "center"):
            spec = expand(recipe, size=96).replace("256", "110")  # resize_shorter(110) for a 150x200 photo
            for s in range(3):
                seed = tf().constant([s, 7], "int64")
                windowed = compile_ops(spec, encoded=True, channels=channels)(data, seed).numpy()
                whole = compile_ops(spec)(decode(data, encoded=True, channels=channels), seed).numpy()
                assert windowed.shape[:2] == (96, 96)
                np.testing.assert_array_equal(windowed, whole)


def test_grey_and_cmyk_jpegs_decode_to_either_channel_count():
    from cnnbench.pipeline.preprocess import decode

    grey = decode(tf().constant(_photo_jpeg("L")), encoded=True, channels=3).numpy()
    assert grey.shape == (150, 200, 3) and (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    rgb = decode(tf().constant(_photo_jpeg("RGB")), encoded=True, channels=3).numpy().astype(float)
    for mode in ("CMYK", "RGB", "L"):
        one = decode(tf().constant(_photo_jpeg(mode)), encoded=True, channels=1).numpy().astype(float)
        assert one.shape == (150, 200, 1)
        # the luma of the colour photo, whichever way it was stored (JPEG loses ~3 grey levels)
        luma = rgb @ np.array([0.299, 0.587, 0.114])
        assert np.abs(one[..., 0] - luma).mean() < 6, mode


def test_spec_keyword_arguments_round_trip():
    from cnnbench.pipeline.spec import parse, unparse

    steps = parse("resize_shorter(256, 512, antialias=False)|random_resized_crop(224, antialias=False)|flip")
    assert steps[0].args == (256, 512) and steps[0].kwargs == (("antialias", False),)
    assert "|".join(unparse(s) for s in steps) == \
        "resize_shorter(256, 512, antialias=False)|random_resized_crop(224, antialias=False)|flip"
    with pytest.raises(UsageError, match="positional argument"):
        parse("resize_shorter(antialias=False, 256)")
    with pytest.raises(UsageError, match="bad arguments"):
        compile_ops("resize_shorter(256, smooth=True)")
    # without antialiasing a shrink samples bilinearly: a checkerboard averages to grey only with it
    board = tf().constant(np.indices((64, 64)).sum(axis=0) % 2 * 255.0, "float32")[..., None]
    seed = tf().constant([0, 0], "int64")
    smooth = compile_ops("resize_shorter(21)")(board, seed).numpy()
    sharp = compile_ops("resize_shorter(21, antialias=False)")(board, seed).numpy()
    assert smooth.std() < 0.5 * sharp.std()


def _norm(spec: str) -> str:
    found = re.findall(r"normalize\(([^)]*)\)", spec)
    assert len(found) == 1, spec
    return found[0]


def test_train_and_eval_normalise_alike_for_every_source_and_recipe(tmp_path, digits):
    """One answer per dataset and channel count (preprocess.normalization), whatever recipe the
    training or the evaluation uses: a folder of photos trained into a grey model (lenet5) was
    normalised with ImageNet's statistics in training (the inception recipe wrote it in) and
    MNIST's in evaluation."""
    import types

    folder = resolve(f"folder:{write_image_folder(tmp_path / 'pets')}")
    with tfds().testing.mock_data(num_examples=4, data_dir=str(tmp_path / "tfds")):
        flowers = tfds_source(tfds().builder("oxford_flowers102", data_dir=str(tmp_path / "tfds")),
                              "oxford_flowers102", splits={"train": 4, "test": 4})
    cifar = types.SimpleNamespace(name="cifar10", image_shape=(32, 32, 3))  # a mocked TFDS set's facts
    cases = [(digits, 1, "mnist"), (digits, 3, "imagenet"), (folder, 1, "mnist"), (folder, 3, "imagenet"),
             (resolve("synthetic:12x12x3:4:8"), 3, "imagenet"), (flowers, 3, "imagenet"), (cifar, 3, "cifar10")]
    for source, channels, expected in cases:
        assert recipes.normalization(source, channels) == expected
        specs = {"train": recipes.recipe_for(source, None, train=True, size=32, channels=channels),
                 "eval": recipes.recipe_for(source, None, train=False, size=32, channels=channels)}
        specs.update({recipe: recipes.recipe_for(source, recipe, train=True, size=32, channels=channels)
                      for recipe in recipes.RECIPES})
        assert {name: _norm(spec) for name, spec in specs.items()} == {name: expected for name in specs}, source.name
    # a spec that names its own normalisation keeps it
    own = recipes.recipe_for(folder, "resize(32)|normalize(unit)", train=True, size=32, channels=1)
    assert _norm(own) == "unit"


def test_random_erasing_replaces_one_rectangle_of_the_papers_size():
    source = resolve("synthetic:32x32x3:2:16")
    plain = Pipeline(source, "train", 16, "resize(32)", train=False)
    erased = Pipeline(source, "train", 16, "resize(32)|random_erasing(1.0)", train=False)
    never = Pipeline(source, "train", 16, "resize(32)|random_erasing(0.0)", train=False)
    a, b, c = (next(p.epoch()) for p in (plain, erased, never))
    np.testing.assert_array_equal(a["image"], c["image"])
    changed = (a["image"] != b["image"]).any(-1)  # (16, 32, 32)
    for mask in changed:
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert 0.02 * 1024 - 40 <= box <= 1024 / 3 + 40  # one rectangle of 2-33% of the image
        assert mask.sum() >= 0.9 * box  # filled (a random value rarely equals the pixel)


def test_randaugment_is_deterministic_per_example_and_keeps_the_images_range():
    from cnnbench.pipeline.ops import RANDAUGMENT_OPS, randaugment

    lib = tf()
    image = lib.constant(np.random.default_rng(0).integers(0, 256, (24, 24, 3)), "float32")
    outputs = {}
    for op_index in range(len(RANDAUGMENT_OPS)):  # every op, through a seed that draws it first
        for s in range(200):
            seed = lib.constant([s, 0], "int64")
            drawn = int(lib.random.stateless_uniform((), seed + 20, maxval=len(RANDAUGMENT_OPS), dtype="int32"))
            if drawn == op_index:
                out = randaugment(1, 9)(image, seed).numpy()
                assert out.shape == (24, 24, 3) and out.min() >= 0 and out.max() <= 255, RANDAUGMENT_OPS[op_index]
                outputs[RANDAUGMENT_OPS[op_index]] = out
                break
    assert set(outputs) == set(RANDAUGMENT_OPS)
    np.testing.assert_array_equal(outputs["identity"], image.numpy())
    changed = [name for name, out in outputs.items() if not np.allclose(out, image.numpy())]
    assert set(changed) >= set(RANDAUGMENT_OPS) - {"identity"}  # magnitude 9: every other op changes the image
    seed = lib.constant([3, 7], "int64")
    np.testing.assert_array_equal(randaugment(2, 9)(image, seed).numpy(), randaugment(2, 9)(image, seed).numpy())
    source = resolve("synthetic:32x32x3:2:16")
    batch = next(Pipeline(source, "train", 16, "resize(32)|randaugment(2, 9)|normalize(imagenet)", train=True).epoch())
    assert batch["image"].shape == (16, 32, 32, 3) and np.isfinite(batch["image"]).all()
