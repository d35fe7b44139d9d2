"""The SparkSession every stage uses: local by default, whatever master spark-submit chose otherwise."""

from __future__ import annotations

import os
import sys

from .config import Experiment


def launched_by_spark_submit() -> bool:
    """spark-submit starts the Python driver with a gateway to its JVM already open."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def get_spark(exp: Experiment):
    """Build (or reuse) the session. Executors use this interpreter unless the user said otherwise."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(f"{exp.spark.app_name}:{exp.name}")
    if not launched_by_spark_submit():
        builder = builder.master(exp.spark.master)
    for key, value in exp.spark.conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("SPARKZOO_SPARK_LOG_LEVEL", "WARN"))
    return spark
