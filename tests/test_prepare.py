"""prepare on real Fashion-MNIST (a subsample in CI): counts, schema, splits, manifest, versions."""

from __future__ import annotations

import gzip
import shutil

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from sparkzoo.pipelines import paths, prepare
from sparkzoo.pipelines.dataset import SPLITS, open_prepared
from sparkzoo.pipelines.errors import DataError
from sparkzoo.pipelines.prepare.split import assign

from .conftest import FASHION, SUBSAMPLE


def test_counts_equal_source(prepared):
    assert prepared.input_records == 2 * SUBSAMPLE
    assert prepared.quarantined == 0
    assert prepared.rows["test"] == SUBSAMPLE                      # the official test set stays test
    assert prepared.rows["train"] + prepared.rows["val"] == SUBSAMPLE
    assert 0.07 * SUBSAMPLE < prepared.rows["val"] < 0.13 * SUBSAMPLE  # val is ~10% of train


def test_parquet_schema_and_contents(prepared, make_exp):
    ds = open_prepared(make_exp())
    table = pq.read_table(ds.split_dir("test"))
    assert set(table.column_names) == {"id", "source", "image", "height", "width", "channels", "label", "label_name"}
    assert table.num_rows == SUBSAMPLE
    row = table.slice(0, 1).to_pylist()[0]
    assert len(row["image"]) == 28 * 28 and (row["height"], row["width"], row["channels"]) == (28, 28, 1)
    assert 0 <= row["label"] < 10 and row["label_name"] == ds.manifest["label_names"][row["label"]]
    ids = table.column("id").to_pylist()
    assert len(set(ids)) == len(ids)
    # the first test image of Fashion-MNIST is an ankle boot (label 9), byte-exact from the IDX file
    first = table.filter(pc.equal(table.column("id"), "fashion_mnist/test/000000")).to_pylist()[0]
    with gzip.open(FASHION / "t10k-images-idx3-ubyte.gz") as fh:
        fh.seek(16)
        assert first["image"] == fh.read(784)
    assert first["label"] == 9


def test_manifest(prepared, make_exp):
    m = open_prepared(make_exp()).manifest
    assert m["shape"] == {"channels": 1, "height": 28, "width": 28}
    assert m["num_classes"] == 10 and len(m["label_names"]) == 10
    assert m["input_records"] == 2 * SUBSAMPLE and m["quarantined"] == 0
    for split in SPLITS:
        assert m["counts"][split]["rows"] == sum(sum(f["row_groups"]) for f in m["splits"][split]["files"])
        assert sum(m["counts"][split]["per_class"].values()) == m["counts"][split]["rows"]
    assert 0.2 < m["stats"]["mean"] < 0.4 and 0.2 < m["stats"]["std"] < 0.45   # Fashion-MNIST: 0.286 / 0.353
    assert len(m["source"]["files"]) == 4


def test_rerun_is_a_no_op_with_same_version(prepared, make_exp, spark):
    again = prepare.run(make_exp(), spark)
    assert again.skipped and again.version == prepared.version and again.rows == prepared.rows


def test_different_config_gives_new_version_and_stable_splits(prepared, make_exp, spark):
    bigger = prepare.run(make_exp(f"data.max_records={SUBSAMPLE + 500}"), spark)
    assert bigger.version != prepared.version
    old = pq.read_table(paths.join(prepared.path, "val"), columns=["id"]).column("id").to_pylist()
    new = set(pq.read_table(paths.join(bigger.path, "val"), columns=["id"]).column("id").to_pylist())
    assert set(old) <= new    # adding data never moves a row out of its split
    assert bigger.rows["test"] == SUBSAMPLE + 500


def test_split_assignment_is_stable_hash():
    ids = [f"x/{i}" for i in range(2000)]
    first = assign(ids, "train", 0.1)
    assert list(first) == list(assign(ids, "train", 0.1))
    assert 150 < (first == "val").sum() < 250
    assert set(assign(ids, "test", 0.1)) == {"test"}


