"""The Python API at the package's top (`import cnnbench`): the same runs as the command line,
errors that name settings rather than flags."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import cnnbench
from cnnbench.errors import UsageError

SMALL = {"dataset": "synthetic:12x12x3:4:96", "batch_size": 16, "input_size": 12, "lr": 0.05, "devices": 1}


def test_models_by_name():
    names = cnnbench.list_models()
    assert {"lenet5", "alexnet", "alexnet-owt", "vgg16", "nin", "googlenet", "resnet50"} <= set(names)
    model = cnnbench.create_model("lenet5")  # LeCun et al.'s modern form: 61,706 parameters
    assert sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param))) == 61_706
    assert model(jnp.ones((2, 32, 32, 1)), train=False).shape == (2, 10)
    with pytest.raises(UsageError, match="no option colour"):
        cnnbench.create_model("lenet5", colour="red")


def test_train_evaluate_and_load_a_run(tmp_path):
    summary = cnnbench.train("mlp2", run_dir=tmp_path / "run", epochs=2, **SMALL)
    assert summary["epochs"] == 2 and summary["run_dir"] == str(tmp_path / "run")
    assert summary["best"]["top1"] > 0.5  # 4 separable classes: chance is 0.25

    report = cnnbench.evaluate(summary["run_dir"])  # the best checkpoint on the validation split
    assert report["top1"] == pytest.approx(summary["best"]["top1"], abs=1e-6)
    assert report["models"][0]["arch"] == "mlp2" and not report["ensemble"]

    run = cnnbench.load_run(tmp_path / "run")
    assert run.cfg.arch == "mlp2" and run.model(jnp.ones((3, 12, 12, 3))).shape == (3, 4)

    more = cnnbench.train(run_dir=tmp_path / "run", epochs=3)  # the run continues
    assert more["epochs"] == 3


def test_errors_name_settings_not_flags(tmp_path):
    with pytest.raises(UsageError, match="unknown setting.*lr_rate") as e:
        cnnbench.train("mlp2", lr_rate=0.1)
    assert "--" not in str(e.value)
    with pytest.raises(UsageError) as e:
        cnnbench.train("mlp2", run_dir=tmp_path / "run", epochs=1, model_parallel=3, **SMALL)
    assert "model_parallel 3" in str(e.value) and "--model-parallel" not in str(e.value)
    with pytest.raises(UsageError, match="at least one run"):
        cnnbench.evaluate()


def test_importing_the_package_is_light():
    script = "import sys, cnnbench; assert 'jax' not in sys.modules, 'jax'; assert callable(cnnbench.train)"
    subprocess.run([sys.executable, "-c", script], check=True)
