"""cnnbench: train, evaluate and compare the classic image-classification CNNs."""

__version__ = "0.1.0"
