"""The SparkSession every stage uses: local by default, whatever master spark-submit chose otherwise.

Precedence: a property given to spark-submit (``--conf k=v``, ``--driver-memory``, spark-defaults.conf)
wins over the same key in the YAML's ``spark.conf``; the YAML fills in only what spark-submit left unset.
Why: ``SparkSession.builder.config`` is applied on top of the JVM's properties, so without this check the
YAML would silently override what an operator typed on the command line.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from .config import CONF_DIR, Experiment
from .console import quiet_env

log = logging.getLogger("sparkzoo.session")
LOG4J2 = CONF_DIR / "log4j2.properties"


def launched_by_spark_submit() -> bool:
    """spark-submit starts the Python driver with a gateway to its JVM already open."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def submitted_properties() -> dict[str, str]:
    """The properties the JVM already holds (spark-submit's), empty when Python will start the JVM."""
    if not launched_by_spark_submit():
        return {}
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()
    return dict(SparkConf().getAll())


def effective_conf(exp: Experiment, submitted: dict[str, str]) -> dict[str, str]:
    """The YAML's ``spark.conf`` minus every key spark-submit already set, plus ``spark.env`` as
    ``spark.executorEnv.*`` and sparkzoo's log4j2 file."""
    conf = {k: v for k, v in exp.spark.conf.items() if k not in submitted}
    for name, value in exp.spark.env.items():
        key = f"spark.executorEnv.{name}"
        if key not in submitted and key not in conf:
            conf[key] = value
    for key in sorted(set(exp.spark.conf) & set(submitted)):
        log.debug("spark.conf %s: spark-submit's %r wins over the YAML's %r", key, submitted[key], exp.spark.conf[key])
    if not submitted and Path(LOG4J2).is_file():
        # Python starts this JVM: give it sparkzoo's log4j2 (Spark at WARN, Hadoop's native-library note
        # and the loopback-address notes off) unless the user passes their own logging options.
        options = conf.get("spark.driver.extraJavaOptions", "")
        if "log4j2.configurationFile" not in options:
            conf["spark.driver.extraJavaOptions"] = f"-Dlog4j2.configurationFile=file:{LOG4J2} {options}".strip()
    return conf


DAEMON_MODULE_KEY = "spark.python.daemon.module"


def is_this_interpreter(python: str) -> bool:
    """Whether ``python`` (a path or a name on PATH) is the interpreter running this driver, so what is
    installed here is installed where it runs (a local master's executors and ranks)."""
    import shutil

    return os.path.abspath(shutil.which(python) or python) == os.path.abspath(sys.executable)


def lean_daemon(exp: Experiment, conf: dict[str, str], submitted: dict[str, str]) -> dict[str, str]:
    """``conf`` plus sparkzoo's Python daemon (pipelines/spark_daemon.py: Horovod's ranks start 0.4 s
    sooner) where the executors surely import it: a local master, executors running this interpreter,
    sparkzoo installed in it, and nobody chose another daemon. On a cluster an executor without sparkzoo
    could not start any Python task, so there it is the user's choice (docs/TRAIN.md)."""
    import importlib.metadata
    import importlib.util

    master = submitted.get("spark.master", exp.spark.master)
    if DAEMON_MODULE_KEY in conf or DAEMON_MODULE_KEY in submitted or not master.startswith("local"):
        return conf
    python = submitted.get("spark.pyspark.python") or os.environ.get("PYSPARK_PYTHON") or sys.executable
    if not is_this_interpreter(python):
        return conf
    try:
        importlib.metadata.version("sparkzoo")
    except importlib.metadata.PackageNotFoundError:
        return conf
    module = f"{__package__}.spark_daemon"
    return {**conf, DAEMON_MODULE_KEY: module} if importlib.util.find_spec(module) else conf


def get_spark(exp: Experiment):
    """Build (or reuse) the session. Executors use this interpreter unless the user said otherwise."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    submitted = submitted_properties()
    quiet_env(local_master=not submitted and exp.spark.master.startswith("local"))
    for name, value in exp.spark.env.items():
        os.environ.setdefault(name, value)   # the JVM launched below inherits it (a running one keeps its own)
    builder = SparkSession.builder.appName(f"{exp.spark.app_name}:{exp.name}")
    if not launched_by_spark_submit():
        builder = builder.master(exp.spark.master)
    for key, value in lean_daemon(exp, effective_conf(exp, submitted), submitted).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("SPARKZOO_SPARK_LOG_LEVEL", "WARN"))
    return spark
