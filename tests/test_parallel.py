"""Model parallelism (`--model-parallel M`): a two-axis mesh (data x model), AlexNet's two towers on
two devices with the paper's communication, channel splits for every other network, numerically
the network of one device, and checkpoints that do not care about the mesh."""

import functools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner
from flax import nnx

from cnnbench import parallel
from cnnbench.analysis.summary import summarize
from cnnbench.archs import create_model
from cnnbench.cli import cli
from cnnbench.errors import UsageError
from cnnbench.kernels import fastops
from cnnbench.parallel.collectives import collectives, totals
from cnnbench.runs.checkpoint import restore_weights
from cnnbench.runs.config import TrainConfig, load
from cnnbench.train.loop import train
from cnnbench.train.optim import optimizer
from cnnbench.train.step import jit_train_step, make_steps, train_state

CLASSES = 10
LR = 0.01


def _batch(size: int, n: int = 8, channels: int = 3):
    rng = np.random.default_rng(0)
    return {"image": rng.normal(size=(n, size, size, channels)).astype(np.float32),
            "label": rng.integers(0, CLASSES, n).astype(np.int32)}


def _steps(arch: str, size: int, *, devices: int, model_parallel: int, steps: int = 3, dtype=np.float32):
    """(logits of the initial model, loss of each step, parameters after ``steps`` SGD-momentum
    steps) of ``arch`` on one fixed batch, on a mesh of ``devices`` split ``model_parallel`` ways:
    the code path of `cnnbench train` (plan, placed state, the jitted step). ``dtype`` float64
    runs the same program in double precision (inside ``jax.enable_x64``)."""
    mesh = parallel.make_mesh(devices, model_parallel)
    model = parallel.plan(create_model(arch, num_classes=CLASSES, input_size=size, seed=0), model_parallel, mesh)
    for variable in jax.tree.leaves(nnx.state(model, nnx.Param, nnx.BatchStat),
                                    is_leaf=lambda v: isinstance(v, nnx.Variable)):
        variable.set_value(variable.get_value().astype(dtype))
    tx, _ = optimizer(TrainConfig(arch=arch, batch_size=8, epochs=1, lr=0.01, momentum=0.9), steps_per_epoch=10)
    graphdef, state, other = train_state(model, tx, mesh)
    train_step, _ = make_steps(graphdef, other, tx, seed=0, finish=None, dtype=dtype)
    step = jit_train_step(train_step, state, mesh)
    batch = _batch(size)
    batch = jax.device_put({"image": batch["image"].astype(dtype), "label": batch["label"]},
                           parallel.batch_sharding(mesh))
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s["params"], s["batch_stats"], other)(x))
    logits = np.asarray(forward(state, batch["image"]))
    losses = []
    for _ in range(steps):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return logits, losses, [np.asarray(leaf) for leaf in jax.tree.leaves(jax.device_get(state["params"]))]


def _assert_same_network(one, split, rtol):
    (logits1, losses1, params1), (logits2, losses2, params2) = one, split
    np.testing.assert_allclose(logits2, logits1, rtol=rtol, atol=rtol * np.abs(logits1).max())
    np.testing.assert_allclose(losses2, losses1, rtol=rtol)
    assert len(params1) == len(params2)
    for a, b in zip(params1, params2):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * np.abs(a).max())


@pytest.fixture(scope="module")
def alexnet_one_device():
    return _steps("alexnet", 67, devices=1, model_parallel=1)


def test_alexnet_on_a_4x2_mesh_is_the_network_of_one_device(alexnet_one_device):
    """Float32: a split layer adds its partial products (the row split's sum over devices, the
    data axis's sum of gradients) in another order than one device does, which moves each sum by a
    few float32 ulps (1e-7 of its size); three steps of SGD keep the logits, losses and every
    parameter within 2e-5 of each tensor's scale."""
    _assert_same_network(alexnet_one_device, _steps("alexnet", 67, devices=8, model_parallel=2), rtol=2e-5)


@functools.cache
def _resnet18_one_device_float64():
    """The reference of both splits, computed once."""
    return _steps("resnet18", 32, devices=1, model_parallel=1, dtype=np.float64)


