"""Evaluators: one interface for everything that measures a trained run (big_vision's shape).

An evaluator is set up with its options, then called on a loaded run with a progress reporter;
it returns a :class:`Result` (the metrics, a key naming its setting, a label in words, its own
details) that :func:`evaluate` keeps in the run (:mod:`cnnbench.runs.results`, one schema for
all). `cnnbench compare` reads those back through each evaluator's :meth:`Evaluator.facts`, so a
new evaluator is one class here with ``@register`` and no change to compare, the command line or
the training loop::

    @register
    class MyMetric(Evaluator):
        name = "my-metric"
        columns = (("my_metric", "my metric %", "pct"),)

        def __call__(self, run, progress=SILENT) -> Result: ...
        @classmethod
        def facts(cls, records) -> dict: ...

An installed package adds its evaluators through the entry point group ``cnnbench.evaluators``
(``my-metric = my_package.metrics``: importing the module registers them), and `cnnbench eval
--evaluator my-metric --set key=value` runs one with those options.

Registered: ``accuracy`` in :mod:`cnnbench.eval.evaluate` (top-1/top-5 under ILSVRC's centre,
10-crop or multi-scale protocol) and ``probe`` in :mod:`cnnbench.transfer.probe` (a linear
classifier on a layer's features): an evaluator registers where it lives, and :mod:`cnnbench.compare` (above every
package) imports the modules that hold them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, ClassVar

from cnnbench.errors import UsageError
from cnnbench.progress import SILENT, Progress
from cnnbench.runs import results

EVALUATORS: dict[str, type[Evaluator]] = {}


@dataclasses.dataclass
class Result:
    key: str                # the setting, unique per evaluator in a run (its file name)
    label: str              # the setting in words
    metrics: dict           # the numbers
    details: dict = dataclasses.field(default_factory=dict)  # kept with them (split, layer, ...)
    output: Any = None      # what the caller may need besides (predictions); not kept


class Evaluator:
    """Options in ``__init__`` (a dataclass), the measurement in ``__call__``."""

    name: ClassVar[str]
    #: compare's columns: (fact key, header, "pct" for a fraction shown as a percentage or "text")
    columns: ClassVar[tuple[tuple[str, str, str], ...]] = ()

    def __call__(self, run, progress: Progress = SILENT) -> Result:
        raise NotImplementedError

    @classmethod
    def facts(cls, records: list[dict]) -> dict:
        """What `cnnbench compare` shows of this evaluator's kept records (the run's best)."""
        return {}


def register(cls: type[Evaluator]) -> type[Evaluator]:
    EVALUATORS[cls.name] = cls
    return cls


PLUGIN_GROUP = "cnnbench.evaluators"
_loaded_plugins: set[str] = set()


def load_plugins() -> None:
    """Import the evaluator modules installed packages name under :data:`PLUGIN_GROUP`; one that
    fails to import is one line naming its package's entry point."""
    from importlib.metadata import entry_points

    for entry in entry_points(group=PLUGIN_GROUP):
        if entry.value in _loaded_plugins:
            continue
        try:
            entry.load()
        except Exception as e:  # noqa: BLE001 (someone else's module: any failure is theirs)
            raise UsageError(f"the evaluator plugin {entry.name} ({entry.value}) does not load: "
                             f"{type(e).__name__}: {e}") from None
        _loaded_plugins.add(entry.value)


def create(name: str, options: dict) -> Evaluator:
    """The registered evaluator ``name`` set up with ``options`` (its fields), or one line saying
    which names or options there are."""
    if name not in EVALUATORS:
        raise UsageError(f"no evaluator {name!r}; registered: {', '.join(sorted(EVALUATORS))}")
    cls = EVALUATORS[name]
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    unknown = sorted(set(options) - fields)
    if unknown:
        raise UsageError(f"the {name} evaluator has no option {', '.join(unknown)}; its options: "
                         f"{', '.join(sorted(fields)) or 'none'}")
    hints = _hints(cls)
    for key, value in options.items():
        if key in hints and not _accepts(hints[key], value):
            raise UsageError(f"the {name} evaluator's {key} takes {_shown(hints[key])}, not {value!r}")
        if isinstance(value, list):  # (TOML arrays for tuple options)
            options = {**options, key: tuple(value)}
    try:
        return cls(**options)
    except (TypeError, ValueError) as e:
        raise UsageError(f"the {name} evaluator does not take these options: {e}") from None


def _hints(cls) -> dict:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 (a plugin's annotations that do not resolve: no check)
        return {}


def _accepts(hint, value) -> bool:
    """Whether an option's value (as `--set` reads it: TOML) fits its field's annotation."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(h, value) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin in (tuple, list):
        return isinstance(value, (list, tuple))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True  # (Any and the like: anything)


def _shown(hint) -> str:
    return " or ".join(getattr(h, "__name__", str(h)) for h in typing.get_args(hint) or (hint,)
                       if h is not type(None)) or "nothing"


def evaluate(run, evaluator: Evaluator, *, progress: Progress = SILENT, keep: bool = True) -> Result:
    """Run ``evaluator`` on a loaded run and keep its result there (unless ``keep`` is False)."""
    result = evaluator(run, progress)
    if keep:
        model = {"checkpoint": str(run.checkpoint) if run.checkpoint else None, "weights": run.weights,
                 "epoch": run.epoch, "arch": run.cfg.arch}
        results.keep(run.run_dir, evaluator.name, result.key, label=result.label, metrics=result.metrics,
                     model=model, details=result.details)
    return result