def _copy_source(tmp_path, truncate_to: int | None = None):
    src = tmp_path / "fmnist"
    shutil.copytree(FASHION, src)
    if truncate_to is not None:
        # cut the decompressed train images after `truncate_to` records and re-compress
        path = src / "train-images-idx3-ubyte.gz"
        with gzip.open(path) as fh:
            data = fh.read(16 + truncate_to * 784)
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    return src


def test_truncated_file_quarantines_missing_records(tmp_path, make_exp, spark):
    src = _copy_source(tmp_path, truncate_to=3990)
    exp = make_exp(f"data.source.path={src}", "prepare.max_bad_fraction=0.01", "prepare.records_per_task=1000")
    result = prepare.run(exp, spark)
    assert result.quarantined == 10
    assert result.rows["train"] + result.rows["val"] == 3990 and result.input_records == 2 * SUBSAMPLE
    q = pq.read_table(paths.join(result.path, "quarantine")).to_pylist()
    assert len(q) == 10 and {r["reason"] for r in q} == {"truncated_file"}
    assert all("train-images-idx3-ubyte.gz" in r["source"] and "ends after record 3990" in r["detail"] for r in q)


def test_truncated_file_above_threshold_fails_with_summary(tmp_path, make_exp, spark):
    src = _copy_source(tmp_path, truncate_to=1000)
    exp = make_exp(f"data.source.path={src}", "prepare.max_bad_fraction=0.01", f"workspace={tmp_path / 'ws'}")
    with pytest.raises(DataError) as err:
        prepare.run(exp, spark)
    msg = str(err.value)
    assert "3000 of 8000 records" in msg and "truncated_file" in msg and "max_bad_fraction" in msg
    assert not list((tmp_path / "ws" / "data" / "fashion_mnist").glob("*/manifest.json"))   # nothing looks complete


def test_missing_source_path(make_exp):
    with pytest.raises(DataError, match="does not exist.*dataset-fashion-mnist"):
        prepare.run(make_exp("data.source.path=/nonexistent/fmnist"))


def test_file_groups_are_balanced_by_bytes_and_keep_every_file():
    """Folder sources deal the listing into tasks of even bytes (largest first to the lightest task): no
    file lost or doubled, and no task heavier than another by more than one file."""
    from sparkzoo.pipelines.prepare.sources.files import balanced_groups

    sizes = [5_000_000, 1_200, 830_000, 77, 64_000, 64_000, 2_900_000, 410_000, 9, 1_000_000, 3_333, 250_000]
    files = [{"path": f"/data/f{i:02d}.png", "size": s} for i, s in enumerate(sizes)]
    groups = balanced_groups(files, 4)
    assert len(groups) == 4
    assert sorted(p for g in groups for p in g) == sorted(f["path"] for f in files)
    size_of = {f["path"]: f["size"] for f in files}
    loads = sorted(sum(size_of[p] for p in g) for g in groups)
    assert loads[-1] == max(sizes)   # the 5 MB file alone is the heaviest task; the rest share the others
    assert loads[-2] - loads[0] <= max(s for s in sizes if s < max(sizes))
    assert balanced_groups(files[:2], 4) == [["/data/f00.png"], ["/data/f01.png"]]   # never an empty task


def test_file_tasks_grow_past_the_per_core_plan_when_a_task_would_read_too_much(spark):
    from sparkzoo.pipelines.prepare.sources.files import planned_tasks

    cores = spark.sparkContext.defaultParallelism
    assert planned_tasks(spark, 1) == cores
    assert planned_tasks(spark, 1, total_bytes=10 << 20, max_task_bytes=256 << 20) == cores
    assert planned_tasks(spark, 1, total_bytes=(cores * 3 * 256 << 20) + 1, max_task_bytes=256 << 20) == cores * 3 + 1
