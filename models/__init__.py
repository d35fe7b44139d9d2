"""The model zoo. Importing this package registers every family (see ``registry``).

Models know torch and numpy only: no Spark, no MLflow, no Horovod, no file I/O.
"""

from . import registry
from . import autoencoder, captioning, cnn, ctc, fcn, mlp, resnet, rnn, seq2seq, transformer  # noqa: F401  (registration side effects)
from .registry import InputSpec, count_parameters, get_model, list_models, model_task
from .tasks import TASKS, make_task

__all__ = ["registry", "InputSpec", "count_parameters", "get_model", "list_models", "model_task", "make_task", "TASKS"]
