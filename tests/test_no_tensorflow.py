"""Model-only work must not import TensorFlow: fast start-up, and it runs where TF is absent."""

import subprocess
import sys

SCRIPT = """
import sys
import cnnbench.archs
from cnnbench.cli import main
for args in (["archs", "--family", "lenet"], ["summary", "alexnet", "--format", "json"]):
    try:
        main(args)
    except SystemExit as e:
        assert e.code == 0, (args, e.code)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorflow_datasets"))
print("LEAKED", leaked, file=sys.stderr)
sys.exit(1 if leaked else 0)
"""


def test_archs_and_summary_never_import_tensorflow():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
