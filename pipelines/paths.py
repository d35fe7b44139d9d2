"""Every path goes through here: local folders, hdfs:// and s3:// alike, via pyarrow's filesystems.

Jobs never join path strings themselves; they ask for ``dataset_dir``, ``checkpoint_dir`` and friends,
so moving the workspace to HDFS or S3 is a config change. Local paths are made absolute because Spark
executors and Horovod ranks do not share the driver's working directory.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pyarrow.fs as pafs

from .config import Experiment


def is_uri(path: str) -> bool:
    return "://" in path


def resolve(exp: Experiment, path: str) -> str:
    """Make a config path absolute: URIs stay, relative paths sit under the workspace."""
    path = path.replace("{workspace}", workspace(exp))
    if is_uri(path) or os.path.isabs(path):
        return path
    return os.path.join(workspace(exp), path)


def workspace(exp: Experiment) -> str:
    ws = exp.workspace
    return ws if is_uri(ws) else os.path.abspath(ws)


def join(base: str, *parts: str) -> str:
    out = base.rstrip("/")
    for part in parts:
        out = out + "/" + part.strip("/")
    return out


def datasets_root(exp: Experiment) -> str:
    return join(resolve(exp, exp.data.root), exp.data.dataset)


def dataset_dir(exp: Experiment, version: str) -> str:
    return join(datasets_root(exp), version)


def checkpoint_dir(exp: Experiment, run_id: str) -> str:
    return join(resolve(exp, exp.train.checkpoint_dir), exp.name, run_id)


def predictions_dir(exp: Experiment) -> str:
    return resolve(exp, exp.score.output) if exp.score.output else join(workspace(exp), "predictions")


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and the path inside it."""
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def exists(path: str) -> bool:
    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def read_json(path: str) -> Any:
    fs, inner = filesystem(path)
    with fs.open_input_stream(inner) as fh:
        return json.loads(fh.read().decode("utf-8"))


def write_json(path: str, data: Any) -> None:
    """Write through a temporary name and rename, so a reader never sees half a file."""
    fs, inner = filesystem(path)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    tmp = inner + ".tmp"
    with fs.open_output_stream(tmp) as fh:
        fh.write(json.dumps(data, indent=2, sort_keys=True).encode("utf-8"))
    fs.move(tmp, inner)


def move(src: str, dst: str) -> None:
    fs, a = filesystem(src)
    _, b = filesystem(dst)
    fs.move(a, b)


def delete_dir(path: str) -> None:
    fs, inner = filesystem(path)
    if fs.get_file_info(inner).type != pafs.FileType.NotFound:
        fs.delete_dir(inner)


SUCCESS = "_SUCCESS"   # written last, after every file and the manifest: "this folder is complete"


def mark_complete(folder: str, info: dict[str, Any]) -> None:
    """Write the completion marker (a small JSON: what was committed and when); always the last write."""
    write_json(join(folder, SUCCESS), info)


def is_complete(folder: str) -> bool:
    return exists(join(folder, SUCCESS))


def commit_dir(staging: str, target: str) -> bool:
    """Move a finished staging folder into place; False (staging dropped) if a complete one is there.

    A target without the marker is a leftover of a job that died while committing: it is replaced.
    """
    if is_complete(target):
        delete_dir(staging)
        return False
    delete_dir(target)
    move(staging, target)
    return True


_WRITE_FAILURES = (
    ("No space left on device", "the disk is full"),
    ("Disk quota exceeded", "the disk quota is exhausted"),
    ("File too large", "a file exceeds the size limit of this filesystem or process"),
    ("Read-only file system", "the filesystem is read-only"),
    ("Permission denied", "this user may not write there"),
)


def write_failure(exc: BaseException, where: str):
    """An ``OutputError`` naming the path and the cause when ``exc`` (also a Spark/Java error, whose text
    carries the Java cause) is a storage failure; None for anything else, which stays a bug."""
    from .errors import OutputError

    text = str(exc)
    for needle, cause in _WRITE_FAILURES:
        if needle in text:
            return OutputError(f"cannot write {where}: {cause} ({needle}); nothing was committed there, so no "
                               f"partial output looks complete. Free space or point the output elsewhere, then "
                               f"re-run the same command")
    return None


def delete_file(path: str) -> None:
    fs, inner = filesystem(path)
    if fs.get_file_info(inner).type == pafs.FileType.File:
        fs.delete_file(inner)


def is_hidden(name: str) -> bool:
    """Hadoop's and Spark's rule for a file or folder name that is not data: ``_SUCCESS``, ``_temporary``,
    ``.spark-staging-*``, checksum files. Readers skip these, so listings must too."""
    return name.startswith(("_", "."))


def list_dirs(path: str) -> list[str]:
    """Sub-folders directly under a folder (none if it does not exist), sorted; hidden ones skipped."""
    fs, inner = filesystem(path)
    infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    names = sorted(i.path for i in infos if i.type == pafs.FileType.Directory and not is_hidden(i.base_name))
    if is_uri(path):
        scheme = path.split("://", 1)[0]
        return [f"{scheme}://{n}" if "://" not in n else n for n in names]
    return names


def list_files(path: str, suffix: str = "") -> list[str]:
    """Files directly under a folder, sorted: the order every rank agrees on."""
    fs, inner = filesystem(path)
    infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    names = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(suffix)
                   and not is_hidden(i.base_name))
    if is_uri(path):
        scheme = path.split("://", 1)[0]
        return [f"{scheme}://{n}" if "://" not in n else n for n in names]
    return names
