import atexit
import os
import shutil
import tempfile

# Tests run on the CPU and never write into the user's cache.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Eight virtual CPU devices, set before JAX is imported: the multi-device tests shard over them;
# everything else keeps running on the first one.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ["CNNBENCH_CACHE_DIR"] = tempfile.mkdtemp(prefix="cnnbench-test-cache-")
atexit.register(shutil.rmtree, os.environ["CNNBENCH_CACHE_DIR"], ignore_errors=True)
# One persistent compilation cache for the session, in this process and in the `cnnbench` commands
# the tests start (which would otherwise write into ~/.cache/cnnbench/jax): a program that many
# tests build alike (a small run's training step, a model's forward pass) compiles once per session.
os.environ["CNNBENCH_COMPILE_CACHE"] = os.path.join(os.environ["CNNBENCH_CACHE_DIR"], "jax")

import jax  # noqa: E402  (after XLA_FLAGS)

jax.config.update("jax_compilation_cache_dir", os.environ["CNNBENCH_COMPILE_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.25)
