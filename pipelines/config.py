"""The experiment schema: YAML -> merged dict -> validated, typed ``Experiment``, once, at load.

``conf/defaults.yaml`` is the base, the experiment file is merged over it, and ``--set key=value``
overrides are merged last. Validation happens here, before any Spark or Horovod process starts, so a
typo costs a second, not a cluster allocation; every error names the key and the file it came from.
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import (BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, WrapValidator, field_validator,
                      model_validator)

from .errors import ConfigError
from .source_registry import SourceConfig, schema_of, validate

# The defaults and the example experiments: conf/ of a checkout, sparkzoo/conf/ of an installed wheel
# (pyproject maps one onto the other), so both find them the same way.
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
DEFAULTS_FILE = CONF_DIR / "defaults.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SparkConfig(_Strict):
    master: str = "local[*]"
    app_name: str = "sparkzoo"
    conf: dict[str, str] = Field(default_factory=dict)
    # Environment variables of the JVM this process starts (set before launch; one already in this process's
    # environment wins) and, as spark.executorEnv.<NAME>, of every executor (spark-submit's key wins).
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [name for name in value if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)]
        if bad:
            raise ValueError(f"spark.env: {bad[0]!r} is not an environment variable name (letters, digits, _)")
        return value

    @field_validator("conf", "env", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        # Spark settings are strings; YAML turns "8" into 8 and "true" into True.
        if isinstance(value, dict):
            return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()}
        return value


def _source(value: Any, handler: Any) -> Any:
    """``data.source`` is validated against the source registry when it is validated, not when this module
    is imported: every kind is one decorated class (pipelines/source_registry.py), and one registered
    later (a plugin, a test) is valid from then on. Pydantic's own errors keep their locations."""
    return handler(validate(value))


# The ``data.source`` field: any registered source schema, picked by ``kind``; serialised as its own
# class (SerializeAsAny), so model_dump keeps every key of the kind.
AnySource = Annotated[SerializeAsAny[SourceConfig], WrapValidator(_source)]


class ImageSettings(_Strict):
    """Every image leaves prepare at this size and channel count, uint8, channels last."""

    height: int = Field(64, gt=0)
    width: int = Field(64, gt=0)
    channels: Literal[1, 3] = 3
    resize: Literal["stretch", "fit", "crop"] = "fit"   # fit = keep aspect and pad; crop = fill and centre-crop
    # Under transparent pixels and padding: a solid colour, or (texture) a seeded random picture of
    # gradients, shapes and noise per image, with the cut-out pasted at a random place and scale: the
    # varied backgrounds segmentation needs, where a colour threshold no longer finds the object.
    background: Literal["white", "black", "random", "texture"] = "white"
    paste_scale_min: float = Field(1.0, gt=0.0, le=1.0)   # texture: the cut-out's size, fraction of the frame
    variants: int = Field(1, ge=1, le=100)   # texture: rows per file, each on its own background (same split)
    # Files whose header declares more pixels are quarantined (too_large) before any decode: a few-kB
    # PNG can declare gigapixels ("decompression bomb").
    max_pixels: int = Field(40_000_000, ge=1)


class TextSettings(_Strict):
    tokenizer: Literal["word", "char"] = "word"
    target_tokenizer: Literal["word", "char", "space"] = "word"   # pairs: how the target side splits
    lowercase: bool = True
    min_count: int = Field(1, ge=1)
    max_size: int = Field(30000, ge=8)
    max_length: int = Field(256, ge=1)       # tokens kept per text (longer texts are cut, not dropped)
    max_record_bytes: int = Field(16 << 20, ge=1024)   # CSV/TSV field size the parser accepts (Python's default: 128 kB)


class AudioSettings(_Strict):
    sample_rate: int = Field(16000, ge=1000)
    n_mels: int = Field(40, ge=1)
    win_ms: float = Field(25.0, gt=0)
    hop_ms: float = Field(10.0, gt=0)
    fmin: float = Field(0.0, ge=0)
    fmax: Optional[float] = None
    max_seconds: float = Field(10.0, gt=0)   # longer clips are quarantined (too_long)
    silence_dbfs: float = -60.0              # clips whose peak is below this are quarantined (silent)


