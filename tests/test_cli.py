"""The `archs` and `summary` commands as a user runs them."""

import json

import pytest
from click.testing import CliRunner

from cnnbench.cli import cli


@pytest.fixture(scope="module")
def run():
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(cli, list(args), catch_exceptions=False)

    return invoke


def test_archs_json_lists_every_architecture_with_counts(run):
    result = run("archs", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert len(rows) == 36
    assert {"name", "family", "year", "params", "macs", "input_size"} <= set(rows["alexnet"])
    assert rows["alexnet"]["params"] == 60_965_224 and rows["alexnet"]["input_size"] == 227
    assert rows["resnet50"]["family"] == "ResNet" and rows["resnet50"]["year"] == 2015
    assert abs(rows["resnet50"]["macs"] / 4.089e9 - 1) < 0.01
    assert rows["alexnet"]["references"][0]["top5_err"] == 18.2


def test_archs_table_and_family_filter(run):
    result = run("archs", "--family", "vgg")
    assert result.exit_code == 0
    assert "vgg16-bn" in result.output and "resnet50" not in result.output
    assert "138,357,544" in result.output
    bad = run("archs", "--family", "transformer")
    assert bad.exit_code == 2 and "no architecture of family" in bad.output


def test_summary_json_structure(run):
    result = run("summary", "alexnet-owt", "--input-size", "227", "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert {"arch", "input_shape", "params", "macs", "activations", "layers"} <= set(doc)
    assert doc["input_shape"] == [227, 227, 3] and doc["params"] == 61_100_840
    layer = doc["layers"][0]
    assert {"name", "type", "output_shape", "params", "macs", "receptive_field",
            "effective_stride"} <= set(layer)
    assert (layer["name"], layer["receptive_field"], layer["effective_stride"]) == ("features.conv1", 11, 4)
    assert len(doc["observations"]) == 3


def test_summary_table_shows_totals_and_observations(run):
    result = run("summary", "lenet5")
    assert result.exit_code == 0
    for text in ("features.c1", "head.f6", "61,706", "total", "Parameters:", "Multiply-adds:"):
        assert text in result.output


def test_summary_options_and_other_formats(run):
    result = run("summary", "alexnet", "-o", "lrn=false", "--format", "csv")
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("layer,type") and not [line for line in lines if ",lrn," in line]
    md = run("summary", "resnet20", "--num-classes", "100", "--format", "markdown")
    assert md.exit_code == 0 and "| head.fc | dense |" in md.output
    all_layers = run("summary", "resnet20", "--all-layers", "--format", "json")
    assert any(layer["type"] == "batchnorm" for layer in json.loads(all_layers.output)["layers"])


@pytest.mark.parametrize("args,message", [
    (("summary", "alexnt"), "unknown architecture 'alexnt'; did you mean alexnet"),
    (("summary", "alexnet", "-o", "lnr=false"), "alexnet has no option lnr"),
    (("summary", "alexnet", "--input-size", "32"), "too small"),
    (("summary", "lenet5", "-o", "activation=swish"), "unknown activation 'swish'"),
    (("summary", "lenet5", "-o", "activation"), "is not KEY=VALUE"),
])
def test_user_mistakes_are_one_line_and_exit_2(run, args, message):
    result = run(*args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output


def test_a_misspelt_fastops_name_is_a_usage_error(monkeypatch):
    # CNNBENCH_FASTOPS=bogus used to turn every fast path off without a word
    runner = CliRunner()
    monkeypatch.setenv("CNNBENCH_FASTOPS", "conv,batchnrom")
    bad = runner.invoke(cli, ["archs", "--format", "json"])
    assert bad.exit_code == 2 and "CNNBENCH_FASTOPS names batchnrom" in bad.output
    monkeypatch.setenv("CNNBENCH_FASTOPS", "conv, pool")
    assert runner.invoke(cli, ["archs", "--format", "json"]).exit_code == 0


@pytest.mark.parametrize("args, numbers", [
    (["summary", "alexnet"], ["60,965,224", "105,415,200"]),
    (["archs"], ["60,965,224", "138,357,544"]),
    (["compare", "lenet5", "alexnet", "--no-bench"], ["61,706", "60,965,224"]),
    (["reproduce", "--list"], ["resnet-degradation"]),
])
def test_tables_fit_an_80_column_terminal_without_eliding_a_number(args, numbers):
    narrow = CliRunner().invoke(cli, args, env={"COLUMNS": "80"})
    assert narrow.exit_code == 0, narrow.output
    assert "…" not in narrow.stdout and max(len(line) for line in narrow.stdout.splitlines()) <= 80
    assert all(n in narrow.stdout for n in numbers)
    wide = CliRunner().invoke(cli, args, env={"COLUMNS": "240"})
    assert "…" not in wide.stdout and all(n in wide.stdout for n in numbers)
