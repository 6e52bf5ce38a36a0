"""`cnnbench data prepare|show|bench` as a user runs them."""

import json

from click.testing import CliRunner

from cnnbench.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_prepare_lists_splits_and_classes(tmp_path):
    result = invoke("data", "prepare", "digits", "--data-dir", str(tmp_path), "--format", "json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)  # TFDS's preparation chatter goes to stderr
    assert info["splits"] == {"train": 1437, "test": 360} and info["num_classes"] == 10
    table = invoke("data", "prepare", "digits", "--data-dir", str(tmp_path))
    assert "1,437" in table.output and "10 classes, images 8x8x1" in table.output


def test_show_writes_a_png_grid(tmp_path):
    out = tmp_path / "grid.png"
    result = invoke("data", "show", "synthetic:40x40x3:3:32", "--size", "32", "--ops", "cifar",
                    "--count", "6", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 2000
    # a split smaller than --count shows what it has (a training pipeline yields whole batches only)
    small = invoke("data", "show", "synthetic:40x40x3:3:32", "--split", "train[:5]", "--size", "32",
                   "--count", "16", "--out", str(tmp_path / "small.png"))
    assert small.exit_code == 0, small.output
    assert "wrote" in small.output and "5 samples" in small.output and "the split has 5 images" in small.output


def test_bench_reports_throughput_against_decoding():
    result = invoke("data", "bench", "synthetic:64x64x3:10:256", "--size", "56", "--ops",
                    "resize_shorter(64)|random_crop(56)|flip", "--batch-size", "16", "--batches", "4",
                    "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["images"] for r in rows] == [64, 64, 64]
    assert all(r["images_per_sec"] > 0 for r in rows) and all(r["vs_decode"] > 0 for r in rows[1:])


def test_data_mistakes_are_one_line_and_exit_2(tmp_path):
    for args, message in ((("data", "prepare", "cifar1"), "did you mean cifar10"),
                          (("data", "prepare", "imagenet2012", "--data-dir", str(tmp_path),
                            "--manual-dir", str(tmp_path)), "ILSVRC2012_img_train.tar"),
                          (("data", "show", "synthetic", "--ops", "blur(3)"), "unknown preprocessing op"),
                          (("data", "show", "synthetic", "--split", "validation"), "has no split")):
        result = invoke(*args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and message in lines[-1] and lines[-1].startswith("Error:"), result.output
