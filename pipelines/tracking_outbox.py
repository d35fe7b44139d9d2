"""What rank 0 could not send while the MLflow tracking server was unreachable, kept on local disk.

Why on disk and not in memory: if the server stays away longer than ``mlflow.outage_timeout_s`` the job
fails, and the re-run (a new process, which resumes the same MLflow run) must still send the earlier
epochs' metrics. One folder per run: ``metrics.jsonl`` (key, value, timestamp, step: the original
timestamps, so the charts are right), ``artifacts.jsonl`` plus copies of the files, ``status.json``.
``flush`` sends in that order and removes each item only after the server took it.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from typing import Any

BATCH = 1000   # MLflow's log_batch limit on metrics per call


class Outbox:
    def __init__(self, root: str, run_id: str) -> None:
        self.dir = os.path.join(root, run_id)
        self.run_id = run_id

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def _append(self, name: str, items: list[dict[str, Any]]) -> None:
        os.makedirs(self.dir, exist_ok=True)
        with open(self._path(name), "a") as fh:
            for item in items:
                fh.write(json.dumps(item) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _read(self, name: str) -> list[dict[str, Any]]:
        try:
            with open(self._path(name)) as fh:
                return [json.loads(line) for line in fh if line.strip()]
        except FileNotFoundError:
            return []

    def _rewrite(self, name: str, items: list[dict[str, Any]]) -> None:
        if not items:
            if os.path.exists(self._path(name)):
                os.remove(self._path(name))
            return
        tmp = self._path(name + ".tmp")
        with open(tmp, "w") as fh:
            fh.writelines(json.dumps(i) + "\n" for i in items)
        os.replace(tmp, self._path(name))

    def add_metrics(self, metrics: list[dict[str, Any]]) -> None:
        self._append("metrics.jsonl", metrics)

    def add_artifact(self, local_path: str, artifact_path: str | None) -> None:
        """A copy of the file (the caller's is often in a temporary folder that is about to go)."""
        slot = os.path.join(self.dir, "files", uuid.uuid4().hex[:12])
        os.makedirs(slot, exist_ok=True)
        copy = os.path.join(slot, os.path.basename(local_path.rstrip("/")))
        (shutil.copytree if os.path.isdir(local_path) else shutil.copy2)(local_path, copy)
        self._append("artifacts.jsonl", [{"file": copy, "artifact_path": artifact_path}])

    def set_status(self, status: str) -> None:
        os.makedirs(self.dir, exist_ok=True)
        with open(self._path("status.json"), "w") as fh:
            json.dump({"status": status}, fh)

    def pending(self) -> int:
        """How many items wait (0 when the folder does not exist: the common, fast case)."""
        if not os.path.isdir(self.dir):
            return 0
        return (len(self._read("metrics.jsonl")) + len(self._read("artifacts.jsonl"))
                + int(os.path.exists(self._path("status.json"))))

    def flush(self, client) -> int:
        """Send everything, oldest first; raises (keeping what is left) if the server fails midway."""
        from mlflow.entities import Metric

        sent = 0
        metrics = self._read("metrics.jsonl")
        while metrics:
            batch, rest = metrics[:BATCH], metrics[BATCH:]
            client.log_batch(self.run_id, metrics=[Metric(m["key"], m["value"], m["timestamp"], m["step"])
                                                   for m in batch])
            sent += len(batch)
            metrics = rest
            self._rewrite("metrics.jsonl", metrics)
        artifacts = self._read("artifacts.jsonl")
        while artifacts:
            item = artifacts[0]
            client.log_artifact(self.run_id, item["file"], item["artifact_path"])
            sent += 1
            artifacts = artifacts[1:]
            self._rewrite("artifacts.jsonl", artifacts)
            shutil.rmtree(os.path.dirname(item["file"]), ignore_errors=True)
        if os.path.exists(self._path("status.json")):
            with open(self._path("status.json")) as fh:
                client.set_terminated(self.run_id, json.load(fh)["status"])
            os.remove(self._path("status.json"))
            sent += 1
        shutil.rmtree(self.dir, ignore_errors=True)
        return sent
