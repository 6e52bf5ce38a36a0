"""The one way long work reports itself while it runs.

Every library call that takes a while (training, evaluation, a probe, a download, a benchmark,
a figure) takes a ``progress`` argument and reports through four calls:

- ``start(description, total=None, unit="items")``: a new stage (an epoch, a model, a file);
  ``total`` is what ``advance``/``update`` count up to, ``None`` when unknown; ``unit="bytes"``
  for transfers.
- ``advance(n=1)`` or ``update(completed=..., status=...)``: work done in the stage; ``status``
  is a short line of live figures (a loss, a rate).
- ``note(text)`` / ``warn(text)``: a line worth keeping (a validation result, a damaged file).
- ``nested()``: a second level under the current one (a reproduction's runs, each with epochs).

:class:`Progress` itself reports nothing (the default, and what the Python API uses);
:class:`Record` keeps every call (tests, notebooks); :class:`Bar` draws rich progress bars on
stderr (the command line's one adapter).
"""

from __future__ import annotations


class Progress:
    """Reports nothing; subclasses draw or keep."""

    def start(self, description: str, total: float | None = None, *, unit: str = "items") -> None:
        pass

    def advance(self, n: float = 1) -> None:
        pass

    def update(self, completed: float | None = None, *, total: float | None = None, status: str | None = None) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def warn(self, text: str) -> None:
        self.note(f"Warning: {text}")

    def nested(self) -> Progress:
        return self


#: The default of every ``progress=`` argument.
SILENT = Progress()


class Record(Progress):
    """Keeps every call as a tuple in :attr:`events`: ``("start", description, total, unit)``,
    ``("advance", n)``, ``("update", completed, total, status)``, ``("note", text)``,
    ``("warn", text)``; :attr:`notes` and :attr:`warnings` hold the lines alone."""

    def __init__(self):
        self.events: list[tuple] = []

    def start(self, description, total=None, *, unit="items"):
        self.events.append(("start", description, total, unit))

    def advance(self, n=1):
        self.events.append(("advance", n))

    def update(self, completed=None, *, total=None, status=None):
        self.events.append(("update", completed, total, status))

    def note(self, text):
        self.events.append(("note", text))

    def warn(self, text):
        self.events.append(("warn", text))

    @property
    def notes(self) -> list[str]:
        return [e[1] for e in self.events if e[0] == "note"]

    @property
    def warnings(self) -> list[str]:
        return [e[1] for e in self.events if e[0] == "warn"]

    def done(self, description: str | None = None) -> float:
        """Units advanced or last updated to in the latest stage (named ``description``, if given)."""
        done = 0.0
        current = None
        for e in self.events:
            if e[0] == "start":
                current = e[1]
                if description is None or current == description:
                    done = 0.0
            elif description is None or current == description:
                if e[0] == "advance":
                    done += e[1]
                elif e[0] == "update" and e[1] is not None:
                    done = e[1]
        return done


class Bar(Progress):
    """Rich progress bars on stderr, one line per level: the description, a bar, the count (or
    bytes and speed), the live status and the time left. Use as a context manager; the bar
    appears with the first stage, so a failure before it shows no empty bar.

    ``transient``: the bars vanish when done (notes stay). ``disable``: no bars (``--format json``),
    notes still go to stderr. ``log``: off a terminal, each stage is also a line starting with
    this prefix, so a long job in a log shows it is alive."""

    def __init__(self, *, transient: bool = True, disable: bool = False, log: str | None = None, console=None):
        from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn

        from cnnbench.output import err_console

        self._console = console or err_console()
        self._rich = RichProgress(TextColumn("{task.description}"), BarColumn(), _count_column(),
                                  TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
                                  console=self._console, transient=transient, disable=disable)
        self._log = None if self._console.is_terminal else log
        self._task = None
        self._running = False

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        if self._running:
            self._rich.stop()
            self._running = False

    def start(self, description, total=None, *, unit="items"):
        if not self._running:
            self._rich.start()
            self._running = True
        if self._task is None:
            self._task = self._rich.add_task(description, total=total, unit=unit, status="")
        else:
            self._rich.reset(self._task, total=total, description=description, unit=unit, status="", visible=True)
        if self._log is not None:
            self._console.print(f"{self._log}{description}", highlight=False, markup=False)

    def advance(self, n=1):
        if self._task is not None:
            self._rich.advance(self._task, n)

    def update(self, completed=None, *, total=None, status=None):
        if self._task is None:
            return
        fields = {} if status is None else {"status": status}
        self._rich.update(self._task, completed=completed, total=total, **fields)

    def note(self, text):
        self._console.print(text, highlight=False, markup=False, soft_wrap=True)

    def nested(self) -> Bar:
        child = Bar.__new__(Bar)
        child._console, child._rich, child._log = self._console, self._rich, None
        child._task, child._running = None, True
        return child


def _count_column():
    from rich.progress import DownloadColumn, MofNCompleteColumn, ProgressColumn, TransferSpeedColumn
    from rich.text import Text

    class Count(ProgressColumn):
        """``3/10`` for items, ``1.2/3.4 MB 5.6 MB/s`` for bytes, nothing while the total is unknown."""

        def __init__(self):
            super().__init__()
            self._items, self._bytes, self._speed = MofNCompleteColumn(), DownloadColumn(), TransferSpeedColumn()

        def render(self, task):
            if task.fields.get("unit") == "bytes":
                return Text.assemble(self._bytes.render(task), " ", self._speed.render(task))
            return Text("") if task.total is None else self._items.render(task)

    return Count()
