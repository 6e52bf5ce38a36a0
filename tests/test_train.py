"""The training engine: it learns, it shards, it resumes, it stops on NaN, it reads experiments."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from click.testing import CliRunner
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cnnbench.archs import REGISTRY, create_model
from cnnbench.cli import cli
from cnnbench.errors import CnnbenchError, UsageError
from cnnbench.runs.config import load
from cnnbench.train.loop import train
from cnnbench.runs.layout import read_metrics
from cnnbench.train.step import make_steps

EXPERIMENTS = sorted((Path(__file__).parent.parent / "experiments").glob("*.toml"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def test_lenet5_learns_digits_with_the_defaults(data_dir, tmp_path):
    """`cnnbench train lenet5` with no option: at least 97% top-1 on the digits test split."""
    summary = train(load(None, "lenet5", {"data_dir": data_dir, "devices": 1}), run_dir=tmp_path / "run")
    assert summary["final"]["top1"] >= 0.97, summary
    records = read_metrics(tmp_path / "run")
    val = [r for r in records if r["kind"] == "validation"]
    assert len(val) == 30 and val[-1]["num_examples"] == 360
    assert val[-1]["loss"] < val[0]["loss"]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["arch"] == "lenet5" and config["dataset"] == "digits"
    assert (tmp_path / "run" / "summary.json").exists()
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 1000


@pytest.mark.parametrize("arch", ["resnet20", "nin-cifar"])
def test_cifar_sized_nets_lower_their_loss(arch, tmp_path):
    """ResNet (batch norm) and NiN (dropout) on 32x32 images, 12 steps: the last epoch's training
    loss is clearly below the first's. (VGG is left out: one of its steps takes seconds on CPU.)"""
    cfg = load(None, arch, {"dataset": "synthetic:32x32x3:4:128", "batch_size": 32, "epochs": 3,
                            "devices": 1, "lr": 0.01, "schedule": "cosine"})
    train(cfg, run_dir=tmp_path / "run")
    by_epoch = {}
    for r in read_metrics(tmp_path / "run"):
        if r["kind"] == "train":
            by_epoch.setdefault(r["epoch"], []).append(r["loss"])
    assert np.mean(by_epoch[3]) < 0.75 * np.mean(by_epoch[1]), by_epoch


def test_dropout_is_a_function_of_seed_and_step():
    """nin-cifar (dropout after two mlpconv blocks), one training step from one state and batch:
    the same seed and step give bit-identical parameters, another seed or another step other masks.
    (That whole runs repeat exactly is checked by the resume and multi-process tests.)"""
    from cnnbench.parallel import make_mesh
    from cnnbench.train.step import train_state

    mesh = make_mesh(1, 1)
    tx = optax.sgd(0.05)
    graphdef, state, other = train_state(create_model("nin-cifar", num_classes=4, input_size=16, seed=0), tx, mesh)
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(8, 16, 16, 3)).astype(np.float32), "label": rng.integers(0, 4, 8).astype(np.int32)}
    step = {seed: jax.jit(make_steps(graphdef, other, tx, seed=seed, finish=None)[0]) for seed in (0, 1)}

    def params_after(seed, at_step=0):
        return jax.tree.leaves(jax.device_get(step[seed](dict(state, step=jnp.int32(at_step)), batch)[0]["params"]))

    same = all(np.array_equal(a, b) for a, b in zip(params_after(0), params_after(0)))
    other_seed = all(np.array_equal(a, b) for a, b in zip(params_after(0), params_after(1)))
    other_step = all(np.array_equal(a, b) for a, b in zip(params_after(0), params_after(0, at_step=1)))
    assert same and not other_seed and not other_step


