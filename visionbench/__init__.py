"""visionbench: run, compare and explain image-recognition experiments with PyTorch."""

__version__ = "0.1.0"


def version_line() -> str:
    """What `visionbench --version` prints: this package's, torch's and Python's versions."""
    import platform

    import torch

    return f"visionbench {__version__} (torch {torch.__version__}, Python {platform.python_version()})"
