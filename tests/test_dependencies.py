"""Every third-party module cnnbench imports at run time is a declared dependency (setup.cfg), so a
fresh `pip install .` has it (issue 31: filelock was missing and the compile cache did nothing)."""

from __future__ import annotations

import ast
import configparser
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: import name -> distribution name, where they differ
DISTRIBUTIONS = {"PIL": "pillow", "sklearn": "scikit-learn", "cv2": "opencv-python-headless",
                 "tensorflow": "tensorflow-cpu", "tensorflow_datasets": "tensorflow-datasets",
                 "orbax": "orbax-checkpoint", "yaml": "pyyaml"}
#: imported only where the user asked for it, with a message saying what to install
OPTIONAL = {"torch", "torchvision", "safetensors"}


def _declared() -> set[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    return {re.split(r"[<>=!~\[ ;]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")
            for line in lines if line.strip() and not line.strip().startswith("#")}


def _imported() -> dict[str, str]:
    found = {}
    for path in (ROOT / "cnnbench").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_declared():
    declared = _declared()
    missing = {}
    for module, where in _imported().items():
        if module in sys.stdlib_module_names or module == "cnnbench" or module in OPTIONAL or module == "__future__":
            continue
        if DISTRIBUTIONS.get(module, module).lower().replace("_", "-") not in declared:
            missing[module] = where
    assert not missing, f"imported but not in setup.cfg install_requires: {missing}"
