"""Evaluation (`cnnbench eval`, `predict`, `compare`): from run directories to ILSVRC-style reports."""
