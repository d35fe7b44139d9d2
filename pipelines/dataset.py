"""The prepared-dataset contract shared by prepare, train and score (docs/PREPARE.md, the top of the page).

A prepared dataset is ``<root>/<dataset>/<version>/{train,val,test}/*.parquet`` + ``manifest.json`` +
``quarantine/``. The version is a fingerprint of the source listing and the prepare-relevant config,
so every stage computes the same version from the same config without talking to the others.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from . import paths
from .config import Experiment
from .errors import DataError

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def source_listing(exp: Experiment) -> list[dict[str, Any]]:
    """Every file the source's rows come from, with size and mtime: cheap metadata, no content read.

    The source says what that is (``listing_root``: its folder, or the folder an index sits in;
    ``extra_listed_files``: a word list, say), so the fingerprint follows whatever shapes its rows.
    """
    source = exp.data.source
    src = source.listing_root()
    fs, inner = paths.filesystem(src)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise DataError(
            f"data.source.path {src} does not exist (from {exp.source_file}); install the data set "
            f"(`make setup` installs the Debian package dataset-fashion-mnist) or point data.source.path at your copy"
        )
    if info.type == pafs.FileType.File:
        infos = [info]
    else:
        infos = [i for i in fs.get_file_info(pafs.FileSelector(inner, recursive=True)) if i.type == pafs.FileType.File]
    for extra in source.extra_listed_files():
        extra_fs, extra_inner = paths.filesystem(extra)
        infos.append(extra_fs.get_file_info(extra_inner))
    return [{"path": i.path, "size": i.size, "mtime": int(i.mtime_ns or 0) // 1_000_000_000}
            for i in sorted(infos, key=lambda i: i.path) if i.type != pafs.FileType.NotFound]


def dataset_version(exp: Experiment, listing: list[dict[str, Any]] | None = None) -> str:
    """Same source files + same prepare config -> same version; anything else -> a new one."""
    if exp.data.version:
        return exp.data.version
    listing = source_listing(exp) if listing is None else listing
    # Only what shapes this dataset counts: the source says which data.* settings do not
    # (the other modalities' settings always; IDX its ignored image size and test fraction, ...).
    unused = exp.data.source.version_excludes()
    relevant = {
        "format": FORMAT_VERSION,
        "listing": listing,
        "data": exp.data.model_dump(mode="json", exclude={"root", "version", *unused}),
        "prepare": exp.prepare.model_dump(mode="json", exclude={"max_bad_fraction", "tasks_per_core", "max_task_bytes"}),
    }
    return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class PreparedDataset:
    """A prepared dataset on disk, as later stages see it: its folder and its manifest."""

    path: str
    manifest: dict[str, Any]

    def split_dir(self, split: str) -> str:
        return paths.join(self.path, split)

    def split_files(self, split: str) -> list[dict[str, Any]]:
        """[{path, row_groups: [rows, ...]}] in the order every rank agrees on."""
        return [{"path": paths.join(self.path, f["path"]), "row_groups": f["row_groups"]}
                for f in self.manifest["splits"][split]["files"]]

    def rows(self, split: str) -> int:
        return int(self.manifest["splits"][split]["rows"])

    @property
    def version(self) -> str:
        return self.manifest["version"]


def open_prepared(exp: Experiment) -> PreparedDataset:
    """The dataset this config trains or scores on; a clear error if prepare has not run yet."""
    version = dataset_version(exp)
    path = paths.dataset_dir(exp, version)
    if not paths.exists(paths.join(path, MANIFEST)) and not paths.exists(path):
        raise DataError(
            f"no prepared dataset '{exp.data.dataset}' version {version} at {path}; run the prepare stage "
            f"first: sparkzoo prepare --conf {exp.source_file.split(' ')[0]}"
        )
    return open_prepared_at(path, rerun=f"sparkzoo prepare --conf {exp.source_file.split(' ')[0]}")


def open_prepared_at(path: str, rerun: str = "sparkzoo prepare") -> PreparedDataset:
    """A complete prepared dataset or a ``DataError`` saying what is missing and how to fix it.

    Complete means: the ``_SUCCESS`` marker prepare writes last, the manifest, and every Parquet file the
    manifest lists. A folder without them is a job that died while writing, or one someone edited; its
    rows must not be trained or scored on as if they were the whole dataset.
    """
    manifest_path = paths.join(path, MANIFEST)
    if not paths.is_complete(path) or not paths.exists(manifest_path):
        missing = paths.SUCCESS if paths.exists(manifest_path) else f"{MANIFEST} (and {paths.SUCCESS})"
        raise DataError(f"{path} is not a complete prepared dataset: {missing} is missing, so the job that wrote it "
                        f"did not finish; re-run `{rerun}` (it replaces the incomplete folder)")
    manifest = paths.read_json(manifest_path)
    for split in SPLITS:
        listed = {paths.join(path, f["path"]) for f in manifest["splits"][split]["files"]}
        gone = sorted(listed - set(paths.list_files(paths.join(path, split), ".parquet")))
        if gone:
            raise DataError(f"{path} is damaged: {len(gone)} Parquet file(s) of split {split} that its manifest lists "
                            f"are gone (e.g. {gone[0]}); re-run `{rerun}` after deleting {path}")
    return PreparedDataset(path, manifest)


def relpath(path: str, base: str) -> str:
    return os.path.relpath(path, base) if not paths.is_uri(path) else path[len(base.rstrip("/")) + 1:]
