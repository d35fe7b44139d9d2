"""Where a prediction came from: prediction -> partition -> model version -> MLflow run -> dataset -> source bytes.

Every link is already written down by the stages: a prediction row carries id, model name and version and
run date; the partition's ``_manifest.json`` (``scoring.scoring_record``) the scored input's URI and
snapshot, the model URI it resolved and the config hash; the version its MLflow run; the run its dataset
version and commit; the prepared dataset its ``source_files`` index with every source file's sha256.
``trace`` walks them for one id without Spark (a filtered Arrow scan finds the row), so a person on call
gets the chain in seconds and a machine gets it as JSON. ``trace_row`` starts from one row of a
predictions Parquet file or partition folder instead (``sparkzoo lineage --row <file or folder>[#N]``):
the file footers say which row group holds row N, and only that row group is read.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from typing import Any

from . import paths, track
from .config import Experiment
from .dataset import MANIFEST
from .errors import DataError
from .scoring import local_path, partition_dir

log = logging.getLogger("sparkzoo.lineage")


class LineageError(DataError):
    """A prediction id that no partition holds, or a link in its chain that is gone."""


# ---- read back: the chain for one id -------------------------------------------------------------

def _find_rows(where: str, column: str, value: str, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows of a Parquet folder (hive partitions included) whose ``column`` equals ``value``: a filtered
    Arrow scan (row-group statistics skip most of the data), returning only the matches."""
    import pyarrow.dataset as pads

    fs, inner = paths.filesystem(where)
    try:
        data = pads.dataset(inner, filesystem=fs, format="parquet", partitioning="hive",
                            exclude_invalid_files=True)
    except (FileNotFoundError, OSError) as exc:
        raise LineageError(f"{where} cannot be read as Parquet ({exc})") from None
    wanted = [c for c in (columns or data.schema.names) if c in data.schema.names]
    table = data.to_table(columns=wanted, filter=pads.field(column) == value)
    return table.to_pylist()   # small: the rows of one id


def _plain(value: Any) -> Any:
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, (list, tuple)) and len(value) > 16:
        return f"[{len(value)} values]"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return value


def _source_file(dataset_dir: str, manifest: dict[str, Any], source: str) -> dict[str, Any]:
    """A row's ``source`` (a path, or ``archive!member``) -> its entry in the dataset's file index, and
    whether the file on disk still has those bytes."""
    file, _, member = source.partition("!")
    file = local_path(file)
    index = (manifest.get("source") or {}).get("index")
    out: dict[str, Any] = {"path": file, **({"member": member} if member else {})}
    if not index or not index.get("path"):
        out["note"] = "this dataset was prepared before source file indexes existed; re-run prepare for hashes"
        return out
    inner_path = file.split("://", 1)[1] if "://" in file else file
    rows = _find_rows(paths.join(dataset_dir, index["path"]), "path", inner_path)
    if not rows:
        out["note"] = "not in the dataset's source file index"
        return out
    out.update({"size": rows[0]["size"], "sha256": rows[0]["sha256"], "mtime": rows[0]["mtime"]})
    out["unchanged"] = _sha256_now(file) == rows[0]["sha256"] if paths.exists(file) else None
    return out


def _sha256_now(path: str) -> str:
    fs, inner = paths.filesystem(path)
    h = hashlib.sha256()
    with fs.open_input_stream(inner) as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _dataset(dataset_dir: str) -> dict[str, Any]:
    m = paths.read_json(paths.join(dataset_dir, MANIFEST))
    src = m.get("source") or {}
    return {"name": m.get("dataset"), "version": m.get("version"), "path": dataset_dir,
            "manifest": paths.join(dataset_dir, MANIFEST), "created_at": m.get("created_at"),
            "source_uri": src.get("path"), "source_kind": src.get("kind"),
            "source_index": {k: v for k, v in (src.get("index") or {}).items()},
            "rows": {s: v.get("rows") for s, v in (m.get("counts") or {}).items()}}, m


def trace(exp: Experiment, prediction_id: str) -> list[dict[str, Any]]:
    """One chain per partition that holds ``prediction_id`` in the configured output, newest first."""
    out = paths.predictions_dir(exp)
    if not paths.exists(out):
        raise LineageError(f"no predictions at {out} (score.output); score first or point --set score.output=... "
                           f"at the scoring output")
    rows = _find_rows(out, "id", prediction_id)
    if not rows:
        raise LineageError(f"no prediction with id {prediction_id!r} under {out}; ids are the input's id column "
                           f"(e.g. a prepared row id like '<dataset>/<file>')")
    rows.sort(key=lambda r: (str(r.get("scored_at")), str(r.get("run_date"))), reverse=True)
    c = track.client(exp)
    return [_chain(exp, c, row, partition_dir(out, int(row["model_version"]), str(_plain(row["run_date"]))))
            for row in rows]


ROW_FIELDS = ("id", "model_name", "model_version", "run_date")   # what a scoring output row carries


