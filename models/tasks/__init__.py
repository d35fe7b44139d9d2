"""Tasks: what a family's output means. Importing this package registers every built-in task."""

from .base import TASKS, Batch, Task, images_to_tensor, make_task, register_task, task_class, unregister_task
from . import vision, sequence  # noqa: F401,E402  (registration side effects)
from .vision import ClassificationTask, ReconstructionTask, SegmentationTask
from .sequence import CaptioningTask, CTCTask, LanguageModelTask, Seq2SeqTask, TextClassificationTask

__all__ = ["TASKS", "Batch", "Task", "images_to_tensor", "make_task", "register_task", "task_class", "unregister_task",
           "ClassificationTask", "ReconstructionTask", "SegmentationTask", "CaptioningTask", "CTCTask",
           "LanguageModelTask", "Seq2SeqTask", "TextClassificationTask"]