def _one_model_steps(n_devices, steps=2):
    """resnet20 (batch norm) trained a few steps on one fixed global batch over n devices."""
    mesh = Mesh(np.array(jax.devices()[:n_devices]), ("data",))
    replicated, data = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
    model = create_model("resnet20", num_classes=10, input_size=16)
    graphdef, params, stats, other = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    tx = optax.sgd(0.1, momentum=0.9)
    state = jax.device_put({"step": jnp.zeros((), jnp.int32), "params": params, "batch_stats": stats,
                            "opt_state": tx.init(params)}, replicated)
    step, _ = make_steps(graphdef, jax.device_put(other, replicated), tx, seed=0, finish=None)
    step = jax.jit(step, out_shardings=(replicated, replicated))
    rng = np.random.default_rng(0)
    batch = {"image": jax.device_put(rng.normal(size=(16, 16, 16, 3)).astype(np.float32), data),
             "label": jax.device_put(rng.integers(0, 10, 16).astype(np.int32), data)}
    for _ in range(steps):
        state, metrics = step(state, batch)
    return jax.device_get(state)


def test_eight_devices_equal_one_device():
    """Same global batch on 1 and 8 devices: same parameters and the same (global) batch-norm
    statistics, to float tolerance."""
    assert len(jax.devices()) >= 8
    one, eight = _one_model_steps(1), _one_model_steps(8)
    for a, b in zip(jax.tree.leaves(one["params"]), jax.tree.leaves(eight["params"])):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    for a, b in zip(jax.tree.leaves(one["batch_stats"]), jax.tree.leaves(eight["batch_stats"])):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


SMALL = {"dataset": "synthetic:12x12x3:4:96", "batch_size": 16, "input_size": 12, "lr": 0.05}


def test_plateau_schedule_lowers_the_learning_rate(tmp_path):
    cfg = load(None, "linear", {**SMALL, "epochs": 6, "devices": 1, "schedule": "plateau", "lr": 1e-9,
                                "plateau_patience": 1})
    train(cfg, run_dir=tmp_path / "run")
    lrs = sorted({round(r["lr"] / 1e-9, 6) for r in read_metrics(tmp_path / "run") if r["kind"] == "train"})
    assert lrs[0] < 0.01 and lrs[-1] == 1.0  # validation never improves at lr 1e-9: /10 per epoch


def test_nan_loss_stops_and_says_which_checkpoint_is_intact(tmp_path):
    """Before any checkpoint: the message says none exists yet; after one: its step. Either way
    summary.json records the stop."""
    cfg = load(None, "mlp2", {**SMALL, "epochs": 3, "devices": 1, "lr": 1e30, "schedule": "constant"})
    with pytest.raises(CnnbenchError, match=r"loss is (nan|inf) at step \d+ \(epoch 1\).*no checkpoint was written yet"):
        train(cfg, run_dir=tmp_path / "run")
    stopped = json.loads((tmp_path / "run" / "summary.json").read_text())["stopped"]
    assert stopped["epoch"] == 1 and stopped["intact_checkpoint_step"] is None and stopped["step"] >= 1
    # one good epoch (6 steps), then a learning rate that blows up: the intact checkpoint is step 6
    good = load(None, "mlp2", {**SMALL, "epochs": 1, "devices": 1, "schedule": "constant"})
    train(good, run_dir=tmp_path / "later")
    bad = load(None, "mlp2", {**SMALL, "epochs": 3, "devices": 1, "schedule": "constant"})
    from cnnbench.runs import config as config_lib

    config_lib.check_continues(tmp_path / "later", bad)  # only epochs differ: it continues
    from cnnbench.train import loop

    original = loop._Loop.train_epoch

    def poisoned(self, state, epoch):  # the second epoch's loss is NaN
        state = dict(state, params=jax.tree.map(lambda p: p * jnp.nan, state["params"])) if epoch == 1 else state
        return original(self, state, epoch)

    loop._Loop.train_epoch = poisoned
    try:
        with pytest.raises(CnnbenchError, match=r"at step \d+ \(epoch 2\).*checkpoint \(step 6\) is intact"):
            train(bad, run_dir=tmp_path / "later")
    finally:
        loop._Loop.train_epoch = original
    assert json.loads((tmp_path / "later" / "summary.json").read_text())["stopped"]["intact_checkpoint_step"] == 6


