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
