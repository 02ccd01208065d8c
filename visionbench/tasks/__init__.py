"""Tasks own the loss, the output activation and the metrics; the engine never branches on task kind."""

from visionbench.tasks import classification  # noqa: F401  (registration side effects)
from visionbench.tasks.base import Task, create_task

__all__ = ["Task", "create_task"]