@pytest.mark.parametrize("ways", [2, 4])
def test_resnet18_split_over_channels_is_the_network_of_one_device(ways):
    """ResNet-18 on 32x32 noise with random labels and 8 images is ill-conditioned: its batch norms
    of the last stages see 8-32 values per channel, and a near-tie in a max-pool window or a ReLU
    input within rounding of zero, resolved the other way by float32 sums in another order, moves
    a batch-norm parameter by 1% (pure data parallelism over 8 devices does the same at times). So
    the split is checked in float64, where such ties do not occur: the same network to 1e-10, and
    a wrong split (a channel on the wrong device, statistics over the wrong channels) is far off."""
    with jax.enable_x64(True):
        one = _resnet18_one_device_float64()
        split = _steps("resnet18", 32, devices=8, model_parallel=ways, dtype=np.float64)
    assert one[2][0].dtype == np.float64
    _assert_same_network(one, split, rtol=1e-10)


def _alexnet_forward_hlo(size=99, batch=8):
    mesh = parallel.make_mesh(8, 2)
    model = parallel.plan(create_model("alexnet", num_classes=CLASSES, input_size=size, seed=0), 2, mesh)
    graphdef, state = nnx.split(model)
    state = parallel.place(state, mesh)
    images = jax.device_put(jnp.zeros((batch, size, size, 3)), parallel.batch_sharding(mesh))
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    return forward.lower(state, images).compile().as_text(), state


def test_alexnet_forward_communicates_only_where_the_paper_does():
    """Krizhevsky et al. 2012, Figure 2: the towers exchange maps only at conv3's input and the
    dense layers' inputs. At 99x99 input conv3 reads 5x5x256 maps and pool5 gives 2x2x256; each
    device holds 2 of the 8 images (data axis 4) and half of every tower layer's maps."""
    hlo, _ = _alexnet_forward_hlo()
    ops = collectives(hlo)
    per_image = [(op["kind"], op["bytes"] // 2 // 4) for op in ops]  # 2 images per model group, float32
    assert sorted(per_image) == sorted([("all-gather", 5 * 5 * 256),   # conv3: both towers' conv2 maps
                                        ("all-gather", 2 * 2 * 256),   # fc6: both towers' pool5 maps
                                        ("all-gather", 4096),          # fc7: both halves of fc6
                                        ("all-reduce", CLASSES)]), ops  # fc8: partial scores summed
    # no kernel of a tower layer (conv2 5x5x48x256, conv4 3x3x192x384, conv5 3x3x192x256) moves
    assert not [op for op in ops if re.search(r"\[(5,5,48|3,3,192),", op["shape"])]


def test_data_parallel_alexnet_never_gathers_the_batch():
    """Plain data parallelism (8 x 1): XLA's own partitioning of a batch-sharded grouped
    convolution (the accelerators' path) gathered all images before conv2, conv4 and conv5, and the
    CPU formulations' loops over chunks of the batch gathered it in the training step: each device
    then computed the whole batch. Each layer now runs on its device's images: the forward pass
    has no collective at all, the training step only sums gradients (and gathers the logits for
    its metrics)."""
    mesh = parallel.make_mesh(8, 1)
    model = parallel.plan(create_model("alexnet", num_classes=CLASSES, input_size=67, seed=0), 1, mesh)
    graphdef, state = nnx.split(model)
    images = jax.device_put(jnp.zeros((16, 67, 67, 3)), parallel.batch_sharding(mesh))
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x), out_shardings=parallel.batch_sharding(mesh))
    with fastops.use(False):
        assert collectives(forward.lower(parallel.place(state, mesh), images).compile().as_text()) == []

    tx, _ = optimizer(TrainConfig(arch="alexnet", batch_size=16, epochs=1), steps_per_epoch=10)
    graphdef, state, other = train_state(model, tx, mesh)
    step = jit_train_step(make_steps(graphdef, other, tx, seed=0, finish=None)[0], state, mesh)
    batch = jax.device_put({"image": images, "label": jnp.zeros(16, jnp.int32)}, parallel.batch_sharding(mesh))
    ops = collectives(step.lower(state, batch).compile().as_text())
    gathered = [op for op in ops if op["kind"] != "all-reduce"]
    assert [op["shape"] for op in gathered] == [f"f32[16,{CLASSES}]"], ops