def test_batch_must_divide_over_devices(tmp_path):
    with pytest.raises(UsageError, match="does not divide over 8 devices"):
        train(load(None, "mlp2", {**SMALL, "batch_size": 12}), run_dir=tmp_path / "run")


def test_bf16_precision_trains(tmp_path, monkeypatch):
    import cnnbench.train.step
    from cnnbench.progress import Record

    monkeypatch.setattr(cnnbench.train.step, "cpu_has_bf16", lambda: False)  # as on an AVX2-only CPU
    seen = Record()
    summary = train(load(None, "resnet20", {**SMALL, "input_size": 16, "epochs": 1, "devices": 1,
                                            "precision": "bf16"}), run_dir=tmp_path / "run", progress=seen)
    assert np.isfinite(summary["final"]["loss"])
    assert len([n for n in seen.warnings if "no bf16 instructions" in n]) == 1  # said once, before training
    # the progress it reported: the run directory, one epoch of steps with live figures, its validation
    assert seen.notes[0] == f"run directory: {tmp_path / 'run'}"
    assert [e[1:3] for e in seen.events if e[0] == "start"] == [("epoch 1/1", summary["steps"])]
    assert seen.done("epoch 1/1") == summary["steps"] > 0
    assert [e for e in seen.events if e[0] == "update"][-1][3].startswith("loss ")
    assert seen.notes[-1].startswith("epoch 1/1: val top-1 ")


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_files_are_valid(path):
    import tomllib

    values = tomllib.loads(path.read_text())
    cfg = load(path, None if "arch" in values else "resnet20", {})  # the plain-vs-residual file names none
    assert cfg.arch in REGISTRY and values["description"].strip()
    assert set(cfg.arch_options) <= set(REGISTRY[cfg.arch].options)


