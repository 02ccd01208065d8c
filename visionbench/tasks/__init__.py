"""Tasks own the loss, the output activation and the metrics; the engine never branches on task kind."""

from visionbench.tasks import classification, multilabel, regression  # noqa: F401  (registration side effects)
from visionbench.tasks.base import Task, build_task, create_task

__all__ = ["Task", "build_task", "create_task"]
