import os
import tempfile

# Tests run on the CPU and never write into the user's cache.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["CNNBENCH_CACHE_DIR"] = tempfile.mkdtemp(prefix="cnnbench-test-cache-")
