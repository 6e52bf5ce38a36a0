"""Input pipelines (TensorFlow Datasets + tf.data).

This is the only package that imports TensorFlow, and it does so lazily inside functions, so that
`cnnbench archs`, `cnnbench summary` and everything model-only never pay for (or need) it.
"""
