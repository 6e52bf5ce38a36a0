"""`cnnbench reproduce`: the verdict rules on constructed numbers, the catalogue, the plans of every
finding and budget, and one finding end to end at the smoke budget (report, figure, reuse, resume)."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from cnnbench.cli import cli
from cnnbench.reproduce import BUDGETS, get_finding, list_findings
from cnnbench.reproduce.finding import epochs_to, final_test_error, final_train_error
from cnnbench.reproduce.run import plan
from cnnbench.reproduce.verdict import (FAILS, HOLDS, INCONCLUSIVE, all_of, below_all, exceeds, not_above, positive,
                                        spread, stats)

NAMES = {"resnet-degradation", "nin-gap-vs-fc", "relu-vs-tanh", "alexnet-lrn", "alexnet-overlap-pooling",
         "ensemble-gain", "ten-crop-gain", "transfer-strategies"}


# --------------------------------------------------------------------------- the rules

def test_exceeds_compares_the_difference_with_two_seed_standard_deviations():
    # seed std 1.0 in both groups: the pooled spread is 1.0, the threshold 2.0
    a, b = stats([10, 11, 12]), stats([7, 8, 9])
    assert spread(a, b) == pytest.approx(1.0)
    assert exceeds(a, b, what="a-b").verdict == HOLDS          # +3 > 2
    assert exceeds(stats([9, 10, 11]), b, what="").verdict == INCONCLUSIVE   # +2 is not above 2
    assert exceeds(b, a, what="b-a").verdict == FAILS           # -3 < -2: the opposite effect
    assert exceeds(stats([8.5, 9.5, 10.5]), b, what="").verdict == INCONCLUSIVE
    one = exceeds(stats([20]), stats([1]), what="x")
    assert one.verdict == INCONCLUSIVE and "one seed" in one.text and math.isnan(one.spread)


def test_not_above_below_all_positive_and_all_of():
    a, b = stats([5, 6, 7]), stats([5, 6, 7])
    assert not_above(a, b, what="").verdict == HOLDS
    assert not_above(stats([8, 9, 10]), b, what="").verdict == FAILS      # +3 > 2 x 1
    assert not_above(stats([4]), stats([5]), what="").verdict == HOLDS     # one seed: holds only if not above
    assert not_above(stats([6]), stats([5]), what="").verdict == INCONCLUSIVE
    singles = stats([3.0, 4.0, 5.0])
    assert below_all(2.5, singles, what="").verdict == HOLDS               # below the best member
    assert below_all(3.5, singles, what="").verdict == INCONCLUSIVE        # between best and mean
    assert below_all(4.5, singles, what="").verdict == FAILS               # worse than the average member
    assert positive(stats([1.0, 1.2, 0.8]), what="").verdict == HOLDS      # mean 1.0 > 2 x 0.2
    assert positive(stats([0.5, -0.5, 0.3]), what="").verdict == INCONCLUSIVE
    assert positive(stats([-1.0, -1.2, -0.8]), what="").verdict == FAILS
    assert all_of(exceeds(stats([10, 11, 12]), stats([7, 8, 9]), what=""), not_above(a, b, what="")) == HOLDS
    assert all_of(exceeds(stats([10, 11, 12]), stats([7, 8, 9]), what=""),
                  exceeds(stats([9, 10, 11]), stats([7, 8, 9]), what="")) == INCONCLUSIVE
    assert all_of(exceeds(stats([7, 8, 9]), stats([10, 11, 12]), what=""), not_above(a, b, what="")) == FAILS


def test_measures_read_the_training_log():
    records = [{"kind": "train", "step": s, "epoch": 1 + (s - 1) // 10, "step_in_epoch": (s - 1) % 10 + 1,
                "top1": t} for s, t in ((2, 0.3), (4, 0.5), (6, 0.6), (8, 0.8), (10, 0.7), (12, 0.9))]
    records.insert(5, {"kind": "validation", "step": 10, "epoch": 1, "top1": 0.75, "train_top1": 0.65})
    records.append({"kind": "validation", "step": 20, "epoch": 2, "top1": 0.9, "train_top1": 0.88})
    assert epochs_to(records, 25.0) == pytest.approx(0.8)   # step 8 of 10 per epoch: 80% accuracy
    assert epochs_to(records, 5.0) == math.inf
    assert final_test_error(records) == pytest.approx(10.0)
    assert final_train_error(records) == pytest.approx(12.0)
    assert final_test_error([]) == 100.0  # a run that never validated counts as wrong
    stopped = records + [{"kind": "stopped", "reason": "loss is nan", "step": 21}]
    assert final_test_error(stopped) == final_train_error(stopped) == 100.0  # and so does one that diverged
    assert epochs_to(stopped, 25.0) == pytest.approx(0.8)  # (it reached 25% before it diverged)


# --------------------------------------------------------------------------- the catalogue and the plans

def test_list_json_describes_every_finding():
    result = CliRunner().invoke(cli, ["reproduce", "--list", "--format", "json"])
    assert result.exit_code == 0, result.output
    findings = json.loads(result.output)
    assert {f["name"] for f in findings} == NAMES
    for f in findings:
        assert f["paper"] and f["claim"].endswith(".") and f["metric"] and f["rule"]
        assert f["paper_numbers"] and all({"what", "value", "source"} <= set(n) for n in f["paper_numbers"])
        assert set(f["budgets"]) == set(BUDGETS) and f["datasets"]["paper"] in ("cifar10", "imagenet2012")
        assert f["datasets"]["small"] == "digits"   # offline
        for name in ("smoke", "small"):
            assert 0 < f["budgets"][name]["estimated_minutes"] <= (1.5 if name == "smoke" else 15)
        assert f["budgets"]["paper"]["estimated_minutes"] is None


@pytest.mark.parametrize("args, message", [
    (["reproduce", "resnet-degredation"], "unknown finding 'resnet-degredation'; did you mean resnet-degradation? "),
    (["reproduce", "relu-vs-tanh", "--budget", "huge"], "unknown budget 'huge'; budgets: smoke, small, paper"),
    (["reproduce", "relu-vs-tanh", "--seeds", "0"], "--seeds must be at least 1"),
    (["reproduce"], "name a finding"),
    (["reproduce", "relu-vs-tanh", "--out", "/proc/cnnbench-x"], "cannot write /proc/cnnbench-x"),
])
def test_usage_errors_are_one_line_and_exit_2(args, message):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_every_budget_plans_valid_runs(tmp_path):
    for finding in list_findings():
        for budget in BUDGETS:
            p = plan(finding, budget, out=tmp_path / finding.name, prepare=budget == "smoke")
            seeds = finding.budget(budget).seeds
            assert len(p.runs) == seeds * len(finding.variants)
            assert {r.cfg.seed for r in p.runs} == set(range(seeds)) and all(r.state == "new" for r in p.runs)
            assert all(r.run_dir.parent == tmp_path / finding.name / "runs" / budget for r in p.runs)
    # a variant's own options merge with the budget's: AlexNet without LRN keeps the budget's He init
    lrn = plan(get_finding("alexnet-lrn"), "small", out=tmp_path / "lrn", seeds=2)
    assert [r.cfg.arch_options for r in lrn.runs] == [{"weight_init": "he"}] * 2 + \
        [{"weight_init": "he", "lrn": False}] * 2
    # the paper budget is the paper's recipe
    paper = plan(get_finding("resnet-degradation"), "paper", out=tmp_path / "deg")
    assert {(r.cfg.dataset, r.cfg.epochs, r.cfg.batch_size, tuple(r.cfg.decay_epochs)) for r in paper.runs} == \
        {("cifar10", 164, 128, (82, 123))}
    other = plan(get_finding("relu-vs-tanh"), "small", out=tmp_path / "relu", dataset="synthetic")
    assert other.runs[0].run_dir.parent.name == "small-synthetic" and other.runs[0].cfg.dataset == "synthetic"


def test_transfer_builds_two_offline_tasks_and_fine_tunes_the_source_of_the_same_seed(tmp_path):
    p = plan(get_finding("transfer-strategies"), "small", out=tmp_path, seeds=2)
    source = tmp_path / "data" / "digits-source"
    target = tmp_path / "data" / "digits-target"
    assert sorted(d.name for d in (source / "train").iterdir()) == ["0", "1", "2", "3", "4"]
    assert sorted(d.name for d in (target / "train").iterdir()) == ["5", "6", "7", "8", "9"]
    assert all(len(list(d.iterdir())) == 10 for d in (target / "train").iterdir())
    assert sum(len(list(d.iterdir())) for d in (source / "train").iterdir()) > 600
    runs = {(r.variant, r.cfg.seed): r.cfg for r in p.runs}
    assert runs[("source", 1)].dataset == f"folder:{source.resolve()}"
    assert runs[("frozen-base", 1)].init_from == str(tmp_path / "runs" / "small" / "source-seed1")
    assert runs[("frozen-base", 1)].trainable == ["head"] and runs[("scratch", 0)].init_from is None
    with pytest.raises(Exception, match="dataset does not apply"):
        plan(get_finding("transfer-strategies"), "small", out=tmp_path, dataset="cifar10")


# --------------------------------------------------------------------------- end to end

def test_smoke_reproduction_reports_and_a_second_run_reuses_it(tmp_path):
    out = tmp_path / "ens"
    args = ["reproduce", "ensemble-gain", "--budget", "smoke", "--out", str(out), "--format", "json"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    doc = json.loads((out / "report.json").read_text())
    assert doc == json.loads(first.stdout)
    assert {"name", "budget", "dataset", "seeds", "measured", "paper", "verdict", "rule"} <= set(doc)
    assert doc["paper"][0]["source"] == "Table 2" and "Krizhevsky" in doc["reference"]  # the paper's numbers
    assert (doc["name"], doc["budget"], doc["dataset"], doc["seeds"]) == ("ensemble-gain", "smoke", "digits", 2)
    assert doc["verdict"] in (HOLDS, FAILS, INCONCLUSIVE)
    singles, ensemble = doc["measured"]["single model"], doc["measured"]["ensemble of 2"]
    assert len(singles["values"]) == 2 and singles["std"] is not None and len(ensemble["values"]) == 1
    members = [100 * (1 - m["top1"]) for m in doc["details"]["models"]]
    assert singles["values"] == pytest.approx(members)
    expected = HOLDS if ensemble["mean"] < min(members) else FAILS if ensemble["mean"] > sum(members) / 2 \
        else INCONCLUSIVE
    assert doc["verdict"] == expected
    assert (out / "bars.png").stat().st_size > 10_000 and "bars.png" in (out / "report.md").read_text()
    assert doc["verdict"] in (out / "report.md").read_text().splitlines()[0]
    run = out / "runs" / "smoke" / "member-seed1"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "train_top1" in records[-1] and records[-1]["kind"] == "validation"  # what the training-error tests read
    # a second invocation trains nothing: a finished run is reused, an unfinished one continued
    (run / "summary.json").unlink()
    lines = (run / "metrics.jsonl").read_text()
    second = CliRunner().invoke(cli, args[:-2])
    assert second.exit_code == 0, second.output
    assert "member-seed0: finished, reused" in second.output and "member-seed1: continuing" in second.output
    assert "analysis: evaluating the 2 models and their ensemble" in second.output  # the analysis's progress
    assert (run / "metrics.jsonl").read_text() == lines and (run / "summary.json").exists()
    again = json.loads((out / "report.json").read_text())
    assert again["measured"] == doc["measured"] and again["verdict"] == doc["verdict"]
    assert again["runs"]["member-seed1"]["state"] == "done"
