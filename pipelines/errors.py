"""One exception family for everything a user can cause.

Jobs catch ``SparkzooError`` at the top and print its message without a traceback; anything else is a
bug and keeps its traceback. The classes hold only a string so they pickle cleanly back from executors
and Horovod ranks.
"""

from __future__ import annotations


class SparkzooError(Exception):
    """Base class: the message must name the thing that is wrong and how to fix it."""

    exit_code = 2


class ConfigError(SparkzooError):
    """A YAML key, value or command-line override is wrong."""


class DataError(SparkzooError):
    """Input data is missing, unreadable, empty or does not match the manifest."""


class TrainingError(SparkzooError):
    """A training rank failed or training could not start."""


class ScoringError(SparkzooError):
    """A model could not be resolved or scoring input does not fit it."""


class RegistryError(SparkzooError):
    """The MLflow registry does not hold what the job asked for."""


class SetupError(SparkzooError):
    """The machine lacks something the pipeline needs (Java, Horovod, a reachable MLflow store, disk)."""


class OutputError(SparkzooError):
    """An output could not be written (disk full, no permission) or an existing output is incomplete."""


class DriftError(SparkzooError):
    """Scoring finished and wrote its output, but input or predictions moved past ``score.drift_fail_above``."""

    exit_code = 4
