"""What several command groups share: KEY=VALUE options, published weights by name, help texts."""

from __future__ import annotations

import tomllib

from cnnbench.errors import UsageError

MODEL_PARALLEL_HELP = ("Split each copy of the model over M devices (mesh axis 'model': the paper AlexNet's two "
                       "towers, the channels of every other network); batches split over devices / M.")


def parse_options(pairs: tuple[str, ...], what: str = "-o") -> dict:
    """``-o key=value`` (or ``--set``) pairs; values are read as TOML (``false``, ``0.3``,
    ``[100, 100]``) or text."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            example = "activation=relu" if what == "-o" else "plateau_patience=3"
            raise UsageError(f"{what} {pair!r} is not KEY=VALUE (e.g. {what} {example})")
        try:
            options[key.replace("-", "_")] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            options[key.replace("-", "_")] = value
    return options


PRETRAINED_HELP = "Published weights by name (see `cnnbench weights download --list`), downloaded on first use."


def pretrained_run(name: str, fmt: str = "table", **kwargs) -> dict:
    """``--pretrained NAME`` and `weights download`: the published weights' run directory, with a
    progress bar while the file downloads, is checked and converts."""
    from cnnbench.progress import Bar
    from cnnbench.transfer.published import pretrained

    with Bar(disable=fmt == "json") as bar:
        return pretrained(name, progress=bar, **kwargs)


def int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{option} takes whole numbers separated by commas, e.g. 256,384,512") from None
