"""The experiment schema: YAML -> merged dict -> validated, typed ``Experiment``, once, at load.

``conf/defaults.yaml`` is the base, the experiment file is merged over it, and ``--set key=value``
overrides are merged last. Validation happens here, before any Spark or Horovod process starts, so a
typo costs a second, not a cluster allocation; every error names the key and the file it came from.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
DEFAULTS_FILE = CONF_DIR / "defaults.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SparkConfig(_Strict):
    master: str = "local[*]"
    app_name: str = "sparkzoo"
    conf: dict[str, str] = Field(default_factory=dict)

    @field_validator("conf", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        # Spark settings are strings; YAML turns "8" into 8 and "true" into True.
        if isinstance(value, dict):
            return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()}
        return value


class SourceConfig(_Strict):
    kind: Literal["idx"] = "idx"
    path: str
    label_names: list[str] = Field(default_factory=list)


class DataConfig(_Strict):
    dataset: str
    source: SourceConfig
    root: str = "data"
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    max_records: Optional[int] = Field(None, gt=0)
    version: Optional[str] = None  # pin a prepared version; null = the one this config and source give


class PrepareConfig(_Strict):
    records_per_task: int = Field(5000, gt=0)
    rows_per_file: int = Field(12000, gt=0)
    row_group_bytes: int = Field(1 << 20, ge=1024)
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)


class ModelConfig(_Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class TrainConfig(_Strict):
    backend: Literal["horovod_spark", "horovodrun", "torch_distributor"] = "horovod_spark"
    num_proc: int = Field(2, ge=1, le=1024)
    threads_per_rank: int = Field(1, ge=1)
    reader: Literal["pyarrow", "petastorm"] = "pyarrow"
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    scale_lr_by_world_size: bool = True
    warmup_epochs: float = Field(0.0, ge=0.0)
    fp16_compression: bool = False
    backward_passes_per_step: int = Field(1, ge=1)
    shuffle_buffer: int = Field(4096, ge=1)
    prefetch_batches: int = Field(8, ge=1)
    max_steps_per_epoch: Optional[int] = Field(None, gt=0)
    early_stopping_patience: Optional[int] = Field(None, gt=0)
    checkpoint_dir: str = "checkpoints"
    progress: bool = True


class MlflowConfig(_Strict):
    tracking_uri: str = "sqlite:///{workspace}/mlflow.db"
    registry_uri: Optional[str] = None
    artifact_location: str = "{workspace}/mlartifacts"
    experiment: str = "sparkzoo"
    model_name: Optional[str] = None
    # What `sparkzoo promote` compares, recomputed in Spark for both models on the same split:
    # "<split>_<metric>", metric accuracy (higher wins) or loss (mean log loss, lower wins).
    promote_metric: str = Field("test_accuracy", pattern=r"^(train|val|test)_(accuracy|loss)$")
    promote_margin: float = Field(0.0, ge=0.0)


class ScoreConfig(_Strict):
    model_uri: Optional[str] = None
    input_split: Literal["train", "val", "test"] = "test"
    input_path: Optional[str] = None     # a Parquet folder, file or glob
    input_table: Optional[str] = None    # or a catalog (Hive/metastore) table name
    output: str = "predictions"
    batch_size: int = Field(10000, ge=1)
    run_date: Optional[str] = Field(None, pattern=r"^\d{4}-\d{2}-\d{2}$")
    incremental: bool = False            # score only ids this model version has not scored on earlier dates
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads_per_worker: int = Field(1, ge=1)
    optimize: Literal["none", "channels_last", "compile", "int8"] = "none"
    optimize_check_rows: int = Field(2000, ge=100)
    optimize_tolerance: float = Field(0.005, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _one_input(self) -> "ScoreConfig":
        if self.input_path and self.input_table:
            raise ValueError("set score.input_path or score.input_table, not both")
        return self

    @field_validator("run_date", mode="before")
    @classmethod
    def _date_to_text(cls, value: Any) -> Any:
        # YAML reads 2026-11-25 as a date; the partition value is its ISO text.
        return value.isoformat() if hasattr(value, "isoformat") else value


class UiConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(5000, ge=1, le=65535)


class Experiment(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 42
    workspace: str = "workspace"
    spark: SparkConfig = SparkConfig()
    data: DataConfig
    prepare: PrepareConfig = PrepareConfig()
    model: ModelConfig
    train: TrainConfig = TrainConfig()
    mlflow: MlflowConfig = MlflowConfig()
    score: ScoreConfig = ScoreConfig()
    ui: UiConfig = UiConfig()
    # Where it was loaded from, for messages; not part of the user's YAML.
    source_file: str = ""

    @property
    def model_name(self) -> str:
        return self.mlflow.model_name or self.name

    def to_dict(self) -> dict[str, Any]:
        """Plain dict: what driver code ships to executors and ranks (they re-validate it)."""
        return self.model_dump(mode="json")


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass --conf with a file from conf/, e.g. conf/fashion_mnist_cnn.yaml")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys at the top level, not {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("params",):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.epochs=5`` -> (["train", "epochs"], 5); the value is read as YAML so types survive."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r} is not key=value; example: --set train.epochs=5")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {text!r} has an empty key; example: --set train.epochs=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def _apply_override(tree: dict[str, Any], parts: list[str], value: Any) -> None:
    if parts[:2] == ["spark", "conf"] and len(parts) > 2:
        parts = ["spark", "conf", ".".join(parts[2:])]   # Spark keys hold dots themselves
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(parts)}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _valid_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys the schema accepts at ``loc``, to list them in an unknown-key message."""
    current: Any = model
    for part in loc[:-1]:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        current = fields[part].annotation
    fields = getattr(current, "model_fields", None)
    return sorted(k for k in (fields or {}) if k != "source_file")