def trace_row(exp: Experiment, where: str) -> list[dict[str, Any]]:
    """The chain of one prediction Parquet row: ``<file or partition folder>[#N]`` (N from 0; a folder's
    files in name order, as Spark and ``list_files`` order them; no ``#N``: the first row)."""
    row, folder = read_row(where)
    missing = [k for k in ROW_FIELDS if row.get(k) is None]
    if missing:
        raise LineageError(f"--row {where}: the row has no {', '.join(missing)}, so it is not a scoring output row; "
                           f"point --row at a file or folder under score.output (<output>/model_version=N/run_date=D)")
    return [_chain(exp, track.client(exp), row, folder)]


def read_row(where: str) -> tuple[dict[str, Any], str]:
    """``<file or folder>[#N]`` -> (row N with the hive partition values of its path, its folder).

    The Parquet footers give each row group's row count, so only the row group holding row N is read
    (a few thousand rows at most), never the whole file or partition.
    """
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    path, number = where, 0
    head, sep, tail = where.rpartition("#")
    if sep and not paths.exists(where):
        if not tail.isdigit():
            raise LineageError(f"--row {where}: after '#' comes a row number (0 is the first row), not {tail!r}")
        path, number = head, int(tail)
    fs, inner = paths.filesystem(path)
    kind = fs.get_file_info(inner).type
    if kind == pafs.FileType.NotFound:
        raise LineageError(f"--row {path} does not exist; give a predictions Parquet file or a partition folder "
                           f"(<score.output>/model_version=N/run_date=D), optionally with #N for row N")
    path = path.rstrip("/") if paths.is_uri(path) else inner   # local: absolute, as the chain prints it
    files = [path] if kind == pafs.FileType.File else paths.list_files(path, ".parquet")
    if not files:
        raise LineageError(f"--row {path} holds no Parquet file; give a predictions Parquet file or a partition "
                           f"folder (<score.output>/model_version=N/run_date=D)")
    seen = 0
    for file in files:
        try:
            with fs.open_input_file(paths.filesystem(file)[1]) as fh:
                pf = pq.ParquetFile(fh)
                for g in range(pf.metadata.num_row_groups):
                    rows = pf.metadata.row_group(g).num_rows
                    if number < seen + rows:
                        row = pf.read_row_group(g).slice(number - seen, 1).to_pylist()[0]   # small: one row
                        return _with_partition_values(row, file), file.rsplit("/", 1)[0]
                    seen += rows
        except (pa.ArrowInvalid, OSError) as exc:
            raise LineageError(f"--row {file} cannot be read as Parquet ({exc})") from None
    raise LineageError(f"--row {where}: row {number} asked for, but {path} holds {seen} rows "
                       f"({len(files)} Parquet file{'s' if len(files) != 1 else ''}); rows count from 0")


def _with_partition_values(row: dict[str, Any], file: str) -> dict[str, Any]:
    """Spark writes partition columns into the path (``model_version=3/run_date=...``), not the file."""
    for part in file.split("/")[:-1]:
        key, sep, value = part.partition("=")
        if sep and key not in row:
            row[key] = value
    return row


def _chain(exp: Experiment, c, row: dict[str, Any], folder: str) -> dict[str, Any]:
    """One prediction row and its partition folder -> the chain: partition, model, run, datasets, source."""
    name, version, date = row["model_name"], int(row["model_version"]), str(_plain(row["run_date"]))
    prediction_id = str(row["id"])
    manifest_path = paths.join(folder, "_manifest.json")
    part = paths.read_json(manifest_path) if paths.exists(manifest_path) else {}
    chain: dict[str, Any] = {
        "prediction": {k: _plain(v) for k, v in row.items()},
        "partition": {"path": folder, "manifest": manifest_path, "run_date": date,
                      "committed_at": part.get("committed_at"), "rows": part.get("rows"),
                      "complete": paths.is_complete(folder), "config_hash": part.get("config_hash"),
                      "input": part.get("input")},
    }
    from mlflow.exceptions import MlflowException

    try:
        mv = c.get_model_version(name, str(version))
    except MlflowException:
        raise LineageError(f"{name} v{version} (from {folder}) is not in the model registry "
                           f"{track.registry_uri(exp)}; use the config (-c) that scored it") from None
    chain["model"] = {"name": name, "version": version, "uri": f"models:/{name}/{version}",
                      "requested_uri": (part.get("model") or {}).get("requested_uri"),
                      "aliases_at_scoring": (part.get("model") or {}).get("aliases"),
                      "aliases_now": sorted(getattr(mv, "aliases", []) or []), "run_id": mv.run_id,
                      "description": mv.description}
    run = c.get_run(mv.run_id)
    tags = run.data.tags
    chain["run"] = {"run_id": mv.run_id, "experiment_id": run.info.experiment_id, "status": run.info.status,
                    "git_commit": tags.get("sparkzoo.git_commit"), "config_hash": tags.get(track.CONFIG_HASH_TAG),
                    "dataset": tags.get("sparkzoo.dataset"), "dataset_version": tags.get("sparkzoo.dataset_version"),
                    "metrics": dict(sorted(run.data.metrics.items())), "params": dict(sorted(run.data.params.items())),
                    "inputs": [{"name": d.dataset.name, "digest": d.dataset.digest,
                                "context": {t.key: t.value for t in d.tags}.get("mlflow.data.context")}
                               for d in (run.inputs.dataset_inputs if run.inputs else [])]}
    if chain["run"]["dataset"] and chain["run"]["dataset_version"]:
        train_dir = paths.join(paths.resolve(exp, exp.data.root), chain["run"]["dataset"],
                               chain["run"]["dataset_version"])
        chain["training_data"] = (_dataset(train_dir)[0] if paths.exists(paths.join(train_dir, MANIFEST))
                                  else {"path": train_dir, "note": "not on disk any more"})
    chain["scored_row"] = _scored_row(part.get("input") or {}, prediction_id)
    return chain


