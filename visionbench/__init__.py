"""visionbench: run, compare and explain image-recognition experiments with PyTorch."""

__version__ = "0.1.0"
