"""`cnnbench bench` as a user runs it (tiny architecture, one or two steps) and its failure modes."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cnnbench.cli import cli
from cnnbench.kernels import flags
from cnnbench.parallel import make_mesh
from cnnbench.perf import bench


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_bench_json_fields_for_a_tiny_architecture():
    result = invoke("bench", "lenet5", "--mode", "both", "--batch-size", "8", "--steps", "2",
                    "--warmup", "1", "--devices", "1", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["arch"], r["mode"]) for r in rows] == [("lenet5", "train"), ("lenet5", "infer")]
    for r in rows:
        assert r["batch_size"] == 8 and r["input_size"] == 32 and r["precision"] == "fp32"
        assert r["params"] == 61_706 and r["macs"] == 416_520  # `cnnbench summary lenet5`
        assert r["samples_per_sec"] > 0 and r["step_time_ms"] > 0 and r["compile_s"] > 0
        assert r["samples_per_sec"] == pytest.approx(8 / (r["step_time_ms"] / 1e3))
        assert r["matmul_peak_flops"] > 0 and 0 < r["utilization"] == pytest.approx(
            r["flops_per_sec"] / r["matmul_peak_flops"])
        assert r["host_peak_bytes"] > 0
    train, infer = rows
    assert train["flops_per_step"] == 3 * infer["flops_per_step"] == 3 * 2 * 416_520 * 8


@pytest.mark.parametrize("units, says", [
    (True, "float32 layers whose convolutions and dense layers multiply bfloat16 operands into float32 sums"),
    (False, "this CPU has no bf16 instructions (avx512_bf16, amx_bf16), where bf16 products run slower"),
])
def test_bench_table_and_bf16(monkeypatch, units, says):
    """bf16 on a CPU says what it computes: bf16 products where the CPU has bf16 instructions,
    float32 where it has none (whatever CPU runs the test)."""
    import cnnbench.train.step

    monkeypatch.setattr(bench, "matmul_peak", lambda mesh, precision: 1e12)
    monkeypatch.setattr(cnnbench.train.step, "cpu_has_bf16", lambda: units)
    result = invoke("bench", "lenet5", "--batch-size", "8", "--steps", "1", "--warmup", "0",
                    "--devices", "1", "--precision", "bf16", "--mode", "infer")
    assert result.exit_code == 0, result.output
    for text in ("lenet5", "infer", "61,706", "peak: 1,000.0 GFLOP/s", "can exceed 100%", says):
        assert text in " ".join(result.stdout.split()), text
    assert "bench: lenet5" in result.stderr  # off a terminal, a line per workload instead of a bar


@pytest.mark.parametrize("args, message", [
    (["lenett"], "unknown architecture 'lenett'"),
    (["lenet5", "--batch-size", "12"], "does not divide over 8 devices"),
    (["lenet5", "--steps", "0"], "--steps must be at least 1"),
])
def test_bench_usage_errors_are_one_line(args, message):
    result = invoke("bench", *args)
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_out_of_memory_is_one_line_and_auto_batch_halves(monkeypatch):
    tried = []

    def fake_measure(arch, mode, batch_size, **kw):
        tried.append(batch_size)
        if batch_size > 16:
            raise bench.OutOfMemory(f"{arch} {mode} batch {batch_size} needs 9.0 GiB of working memory, "
                                    f"1.0 GiB are free")
        return {"arch": arch, "mode": mode, "batch_size": batch_size, "flops_per_sec": 1.0}

    monkeypatch.setattr(bench, "measure", fake_measure)
    monkeypatch.setattr(bench, "matmul_peak", lambda mesh, precision: 2.0)
    rows = bench.run(["lenet5"], batch_size=64, auto_batch=True)
    assert tried == [64, 32, 16] and rows[0]["batch_size"] == 16 and rows[0]["requested_batch_size"] == 64
    result = invoke("bench", "lenet5", "--batch-size", "64")
    assert result.exit_code == 1
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert lines[-1] == ("Error: lenet5 train batch 64 needs 9.0 GiB of working memory, 1.0 GiB are free; "
                         "use a smaller --batch-size or --auto-batch")
    assert all(line.startswith("bench: ") for line in lines[:-1])  # the progress lines off a terminal


def test_memory_check_refuses_a_program_larger_than_free_memory(monkeypatch):
    import jax
    import jax.numpy as jnp

    compiled = jax.jit(lambda x: x @ x).lower(jnp.ones((256, 256))).compile()
    mesh = make_mesh(1)
    bench._check_fits(compiled, mesh, "x")  # fits
    monkeypatch.setattr(bench, "_available_bytes", lambda device: 1000)
    with pytest.raises(bench.OutOfMemory, match="GiB of working memory"):
        bench._check_fits(compiled, mesh, "x")


def test_xla_defaults_never_override_the_users_flags():
    defaults = {"--xla_a": ("true", ""), "--xla_b": ("1", "")}
    assert flags.merged("", defaults) == "--xla_a=true --xla_b=1"
    assert flags.merged("--xla_a=false --xla_c", defaults) == "--xla_a=false --xla_c --xla_b=1"
    env = {"CNNBENCH_XLA_DEFAULTS": "0", "XLA_FLAGS": "--xla_c"}
    assert flags.apply(env) == "--xla_c"


REGION = "xla_cpu_copy_insertion_use_region_analysis"


def test_step_options_yield_to_the_user_and_drop_names_xla_does_not_know():
    assert flags.step_options({}) == {REGION: True}
    assert flags.step_options({"CNNBENCH_XLA_DEFAULTS": "0"}) == {}
    assert flags.step_options({"XLA_FLAGS": f"--xla_cpu_enable_fast_math=false --{REGION}=false"}) == {}
    # A newer XLA may retire an option: compiling with it would fail, so it is left out.
    options = {"xla_cpu_no_such_option": (True, ""), REGION: (True, "")}
    assert flags.step_options({}, options=options) == {REGION: True}


def _copies(compiled) -> int:
    import re
    return sum(1 for line in compiled.as_text().splitlines()
               if " copy(" in line and not re.search(r"= [us]32\[", line))


def test_training_step_options_drop_copies_and_keep_every_bit():
    """The training step's XLA options (region analysis in copy insertion: donated parameters are
    updated in place instead of copied first) leave fewer copies in the program and give the very
    same parameters, optimiser state and losses over three steps as the step compiled without them."""
    import jax
    import numpy as np

    mesh = make_mesh(1)
    runs = []
    for options in (None, {REGION: False}):  # the tool's default step, then the option turned off
        step, args, advance, _ = bench._workload("lenet5", "train", 4, 32, "fp32", mesh)
        compiled = step.lower(*args).compile(compiler_options=options)
        losses = []
        for _ in range(3):
            out = compiled(*args)
            losses.append(float(out[1]["loss"]))
            args = advance(out)
        runs.append((_copies(compiled), losses, jax.tree.map(np.asarray, args[0])))
    (copies_on, losses_on, state_on), (copies_off, losses_off, state_off) = runs
    assert copies_on < copies_off
    assert losses_on == losses_off and len(set(losses_on)) == 3  # it trained, identically
    jax.tree.map(np.testing.assert_array_equal, state_on, state_off)


def test_compile_cache_folder_and_switch(tmp_path):
    """The command keeps compiled programs in ~/.cache/cnnbench/jax (or $CNNBENCH_COMPILE_CACHE,
    0 for none), and a program compiled there is stored on disk."""
    assert flags.cache_dir({"XDG_CACHE_HOME": "/x"}) == "/x/cnnbench/jax"
    assert flags.cache_dir({"CNNBENCH_COMPILE_CACHE": "0"}) is None
    assert flags.use_compile_cache({"CNNBENCH_COMPILE_CACHE": "0"}) is None
    assert flags.cache_dir({"CNNBENCH_COMPILE_CACHE": str(tmp_path)}) == str(tmp_path)
    script = ("import os, sys\nfrom cnnbench.kernels import flags\nimport jax\n"
              "path = flags.use_compile_cache({'CNNBENCH_COMPILE_CACHE': sys.argv[1]})\n"
              "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
              "jax.jit(lambda x: x * 2 + 1)(jax.numpy.ones(3)).block_until_ready()\n"
              "print(len(os.listdir(path)))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "cache")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) >= 1


def test_huge_pages_only_where_they_change_something():
    """The command re-runs itself once with glibc's huge-page tunable: never when switched off, on
    an old or non-glibc C library, with THP off in the kernel, or when the tunable is set already;
    other tunables are kept."""
    on = flags.hugepage_environ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, (2, 36), "madvise")
    assert on["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert flags.hugepage_environ({}, (2, 35), "always")["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    for environ, glibc, thp in (({"CNNBENCH_HUGEPAGES": "0"}, (2, 36), "madvise"), ({}, (2, 34), "always"),
                                ({}, (2, 36), "never"), ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, (2, 36), "always")):
        assert flags.hugepage_environ(environ, glibc, thp) is None
    # In a real process: the command line runs again, arguments intact, with the tunable set.
    script = ("import os, sys\nfrom cnnbench.kernels import flags\nflags.use_hugepages()\n"
              "print(sys.argv[1:], os.environ.get('GLIBC_TUNABLES'))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "CNNBENCH_HUGEPAGES")}
    proc = subprocess.run([sys.executable, "-c", script, "a b", "c"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = "glibc.malloc.hugetlb=1" if flags.hugepage_environ(env) else None
    assert proc.stdout.strip() == f"['a b', 'c'] {expected}"


def test_bench_never_imports_tensorflow():
    script = ("import sys\nfrom cnnbench.cli import main\n"
              "try:\n    main(['bench', 'lenet5', '--batch-size', '8', '--steps', '1', '--warmup', '0', '--devices', '1'])\n"
              "except SystemExit as e:\n    assert e.code == 0, e.code\n"
              "leaked = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets'))\n"
              "print('LEAKED', leaked, file=sys.stderr)\nsys.exit(1 if leaked else 0)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_conv_plans_counts_each_group_and_times_every_formulation():
    """benchmarks/conv_plans.py: the paper AlexNet's layers as the CPU runs them (a grouped layer
    as its groups' convolutions, the 11x11 stem by space-to-depth), and one small layer timed by
    every formulation that applies, with choose()'s pick among them."""
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "conv_plans.py")
    spec = importlib.util.spec_from_file_location("conv_plans", path)
    plans = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plans)
    layers = plans.conv_layers("alexnet", 227)
    assert dict(layers) == {(227, 227, 3, 11, 4, 0, 96): 1, (27, 27, 48, 5, 1, 2, 128): 2,
                            (13, 13, 256, 3, 1, 1, 384): 1, (13, 13, 192, 3, 1, 1, 192): 2,
                            (13, 13, 192, 3, 1, 1, 128): 2}
    assert plans.candidates(11, 4, 3, ((0, 0), (0, 0))) == ["xla", "matmul", "space-to-depth"]
    timed = plans.time_layer((6, 6, 40, 3, 1, 1, 8), 2, list(plans.PASSES), rounds=1)
    for name, t in timed.items():
        assert set(t["ms"]) == {"xla", "matmul", "winograd"} and all(v > 0 for v in t["ms"].values())
        assert t["chosen"] == "winograd" and t["fastest"] in t["ms"]