def _scored_row(snapshot: dict[str, Any], prediction_id: str) -> dict[str, Any]:
    """The input row the prediction was made from, its dataset and its source file with hash."""
    uri, kind = snapshot.get("uri"), snapshot.get("kind")
    if not uri:
        return {"note": "the partition manifest records no input (scored before lineage was recorded)"}
    if kind == "table":
        return {"table": uri, "table_version": snapshot.get("table_version"),
                "note": "a catalog table: query it for the row (Spark is not started here)"}
    found = _find_rows(uri, "id", prediction_id, ["id", "source"])
    out: dict[str, Any] = {"input": uri, "input_digest": snapshot.get("digest")}
    if not found:
        out["note"] = "the input no longer holds this id (it changed since scoring)"
        return out
    dataset_dir = (snapshot.get("dataset") or {}).get("path") or _dataset_of(uri)
    if dataset_dir:
        info, manifest = _dataset(dataset_dir)
        out["dataset"] = info
    source = found[0].get("source")
    if source is None:
        out["note"] = "the input has no source column"
    elif dataset_dir:
        out["source_file"] = _source_file(dataset_dir, manifest, str(source))
    else:
        out["source_file"] = {"path": str(source), "note": "not a prepared dataset: no file index"}
    return out


def render(chains: list[dict[str, Any]]) -> str:
    """The chain as a few indented lines per link, for a person."""
    lines: list[str] = []
    for i, ch in enumerate(chains):
        p, part, m, r = ch["prediction"], ch["partition"], ch["model"], ch["run"]
        shown = {k: v for k, v in p.items() if k not in ("id", "model_name", "model_version", "run_date", "scored_at")}
        if i:
            lines.append("")
        lines.append(f"prediction {p['id']}: {json.dumps(shown, default=str)}")
        lines.append(f"  partition {part['path']} (run_date {part['run_date']}, scored_at {p.get('scored_at')}, "
                     f"committed {part['committed_at']}, {part['rows']} rows, config {part['config_hash']})")
        lines.append(f"  model {m['uri']} (requested {m['requested_uri']}; aliases then {m['aliases_at_scoring']}, "
                     f"now {m['aliases_now']})")
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in r["metrics"].items() if k.startswith("test_"))
        lines.append(f"  run {r['run_id']} (commit {r['git_commit']}, {r['status']}; {metrics})")
        key = {k: r["params"][k] for k in ("model.name", "train.epochs", "train.lr", "train.batch_size")
               if k in r["params"]}
        lines.append(f"    params {json.dumps(key)} (+{len(r['params']) - len(key)} more with --json)")
        td = ch.get("training_data") or {}
        lines.append(f"  trained on dataset {r['dataset']} v{r['dataset_version']} ({td.get('manifest', td.get('note'))})")
        row = ch["scored_row"]
        if "input" in row:
            lines.append(f"  scored input {row['input']} (digest {str(row.get('input_digest'))[:16]})")
        ds = row.get("dataset")
        if ds:
            idx = ds.get("source_index") or {}
            lines.append(f"    dataset {ds['name']} v{ds['version']} from {ds['source_uri']} "
                         f"({idx.get('files', '?')} source files, index digest {str(idx.get('digest'))[:16]})")
        sf = row.get("source_file")
        if sf:
            state = {True: "unchanged on disk", False: "CHANGED on disk since prepare", None: "gone from disk"}
            lines.append(f"    source file {sf['path']}" + (f" [{sf['member']}]" if sf.get("member") else "")
                         + (f" sha256 {sf['sha256']} ({sf['size']} bytes, {state[sf.get('unchanged')]})"
                            if "sha256" in sf else f" ({sf.get('note')})"))
        if row.get("note"):
            lines.append(f"    {row['note']}")
    return "\n".join(lines)


def print_json(chains: list[dict[str, Any]]) -> str:
    return json.dumps(chains, indent=2, default=str, sort_keys=True)
