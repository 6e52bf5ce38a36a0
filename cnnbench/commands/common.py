"""What several command groups share: KEY=VALUE options, published weights by name, help texts."""

from __future__ import annotations

import tomllib

from cnnbench.errors import UsageError

MODEL_PARALLEL_HELP = ("Split each copy of the model over M devices (mesh axis 'model': the paper AlexNet's two "
                       "towers, the channels of every other network); batches split over devices / M.")


_EXAMPLES = {"-o": "activation=relu", "--set": "plateau_patience=3", "--lr-mult": "head=10"}


def parse_options(pairs: tuple[str, ...], what: str = "-o", *, numbers: bool = False) -> dict:
    """``-o key=value`` (or ``--set``, ``--lr-mult``) pairs; values are read as TOML (``false``,
    ``0.3``, ``[100, 100]``) or text; with ``numbers``, only numbers are accepted. Dashes in a key
    become underscores (a setting's name), except with ``numbers`` (there the keys are layer names)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        example = f"{what} {_EXAMPLES.get(what, 'name=value')}"
        if not sep or not key:
            raise UsageError(f"{what} {pair!r} is not {'LAYER=NUMBER' if numbers else 'KEY=VALUE'} (e.g. {example})")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value
        if numbers and (isinstance(parsed, bool) or not isinstance(parsed, (int, float))):
            raise UsageError(f"{what} {pair!r} is not LAYER=NUMBER (e.g. {example})")
        options[key if numbers else key.replace("-", "_")] = float(parsed) if numbers else parsed
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