def test_cpu_devices_one_per_core_unless_the_user_chose():
    count = flags.cpu_device_count
    assert [count({}, cores=c) for c in (1, 2, 3, 4, 6, 16, 64)] == [None, 2, 2, 4, 4, 8, 8]
    assert count({"CNNBENCH_CPU_DEVICES": "3"}, cores=2) == 3
    assert count({"CNNBENCH_CPU_DEVICES": "1"}, cores=2) is None
    assert count({"CNNBENCH_CPU_DEVICES": "Auto"}, cores=2) == 2
    # a device count the user set stands: theirs in XLA_FLAGS or in JAX's own variable
    assert count({"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}, cores=2) is None
    assert count({"JAX_NUM_CPU_DEVICES": "4"}, cores=2) is None
    for bad in ("0", "two", "-2"):
        with pytest.raises(ValueError, match="CNNBENCH_CPU_DEVICES"):
            count({"CNNBENCH_CPU_DEVICES": bad}, cores=2)
    environ = {"CNNBENCH_CPU_DEVICES": "2"}
    assert flags.use_cpu_devices(environ) == 2 and environ["JAX_NUM_CPU_DEVICES"] == "2"
    assert flags.split_cpu_devices(environ) == 2
    assert flags.use_cpu_devices(environ) == 2  # a command started by a command: still cnnbench's split
    environ["JAX_NUM_CPU_DEVICES"] = "4"  # the user's, set after ours
    assert flags.split_cpu_devices(environ) == 0 and flags.use_cpu_devices(environ) == 0


def test_the_command_splits_inference_over_the_cores_and_trains_on_one():
    """`cnnbench` with no device count of the user's: inference on one device per core, training on
    one of them; a batch they do not divide runs on fewer; a bad setting is one line, exit code 2."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(CNNBENCH_CPU_DEVICES="2", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "cnnbench.cli", "bench", "lenet5", "--steps", "1", "--warmup", "0", "--format", "json"]
    proc = subprocess.run(cmd + ["--mode", "both", "--batch-size", "8"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(r["mode"], r["devices"], r["batch_size"]) for r in rows] == [("train", 1, 8), ("infer", 2, 8)]
    proc = subprocess.run(cmd + ["--mode", "infer", "--batch-size", "3"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert [(r["devices"], r["batch_size"]) for r in json.loads(proc.stdout)] == [(1, 3)]
    proc = subprocess.run(cmd + ["--mode", "infer"], env={**env, "CNNBENCH_CPU_DEVICES": "many"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == "Error: CNNBENCH_CPU_DEVICES='many': use auto or a number of devices (1 for one)"
