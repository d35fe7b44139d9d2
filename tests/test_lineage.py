"""Lineage on real parts: a folder of real Tux Paint PNGs is prepared, a model trained and registered in a
real SQLite MLflow store, the test split scored in Spark; `sparkzoo lineage --id` then names the exact
source file with its sha256 and the version that scored it, and after the champion alias moves and a
re-score, the new partition's chain names the new version; `--row <file or partition folder>#N` walks the
same chain from one row of the prediction Parquet."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from sparkzoo.pipelines import paths, prepare, promote, score, track, train
from sparkzoo.pipelines.lineage import LineageError, trace, trace_row

from .conftest import ROOT, run_cli

STAMPS = Path("/usr/share/tuxpaint/stamps")
CONF = ROOT / "conf" / "tuxpaint_stamps.yaml"
CATEGORIES = ("animals", "food", "vehicles")
PER_CLASS = 16


@pytest.fixture(scope="module")
def stamp_folder(tmp_path_factory) -> Path:
    """16 real PNG stamps from each of 3 categories, copied so their bytes and paths are ours."""
    root = tmp_path_factory.mktemp("lineage_stamps")
    for cat in CATEGORIES:
        (root / cat).mkdir()
        for p in sorted((STAMPS / cat).rglob("*.png"))[:PER_CLASS]:
            shutil.copy(p, root / cat / p.name)
    return root


def _sets(src: Path, ws: Path, *extra: str) -> list[str]:
    return [f"workspace={ws}", "spark.master=local[2]", "spark.conf.spark.ui.enabled=false", "train.progress=false",
            f"data.source.path={src}", "data.max_records=null", "data.test_fraction=0.3",
            "data.image={height: 16, width: 16, channels: 3, resize: fit, background: white}",
            "model.params={widths: [8], blocks: 1, dropout: 0.0}", "train.epochs=1", "train.batch_size=4", "train.num_proc=1", *extra]


def _ids(out: Path, version: int, date: str) -> list[str]:
    return pq.read_table(out / f"model_version={version}" / f"run_date={date}", columns=["id"]).column("id").to_pylist()


def _lineage(sets: list[str], pid: str, *flags: str, by: str = "--id"):
    args: list[str] = []
    for s in sets:
        args += ["--set", s]
    return run_cli("lineage", "-c", str(CONF), *args, by, pid, *flags, timeout=300)


def test_prediction_to_source_file_and_model_version(stamp_folder, spark, tmp_path):
    from sparkzoo.pipelines import config

    out = tmp_path / "predictions"
    sets = _sets(stamp_folder, tmp_path, f"score.output={out}")
    exp = config.load(CONF, sets)

    prepared = prepare.run(exp, spark)
    # the file index beside the manifest: every source file, with the sha256 of its bytes
    index = prepared.manifest["source"]["index"]
    n_files = sum(1 for _ in stamp_folder.rglob("*.png"))
    assert index["files"] == n_files and index["hash"] == "sha256"
    rows = pq.read_table(paths.join(prepared.path, index["path"])).to_pylist()
    assert len(rows) == n_files
    some = next(r for r in rows if r["path"].endswith(".png"))
    assert some["sha256"] == hashlib.sha256(Path(some["path"]).read_bytes()).hexdigest()

    first = train.run(exp, spark)
    # mlflow.log_input: the run page lists the three splits with their row counts
    run = track.client(exp).get_run(first.run_id)
    logged = {d.dataset.name: json.loads(d.dataset.profile) for d in run.inputs.dataset_inputs}
    assert {f"tuxpaint_stamps-{s}" for s in ("train", "val", "test")} == set(logged)
    assert sum(p["rows"] for p in logged.values()) == sum(prepared.rows.values())

    day1 = score.run(config.load(CONF, [*sets, "score.run_date=2026-05-01"]), spark)
    assert day1.model_version == first.model_version and day1.scored_rows == prepared.rows["test"] > 0
    part = json.loads((out / f"model_version={day1.model_version}" / "run_date=2026-05-01" / "_manifest.json").read_text())
    assert part["input"]["kind"] == "split" and part["input"]["dataset"]["version"] == prepared.version
    assert part["input"]["files"] >= 1 and len(part["input"]["digest"]) == 64
    assert part["model"]["resolved_uri"] == f"models:/{exp.model_name}/{first.model_version}"
    assert "champion" in part["model"]["aliases"] and part["config_hash"]

    pid = _ids(out, day1.model_version, "2026-05-01")[0]
    expected_file = stamp_folder / pid.split("/", 1)[1]          # prepared ids are <dataset>/<relative path>
    expected_sha = hashlib.sha256(expected_file.read_bytes()).hexdigest()

    got = _lineage(sets, pid, "--json")
    assert got.returncode == 0, got.stderr[-2000:]
    [chain] = json.loads(got.stdout)
    assert chain["model"]["version"] == first.model_version and chain["run"]["run_id"] == first.run_id
    assert chain["run"]["dataset_version"] == prepared.version and chain["run"]["git_commit"]
    src = chain["scored_row"]["source_file"]
    assert Path(src["path"]) == expected_file and src["sha256"] == expected_sha and src["unchanged"] is True
    assert chain["partition"]["run_date"] == "2026-05-01" and chain["prediction"]["id"] == pid

    # a new version, the champion alias moved to it, a re-score: the new partition names the new version
    second = train.run(exp, spark)
    assert second.model_version == first.model_version + 1
    promote.rollback(exp, second.model_version)                   # `sparkzoo promote --rollback-to N`: alias moves
    day2 = score.run(config.load(CONF, [*sets, "score.run_date=2026-05-02"]), spark)
    assert day2.model_version == second.model_version

    text = _lineage(sets, pid)
    assert text.returncode == 0, text.stderr[-2000:]
    chains = trace(config.load(CONF, sets), pid)
    assert [c["model"]["version"] for c in chains] == [second.model_version, first.model_version]
    assert "champion" in chains[0]["model"]["aliases_at_scoring"]     # v2 was champion when it scored
    assert "champion" in chains[1]["model"]["aliases_at_scoring"]     # and v1 was, the night before
    assert "champion" not in chains[1]["model"]["aliases_now"]
    assert chains[0]["run"]["run_id"] == second.run_id
    assert chains[0]["scored_row"]["source_file"]["sha256"] == expected_sha
    first_block = text.stdout.split("\n\n")[0]
    assert f"models:/{exp.model_name}/{second.model_version}" in first_block and expected_sha in first_block
    assert str(expected_file) in first_block and "run_date 2026-05-02" in first_block

    # from a prediction Parquet row: the last row of a file of day 2's partition, through the CLI
    part2 = out / f"model_version={second.model_version}" / "run_date=2026-05-02"
    file = sorted(part2.glob("*.parquet"))[0]
    in_file = pq.read_table(file, columns=["id"]).column("id").to_pylist()
    by_row = _lineage(sets, f"{file}#{len(in_file) - 1}", "--json", by="--row")
    assert by_row.returncode == 0, by_row.stderr[-2000:]
    [chain] = json.loads(by_row.stdout)
    last = in_file[-1]
    assert chain["prediction"]["id"] == last and chain["partition"]["path"] == str(part2)
    assert chain["model"]["version"] == second.model_version and chain["run"]["run_id"] == second.run_id
    assert chain["scored_row"]["source_file"]["sha256"] == hashlib.sha256(
        (stamp_folder / last.split("/", 1)[1]).read_bytes()).hexdigest()
    # a partition folder: its files in name order (the order `list_files` and Spark's part numbers give)
    part1 = out / f"model_version={first.model_version}" / "run_date=2026-05-01"
    ordered = [i for f in sorted(part1.glob("*.parquet")) for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()]
    k = ordered.index(pid)
    [chain] = trace_row(config.load(CONF, sets), f"{part1}#{k}")
    assert chain["prediction"]["id"] == pid and chain["model"]["version"] == first.model_version
    assert chain["scored_row"]["source_file"]["sha256"] == expected_sha
    assert trace_row(config.load(CONF, sets), str(part1))[0]["prediction"]["id"] == ordered[0]   # no #N: row 0
    for bad, said in ((f"{part1}#{len(ordered)}", f"holds {len(ordered)} rows"), (f"{part1}#last", "row number"),
                      (f"{tmp_path}/nowhere#0", "does not exist"), (str(stamp_folder), "holds no Parquet file"),
                      (paths.join(prepared.path, "test"), "not a scoring output row")):
        with pytest.raises(LineageError, match=said):
            trace_row(config.load(CONF, sets), bad)

    # a source file edited after prepare is reported as changed, not silently trusted
    expected_file.write_bytes(expected_file.read_bytes() + b"\0")
    assert trace(config.load(CONF, sets), pid)[0]["scored_row"]["source_file"]["unchanged"] is False

    # an id no partition holds: one line, exit 2
    with pytest.raises(LineageError):
        trace(config.load(CONF, sets), "no/such/id.png")
    missing = _lineage(sets, "no/such/id.png")
    assert missing.returncode == 2 and "no prediction with id" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_file_index_has_no_cliff(spark, tmp_path):
    """6,000 source files (over the old 5,000 inline limit): all are in the Parquet index with hashes."""
    from sparkzoo.pipelines.prepare.manifest import write_file_index

    src = tmp_path / "many"
    src.mkdir()
    listing = []
    for i in range(6000):
        f = src / f"f{i:05d}.txt"
        f.write_bytes(str(i).encode())
        listing.append({"path": str(f), "size": f.stat().st_size, "mtime": 0})
    entry = write_file_index(spark, listing, str(src), str(tmp_path / "ds"))
    assert entry["files"] == 6000 and entry["bytes"] == sum(x["size"] for x in listing)
    table = pads.dataset(str(tmp_path / "ds" / entry["path"]), format="parquet").to_table()
    got = dict(zip(table.column("path").to_pylist(), table.column("sha256").to_pylist()))
    assert got[str(src / "f05999.txt")] == hashlib.sha256(b"5999").hexdigest() and len(got) == 6000
