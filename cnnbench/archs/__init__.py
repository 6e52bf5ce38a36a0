"""The architecture zoo: ``create_model(name)`` and the registry behind `cnnbench archs`.

Importing this package imports JAX and Flax only, never TensorFlow.
"""

from cnnbench.archs import alexnet, googlenet, lenet, mlp, nin, resnet, vgg, zfnet  # noqa: F401  (register)
from cnnbench.archs.net import Net
from cnnbench.archs.registry import REGISTRY, ArchInfo, Reference, create_model, get_arch, list_archs

__all__ = ["REGISTRY", "ArchInfo", "Net", "Reference", "create_model", "get_arch", "list_archs"]
