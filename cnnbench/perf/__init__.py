"""Speed: `cnnbench bench` (model throughput on synthetic data) and the XLA options the tool sets.

Nothing here imports TensorFlow: a benchmark measures the model and its step, not an input pipeline.
"""
