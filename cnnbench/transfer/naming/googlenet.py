"""GoogLeNet (torchvision's batch-norm version): ``conv1``, ``conv2`` (the 1x1 reduction),
``conv3``, ``inception3a.branch2.0`` (a branch's reduction) / ``.1`` ...; the untrained auxiliary
heads ``aux1``/``aux2`` have no place in cnnbench's inference model and are left out."""

from __future__ import annotations

from cnnbench.transfer.naming.base import torchvision


def _prefix(part: str, rest: list[str], model) -> str:
    names = list(rest)
    names[0] = {"conv2_reduce": "conv2", "conv2": "conv3"}.get(names[0], names[0])
    if len(names) > 2 and names[1] in ("branch2", "branch3", "branch4"):
        names[2] = "0" if names[2] == "reduce" else "1"
    return ".".join(names)


torchvision("googlenet-bn", prefix=_prefix, ignore=r".*num_batches_tracked$|aux[12]\..*", transform_input=True)
