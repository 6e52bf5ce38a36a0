"""Orbax checkpoints of a run: ``checkpoints/latest`` (the last ``keep`` epochs) and
``checkpoints/best`` (the epoch with the best validation top-1). Orbax writes into a temporary
directory and renames it when complete, so a process killed at any moment never leaves a
checkpoint that cannot be restored."""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp


class Checkpoints:
    def __init__(self, run_dir: Path, keep: int = 2):
        root = (run_dir / "checkpoints").absolute()
        self.latest = ocp.CheckpointManager(root / "latest", options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True))
        self.best = ocp.CheckpointManager(root / "best", options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True))

    def save(self, step: int, state: dict, meta: dict, *, best: bool) -> None:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self.latest.save(step, args=args)
        if best:
            # Both managers would save the same step; on several hosts their async-commit barriers
            # share the key "_async_write_complete.<step>", so the second waits for the first.
            self.latest.wait_until_finished()
            self.best.save(step, args=args)

    def restore(self, template: dict, *, which: str = "latest") -> tuple[dict, dict] | None:
        """(state, meta) of the newest checkpoint, placed like ``template``; None if there is none."""
        manager = self.latest if which == "latest" else self.best
        step = manager.latest_step()
        if step is None:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        return restored.state, restored.meta

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()