def test_cli_train_prints_a_results_table(tmp_path):
    result = CliRunner().invoke(cli, ["train", "mlp2", "--dataset", SMALL["dataset"], "--input-size", "12",
                                      "--batch-size", "16", "--epochs", "2", "--devices", "1",
                                      "--run-dir", str(tmp_path / "run"), "--format", "json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["epochs"] == 2 and 0 <= summary["final"]["top1"] <= 1


def test_cli_train_usage_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('arch = "lenet5"\nlearning_rate = 0.1\n')
    for args, message in ((["train", "--config", str(bad)], "unknown setting(s) learning_rate"),
                          (["train"], "no architecture"),
                          (["train", "lenet5", "--devices", "99"], "JAX sees 8 device(s)"),
                          (["train", "--resume", str(tmp_path)], "is not a run directory")):
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 2 and message in result.output, result.output


def test_killed_mid_epoch_and_resumed_ends_like_an_uninterrupted_run(tmp_path):
    """SIGKILL a real `cnnbench train` in the middle of epoch 4 of 6, resume, compare."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = {**SMALL, "epochs": 6, "devices": 1}
    straight = train(load(None, "mlp2", args), run_dir=tmp_path / "straight")
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "cnnbench.cli", "train", "mlp2", "--dataset", SMALL["dataset"],
           "--input-size", "12", "--batch-size", "16", "--lr", "0.05", "--epochs", "6", "--devices", "1",
           "--run-dir", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if any(r["kind"] == "train" and r["epoch"] == 4 for r in read_metrics(run)):
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-epoch"
    assert not (run / "summary.json").exists()
    resumed = train(load(None, "mlp2", args), run_dir=run)
    assert resumed["final"] == straight["final"] and resumed["steps"] == straight["steps"]


def test_two_processes_train_like_one_process_with_four_devices(tmp_path):
    """Two `cnnbench train` processes on localhost (2 CPU devices each, jax.distributed with gloo)
    end with identical parameters in both processes, equal to one process with 4 devices."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "cnnbench.cli", "train", "mlp2", "--dataset", SMALL["dataset"],
           "--input-size", "12", "--batch-size", "16", "--lr", "0.05", "--epochs", "2",
           "--run-dir", str(tmp_path / "two"), "--coordinator", f"localhost:{port}",
           "--num-processes", "2", "--format", "json"]
    procs = [subprocess.Popen(cmd + ["--process-id", str(i)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    two = [json.loads(out[out.index("{"):]) for out in outputs]
    one = train(load(None, "mlp2", {**SMALL, "epochs": 2, "devices": 4}), run_dir=tmp_path / "one")
    assert two[0]["params_digest"] == two[1]["params_digest"]
    np.testing.assert_allclose(two[0]["params_digest"], one["params_digest"], rtol=1e-5)
    for key in ("top1", "top5"):
        assert two[0]["final"][key] == two[1]["final"][key] == one["final"][key]


def test_train_help_shows_every_default_and_set_reaches_any_setting(tmp_path):
    runner = CliRunner()
    text = " ".join(runner.invoke(cli, ["train", "--help"], terminal_width=200).output.split())
    for option, default in (("--epochs", "30"), ("--batch-size", "64"), ("--lr", "0.05"), ("--optimizer", "sgd"),
                            ("--schedule", "cosine"), ("--weight-decay", "0.0005"), ("--precision", "fp32")):
        segment = text.split("Options:", 1)[1].split(f" {option} ", 1)[1].split(" --", 1)[0]  # to the next option
        assert f"[default: {default}]" in segment, (option, segment)
    result = runner.invoke(cli, ["train", "mlp2", "--dataset", SMALL["dataset"], "--input-size", "12",
                                 "--batch-size", "16", "--epochs", "1", "--devices", "1", "--schedule", "plateau",
                                 "--set", "plateau_patience=5", "--set", "decay_factor=0.5", "--set", "aux_weight=0.2",
                                 "--set", "keep_checkpoints=1", "--run-dir", str(tmp_path / "set")],
                           env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout and max(len(line) for line in result.stdout.splitlines()) <= 80
    assert f"{json.loads((tmp_path / 'set' / 'summary.json').read_text())['steps']}" in result.stdout
    config = json.loads((tmp_path / "set" / "config.json").read_text())
    assert (config["plateau_patience"], config["decay_factor"], config["aux_weight"], config["keep_checkpoints"]) == \
        (5, 0.5, 0.2, 1)
    for args, message in ((["--set", "plateau_patiense=5"], "unknown setting(s) plateau_patiense"),
                          (["--set", "oops"], "is not KEY=VALUE")):
        result = runner.invoke(cli, ["train", "mlp2", *args])
        assert result.exit_code == 2 and message in result.output, result.output


def test_a_usage_error_comes_before_any_progress():
    result = CliRunner().invoke(cli, ["train", "alexnett"])
    assert result.exit_code == 2
    assert [line for line in result.output.splitlines() if line.strip()] == [
        "Error: unknown architecture 'alexnett'; did you mean alexnet, alexnet-owt, lenet5? "
        "(`cnnbench archs` lists all 36)"], result.output


def test_multi_host_mistakes_end_in_one_line_within_the_init_timeout(tmp_path):
    import socket
    import threading
    import time

    from cnnbench.parallel import hosts

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = ["train", "mlp2", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    runner = CliRunner()
    result = runner.invoke(cli, base + ["--process-id", "0"])
    assert result.exit_code == 2 and "a multi-host run needs --run-dir" in result.output
    base += ["--run-dir", str(tmp_path / "shared")]
    result = runner.invoke(cli, base + ["--process-id", "5"])
    assert result.exit_code == 2 and "--process-id 5 is not one of the 2 processes (--process-id 0 to 1)" in result.output
    started = time.monotonic()
    result = runner.invoke(cli, base + ["--process-id", "0", "--init-timeout", "1.5"])  # process 1 never starts
    assert result.exit_code == 2 and time.monotonic() - started < 10
    assert f"only 1 of 2 processes joined 127.0.0.1:{port} within 1.5 s (missing --process-id 1)" in result.output
    assert "the same --run-dir" in result.output and len(result.output.strip().splitlines()) == 1
    result = runner.invoke(cli, base + ["--process-id", "1", "--init-timeout", "1"])  # no process 0
    assert result.exit_code == 2 and f"process 1: no process 0 answered at 127.0.0.1:{port}" in result.output
    # all present: every process's check-in returns; one with another run directory: all refuse at once

    def check_in_all(run_dirs, timeout=20):
        errors = {}

        def join(i):
            try:
                hosts.check_in(f"127.0.0.1:{port}", 3, i, timeout=timeout, run_dir=run_dirs[i])
            except Exception as e:  # noqa: BLE001 (reported below)
                errors[i] = str(e)

        threads = [threading.Thread(target=join, args=(i,)) for i in (2, 0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
        return errors

    assert check_in_all(["/shared/run"] * 3) == {}
    errors = check_in_all(["/shared/run", "/shared/run", "/elsewhere/run"], timeout=4)
    assert set(errors) == {0, 1, 2}  # (process 1, if it came after process 0 gave up, hears nothing and times out)
    assert all("process 2 was given --run-dir /elsewhere/run and process 0 /shared/run" in errors[i] for i in (0, 2))


def test_sigterm_ends_a_distributed_run_within_seconds(tmp_path):
    """JAX's distributed runtime catches SIGTERM and carries on; cnnbench ends the run (exit 143)."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "cnnbench.cli", "train", "mlp2", "--dataset", SMALL["dataset"],
                             "--input-size", "12", "--batch-size", "16", "--epochs", "500", "--run-dir", str(run),
                             "--coordinator", f"127.0.0.1:{port}", "--num-processes", "1", "--process-id", "0"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoints" / "latest").is_dir() or not any(
                p.name.isdigit() for p in (run / "checkpoints" / "latest").iterdir()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143 and time.monotonic() - started < 25
    assert not (run / "summary.json").exists()
    resumed = train(load(None, "mlp2", {**SMALL, "epochs": 1}), run_dir=tmp_path / "other")  # JAX still fine here
    assert resumed["epochs"] == 1


def test_undecodable_images_are_counted_where_met_and_named(tmp_path):
    from cnnbench.pipeline.synthetic import write_image_folder

    root = write_image_folder(tmp_path / "pets", classes=("cat", "dog"), per_class=8)
    good = (root / "train" / "cat" / "0.jpg").read_bytes()
    (root / "train" / "cat" / "9_truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "train" / "dog" / "9_garbage.jpg").write_bytes(b"not a jpeg")
    cfg = load(None, "mlp2", {"dataset": f"folder:{root}", "input_size": 12, "in_channels": 3, "batch_size": 8,
                              "epochs": 2, "devices": 1})
    train(cfg, run_dir=tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["kind"] == "validation"]
    assert [(r["skipped_train_images"], r["skipped_eval_images"]) for r in val] == [(2, 0), (2, 0)]
    assert val[0]["num_examples"] == 16  # every test image scored
    lines = (tmp_path / "run" / "skipped.txt").read_text().splitlines()
    assert lines[0].startswith("#") and len(lines) == 3  # named once, not once per epoch
    assert {line.split("\t")[0] for line in lines[1:]} == {"train"}
    assert {Path(line.split("\t")[1]).name for line in lines[1:]} == {"9_truncated.jpg", "9_garbage.jpg"}
    train(load(None, "mlp2", {**vars(cfg), "epochs": 3}), run_dir=tmp_path / "run")  # resumed: named once still
    assert (tmp_path / "run" / "skipped.txt").read_text().splitlines() == lines


def test_ema_is_the_hand_computed_average_of_the_steps():
    """decay d over three steps from w0: d^3 w0 + (1-d) (d^2 w1 + d w2 + w3), batch-norm statistics too."""
    from cnnbench.parallel import make_mesh
    from cnnbench.train.step import train_state

    mesh = make_mesh(1, 1)
    model = create_model("resnet20", num_classes=10, input_size=8)
    tx, d = optax.sgd(0.1, momentum=0.9), 0.7
    graphdef, state, other = train_state(model, tx, mesh, ema=True)
    step, _ = make_steps(graphdef, other, tx, seed=0, finish=None, ema_decay=d)
    step = jax.jit(step)
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(8, 8, 8, 3)).astype(np.float32), "label": rng.integers(0, 10, 8).astype(np.int32)}
    seen = [jax.device_get({"params": state["params"], "batch_stats": state["batch_stats"]})]
    for _ in range(3):
        state, _ = step(state, batch)
        seen.append(jax.device_get({"params": state["params"], "batch_stats": state["batch_stats"]}))
    expected = jax.tree.map(lambda w0, w1, w2, w3: d ** 3 * w0 + (1 - d) * (d ** 2 * w1 + d * w2 + w3), *seen)
    got = jax.device_get(state["ema"])
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(jax.tree.leaves(got["params"])[0], jax.tree.leaves(seen[-1]["params"])[0])


def test_ema_weights_are_validated_kept_and_used_by_eval_unless_raw(tmp_path):
    from cnnbench.runs.loaded import load_run

    summary = train(load(None, "mlp2", {**SMALL, "epochs": 2, "devices": 1, "ema": 0.9}), run_dir=tmp_path / "ema")
    val = [r for r in read_metrics(tmp_path / "ema") if r["kind"] == "validation"]
    assert all({"ema_top1", "ema_top5", "ema_loss"} <= set(r) for r in val)
    assert summary["final_ema"]["top1"] == val[-1]["ema_top1"]
    averaged, raw = load_run(tmp_path / "ema", which="latest"), load_run(tmp_path / "ema", which="latest", raw=True)
    assert (averaged.weights, raw.weights) == ("ema", "raw")
    a, b = (jax.tree.leaves(nnx.state(r.model, nnx.Param)) for r in (averaged, raw))
    assert not all(np.allclose(x, y) for x, y in zip(a, b))
    result = CliRunner().invoke(cli, ["eval", str(tmp_path / "ema"), "--checkpoint", "latest", "--format", "json"])
    doc = json.loads(result.stdout)
    assert doc["models"][0]["weights"] == "ema" and doc["top1"] == pytest.approx(val[-1]["ema_top1"])
    result = CliRunner().invoke(cli, ["eval", str(tmp_path / "ema"), "--checkpoint", "latest", "--raw-weights",
                                      "--format", "json"])
    assert json.loads(result.stdout)["models"][0]["weights"] == "raw"
    assert json.loads(result.stdout)["top1"] == pytest.approx(val[-1]["top1"])
    with pytest.raises(UsageError, match="ema .* between 0 and 1"):
        load(None, "mlp2", {**SMALL, "ema": 1.5})


def test_accumulating_n_micro_batches_equals_one_n_times_larger_batch():
    """mlp2 (no batch norm, no dropout), one batch of 32 over 8 devices: 4 micro-batches of 8 give
    the update of the whole batch, to float32 rounding, and the same metrics."""
    from cnnbench.parallel import batch_sharding, make_mesh
    from cnnbench.train.step import jit_train_step, train_state

    mesh = make_mesh(None, 1)
    rng = np.random.default_rng(0)
    batch = jax.device_put({"image": rng.normal(size=(32, 12, 12, 3)).astype(np.float32),
                            "label": rng.integers(0, 4, 32).astype(np.int32)}, batch_sharding(mesh))
    results = {}
    for n in (1, 4):
        model = create_model("mlp2", num_classes=4, input_size=12, in_channels=3, seed=0)
        tx = optax.sgd(0.1, momentum=0.9)
        graphdef, state, other = train_state(model, tx, mesh)
        step, _ = make_steps(graphdef, other, tx, seed=0, finish=None, accumulate=n)
        step = jit_train_step(step, state, mesh)
        for _ in range(3):
            state, metrics = step(state, batch)
        results[n] = jax.device_get((state["params"], metrics))
    (one, m1), (four, m4) = results[1], results[4]
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    for key in ("loss", "top1", "top5"):
        assert m1[key] == pytest.approx(m4[key], rel=1e-5)


def test_accumulation_trains_resumes_and_checks_the_batch(tmp_path):
    args = {**SMALL, "devices": 1, "accumulate": 4, "schedule": "constant"}
    straight = train(load(None, "mlp2", {**args, "epochs": 2}), run_dir=tmp_path / "straight")
    train(load(None, "mlp2", {**args, "epochs": 1}), run_dir=tmp_path / "resumed")
    resumed = train(load(None, "mlp2", {**args, "epochs": 2}), run_dir=tmp_path / "resumed")
    assert resumed["params_digest"] == straight["params_digest"] and resumed["steps"] == straight["steps"]
    plain = train(load(None, "mlp2", {**args, "epochs": 2, "accumulate": 1}), run_dir=tmp_path / "plain")
    assert plain["params_digest"] == pytest.approx(straight["params_digest"], rel=1e-5)
    with pytest.raises(UsageError, match="batch size 16 does not divide over 3 micro-batches over 1 devices; use a multiple of 3"):
        train(load(None, "mlp2", {**args, "accumulate": 3}), run_dir=tmp_path / "bad")


def test_lenet5_1998_learns_the_digits(data_dir, tmp_path):
    """The paper's network (connection table, trainable subsampling, RBF output) with its experiment file."""
    from cnnbench.runs.config import load as load_config

    cfg = load_config(Path(__file__).parent.parent / "experiments" / "lenet5_1998_digits.toml", None,
                      {"epochs": 3, "data_dir": data_dir, "devices": 1})
    summary = train(cfg, run_dir=tmp_path / "l98")
    assert summary["final"]["top1"] > 0.6  # 10 classes: chance is 0.1


def test_linear_scaling_rule_and_layer_decay(tmp_path):
    """--lr-scale-rule linear: lr x batch / 256 (here 0.8 x 16 / 256 = 0.05). --layer-decay 0.5 on
    mlp3 (fc1, fc2 and the classifier): one plain SGD step moves each layer by its gradient
    times lr x 0.5^k, k counted from the classifier."""
    from cnnbench.train import optim
    from cnnbench.train import freeze

    cfg = load(None, "mlp3", {**SMALL, "lr": 0.8, "lr_scale_rule": "linear", "epochs": 1, "devices": 1,
                              "schedule": "constant", "momentum": 0.0, "weight_decay": 0.0})
    assert cfg.peak_lr == pytest.approx(0.05) and optim.schedule(cfg, 6)(3) == pytest.approx(0.05)
    train(cfg, run_dir=tmp_path / "scaled")
    assert all(r["lr"] == pytest.approx(0.05) for r in read_metrics(tmp_path / "scaled") if r["kind"] == "train")

    model = create_model("mlp3", num_classes=4, input_size=12, in_channels=3)
    mults = freeze.layer_decay(model, (12, 12, 3), 0.5)
    assert mults == {"features.fc1": 0.25, "features.fc2": 0.5, "head.output": 1.0}
    params = nnx.state(model, nnx.Param)
    grads = jax.tree.map(jnp.ones_like, params)
    decayed = load(None, "mlp3", {**SMALL, "lr": 0.1, "layer_decay": 0.5, "schedule": "constant", "momentum": 0.0,
                                  "weight_decay": 0.0})
    group = freeze.grouping(None, mults)
    tx, _ = optim.optimizer(decayed, 10, group)
    updates, _ = tx.update(grads, tx.init(params), params)
    flat = {freeze._dotted(path): float(jnp.abs(u).max())
            for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]}
    for layer, mult in mults.items():
        assert all(v == pytest.approx(0.1 * mult) for k, v in flat.items() if k.startswith(layer + ".")), layer
    with pytest.raises(UsageError, match="layer_decay must be in"):
        load(None, "mlp3", {**SMALL, "layer_decay": 1.5})


@pytest.mark.parametrize("mixing", [(("mixup", 0.4),), (("cutmix", 1.0),), (("mixup", 0.2), ("cutmix", 1.0))])
def test_mixup_and_cutmix_targets_sum_to_one_and_match_the_pixels(mixing):
    from cnnbench.train.step import mix_batch

    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(8, 16, 16, 3)).astype(np.float32))
    labels = jnp.arange(8, dtype=jnp.int32)
    for seed in range(4):
        mixed, partner, lam = mix_batch(images, labels, jax.random.key(seed), mixing)
        assert 0.0 <= float(lam) <= 1.0 and (partner == labels[::-1]).all()
        targets = lam * jax.nn.one_hot(labels, 8) + (1 - lam) * jax.nn.one_hot(partner, 8)
        np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
        own = jnp.isclose(mixed, images).all(-1).mean(axis=(1, 2))
        if mixing == (("cutmix", 1.0),):  # lam is exactly the share of each image's own pixels
            np.testing.assert_allclose(own[:4], float(lam), atol=1e-6)
        elif mixing == (("mixup", 0.4),):
            np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[::-1], rtol=1e-5, atol=1e-6)


def test_training_with_mixup_and_cutmix_in_the_spec(tmp_path):
    summary = train(load(None, "mlp2", {**SMALL, "epochs": 2, "devices": 1, "accumulate": 2,
                                        "train_ops": "small|mixup(0.2)|cutmix(1.0)"}), run_dir=tmp_path / "mix")
    assert np.isfinite(summary["train_loss"]) and summary["epochs"] == 2
    assert json.loads((tmp_path / "mix" / "dataset.json").read_text())["train_spec"].endswith("mixup(0.2)|cutmix(1.0)")
    for ops, message in (("small|mixup(-1)", "alpha must be positive"), ("small|mixup(x)", "Beta distribution")):
        with pytest.raises(UsageError, match=message):
            train(load(None, "mlp2", {**SMALL, "epochs": 1, "devices": 1, "train_ops": ops}), run_dir=tmp_path / "bad")
    with pytest.raises(UsageError, match="no place in an evaluation spec"):
        train(load(None, "mlp2", {**SMALL, "epochs": 1, "devices": 1, "eval_ops": "small|mixup(0.2)"}),
              run_dir=tmp_path / "bad2")


def test_fp16_loss_scaling_skips_an_overflowing_step_and_recovers(tmp_path):
    """--precision fp16: a batch whose scaled gradients overflow leaves the parameters and the
    optimiser state as they were, halves the loss scale and counts a skipped step; the next
    batch updates."""
    from cnnbench.parallel import make_mesh
    from cnnbench.train.step import LOSS_SCALE, set_compute_dtype, train_state

    mesh = make_mesh(1, 1)
    model = create_model("mlp2", num_classes=4, input_size=12, in_channels=3, seed=0)
    set_compute_dtype(model, jnp.float16)
    tx = optax.sgd(0.1, momentum=0.9)
    graphdef, state, other = train_state(model, tx, mesh, loss_scale=True)
    step = jax.jit(make_steps(graphdef, other, tx, seed=0, finish=None, dtype=jnp.float16)[0])
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 8).astype(np.int32)
    huge = {"image": np.full((8, 12, 12, 3), 6e4, np.float32), "label": labels}  # overflows in float16
    before = jax.device_get(state["params"])
    state, metrics = step(state, huge)
    assert float(metrics["skipped"]) == 1.0 and float(state["loss_scale"]["scale"]) == LOSS_SCALE / 2
    assert int(state["loss_scale"]["skipped"]) == 1
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(state["params"]))):
        np.testing.assert_array_equal(a, b)
    normal = {"image": rng.normal(size=(8, 12, 12, 3)).astype(np.float32), "label": labels}
    state, metrics = step(state, normal)
    assert float(metrics["skipped"]) == 0.0 and np.isfinite(float(metrics["loss"]))
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before),
                                                        jax.tree.leaves(jax.device_get(state["params"]))))
    summary = train(load(None, "mlp2", {**SMALL, "epochs": 1, "devices": 1, "precision": "fp16"}), run_dir=tmp_path / "f")
    assert np.isfinite(summary["final"]["loss"])
    val = [r for r in read_metrics(tmp_path / "f") if r["kind"] == "validation"][-1]
    assert val["train_skipped"] >= 0 and "loss_scale" in [r for r in read_metrics(tmp_path / "f") if r["kind"] == "train"][0]
