"""Spark's Python daemon (pyspark's own), under a name whose import does nothing unless it is run.

Why: Horovod starts each rank from its Spark task through a middleman process that multiprocessing
*spawns*, and a spawned process first re-imports its parent's main module. In a Spark Python worker that
is ``pyspark.daemon``, which pulls in ``pyspark.worker`` and most of pyspark, compiled again from Spark's
``pyspark.zip`` (a zip keeps no bytecode): about 0.4 s before every rank process even starts, on this
project's 2-core machine (bench/RESULTS.md, launch to first step). Run as ``python -m`` this module is
the daemon; imported by a spawned child (as ``__mp_main__``) it is empty. ``session.get_spark`` names it in
``spark.python.daemon.module`` on a local master, where the executors run this installation.
"""

if __name__ == "__main__":
    from pyspark import daemon

    daemon.manager()