def test_each_device_holds_its_towers_half_of_the_kernels():
    _, state = _alexnet_forward_hlo()
    features, head = state["features"], state["head"]

    def shard_shape(variable):
        return variable[...].addressable_shards[0].data.shape

    assert shard_shape(features["conv1"]["kernel"]) == (11, 11, 3, 48)
    assert shard_shape(features["conv2"]["kernel"]) == (5, 5, 48, 128)   # tower g's 128 kernels
    assert shard_shape(features["conv4"]["kernel"]) == (3, 3, 192, 192)
    assert shard_shape(head["fc6"]["kernel"])[1] == 2048                # 2 x 2048 neurons
    assert shard_shape(head["fc8"]["kernel"]) == (2048, CLASSES)        # fc8: rows of its tower
    weights = [leaf for leaf in jax.tree.leaves(nnx.filter_state(state, nnx.Param))]
    device = jax.devices()[0]
    held = sum(s.data.nbytes for leaf in weights for s in leaf.addressable_shards if s.device == device)
    whole = sum(leaf.nbytes for leaf in weights)
    assert 0.49 < held / whole < 0.52, held / whole


def test_summary_lists_the_papers_communication():
    s = summarize("alexnet", model_parallel=2)
    assert [c["layer"] for c in s.communication] == ["features.conv3", "head.fc6", "head.fc7", "head.fc8"]
    assert [c["bytes_per_image"] for c in s.communication] == [13 * 13 * 128 * 4, 6 * 6 * 128 * 4, 2048 * 4,
                                                               1000 * 4]
    assert s.device_params == 30_483_112 and s.params == 60_965_224  # fc8's 1,000 biases are on both
    result = CliRunner().invoke(cli, ["summary", "alexnet", "--model-parallel", "2", "--format", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert [c["layer"] for c in doc["communication"]] == ["features.conv3", "head.fc6", "head.fc7", "head.fc8"]
    assert doc["per_device"]["params"] == 30_483_112
    assert summarize("alexnet").communication == []


def test_collectives_are_read_from_hlo_text():
    text = """
  %all-gather.1 = f32[2,4096]{0,1} all-gather(%x), channel_id=4, dimensions={1}
  %ar = (f32[10]{0}, bf16[4,4]{1,0}) all-reduce(%a, %b), channel_id=1, to_apply=%add
  %ags = (f32[2]{0}, f32[4]{0}) all-gather-start(%y), dimensions={0}
  %agd = f32[4]{0} all-gather-done(%ags)
  ROOT %cp = s32[3]{0} collective-permute(%z), source_target_pairs={{0,1}}
"""
    found = totals(text)
    assert found["all-gather"] == {"count": 2, "bytes": 2 * 4096 * 4 + 16}
    assert found["all-reduce"] == {"count": 1, "bytes": 40 + 32}
    assert found["collective-permute"] == {"count": 1, "bytes": 12}
    assert found["reduce-scatter"]["count"] == found["all-to-all"]["count"] == 0


def test_bad_model_parallel_values_are_one_line_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="does not divide the 8 device"):
        parallel.make_mesh(8, 3)
    with pytest.raises(UsageError, match="at least 1"):
        parallel.make_mesh(8, 0)
    with pytest.raises(UsageError, match="grouped convolution of 2 towers"):
        parallel.plan(create_model("alexnet", num_classes=CLASSES, input_size=67), 4)
    runner = CliRunner()
    for args, message in ((["train", "lenet5", "--model-parallel", "3", "--run-dir", str(tmp_path / "a")],
                           "--model-parallel 3 does not divide the 8 device(s)"),
                          (["summary", "alexnet", "--model-parallel", "4"], "grouped convolution of 2 towers"),
                          (["bench", "lenet5", "--model-parallel", "0"], "must be at least 1")):
        result = runner.invoke(cli, args)
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert lines[-1].startswith("Error:") and message in lines[-1], result.output
        assert "Traceback" not in result.output


SMALL = {"dataset": "synthetic:32x32x1:4:32", "batch_size": 16, "lr": 0.01, "schedule": "constant"}


def _weights(run_dir):
    model = create_model("lenet5", num_classes=4)
    template = {"params": nnx.state(model, nnx.Param), "batch_stats": nnx.state(model, nnx.BatchStat)}
    restored, meta, _ = restore_weights(run_dir, template, which="latest")
    return [np.asarray(leaf) for leaf in jax.tree.leaves(restored["params"])], meta


def test_checkpoints_move_between_meshes(tmp_path):
    """LeNet-5 (every layer split: 6 and 16 maps, 120 and 84 units, the classifier's rows): 2
    steps split over two devices, resumed on one device for 2 more, equal 4 steps on one device;
    and the other way round, resumed on a 4 x 2 mesh. A run trained split evaluates the same with
    and without --model-parallel."""
    one = train(load(None, "lenet5", {**SMALL, "epochs": 2, "devices": 1}), run_dir=tmp_path / "one")
    train(load(None, "lenet5", {**SMALL, "epochs": 1, "devices": 2, "model_parallel": 2}), run_dir=tmp_path / "a")
    resumed = train(load(None, "lenet5", {**SMALL, "epochs": 2, "devices": 1}), run_dir=tmp_path / "a")
    train(load(None, "lenet5", {**SMALL, "epochs": 1, "devices": 1}), run_dir=tmp_path / "b")
    back = train(load(None, "lenet5", {**SMALL, "epochs": 2, "devices": 8, "model_parallel": 2}),
                 run_dir=tmp_path / "b")
    assert one["steps"] == resumed["steps"] == back["steps"] == 4
    reference, _ = _weights(tmp_path / "one")
    for run in ("a", "b"):
        weights, meta = _weights(tmp_path / run)
        assert meta["epoch"] == 1
        for a, b in zip(reference, weights):
            np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-5 * np.abs(a).max())
    runner = CliRunner()
    results = []
    for ways in ("1", "2"):
        result = runner.invoke(cli, ["eval", str(tmp_path / "b"), "--model-parallel", ways, "--format", "json"])
        assert result.exit_code == 0, result.output
        results.append(json.loads(result.output))
    assert results[0]["num_examples"] == results[1]["num_examples"] > 0
    assert results[0]["top1"] == results[1]["top1"] and results[0]["top5"] == results[1]["top5"]


