"""Where a network's numbers live across devices: the two-axis device mesh (``data`` x ``model``),
each layer's split over the ``model`` axis, and the collectives a compiled program contains.

Data parallelism shards each batch over ``data``; model (tensor) parallelism shards the output
channels of convolutions and dense layers over ``model``, as Krizhevsky et al. (2012) split AlexNet
over two GPUs. :mod:`cnnbench.parallel.mesh` builds the mesh and places state and batches on it;
:mod:`cnnbench.parallel.partition` decides each layer's split (the plan the layers follow while
traced) and what crosses devices; :mod:`cnnbench.parallel.collectives` reads the collectives of a
compiled program. This package imports JAX and Flax only, never an architecture.
"""

from cnnbench.parallel.mesh import (batch_sharding, check_model_parallel, data_size, make_mesh, model_size,
                                    over_batch, place, replicated)
from cnnbench.parallel.partition import Partition, plan

__all__ = ["Partition", "batch_sharding", "check_model_parallel", "data_size", "make_mesh", "model_size",
           "over_batch", "place", "plan", "replicated"]