class DataConfig(_Strict):
    dataset: str
    source: AnySource
    root: str = "data"
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)   # for sources without an official test split
    max_records: Optional[int] = Field(None, gt=0)
    # Share of the train split kept (a stable hash of the row id picks it): "10% of the labels" for
    # label-efficiency and transfer-learning runs; val and test stay whole.
    train_fraction: float = Field(1.0, gt=0.0, le=1.0)
    version: Optional[str] = None  # pin a prepared version; null = the one this config and source give
    image: ImageSettings = ImageSettings()
    text: TextSettings = TextSettings()
    audio: AudioSettings = AudioSettings()

    @property
    def modality(self) -> str:
        return self.source.modality


class PrepareConfig(_Strict):
    records_per_task: int = Field(5000, gt=0)
    rows_per_file: int = Field(12000, gt=0)
    row_group_bytes: int = Field(1 << 20, ge=1024)
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)
    tasks_per_core: int = Field(1, ge=1)      # Spark tasks per core (few, even tasks win: bench/RESULTS.md)
    max_task_bytes: int = Field(256 << 20, ge=1 << 20)   # file sources: more tasks when a task would read more


class ReplicateConfig(_Strict):
    """`sparkzoo replicate`: grow a prepared set N-fold with seeded random augmentation."""

    factor: int = Field(10, ge=1)
    dataset: Optional[str] = None        # output name; null = <data.dataset>_x<factor>
    crop_pad: int = Field(4, ge=0)       # images: random crop after padding this many pixels
    flip: bool = True                    # images: random horizontal flip
    noise_std: float = Field(0.02, ge=0)  # images (pixel scale 0..1) and audio (relative noise power)
    gain_db: float = Field(6.0, ge=0)    # audio: random gain in +-gain_db
    speed: float = Field(0.1, ge=0, lt=1)  # audio: random tempo change in 1 +- speed
    token_dropout: float = Field(0.1, ge=0, lt=1)  # text: share of tokens replaced by <unk>


