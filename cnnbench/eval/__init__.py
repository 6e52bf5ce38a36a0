"""Evaluation (`cnnbench eval`, `predict`, `compare`): from run directories to ILSVRC-style reports."""

#: ILSVRC's test-time protocols: the centre crop, 10 crops (corners and centre, flipped), several scales
CROPS = ("center", "10", "multiscale")
