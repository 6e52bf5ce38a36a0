"""`cnnbench eval` and `predict`: top-k, 10-crop, ensembles, masking, submissions, reports, bad input."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from click.testing import CliRunner

from cnnbench.archs import create_model
from cnnbench.cli import cli
from cnnbench.eval import metrics
from cnnbench.eval.evaluate import Predictions, combine, crop_spec, evaluate_runs, paper_rows, predict_split
from cnnbench.runs.loaded import LoadedRun, load_run
from cnnbench.eval.submission import order, score, write
from cnnbench.runs.config import TrainConfig, load
from cnnbench.train.loop import train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """Two lenet5 runs on digits (2 epochs, different seeds): what every eval test starts from."""
    root = tmp_path_factory.mktemp("runs")
    out = []
    for seed in (0, 1):
        cfg = load(None, "lenet5", {"data_dir": data_dir, "devices": 1, "epochs": 2, "seed": seed})
        train(cfg, run_dir=root / f"lenet5-{seed}")
        out.append(root / f"lenet5-{seed}")
    return out


def _digits(data_dir):
    from cnnbench.pipeline.sources import resolve

    return resolve("digits", data_dir=data_dir)


def _eval_json(*args):
    result = CliRunner().invoke(cli, ["eval", *map(str, args), "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# --------------------------------------------------------------------------- metrics

def _brute_force_topk(scores, label, k):
    """Sort classes by (score descending, index ascending) and look for the label in the first k."""
    order_ = sorted(range(len(scores)), key=lambda c: (-scores[c], c))
    return label in order_[:k]


def test_top_k_matches_a_brute_force_reference_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(500, 12)).astype(np.float32)  # many ties
    labels = rng.integers(0, 12, size=500)
    r = metrics.ranks(scores, labels)
    for k in (1, 2, 5, 12):
        expected = np.array([_brute_force_topk(s, y, k) for s, y in zip(scores, labels)])
        np.testing.assert_array_equal(r < k, expected)
        # the same order as jax.lax.top_k, which the training loop's validation uses
        hits = np.any(np.asarray(jax.lax.top_k(scores, k)[1]) == labels[:, None], axis=1)
        np.testing.assert_array_equal(r < k, hits)
        np.testing.assert_array_equal(metrics.top_k(scores, k), np.asarray(jax.lax.top_k(scores, k)[1]))
    acc = metrics.accuracy(scores, labels)
    assert acc["top1"] == pytest.approx(np.mean(r < 1)) and acc["top5_error"] == pytest.approx(1 - np.mean(r < 5))


def test_report_analyses_on_a_known_confusion():
    # class 0 always right, class 1 always predicted as 2, class 2 right half the time (else 0)
    probs = np.array([[.9, .05, .05]] * 4 + [[.1, .2, .7]] * 4 + [[.2, .1, .7], [.6, .1, .3]] * 2, np.float32)
    labels = np.array([0] * 4 + [1] * 4 + [2] * 4)
    classes = metrics.per_class(probs, labels, 3)
    assert [c["top1"] for c in classes] == [1.0, 0.0, 0.5]
    assert [c["class"] for c in metrics.hardest(classes, 2)] == [1, 2]
    pairs = metrics.confused_pairs(metrics.confusion(probs, labels, 3), 5)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [(1, 2, 4), (2, 0, 2)]
    cal = metrics.calibration(probs, labels)
    assert cal["accuracy"] == pytest.approx(0.5)
    assert cal["mean_confidence"] == pytest.approx(np.mean(probs.max(axis=1)))
    assert sum(b["examples"] for b in cal["bins"]) == 12
    expected_ece = sum(b["examples"] / 12 * abs(b["accuracy"] - b["confidence"]) for b in cal["bins"])
    assert cal["ece"] == pytest.approx(expected_ece) and cal["ece"] > 0


def test_ensemble_averages_softmax_outputs():
    rng = np.random.default_rng(1)
    a, b = rng.dirichlet(np.ones(5), 7), rng.dirichlet(np.ones(5), 7)
    np.testing.assert_allclose(metrics.ensemble([a, b]), (a + b) / 2)
    p = Predictions(a, np.arange(7) % 5, np.arange(7), [""] * 7, np.zeros((1, 2, 2, 1)))
    q = Predictions(b, np.arange(7) % 5, np.arange(7), [""] * 7, np.zeros((1, 2, 2, 1)))
    np.testing.assert_allclose(combine([p, q]).probs, (a + b) / 2)
    with pytest.raises(Exception, match="same images"):
        combine([p, Predictions(b[:6], np.arange(6) % 5, np.arange(6), [""] * 6, np.zeros((1, 2, 2, 1)))])


def test_crop_protocols_from_the_runs_validation_spec():
    base = "resize_shorter(256)|center_crop(224)|normalize(imagenet)"
    assert crop_spec(base, "center", size=224) == base
    assert crop_spec(base, "10", size=224) == "resize_shorter(256)|ten_crop(224)|normalize('imagenet')"
    assert crop_spec(base, "multiscale", size=224) == "multiscale(256, 384, 512, 224)|normalize('imagenet')"
    assert crop_spec("resize(32)|normalize(mnist)", "10", size=32) == \
        "resize_shorter(37)|ten_crop(32)|normalize('mnist')"
    with pytest.raises(Exception, match="at least the crop size"):
        crop_spec(base, "multiscale", size=224, scales=(200, 256))


def test_paper_rows_come_from_the_references():
    rows = paper_rows("alexnet", "imagenet2012", "validation")
    assert rows[0]["top1_error"] == pytest.approx(0.407) and rows[0]["top5_error"] == pytest.approx(0.182)
    assert all(r["model"] == "paper: alexnet" for r in rows)
    assert [r["top1_error"] for r in paper_rows("resnet20", "cifar10", "test")] == [pytest.approx(0.0875)]
    assert paper_rows("alexnet", "digits", "test") == []


# --------------------------------------------------------------------------- predictions over a split

def _untrained_run(tmp_path, spec, classes=4, channels=3, size=32):
    model = create_model("lenet5", num_classes=classes, input_size=size, in_channels=channels, seed=3)
    model.eval()
    cfg = TrainConfig(arch="lenet5", dataset="synthetic")
    return LoadedRun(tmp_path, cfg, model, [str(k) for k in range(classes)], [f"c{k}" for k in range(classes)],
                     size, channels, spec, tmp_path, {})


def test_ten_crop_averages_hand_computed_crops(tmp_path):
    """Images of 36x36: the ten 32x32 crops cut by hand (corners, centre, their mirror images),
    through the model one by one, averaged: what the 10-crop evaluation reports per image."""
    from cnnbench.pipeline.synthetic import synthetic_source

    source = synthetic_source("synthetic:36x36x3:4:10")
    run = _untrained_run(tmp_path, "center_crop(32)|normalize(unit)")
    p = predict_split(run, source, split="test", crops="10", batch_size=4)
    raw = np.stack([e["image"] for e in source.read(source.ranges("test")).as_numpy_iterator()])
    crops = [raw[:, t:t + 32, s:s + 32] for t, s in [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)]]
    crops += [c[:, :, ::-1] for c in crops]
    by_hand = np.mean([np.asarray(jax.nn.softmax(run.model(c.astype(np.float32) / 255.0))) for c in crops], axis=0)
    np.testing.assert_allclose(p.probs, by_hand, rtol=1e-4, atol=1e-6)
    centre = predict_split(run, source, split="test", crops="center", batch_size=4)
    np.testing.assert_allclose(centre.probs, np.asarray(jax.nn.softmax(run.model(crops[4].astype(np.float32) / 255.0))),
                               rtol=1e-4, atol=1e-6)
    assert not np.allclose(centre.probs, p.probs)


@pytest.mark.parametrize("batch_size", [1, 7, 50, 64, 1000])
def test_every_image_counts_once_whatever_the_batch(tmp_path, batch_size):
    """200 images on 8 devices; batches of 8, 8, 56, 64, 1000 leave partial, padded last batches."""
    from cnnbench.pipeline.synthetic import synthetic_source

    source = synthetic_source("synthetic:32x32x3:4:200")
    run = _untrained_run(tmp_path, "normalize(unit)")
    p = predict_split(run, source, split="test", crops="center", batch_size=batch_size)
    assert len(p.probs) == 200 and p.probs.shape == (200, 4)
    np.testing.assert_array_equal(p.index, np.arange(200))
    np.testing.assert_array_equal(p.labels, np.arange(200) % 4)
    reference = predict_split(run, source, split="test", crops="center", batch_size=40)
    np.testing.assert_allclose(p.probs, reference.probs, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- trained runs through the CLI

def test_eval_agrees_with_the_runs_own_validation(runs):
    run = load_run(runs[0])
    own = run.meta["validation"]
    doc = _eval_json(runs[0])
    assert doc["num_examples"] == own["num_examples"] == 360
    assert doc["top1"] == pytest.approx(own["top1"], abs=1e-9)
    assert doc["top5"] == pytest.approx(own["top5"], abs=1e-9)
    assert doc["top1_error"] == pytest.approx(1 - doc["top1"]) and doc["crops"] == "center"
    assert doc["top1"] > 0.8
    assert len(doc["models"]) == 1 and doc["models"][0]["epoch"] == 2
    assert len(doc["report"]["per_class"]) == 10 and len(doc["report"]["hardest"]) == 10
    saved = json.loads((runs[0] / "eval" / "accuracy-test-center.json").read_text())  # the one results schema
    assert saved["evaluator"] == "accuracy" and saved["key"] == "test-center" and saved["label"] == "test, centre crop"
    assert saved["metrics"]["top1"] == doc["top1"] and saved["metrics"]["top5"] == doc["top5"]
    assert saved["model"]["epoch"] == 2 and saved["split"] == "test" and saved["crops"] == "center"


def test_latest_run_is_the_default(runs, monkeypatch):
    monkeypatch.chdir(runs[0].parent.parent)
    shutil.copytree(runs[1], Path("runs") / "only", dirs_exist_ok=True)
    doc = _eval_json()
    assert doc["models"][0]["model"] == "only"


def test_ensemble_of_two_runs(runs, data_dir):
    loaded = [load_run(r) for r in runs]
    result, final = evaluate_runs(loaded, batch_size=64)
    singles = [predict_split(r, _digits(data_dir), split="test", crops="center") for r in loaded]
    np.testing.assert_allclose(final.probs, (singles[0].probs + singles[1].probs) / 2, rtol=1e-6)
    assert result["ensemble"] and len(result["models"]) == 2
    assert result["top1"] == pytest.approx(metrics.accuracy(final.probs, final.labels)["top1"])
    doc = _eval_json(*runs, "--crops", "10")
    assert doc["crops"] == "10" and doc["num_examples"] == 360 and len(doc["models"]) == 2


def test_report_and_submission_round_trip(runs, data_dir, tmp_path):
    report, sub = tmp_path / "report.md", tmp_path / "sub.txt"
    result = CliRunner().invoke(cli, ["eval", str(runs[0]), "--report", str(report), "--submission", str(sub)],
                                env={"COLUMNS": "80"})  # an 80-column terminal: every number whole
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout and max(len(line) for line in result.stdout.splitlines()) <= 80
    text = report.read_text()
    assert "Hardest classes" in text and "Most confused pairs" in text and "Calibration" in text
    figure = tmp_path / "report-samples.png"
    assert figure.read_bytes()[:4] == b"\x89PNG" and figure.stat().st_size > 10_000
    rows = (tmp_path / "report-confusion.csv").read_text().splitlines()  # the confusion matrix, written
    assert len(rows) == 11 and sum(int(v) for row in rows[1:] for v in row.split(",")[1:]) == 360
    assert (tmp_path / "report-confusion.png").read_bytes()[:4] == b"\x89PNG" and "report-confusion.csv" in text
    lines = sub.read_text().splitlines()
    assert len(lines) == 360 and all(len(line.split()) == 5 for line in lines)
    assert all(1 <= int(v) <= 10 for line in lines for v in line.split())
    # the ground truth for the same order, then scoring the file gives the evaluation's numbers
    run = load_run(runs[0])
    p = predict_split(run, _digits(data_dir), split="test", crops="center")
    truth = tmp_path / "truth.txt"
    write(p, tmp_path / "again.txt", class_ids=run.class_ids, ground_truth=truth)
    assert (tmp_path / "again.txt").read_text() == sub.read_text()
    doc = _eval_json("--ground-truth", truth, "--predictions", sub, "--num-classes", 10)
    direct = metrics.accuracy(p.probs, p.labels)
    assert doc["top5_error"] == pytest.approx(direct["top5_error"]) and doc["top1"] == pytest.approx(direct["top1"])
    assert score(truth, sub, num_classes=10)["num_examples"] == 360


def test_submission_is_in_file_name_order(tmp_path):
    probs = np.eye(3, dtype=np.float32)[[2, 0, 1]]
    p = Predictions(probs, np.array([2, 0, 1]), np.arange(3), ["c.JPEG", "a.JPEG", "b.JPEG"], np.zeros((1, 2, 2, 1)))
    np.testing.assert_array_equal(order(p), [1, 2, 0])
    write(p, tmp_path / "s.txt", class_ids=["x", "y", "z"], ground_truth=tmp_path / "g.txt")
    assert [line.split()[0] for line in (tmp_path / "s.txt").read_text().splitlines()] == ["1", "2", "3"]
    assert (tmp_path / "g.txt").read_text().split() == ["1", "2", "3"]
    (tmp_path / "map.txt").write_text("z\nx\ny\n")  # devkit numbering: z is class 1
    write(p, tmp_path / "m.txt", class_ids=["x", "y", "z"], class_map=tmp_path / "map.txt")
    assert [line.split()[0] for line in (tmp_path / "m.txt").read_text().splitlines()] == ["2", "3", "1"]


def test_predict_matches_the_evaluation_of_the_same_image(runs, data_dir, tmp_path):
    source = _digits(data_dir)
    first = next(source.read(source.ranges("test")).as_numpy_iterator())
    (tmp_path / "digit.png").write_bytes(first["image"])
    result = CliRunner().invoke(cli, ["predict", str(tmp_path / "digit.png"), "--run", str(runs[0]),
                                      "--format", "json"])
    assert result.exit_code == 0, result.output
    predictions = json.loads(result.stdout)[0]["predictions"]
    assert [p["rank"] for p in predictions] == [1, 2, 3, 4, 5]
    probs = [p["probability"] for p in predictions]
    assert probs == sorted(probs, reverse=True)
    p = predict_split(load_run(runs[0]), source, split="test[:1]", crops="center")
    assert predictions[0]["class"] == int(np.argmax(p.probs[0]))
    np.testing.assert_allclose(probs, np.sort(p.probs[0])[::-1][:5], rtol=1e-4, atol=1e-6)
    assert predictions[0]["name"] == source.class_names[predictions[0]["class"]]


def test_bf16_evaluation_and_prediction_agree_with_float32_and_keep_their_own_result(runs, data_dir, tmp_path,
                                                                                       monkeypatch):
    """``--precision bf16``: the inference program with bf16 products (on a CPU with bf16 units) gives
    the float32 evaluation's accuracy within a few images, saved as a result of its own beside the
    float32 one; predict ranks the same class first; a CPU without bf16 instructions computes in
    float32 (the same numbers) and says so in one note."""
    from cnnbench.train import step

    fp32 = _eval_json(runs[0])
    saved = runs[0] / "eval" / "accuracy-test-center.json"
    before = saved.read_text()
    monkeypatch.setattr(step, "cpu_has_bf16", lambda: True)
    bf16 = _eval_json(runs[0], "--precision", "bf16")
    assert bf16["precision"] == "bf16" and fp32["precision"] == "fp32" and bf16["num_examples"] == 360
    assert abs(bf16["top1"] - fp32["top1"]) <= 3 / 360 and bf16["top1"] > 0.8
    own = json.loads((runs[0] / "eval" / "accuracy-test-center-bf16.json").read_text())
    assert own["key"] == "test-center-bf16" and own["precision"] == "bf16" and own["metrics"]["top1"] == bf16["top1"]
    assert saved.read_text() == before  # the float32 result is left as it was

    source = _digits(data_dir)
    first = next(source.read(source.ranges("test")).as_numpy_iterator())
    (tmp_path / "digit.png").write_bytes(first["image"])
    ranked = {}
    for precision in ("fp32", "bf16"):
        result = CliRunner().invoke(cli, ["predict", str(tmp_path / "digit.png"), "--run", str(runs[0]),
                                          "--precision", precision, "--format", "json"])
        assert result.exit_code == 0, result.output
        ranked[precision] = json.loads(result.stdout)[0]["predictions"]
    assert ranked["bf16"][0]["class"] == ranked["fp32"][0]["class"]
    assert abs(ranked["bf16"][0]["probability"] - ranked["fp32"][0]["probability"]) < 0.05

    monkeypatch.setattr(step, "cpu_has_bf16", lambda: False)
    emulated = _eval_json(runs[0], "--precision", "bf16")
    assert "no bf16 instructions" in emulated["precision_note"] and emulated["top1"] == fp32["top1"]
    shown = CliRunner().invoke(cli, ["eval", str(runs[0]), "--precision", "bf16"])
    assert shown.exit_code == 0 and "no bf16 instructions" in shown.output
    other = CliRunner().invoke(cli, ["eval", str(runs[0]), "--evaluator", "probe", "--precision", "bf16"])
    assert other.exit_code == 2 and "--precision belong to the accuracy evaluator" in other.output


# --------------------------------------------------------------------------- bad input

def _error(*args):
    result = CliRunner().invoke(cli, list(map(str, args)))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    return lines[0]


def test_bad_input_is_one_line(runs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for name in ("config.json", "dataset.json"):
        shutil.copy(runs[0] / name, empty / name)
    assert "has no checkpoint" in _error("eval", empty)
    assert "not a run directory" in _error("eval", tmp_path)
    assert "does not exist" in _error("eval", tmp_path / "nowhere")
    other = tmp_path / "other"
    shutil.copytree(runs[0], other)
    dataset = json.loads((other / "dataset.json").read_text())
    (other / "dataset.json").write_text(json.dumps({**dataset, "ids": dataset["ids"][:5], "names": dataset["names"][:5]}))
    assert "does not fit the model" in _error("eval", other)
    arch = tmp_path / "arch"
    shutil.copytree(runs[0], arch)
    config = json.loads((arch / "config.json").read_text())
    (arch / "config.json").write_text(json.dumps({**config, "arch": "mlp2"}))
    assert "does not fit the model" in _error("eval", arch)
    assert "no split 'nope'" in _error("eval", runs[0], "--split", "nope")
    truth, sub = tmp_path / "t.txt", tmp_path / "s.txt"
    truth.write_text("1\n2\n3\n")
    sub.write_text("1 2 3 4 5\n2 3 4 5 6\n")
    assert "2 lines but" in _error("eval", "--ground-truth", truth, "--predictions", sub)
    sub.write_text("1 2 3 4 5\n2 3 4 5 6\n3 4 5 6 1001\n")
    assert "outside 1..1000" in _error("eval", "--ground-truth", truth, "--predictions", sub)
    assert "not an image" in _error("predict", truth, "--run", runs[0])


# --------------------------------------------------------------------------- compare

def _compare_json(*args):
    result = CliRunner().invoke(cli, ["compare", *map(str, args), "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_compare_runs_and_architectures_with_plots(runs, tmp_path):
    rows = _compare_json(*runs, "alexnet-owt", "vgg16", "--no-bench", "--archs-only", "--plot", tmp_path / "fig")
    by_name = {r["name"]: r for r in rows}
    run = by_name[runs[0].name]
    assert run["kind"] == "run" and run["dataset"] == "digits" and run["epochs"] == 2
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert run["best_top1"] == pytest.approx(summary["best"]["top1"]) and run["params"] == 61_706
    assert run["train_images_per_sec"] > 0 and run["wall_time"] > 0
    owt = by_name["alexnet-owt"]
    assert (owt["params"], owt["depth"], owt["receptive_field"]) == (61_100_840, 8, 163)
    assert owt["paper_top1"] == pytest.approx(0.56522) and by_name["vgg16"]["macs"] > 15e9
    assert owt["activation_bytes"] > 0 and "forward_images_per_sec" not in owt
    for name in ("curves.png", "accuracy_vs_macs.png"):
        path = tmp_path / "fig" / name
        assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 10_000
    ordered = _compare_json(*runs, "alexnet-owt", "vgg16", "--no-bench", "--sort", "params")
    assert [r["name"] for r in ordered][:2] == ["vgg16", "alexnet-owt"]


def test_compare_names_stand_for_their_latest_run_and_measure_speed(runs, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(runs[0], Path("runs") / "lenet5-digits-1")
    rows = _compare_json("lenet5", "linear", "--batch-size", "8", "--steps", "1", "--plot", "fig")
    assert rows[0]["kind"] == "run" and rows[0]["run_dir"] == str(Path("runs") / "lenet5-digits-1")
    assert rows[1]["kind"] == "architecture"
    assert all(r["forward_images_per_sec"] > 0 and r["train_step_images_per_sec"] > 0 for r in rows)
    assert (tmp_path / "fig" / "throughput_vs_accuracy.png").stat().st_size > 5_000
    result = CliRunner().invoke(cli, ["compare", "lenet5", "--no-bench", "--format", "csv"])
    assert result.exit_code == 0 and result.stdout.splitlines()[0].startswith("name,kind")
    assert "resnet50" in _error("compare", "resnet5O", "--no-bench")
    assert "cannot sort by 'nope'" in _error("compare", "lenet5", "--no-bench", "--sort", "nope")


def test_predict_names_a_missing_or_broken_image_before_loading_any_model(tmp_path):
    import time

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    for path, message in ((tmp_path / "missing.jpg", "does not exist"), (broken, "is not an image that can be decoded")):
        started = time.monotonic()
        # a run directory that does not exist: the image is checked first, so its error is the one shown
        result = CliRunner().invoke(cli, ["predict", str(path), "--run", str(tmp_path / "no-run")])
        assert result.exit_code == 2 and message in result.output and str(path) in result.output
        assert len(result.output.strip().splitlines()) == 1 and time.monotonic() - started < 5


def test_a_new_evaluator_is_one_registered_class_and_compare_shows_it(runs, tmp_path):
    """The extension point: an evaluator registered in one place is run, kept in the run in the
    one results schema, and shown by `cnnbench compare` with no other change."""
    import dataclasses
    from typing import ClassVar

    import jax.numpy as jnp
    from flax import nnx

    from cnnbench.compare import run_facts
    from cnnbench.eval.evaluators import EVALUATORS, Evaluator, Result, evaluate, register
    from cnnbench.runs import results

    @register
    @dataclasses.dataclass
    class WeightNorm(Evaluator):
        name: ClassVar[str] = "weight-norm"
        columns: ClassVar = (("weight_norm", "weight norm", "text"),)

        def __call__(self, run, progress):
            params = jax.tree.leaves(nnx.state(run.model, nnx.Param))
            return Result(key="all", label="all parameters",
                          metrics={"l2": float(jnp.sqrt(sum(jnp.sum(p.astype(jnp.float32) ** 2) for p in params)))})

        @classmethod
        def facts(cls, records):
            return {"weight_norm": records[-1]["metrics"]["l2"]}

    run_dir = tmp_path / "run"
    shutil.copytree(runs[0], run_dir)
    try:
        run = load_run(run_dir)
        found = evaluate(run, WeightNorm())
        expected = np.sqrt(sum(float(np.sum(np.asarray(p, np.float64) ** 2))
                               for p in jax.tree.leaves(nnx.state(run.model, nnx.Param))))
        assert found.metrics["l2"] == pytest.approx(expected, rel=1e-5) and expected > 1
        kept = results.read(run_dir, "weight-norm")
        assert len(kept) == 1 and kept[0]["key"] == "all" and kept[0]["model"]["epoch"] == 2
        assert run_facts(run_dir)["weight_norm"] == pytest.approx(expected, rel=1e-5)
        shown = CliRunner().invoke(cli, ["compare", str(run_dir), "--no-bench"])
        assert shown.exit_code == 0 and "weight norm" in shown.output, shown.output
        # and from the command line, by name, with its options
        (run_dir / "eval" / "weight-norm-all.json").unlink()
        shown = CliRunner().invoke(cli, ["eval", str(run_dir), "--evaluator", "weight-norm", "--format", "json"])
        assert shown.exit_code == 0, shown.output
        document = json.loads(shown.stdout)
        assert document["evaluator"] == "weight-norm" and document["results"][0]["setting"] == "all parameters"
        assert document["results"][0]["metrics"]["l2"] == pytest.approx(expected, rel=1e-5)
        assert len(results.read(run_dir, "weight-norm")) == 1
        for args, message in ((["--evaluator", "no-such"], "no evaluator 'no-such'; registered: accuracy, probe"),
                              (["--evaluator", "weight-norm", "--set", "scale=2"], "has no option scale; its options: none"),
                              (["--evaluator", "weight-norm", "--crops", "10"], "--crops belong to the accuracy evaluator"),
                              (["--evaluator", "probe", "--set", "per_class=abc"],
                               "the probe evaluator's per_class takes int, not 'abc'"),
                              (["--set", "crops=10"], "takes its options as flags")):
            shown = CliRunner().invoke(cli, ["eval", str(run_dir), *args])
            assert shown.exit_code == 2 and message in shown.output, (args, shown.output)
            assert len(shown.output.strip().splitlines()) == 1
    finally:
        EVALUATORS.pop("weight-norm")


def test_an_installed_package_adds_evaluators_through_an_entry_point(tmp_path, monkeypatch):
    """A plugin: a module named under the entry point group cnnbench.evaluators registers its
    evaluators on import; one that fails to import is one line."""
    import importlib.metadata

    from cnnbench.compare import evaluators
    from cnnbench.errors import UsageError
    from cnnbench.eval import evaluators as lib

    (tmp_path / "cnnbench_plugin_demo.py").write_text(
        "import dataclasses\nfrom typing import ClassVar\n"
        "from cnnbench.eval.evaluators import Evaluator, Result, register\n"
        "@register\n@dataclasses.dataclass\nclass Depth(Evaluator):\n"
        "    name: ClassVar[str] = 'depth'\n    scale: float = 1.0\n"
        "    def __call__(self, run, progress):\n"
        "        return Result(key='all', label='depth', metrics={'layers': 7 * self.scale})\n")
    (tmp_path / "cnnbench_plugin_broken.py").write_text("raise RuntimeError('not today')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    group = "cnnbench.evaluators"
    good = importlib.metadata.EntryPoint("depth", "cnnbench_plugin_demo", group)
    bad = importlib.metadata.EntryPoint("broken", "cnnbench_plugin_broken", group)
    plugins = [good]
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [e for e in plugins if e.group == group])
    try:
        assert "depth" in evaluators()
        assert lib.create("depth", {"scale": 2.0})(None, None).metrics == {"layers": 14.0}
        plugins.append(bad)
        with pytest.raises(UsageError, match=r"evaluator plugin broken \(cnnbench_plugin_broken\) does not load: "
                                             r"RuntimeError: not today"):
            evaluators()
    finally:
        lib.EVALUATORS.pop("depth", None)
        lib._loaded_plugins.discard("cnnbench_plugin_demo")


def test_results_of_before_the_schema_are_read(runs, tmp_path):
    """Run directories evaluated and probed by earlier versions keep showing in compare."""
    from cnnbench.compare import run_facts
    from cnnbench.runs import results

    run_dir = tmp_path / "run"
    shutil.copytree(runs[0], run_dir, ignore=shutil.ignore_patterns("eval"))
    (run_dir / "eval").mkdir()
    (run_dir / "eval" / "test-10.json").write_text(json.dumps(
        {"model": "lenet5-0", "checkpoint": "c", "weights": "raw", "epoch": 2, "top1": 0.75, "top5": 0.97,
         "dataset": "digits", "split": "test", "crops": "10"}))
    (run_dir / "probes").mkdir()
    (run_dir / "probes" / "digits-f6-logreg-10.json").write_text(json.dumps(
        {"run": "lenet5-0", "dataset": "digits", "layer": "f6", "classifier": "logreg", "per_class": 10,
         "top1": 0.6, "top1_std": 0.02}))
    (run_dir / "probes" / "notes.json").write_text("[1, 2]")  # JSON, but no result: passed over
    kept = results.read(run_dir)
    assert [(r["evaluator"], r["key"], r["metrics"]["top1"]) for r in kept] == [
        ("accuracy", "test-10", 0.75), ("probe", "digits-f6-logreg-10", 0.6)]
    facts = run_facts(run_dir)
    assert facts["eval_top1"] == 0.75 and facts["eval_protocol"] == "test, 10"
    assert facts["probe_top1"] == 0.6 and facts["probe"] == "digits f6 logreg 10/class"
