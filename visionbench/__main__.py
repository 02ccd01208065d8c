"""`python -m visionbench` entry point (also what `torchrun -m visionbench` calls)."""

from visionbench.cli.main import main

if __name__ == "__main__":
    main()