def _explain(exc: ValidationError, where: str) -> ConfigError:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            choices = _valid_keys(Experiment, loc)
            hint = difflib.get_close_matches(str(loc[-1]), choices, n=1)
            more = f" (did you mean '{hint[0]}'?)" if hint else ""
            lines.append(f"unknown key '{key}' in {where}{more}; valid keys here: {', '.join(choices)}")
        elif err["type"] == "missing":
            lines.append(f"missing key '{key}' in {where}")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"   # a whole section is noise
            lines.append(f"bad value for '{key}' in {where}: {err['msg']}{shown}")
    return ConfigError("; ".join(lines))


def load(path: str | Path | None, overrides: list[str] | None = None) -> Experiment:
    """Load ``defaults.yaml`` + the experiment file + ``--set`` overrides into a validated Experiment."""
    tree = _read_yaml(DEFAULTS_FILE)
    where = str(DEFAULTS_FILE)
    if path is not None:
        exp_path = Path(path)
        tree = _merge(tree, _read_yaml(exp_path))
        where = str(exp_path)
    for text in overrides or []:
        parts, value = parse_override(text)
        _apply_override(tree, parts, value)
    if overrides:
        where += " (with --set " + " ".join(overrides) + ")"
    tree["source_file"] = where
    try:
        exp = Experiment.model_validate(tree)
    except ValidationError as exc:
        raise _explain(exc, where) from None
    _check_model_name(exp, where)
    return exp


def from_dict(tree: dict[str, Any]) -> Experiment:
    """Rebuild the Experiment on an executor or rank from the dict the driver shipped."""
    return Experiment.model_validate(tree)


def _check_model_name(exp: Experiment, where: str) -> None:
    from sparkzoo.models import registry

    names = registry.list_models()
    if exp.model.name not in names:
        hint = difflib.get_close_matches(exp.model.name, names, n=1)
        more = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise ConfigError(
            f"unknown model '{exp.model.name}' in {where}:model.name{more}; choose one of: {', '.join(names)}"
        )