def test_training_takes_one_model_group_of_the_split_cpu_devices(monkeypatch, tmp_path):
    """On the per-core CPU devices the command makes (here this process's eight, marked as if
    cnnbench had made them), inference takes them all and training one model group, unless
    --devices says otherwise; a device count of the user's leaves every device to both."""
    n = len(jax.devices())
    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", str(n))
    monkeypatch.setenv("CNNBENCH_SPLIT_CPU_DEVICES", str(n))
    assert parallel.make_mesh().devices.size == n
    assert parallel.make_mesh(batch_size=12).devices.size == 6  # the most that divide the batch
    assert parallel.make_mesh(training=True).devices.size == 1
    assert parallel.make_mesh(model_parallel=2, training=True).devices.shape == (1, 2)
    assert parallel.make_mesh(4, training=True).devices.size == 4
    from cnnbench.perf.bench import Prepared  # (what `compare` measures throughput with)

    assert [Prepared("lenet5", mode, 12).mesh.devices.size for mode in ("train", "infer")] == [1, 6]
    summary = train(load(None, "mlp2", {"dataset": "synthetic:12x12x3:4:96", "input_size": 12, "batch_size": 12,
                                        "epochs": 1}), run_dir=tmp_path / "run")  # 12 does not divide over 8
    assert summary["final"]["top1"] is not None
    monkeypatch.setenv("CNNBENCH_SPLIT_CPU_DEVICES", "")  # the user's count: every device for both
    assert parallel.make_mesh(training=True).devices.size == n
    with pytest.raises(UsageError, match="does not divide over 8 devices"):
        train(load(None, "mlp2", {"dataset": "synthetic:12x12x3:4:96", "input_size": 12, "batch_size": 12,
                                  "epochs": 1}), run_dir=tmp_path / "run2")


def test_over_batch_splits_each_batch_over_the_devices_and_cuts_padding_back():
    """What feature extraction runs: a batch split over every device (padded where they do not
    divide it), the state replicated once, the outputs back on the host at the batch's size, equal
    to the function on one device."""
    mesh = parallel.make_mesh()
    assert parallel.data_size(mesh) == 8
    seen = []

    def fn(state, x, y):
        seen.append(x.shape)  # (traced once per batch shape: the global shape)
        return {"out": jnp.tanh(x @ state["w"]) + y[:, None], "norm": jnp.sqrt((x * x).sum(axis=1))}

    state = {"w": np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)}
    run = parallel.over_batch(fn, state, mesh)
    for n in (8, 3, 13):
        x = np.random.default_rng(n).normal(size=(n, 6)).astype(np.float32)
        y = np.arange(n, dtype=np.float32)
        got = run(x, y)
        want = jax.jit(fn)(state, x, y)
        assert got["out"].shape == (n, 4) and got["norm"].shape == (n,)
        assert isinstance(got["out"], np.ndarray)
        np.testing.assert_allclose(got["out"], want["out"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got["norm"], want["norm"], rtol=1e-6)
    assert (8, 6) in seen and (16, 6) in seen  # 3 rows padded to 8, 13 to 16
