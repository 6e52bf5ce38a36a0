"""Run directories no one can corrupt: one writer at a time, requests that conflict with a run are
refused, damaged files are named in one line, a damaged checkpoint is passed over, a quiet start."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cnnbench.cli import cli
from cnnbench.errors import CnnbenchError, UsageError
from cnnbench.runs import config as config_lib
from cnnbench.runs.config import load
from cnnbench.progress import Record
from cnnbench.train.loop import train
from cnnbench.runs.layout import RunLock, read_metrics

SMALL = {"dataset": "synthetic:12x12x3:4:96", "batch_size": 16, "input_size": 12, "lr": 0.05, "devices": 1}
CLI_SMALL = ["--dataset", SMALL["dataset"], "--input-size", "12", "--batch-size", "16", "--devices", "1"]


def _cnnbench(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "cnnbench.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 3-epoch mlp2 run (two kept checkpoints, a best one) and its evaluation."""
    run = tmp_path_factory.mktemp("faults") / "run"
    train(load(None, "mlp2", {**SMALL, "epochs": 3}), run_dir=run)
    result = CliRunner().invoke(cli, ["eval", str(run), "--format", "json"])
    assert result.exit_code == 0, result.output
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / run.name
    shutil.copytree(run, target)
    return target


def test_a_second_writer_is_refused_naming_the_first_and_a_killed_one_resumes_at_once(tmp_path):
    """Two real `cnnbench train` processes on one run directory: the second (another seed) exits 2
    naming the first's pid and command; the first, SIGKILLed while it holds the lock, leaves
    nothing to clean up: a resume starts at once and ends with exit code 0."""
    run = tmp_path / "same"
    first = subprocess.Popen([sys.executable, "-m", "cnnbench.cli", "train", "mlp2", *CLI_SMALL, "--epochs", "500",
                              "--run-dir", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not read_metrics(run):  # training: the lock is held
            assert first.poll() is None, "the first writer ended early"
            time.sleep(0.1)
        second = _cnnbench("train", "mlp2", *CLI_SMALL, "--epochs", "500", "--seed", "1", "--run-dir", str(run))
        assert second.returncode == 2, second.stderr
        line = _last_line(second.stderr + second.stdout)
        assert line.startswith("Error:") and "being written by another process" in line, line
        assert f"pid {first.pid}" in line and "--epochs 500" in line, line
        assert "Traceback" not in second.stderr
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    finally:
        first.kill()
        first.wait()
    config = json.loads((run / "config.json").read_text())
    assert config["seed"] == 0  # the refused writer wrote nothing
    resumed = _cnnbench("train", "--resume", str(run), "--epochs", "1")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "being written" not in resumed.stderr


def test_a_lock_held_in_this_process_refuses_train_and_spares_eval(finished, tmp_path):
    run = _copy(finished, tmp_path)
    with RunLock(run):
        with pytest.raises(UsageError, match=f"pid {os.getpid()}"):
            train(load(None, "mlp2", {**SMALL, "epochs": 4}), run_dir=run)
        before = sorted((run / "eval").iterdir())
        result = CliRunner().invoke(cli, ["eval", str(run), "--split", "train", "--format", "json"])
        assert result.exit_code == 0, result.output  # reading never waits for the lock
        assert sorted((run / "eval").iterdir()) == before  # ... and writes nothing while it is held
    result = CliRunner().invoke(cli, ["eval", str(run), "--split", "train", "--format", "json"])
    assert result.exit_code == 0 and len(list((run / "eval").iterdir())) == len(before) + 1


def test_a_request_that_conflicts_with_the_run_is_refused(finished, tmp_path):
    run = _copy(finished, tmp_path)
    runner = CliRunner()
    for args, fields in ((["train", "resnet18", "--run-dir", str(run)], ["arch 'mlp2' (requested 'resnet18')"]),
                         (["train", "--resume", str(run), "--lr", "0.1", "--seed", "3"],
                          ["lr 0.05 (requested 0.1)", "seed 0 (requested 3)"])):
        result = runner.invoke(cli, args)
        assert result.exit_code == 2, result.output
        line = _last_line(result.output)
        assert line.startswith("Error:") and all(f in line for f in fields), line
        assert "--resume" in line and "new --run-dir" in line and "--epochs" in line
    assert json.loads((run / "config.json").read_text())["arch"] == "mlp2"


@pytest.mark.parametrize("name", ["config.json", "dataset.json", "transfer.json", "eval/train-center.json"])
@pytest.mark.parametrize("damage", ["truncated", "empty", "missing"])
def test_a_damaged_run_file_is_one_line(finished, tmp_path, name, damage):
    run = _copy(finished, tmp_path)
    if name == "transfer.json":
        (run / name).write_text(json.dumps({"init_from": "x", "frozen_params": 0}))
    if name.startswith("eval/"):
        (run / name).write_text(json.dumps({"top1": 0.5}))
    path = run / name
    text = path.read_text()
    if damage == "truncated":
        path.write_text(text[: len(text) // 2])
    elif damage == "empty":
        path.write_text("")
    else:
        path.unlink()
    commands = {"config.json": [["eval", str(run)], ["compare", str(run)], ["train", "--resume", str(run)]],
                "dataset.json": [["compare", str(run)]],
                "transfer.json": [["compare", str(run)]],
                "eval/train-center.json": [["compare", str(run)]]}[name]
    for args in commands:
        result = CliRunner().invoke(cli, args)
        if damage == "missing" and name != "config.json":
            assert result.exit_code == 0, (args, result.output)  # optional files may be absent
            continue
        assert result.exit_code == 2, (args, result.output)
        line = _last_line(result.output)
        assert line.startswith("Error:") and name.split("/")[-1] in line, (args, result.output)
        assert "Traceback" not in result.output


def test_a_broken_metrics_line_is_skipped_and_reported_once(finished, tmp_path):
    run = _copy(finished, tmp_path)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "validation", "step": 99, "top1": 0.\n')
    result = _cnnbench("compare", str(run), "--format", "json")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("1 broken line(s) skipped") == 1, result.stderr


def _damage_newest(run: Path, which: str = "latest") -> int:
    steps = sorted(int(p.name) for p in (run / "checkpoints" / which).iterdir() if p.name.isdigit())
    for f in (run / "checkpoints" / which / str(steps[-1])).rglob("*"):
        if f.is_file() and f.stat().st_size > 64:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return steps


def test_a_damaged_newest_checkpoint_is_passed_over(finished, tmp_path):
    run = _copy(finished, tmp_path)
    steps = _damage_newest(run)
    assert len(steps) == 2
    result = _cnnbench("eval", str(run), "--checkpoint", "latest", "--format", "json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "damaged checkpoint passed over" in result.stderr and f"latest/{steps[0]}" in result.stderr
    assert json.loads(result.stdout)["models"][0]["checkpoint"].endswith(f"latest/{steps[0]}")
    seen = Record()
    summary = train(load(None, "mlp2", {**SMALL, "epochs": 4}), run_dir=run, progress=seen)
    assert summary["epochs"] == 4 and any(f"continuing from step {steps[0]}" in e for e in seen.warnings), seen.events
    assert f"resuming: {run}" in seen.notes
    # none intact: one line naming the folder
    for folder in (run / "checkpoints" / "latest").iterdir():
        for f in folder.rglob("*") if folder.name.isdigit() else ():
            if f.is_file() and f.stat().st_size > 64:
                f.write_bytes(b"")
    with pytest.raises(UsageError, match="no intact checkpoint in .*checkpoints/latest"):
        train(load(None, "mlp2", {**SMALL, "epochs": 5}), run_dir=run)


def test_training_starts_quietly(tmp_path):
    result = _cnnbench("train", "mlp2", *CLI_SMALL, "--epochs", "1", "--run-dir", str(tmp_path / "quiet"))
    assert result.returncode == 0, result.stderr[-2000:]
    noise = [line for line in (result.stderr + result.stdout).splitlines()
             if line.startswith(("WARNING: All log messages", "I0000", "W0000", "E0000"))]
    assert noise == [], noise


@pytest.mark.parametrize("where, message", [("/proc/cnnbench-run", "cannot write the run directory /proc/cnnbench-run"),
                                            ("FILE/sub", "Not a directory")])
def test_an_unwritable_run_dir_is_one_line_before_anything_loads(tmp_path, where, message):
    (tmp_path / "FILE").write_text("a file, not a folder")
    target = where if where.startswith("/") else str(tmp_path / where)
    result = CliRunner().invoke(cli, ["train", "mlp2", "--epochs", "1", "--run-dir", target])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_full_disk_stops_training_in_one_line_naming_the_intact_checkpoint(tmp_path, monkeypatch):
    import errno

    from cnnbench.runs import layout as rundir

    original, calls = rundir.MetricsLog.write, {"n": 0}

    def full_after_epoch_one(self, record):
        if record["kind"] == "validation":
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        return original(self, record)

    monkeypatch.setattr(rundir.MetricsLog, "write", full_after_epoch_one)
    run = tmp_path / "full"
    with pytest.raises(CnnbenchError) as caught:
        train(load(None, "mlp2", {**SMALL, "epochs": 3}), run_dir=run)
    text = str(caught.value)
    assert f"cannot write {run / 'metrics.jsonl'}: No space left on device" in text
    assert "checkpoint (step " in text and f"--resume {run}" in text and "\n" not in text


def test_resume_without_checkpoints_refuses_and_stale_saves_are_cleaned(finished, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(finished, run)
    stale = run / "checkpoints" / "latest" / "99.orbax-checkpoint-tmp-1234"
    stale.mkdir()
    cfg = config_lib.from_run(run)
    train(cfg, run_dir=run)  # continues (nothing left to train) and clears the killed save's folder
    assert not stale.exists()
    lines = (run / "metrics.jsonl").read_text()
    for step in (run / "checkpoints" / "latest").iterdir():
        shutil.rmtree(step)
    shutil.rmtree(run / "checkpoints" / "best")
    with pytest.raises(UsageError, match="finished epochs in metrics.jsonl but no checkpoint to continue from"):
        train(cfg, run_dir=run)
    assert (run / "metrics.jsonl").read_text() == lines  # nothing overwritten


def test_a_disk_too_full_for_the_next_checkpoint_stops_before_writing_it(tmp_path, monkeypatch):
    import collections
    import shutil

    from cnnbench.runs import checkpoint

    real, saves = shutil.disk_usage, {"n": 0}
    original = checkpoint.Checkpoints.check_space

    def counting(self, state, copies=1):
        saves["n"] += 1
        if saves["n"] >= 2:  # the disk is full from the second save on
            monkeypatch.setattr(shutil, "disk_usage", lambda path: collections.namedtuple(
                "usage", "total used free")(real(path).total, real(path).total, 4096))
        return original(self, state, copies)

    monkeypatch.setattr(checkpoint.Checkpoints, "check_space", counting)
    run = tmp_path / "full"
    with pytest.raises(CnnbenchError) as caught:
        train(load(None, "mlp2", {**SMALL, "epochs": 3}), run_dir=run)
    text = str(caught.value)
    assert text.startswith(f"cannot write {(run / 'checkpoints' / 'latest').absolute()}: No space left on device (0.0 MiB free")
    assert "the last complete checkpoint (step 6) is intact" in text and "\n" not in text
    assert not list((run / "checkpoints" / "latest").glob("*tmp*"))  # nothing half-written


def test_orbax_file_errors_become_the_os_error_they_were():
    from cnnbench.runs.checkpoint import as_os_error

    orbax = ValueError('OUT_OF_RANGE: Error writing "params.fc1/0" in OCDBT database at local file "/r/c/": Failed '
                       'writing: "/r/c/d/9b2e": Failed to write 14733 bytes to file 16: No space left on device '
                       "[os_error_code='28']")
    error = as_os_error(orbax)
    assert (error.errno, error.strerror, error.filename) == (28, "No space left on device", "/r/c/d/9b2e")
    assert as_os_error(ValueError("something else")) is None