class ModelConfig(_Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    # Transfer learning: start from a registered version's weights (every tensor of the same name and
    # shape; a head for other classes or input sizes stays fresh), pinned at job start.
    init_from: Optional[str] = Field(None, pattern=r"^models:/[^/@]+(@[^/]+|/\d+)$")
    init_exclude: list[str] = Field(default_factory=list)   # name prefixes not copied (a new head: [head])
    freeze: list[str] = Field(default_factory=list)   # parameter-name prefixes that stop learning
    beam: int = Field(1, ge=1, le=64)                   # sequence decoding: 1 = greedy, k = beam search of width k
    max_decode_length: Optional[int] = Field(None, ge=1)   # tokens a decoder may write (null = longest target + 8)
    eval_beams: list[int] = Field(default_factory=list)    # also report test metrics at these beam widths


class TestSlices(_Strict):
    """Test metrics per group of rows, beside the overall ones: a held-out speaker next to the seen ones,
    a source next to another. Rows whose ``column`` value is in no group fall into ``others``."""
    column: str = Field(min_length=1)
    groups: dict[str, list[str]] = Field(min_length=1)   # slice name -> the column values it holds
    others: Optional[str] = "others"                      # slice of every other value (null = not reported)

    @field_validator("groups")
    @classmethod
    def _names(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, values in value.items():
            if not re.fullmatch(r"[A-Za-z0-9_]+", name):
                raise ValueError(f"slice name {name!r} must be letters, digits and _ (it becomes a metric name)")
            if not values:
                raise ValueError(f"slice {name!r} lists no values")
        return value

    @model_validator(mode="after")
    def _others(self) -> "TestSlices":
        if self.others is not None and (self.others in self.groups or not re.fullmatch(r"[A-Za-z0-9_]+", self.others)):
            raise ValueError(f"others {self.others!r} must be a new slice name of letters, digits and _")
        return self

    def names(self) -> list[str]:
        return [*self.groups, *([self.others] if self.others else [])]

    def labels(self, values: Any) -> Any:
        """Each row's slice index into ``names()`` (-1: no slice), vectorised over a numpy column."""
        import numpy as np

        values = np.asarray(values).astype(str)
        out = np.full(len(values), len(self.groups) if self.others else -1, dtype=np.int64)
        for i, members in enumerate(self.groups.values()):
            out[np.isin(values, members)] = i
        return out


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
    lr_schedule: Literal["constant", "cosine"] = "constant"   # cosine: decay to 0 by the last epoch
    fp16_compression: bool = False
    # Who averages gradients in ranks that Horovod launched: "ddp" (torch DDP; shared memory between the
    # ranks of one host, else gloo), "horovod" (hvd.DistributedOptimizer), "auto" (ddp on CPU, horovod on GPU).
    gradient_exchange: Literal["auto", "ddp", "horovod"] = "auto"
    backward_passes_per_step: int = Field(1, ge=1)
    amp: bool = True               # bf16 autocast on CUDA devices; ignored on CPU
    # Where a rank computes (docs/GPU.md): auto = the GPU Spark assigned its task (horovodrun: the local
    # rank's GPU), else CPU with one line saying so; cuda = a rank without a GPU fails; cpu = never a GPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # GPUs each rank's Spark task asks for (a stage-level TaskResourceProfile, so prepare and the rest of
    # the job stay CPU-only): 0 = none, 1 = one, taken from TaskContext.resources()["gpu"]. Needs executors
    # that hold GPUs (spark.executor.resource.gpu.amount) on a standalone, YARN or Kubernetes master.
    gpus_per_rank: int = Field(0, ge=0, le=1)
    shuffle_buffer: int = Field(4096, ge=1)
    prefetch_batches: int = Field(8, ge=1)
    max_steps_per_epoch: Optional[int] = Field(None, gt=0)
    early_stopping_patience: Optional[int] = Field(None, gt=0)
    # Test and register the epoch with the best validation metric (reloaded from its checkpoint), not the
    # last one: with early stopping the last is `patience` epochs past the best, and small sets overfit.
    restore_best: bool = False
    checkpoint_dir: str = "checkpoints"
    progress: bool = True
    bucket_by_length: bool = True  # sequence tasks: batches of similar lengths (less padding), in random order
    grad_clip: Optional[float] = Field(None, gt=0.0)   # clip the global gradient norm (recurrent nets)
    test_slices: Optional[TestSlices] = None   # also test_<metric>_<slice> per group of test rows
    # Self-healing (docs/TRAIN.md "Restarts"): a rank, executor or gloo group that fails is relaunched
    # from the newest checkpoint in the same MLflow run, up to max_failures times; ConfigError and
    # DataError are the user's to fix and are never retried.
    max_failures: int = Field(3, ge=0)
    # Step checkpoints between epoch ends (null = off): after this many optimizer steps, and/or after
    # about this many seconds (turned into a step interval from the measured step time, so every rank
    # agrees without a collective per step). Each holds the loader position, so a resume is exact.
    checkpoint_every_steps: Optional[int] = Field(None, gt=0)
    checkpoint_every_seconds: Optional[float] = Field(30.0, gt=0.0)
    keep_checkpoints: int = Field(3, ge=1)   # newest checkpoints kept per run (restore_best keeps every epoch's)
    # auto: an unfinished run of the same config continues from its last checkpoint; never (CLI --fresh):
    # always a new run; require: fail unless there is one to continue.
    resume: Literal["auto", "never", "require"] = "auto"
    # Ranks a relaunch may use: as many task slots as Spark still has, up to max_ranks (null = num_proc),
    # never fewer than min_ranks (null = num_proc: the world size never changes).
    min_ranks: Optional[int] = Field(None, ge=1)
    max_ranks: Optional[int] = Field(None, ge=1)
    rank_wait_seconds: float = Field(60.0, ge=0.0)   # how long a relaunch waits for min_ranks slots

    @model_validator(mode="after")
    def _ranks_in_order(self) -> "TrainConfig":
        low = self.min_ranks or self.num_proc
        high = self.max_ranks or max(self.num_proc, low)
        if not low <= self.num_proc <= high:
            raise ValueError(f"train.min_ranks ({low}) <= train.num_proc ({self.num_proc}) <= train.max_ranks "
                             f"({high}) must hold")
        return self

    @model_validator(mode="after")
    def _gpus_need_spark(self) -> "TrainConfig":
        if self.gpus_per_rank and self.backend == "horovodrun":
            raise ValueError("train.backend=horovodrun has no Spark to assign GPUs (its ranks take the GPU of their "
                             "local rank): set train.gpus_per_rank=0, or train.backend=horovod_spark")
        if self.gpus_per_rank and self.device == "cpu":
            raise ValueError("train.gpus_per_rank=1 asks Spark for a GPU per rank but train.device=cpu never uses "
                             "it; set one of them")
        return self


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
    # A tracking server that stops answering (docs/RELIABILITY.md): metrics and artefacts are kept in the
    # outbox and sent when it is back; a call that cannot wait (log the model, register, finish) retries
    # with backoff for outage_timeout_s, then fails the job with a message; a re-run resumes.
    outage_timeout_s: float = Field(300.0, ge=0.0)
    retry_backoff_s: float = Field(1.0, gt=0.0)        # first wait between retries; doubles up to the next
    retry_max_interval_s: float = Field(15.0, gt=0.0)
    request_timeout_s: float = Field(30.0, gt=0.0)     # one HTTP request to the tracking server
    outbox: str = "{workspace}/mlflow-outbox"          # rank 0's metrics/artefacts while the server is away


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
    # Scoring tasks share a GPU this many ways (a stage-level TaskResourceProfile asking 1/n GPU per task;
    # only the scoring stage holds GPUs); null = the scoring tasks ask Spark for no GPU.
    tasks_per_gpu: Optional[int] = Field(None, ge=1, le=64)
    threads_per_worker: int = Field(1, ge=1)
    sequence_chunk: int = Field(64, ge=1)   # rows per forward pass for sequence models (sorted by length)
    image_chunk: Optional[int] = Field(None, ge=1)   # rows per forward pass for image models on CPU; null: per path
    # what a scoring worker reads and writes: Arrow buffers as numpy views (mapInArrow), or pandas frames
    # (mapInPandas, the former path: a fallback, and the comparison in bench/scoring.py)
    batch_format: Literal["arrow", "pandas"] = "arrow"
    # auto: measure every CPU path on the check rows, take the fastest that keeps accuracy (docs/SCORE.md)
    optimize: Literal["none", "auto", "channels_last", "bf16", "compile", "int8", "int8_static"] = "none"
    optimize_check_rows: int = Field(2000, ge=100)
    optimize_calibration_rows: int = Field(512, ge=16)   # rows int8_static fixes its activation scales on
    # kept: the first job that calibrates a model version keeps its calibration rows in the workspace and
    # later jobs reuse them (one answer per row across jobs); per_job: every job calibrates on its own input
    optimize_calibration: Literal["kept", "per_job"] = "kept"
    optimize_min_speedup: float = Field(1.1, ge=1.0)     # auto keeps eager unless a path is at least this fast
    optimize_tolerance: float = Field(0.005, ge=0.0, le=1.0)
    # drift (pipelines/drift.py): profile input + predictions against the model's training reference
    drift: bool = True
    drift_flag_above: float = Field(0.2, gt=0.0)            # PSI above which a feature is reported as moved
    drift_fail_above: Optional[float] = Field(None, gt=0.0)  # PSI above which the job ends with exit code 4
    # Where the rows are scored (pipelines/score_in_process.py): ``spark``; ``in_process``, this Python
    # process alone with no JVM (a small input on a local master, where Spark's start is most of the job);
    # ``auto`` picks in_process when the master is local, spark-submit did not start the job, the input is
    # a path or split of at most ``in_process_max_bytes`` of files, and nothing needs Spark (incremental,
    # a catalog table, an optimised path, GPU shares).
    engine: Literal["auto", "spark", "in_process"] = "auto"
    in_process_max_bytes: int = Field(64 * 1024 * 1024, ge=0)
    # Who reads and writes the files of a Spark scoring job (pipelines/score_files.py): ``pyarrow``, the
    # Python workers themselves (the JVM only schedules); ``spark``, Spark's Parquet reader and writer;
    # ``auto`` picks pyarrow for a path or split on a local or mounted filesystem when nothing needs
    # Spark's reader (a catalog table, incremental mode, the pandas worker, GPU shares).
    file_io: Literal["auto", "spark", "pyarrow"] = "auto"

    @model_validator(mode="after")
    def _one_input(self) -> "ScoreConfig":
        if self.input_path and self.input_table:
            raise ValueError("set score.input_path or score.input_table, not both")
        if self.engine == "in_process":
            needs_spark = [why for why, on in (("score.input_table (a catalog table)", self.input_table),
                                               ("score.incremental (an anti-join on earlier output)", self.incremental),
                                               (f"score.optimize={self.optimize} (its check runs in Spark)",
                                                self.optimize != "none"),
                                               ("score.tasks_per_gpu (Spark's GPU shares)",
                                                self.tasks_per_gpu is not None)) if on]
            if needs_spark:
                raise ValueError(f"score.engine=in_process scores without Spark, but {needs_spark[0]} needs it; "
                                 f"use score.engine=spark or auto")
        needs_reader = self.needs_spark_reader()
        if self.file_io == "pyarrow" and needs_reader:
            raise ValueError(f"score.file_io=pyarrow has the workers read files, but {needs_reader[0]} needs "
                             f"Spark's reader; use score.file_io=spark or auto")
        if self.tasks_per_gpu is not None and self.device == "cpu":
            raise ValueError("score.tasks_per_gpu asks Spark for GPUs but score.device=cpu never uses them; "
                             "set one of them")
        return self

    def needs_spark_reader(self) -> list[str]:
        """What in this config only Spark's own reader and writer can do (``score.file_io``): refused with
        ``pyarrow``, and what makes ``auto`` pick ``spark``."""
        return [why for why, on in (("score.input_table (a catalog table)", self.input_table),
                                    ("score.incremental (an anti-join on earlier output)", self.incremental),
                                    ("score.batch_format=pandas (mapInPandas)", self.batch_format == "pandas"),
                                    ("score.tasks_per_gpu (a resource profile on Spark's stage)",
                                     self.tasks_per_gpu is not None)) if on]

    @field_validator("run_date", mode="before")
    @classmethod
    def _date_to_text(cls, value: Any) -> Any:
        # YAML reads 2026-11-25 as a date; the partition value is its ISO text.
        return value.isoformat() if hasattr(value, "isoformat") else value


class BaselineConfig(_Strict):
    """``sparkzoo baseline``: the classical model beside each family (see pipelines/baselines.py)."""

    max_iter: int = Field(100, ge=1)                 # logistic regression (raw pixels, and every linear probe)
    reg_param: float = Field(0.0, ge=0.0)
    pca_components: Optional[int] = Field(None, ge=1)   # null = the autoencoder's code size (model.params.code, else 10)
    thresholds: int = Field(32, ge=2, le=1024)       # colour threshold: grid size tried on the train split


class UiConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(5000, ge=1, le=65535)


class Experiment(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 42
    # Modules (installed names or .py paths) that register tasks, families, sources or plots of their own;
    # every process of the job imports them before validating or looking a name up (pipelines/plugins.py).
    plugins: list[str] = Field(default_factory=list)
    workspace: str = "workspace"
    spark: SparkConfig = SparkConfig()
    data: DataConfig
    prepare: PrepareConfig = PrepareConfig()
    replicate: ReplicateConfig = ReplicateConfig()
    model: ModelConfig
    train: TrainConfig = TrainConfig()
    mlflow: MlflowConfig = MlflowConfig()
    score: ScoreConfig = ScoreConfig()
    baseline: BaselineConfig = BaselineConfig()
    ui: UiConfig = UiConfig()
    # Where it was loaded from, for messages; not part of the user's YAML.
    source_file: str = ""

    @property
    def model_name(self) -> str:
        return self.mlflow.model_name or self.name

    def to_dict(self) -> dict[str, Any]:
        """Plain dict: what driver code ships to executors and ranks (they re-validate it)."""
        return self.model_dump(mode="json")


def examples() -> list[str]:
    """The example experiments that ship with sparkzoo (``sparkzoo init NAME`` copies one out)."""
    return sorted(p.stem for p in CONF_DIR.glob("*.yaml") if p.name != DEFAULTS_FILE.name)


def find_experiment(path: str | Path) -> Path:
    """An experiment file by path, or else by the name of a shipped example.

    Why: ``--conf conf/fashion_mnist_cnn.yaml`` is what the docs show and works in a checkout; an installed
    wheel has no conf/ folder beside the user, so the same argument (or just ``fashion_mnist_cnn``) falls
    back to the copy in the package. A file the user has always wins.
    """
    given = Path(path)
    if given.is_file():
        return given
    stem = given.name.removesuffix(".yaml").removesuffix(".yml")
    shipped = CONF_DIR / f"{stem}.yaml"
    if given.parent in (Path("."), Path("conf")) and stem != DEFAULTS_FILE.stem and shipped.is_file():
        return shipped
    names = examples()
    hint = difflib.get_close_matches(stem, names, n=1)
    more = f" (did you mean '{hint[0]}'?)" if hint else ""
    raise ConfigError(f"config file {given} does not exist{more}; pass -c with a YAML file or the name of a "
                      f"shipped example ({', '.join(names)}); `sparkzoo init NAME` copies one here to edit")


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; reinstall sparkzoo (its defaults are missing)")
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
        if key == "source" and isinstance(value, dict) and isinstance(out.get(key), dict) \
                and value.get("kind", "idx") != out[key].get("kind", "idx"):
            out[key] = copy.deepcopy(value)   # another kind of source: the defaults' idx keys do not apply
        elif isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("params",):
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


def _valid_keys(model: type[BaseModel], loc: tuple[Any, ...], tree: Any = None) -> list[str]:
    """The keys the schema accepts at ``loc``, to list them in an unknown-key message; ``tree`` (the
    input) says which source kind's schema applies under ``data.source``."""
    current: Any = model
    for part in loc[:-1]:
        tree = tree.get(part) if isinstance(tree, dict) else None
        if current is DataConfig and part == "source":   # the kind in the input picks the schema
            current = schema_of(str(tree.get("kind"))) if isinstance(tree, dict) else None
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        current = fields[part].annotation
    fields = getattr(current, "model_fields", None)
    return sorted(k for k in (fields or {}) if k != "source_file")


def _explain(exc: ValidationError, where: str, tree: Any = None) -> ConfigError:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            choices = _valid_keys(Experiment, loc, tree)
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
        exp_path = find_experiment(path)
        tree = _merge(tree, _read_yaml(exp_path))
        where = str(exp_path)
    for text in overrides or []:
        parts, value = parse_override(text)
        _apply_override(tree, parts, value)
    if overrides:   # shown in every error message: a --set of a secret must not print it
        from .secrets import mask_override

        where += " (with --set " + " ".join(mask_override(o) for o in overrides) + ")"
    tree["source_file"] = where
    _load_plugins(tree, where)
    try:
        exp = Experiment.model_validate(tree)
    except ValidationError as exc:
        raise _explain(exc, where, tree) from None
    _check_model_name(exp, where)
    return exp


def from_dict(tree: dict[str, Any]) -> Experiment:
    """Rebuild the Experiment on an executor or rank from the dict the driver shipped (its plugins first:
    a rank is a fresh process whose registries know only sparkzoo's own tasks, families and sources)."""
    _load_plugins(tree, tree.get("source_file") or "the shipped experiment")
    return Experiment.model_validate(tree)


def _load_plugins(tree: dict[str, Any], where: str) -> None:
    entries = tree.get("plugins") or []
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise ConfigError(f"bad value for 'plugins' in {where}: a list of module names or .py paths (got {entries!r})")
    if entries:
        from . import plugins

        plugins.load(entries, where)


def _check_model_name(exp: Experiment, where: str) -> None:
    from sparkzoo.models import registry

    names = registry.list_models()
    if exp.model.name not in names:
        hint = difflib.get_close_matches(exp.model.name, names, n=1)
        more = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise ConfigError(
            f"unknown model '{exp.model.name}' in {where}:model.name{more}; choose one of: {', '.join(names)}"
        )
