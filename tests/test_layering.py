"""The package's import graph runs one way: each package imports only those below it (README,
"Layout"), and no two modules import each other, even lazily inside a function. Read from the
source with ``ast``, so an import added anywhere (a lazy one included) is checked."""

from __future__ import annotations

import ast
from pathlib import Path

import cnnbench

ROOT = Path(cnnbench.__file__).parent

#: Lowest first. A package may import its own layer and the layers below it. The first layer is
#: the foundation: plain modules that every package may use.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "output", "progress", "cache", "plotting"),
    ("kernels",),    # how a CPU computes a convolution, pooling, LRN fast; XLA's options
    ("parallel",),   # the device mesh, layer partitioning, hosts
    ("archs",),      # layers, the registry, one file per family
    ("analysis",),   # per-layer statistics, the catalogue
    ("pipeline",),   # datasets, preprocessing, batches (the only TensorFlow user)
    ("runs",),       # the run directory: config, files, lock, checkpoints, loaded runs
    ("train",),      # optimisers, the jitted steps, the loop, initial weights, freezing
    ("eval",),       # evaluation, metrics, reports, predictions
    ("viz",),        # named layer outputs, figures of what a network learned
    ("transfer",),   # published weights, fine-tuning configs, probes, features
    ("perf",),       # `bench`
    ("reproduce",),  # the papers' findings
    ("compare",),    # architectures and runs side by side
    ("commands",),   # one module per command group (parse, call, print)
    ("cli",),        # the program: XLA options, then the commands
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in ROOT.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """Every cnnbench module ``path`` imports (at any depth of the file), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("cnnbench"):
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.append((name if name in modules else node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("cnnbench")]
    return found


def _package(module: str) -> str:
    """cnnbench.train.step -> train; cnnbench.errors -> errors; cnnbench (``__version__``) -> errors."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "errors"


def test_every_package_has_a_layer():
    on_disk = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()
               if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert on_disk == set(RANK), "add the new package to LAYERS (and the README's layout)"


def test_packages_import_only_downward():
    modules = _modules()
    upward = []
    for module, path in modules.items():
        if module == "cnnbench":  # the public API (lazy): the top
            continue
        source = _package(module)
        for target, line in _imports(path, modules):
            dest = _package(target)
            if dest != source and RANK[dest] >= RANK[source] and not (RANK[dest] == RANK[source] == 0):
                upward.append(f"{path.relative_to(ROOT.parent)}:{line} ({source}) imports {target} ({dest})")
    assert not upward, "imports that run upward or sideways:\n" + "\n".join(upward)


def test_no_two_modules_import_each_other():
    modules = _modules()
    edges = {m: {t for t, _ in _imports(p, modules) if t in modules and t not in (m, "cnnbench")}
             for m, p in modules.items()}
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m, path):
        state[m] = 1
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(path[path.index(t):] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
