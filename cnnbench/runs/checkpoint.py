"""Orbax checkpoints of a run: ``checkpoints/latest`` (the last ``keep`` epochs) and
``checkpoints/best`` (the epoch with the best validation top-1). Orbax writes into a temporary
directory and renames it when complete, so a process killed at any moment never leaves a
checkpoint that cannot be restored."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from cnnbench.errors import UsageError


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]


def remove_stale(run_dir: Path) -> list[Path]:
    """Delete the temporary folders of saves that were killed before they completed
    (``*.orbax-checkpoint-tmp*``): they are never restored, only take space. Returns them."""
    import shutil

    stale = [p for name in ("latest", "best") for p in (Path(run_dir) / "checkpoints" / name).glob("*orbax-checkpoint-tmp*")]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


class _OrbaxNoise(logging.Filter):
    """Orbax warns on every save that waited for the previous one ("consider checkpointing less
    frequently"), with one save per epoch of a small model every epoch, saying nothing the user can
    act on; and a save that fails on the file system (a full disk) is logged with a traceback by
    each of its threads, where the run stops with one line naming the file and the error
    (:func:`as_os_error`). ``CNNBENCH_VERBOSE`` shows both."""

    def filter(self, record: logging.LogRecord) -> bool:
        import os

        if os.environ.get("CNNBENCH_VERBOSE"):
            return True
        message = record.getMessage()
        if message.startswith("Waiting for previous save to complete"):
            return False
        if record.levelno >= logging.ERROR and "orbax" in record.pathname:
            failure = message + (str(record.exc_info[1]) if record.exc_info and record.exc_info[1] else "")
            return not ("os_error_code" in failure or "Handler Commit operations" in message
                        or "Save Finalize thread" in message)
        return True


logging.getLogger("absl").addFilter(_OrbaxNoise())


def as_os_error(error: BaseException) -> OSError | None:
    """The file-system error inside one of orbax's / TensorStore's (``... Failed writing: "PATH" ...
    [os_error_code='28']``), as the :class:`OSError` it was; None for any other error."""
    import errno as _errno
    import os
    import re

    text = str(error)
    code = re.search(r"os_error_code='?(\d+)", text)
    if not code:
        return None
    path = re.search(r'Failed (?:writing|to write|opening)[^"]*"([^"]+)"', text)
    number = int(code.group(1))
    return OSError(number, os.strerror(number) if number in _errno.errorcode else text[:200],
                   path.group(1) if path else None)


def _file_errors(method):
    """Re-raise a checkpoint write that failed on the file system as that :class:`OSError`."""
    import functools

    @functools.wraps(method)
    def wrapped(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except OSError:
            raise
        except Exception as e:  # noqa: BLE001 (orbax wraps TensorStore's errors in ValueError & co.)
            os_error = as_os_error(e)
            if os_error is None:
                raise
            raise os_error from None

    return wrapped


class Checkpoints:
    def __init__(self, run_dir: Path, keep: int = 2):
        root = (run_dir / "checkpoints").absolute()
        self.latest = ocp.CheckpointManager(root / "latest", options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True))
        self.best = ocp.CheckpointManager(root / "best", options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True))

    @_file_errors
    def save(self, step: int, state: dict, meta: dict, *, best: bool) -> None:
        self.check_space(state, copies=2 if best else 1)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self.latest.save(step, args=args)
        if best:
            # Both managers would save the same step; on several hosts their async-commit barriers
            # share the key "_async_write_complete.<step>", so the second waits for the first.
            self.latest.wait_until_finished()
            self.best.save(step, args=args)

    def restore(self, template: dict, *, which: str = "latest",
                note=lambda text: None) -> tuple[dict, dict] | None:
        """(state, meta) of the newest intact checkpoint, placed like ``template``; None if there is
        none. A damaged newest one (files truncated or missing) is passed over for the newest intact
        one that is kept, and ``note`` says so; if none is intact, a usage error names the folder."""
        manager = self.latest if which == "latest" else self.best
        steps = sorted(manager.all_steps(), reverse=True)
        if not steps:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        damaged = []
        for step in steps:
            try:
                restored = manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
            except Exception as e:  # orbax / tensorstore: OUT_OF_RANGE, NOT_FOUND, bad metadata, ...
                damaged.append(f"step {step} ({_first_line(e)})")
                continue
            if damaged:
                note(f"damaged checkpoint(s) in {manager.directory} passed over: {'; '.join(damaged)}; "
                     f"continuing from step {step}")
            return restored.state, restored.meta
        raise UsageError(f"no intact checkpoint in {manager.directory}: {'; '.join(damaged)}; "
                         f"restore the files or start a new run")

    def check_space(self, state: dict, copies: int = 1) -> None:
        """A save that cannot fit on the disk fails before orbax starts writing (whose threads each
        log a traceback when the disk fills under them): ENOSPC naming the free and needed space."""
        import errno
        import shutil

        need = copies * sum(leaf.nbytes for leaf in jax.tree.leaves(state)) + (1 << 20)
        free = shutil.disk_usage(self.latest.directory).free
        if free < need:
            raise OSError(errno.ENOSPC, f"No space left on device ({free / 2**20:,.1f} MiB free, a checkpoint "
                                        f"needs about {need / 2**20:,.1f} MiB)", str(self.latest.directory))

    @_file_errors
    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    @_file_errors
    def close(self) -> None:
        self.latest.close()
        self.best.close()


def _step_dirs(run_dir: Path, which: str) -> list[Path]:
    """The checkpoint folders of ``checkpoints/which``, newest first, then those of
    ``checkpoints/latest`` (each once): the candidates, in order, for a run's weights."""
    found = []
    for name in dict.fromkeys((which, "latest")):
        root = Path(run_dir).absolute() / "checkpoints" / name
        steps = sorted((int(p.name) for p in root.iterdir() if p.name.isdigit()), reverse=True) \
            if root.is_dir() else []
        found += [root / str(step) for step in steps]
    return found


def _first_intact(run_dir: Path, which: str, read):
    """``read(step_dir)`` of the newest checkpoint folder it succeeds on (:func:`_step_dirs`
    order), warning about each damaged one passed over; a :class:`UsageError` (the weights do not
    fit the model) is not damage and stops the search."""
    from cnnbench.output import warn

    damaged = []
    for step_dir in _step_dirs(run_dir, which):
        try:
            result = read(step_dir)
        except UsageError:
            raise
        except Exception as e:  # truncated or missing files, unreadable metadata
            damaged.append(f"{step_dir} ({_first_line(e)})")
            continue
        for text in damaged:
            warn(f"damaged checkpoint passed over: {text}; using {step_dir}")
        return result
    if damaged:
        raise UsageError(f"no intact checkpoint in {Path(run_dir) / 'checkpoints'}: {'; '.join(damaged)}")
    raise UsageError(f"{run_dir} has no checkpoint (checkpoints/{which} and checkpoints/latest are empty)")


def _flat_shapes(tree) -> dict[str, tuple[int, ...]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {_key(path): tuple(leaf.shape) for path, leaf in flat}


def restore_matching(run_dir: Path, template: dict, *, which: str = "best") -> tuple[dict, list[str], Path]:
    """Initialisation from another run: the tensors of ``template`` (a pure dict, e.g.
    ``{"params": ..., "batch_stats": ...}``) that the run's checkpoint holds with the same shape,
    as NumPy arrays in a tree like ``template`` (``None`` elsewhere), and the paths it lacks or
    holds with another shape (a new head for another class count, a first convolution for another
    channel count), which keep their fresh initialisation."""
    return _first_intact(run_dir, which, lambda step_dir: _restore_matching(step_dir, template))


def _restore_matching(step_dir: Path, template: dict) -> tuple[dict, list[str], Path]:
    checkpointer = ocp.PyTreeCheckpointer()
    saved = _saved_shapes(checkpointer, step_dir)
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    keep = [(_key(path), leaf) for path, leaf in flat]
    fresh = [k for k, leaf in keep if saved.get(k) != tuple(leaf.shape)]
    if len(fresh) == len(keep):
        raise UsageError(f"no tensor of {step_dir} fits the model (another architecture?)")
    subset: dict = {}
    for key, leaf in keep:
        if key not in fresh:
            node = subset
            *parents, last = key.split("/")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)
    restored = checkpointer.restore(step_dir / "state", args=ocp.args.PyTreeRestore(
        item=subset, restore_args=ocp.checkpoint_utils.construct_restore_args(subset), partial_restore=True))

    def lookup(key):
        node = restored
        for part in key.split("/"):
            node = node[part]
        return node

    values = [None if key in fresh else lookup(key) for key, _ in keep]
    return jax.tree_util.tree_unflatten(treedef, values), fresh, step_dir


def _key(path) -> str:
    from cnnbench.archs.state import path_key

    return path_key(path, strip_value=False)  # the saved tree's own structure, Variable level included


def _saved_shapes(checkpointer, step_dir: Path) -> dict[str, tuple[int, ...]]:
    absl = logging.getLogger("absl")  # orbax warns that a sub-item has no step metadata: expected
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        return _flat_shapes(checkpointer.metadata(step_dir / "state").item_metadata.tree)
    finally:
        absl.setLevel(level)


def restore_weights(run_dir: Path, template: dict, *, which: str = "best") -> tuple[dict, dict, Path]:
    """The ``params`` and ``batch_stats`` of a run's best checkpoint (or its latest, or when it has
    no best), as NumPy arrays shaped like ``template`` (a dict of those two ``nnx.State`` trees),
    with the checkpoint's metadata and directory. The optimiser state is not read. A checkpoint
    whose tensors do not match the template (another architecture or class count) is one error
    naming the first mismatching tensors."""
    return _first_intact(run_dir, which, lambda step_dir: _restore_weights(step_dir, template))


def _restore_weights(step_dir: Path, template: dict) -> tuple[dict, dict, Path]:
    checkpointer = ocp.PyTreeCheckpointer()
    saved = _saved_shapes(checkpointer, step_dir)
    wanted = _flat_shapes(template)
    bad = [f"{k}: checkpoint {saved.get(k, 'missing')} vs model {v}" for k, v in wanted.items()
           if saved.get(k) != v]
    if bad:
        raise UsageError(f"the checkpoint in {step_dir} does not fit the model ({len(bad)} tensor(s) differ; "
                         f"{'; '.join(bad[:3])})")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    restored = checkpointer.restore(step_dir / "state", args=ocp.args.PyTreeRestore(
        item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract), partial_restore=True))
    meta_file = step_dir / "meta" / "metadata"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    return restored, meta, step_dir
