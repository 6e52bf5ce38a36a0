"""The run directory, the hand-off between every stage: its configuration (`config`: what
``config.json`` holds, resolving a request against a run to continue), its files and lock
(`layout`: names, atomic writes, ``metrics.jsonl``, ``dataset.json``), its checkpoints
(`checkpoint`) and a finished run as a trained model (`loaded`: :func:`~cnnbench.runs.loaded.load_run`).
Training writes it; eval, compare, transfer, viz and reproduce read it, all through this package."""
