"""Spliced-utterance prepare (source kind audio_splice) through the real Spark job on local[2]: a few
hundred words spelled from real KLettres clips (en, and en_GB held out) plus an espeak-ng voice, with a
truncated and an empty clip file mixed in. Checks the audio contract's schema and shapes, the fixed
vocabulary and CTC blank, that splits follow the word (no word in two splits), that the held-out
speaker is only in test and says only test words, and that input records = written + quarantined."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from sparkzoo.pipelines import config, paths, prepare
from sparkzoo.pipelines.dataset import SPLITS
from sparkzoo.pipelines.errors import ConfigError, DataError
from sparkzoo.pipelines.prepare.sources import splice

from .conftest import ROOT

KLETTRES = Path("/usr/share/klettres")
CONF = ROOT / "conf" / "klettres_spelling.yaml"
N = 300
ABC = "abcdefghijklmnopqrstuvwxyz"


@pytest.fixture(scope="module")
def clip_tree(tmp_path_factory) -> Path:
    """en and en_GB alphabets; en's Q is truncated and its Z is empty (both must be quarantined)."""
    root = tmp_path_factory.mktemp("klettres")
    for lang in ("en", "en_GB"):
        shutil.copytree(KLETTRES / lang / "alpha", root / lang / "alpha")
    q = root / "en" / "alpha" / "Q.ogg"
    q.write_bytes(q.read_bytes()[: q.stat().st_size // 4])
    (root / "en" / "alpha" / "Z.ogg").write_bytes(b"")
    return root


def _exp(make_exp, root: Path, ws: Path, *extra: str):
    return make_exp(f"data.source.path={root}", f"data.source.utterances={N}", "data.source.utterances_per_task=100",
                    "data.source.synthetic_voices=[en-us]", "data.max_records=null", "prepare.max_bad_fraction=0.05",
                    f"workspace={ws}", *extra, conf=CONF)


def test_spliced_words_through_spark(clip_tree, make_exp, spark, tmp_path):
    exp = _exp(make_exp, clip_tree, tmp_path)
    result = prepare.run(exp, spark)
    m = result.manifest

    # counts add up: every utterance and every unusable clip file is one input record
    assert result.input_records == N + 2 and result.quarantined == 2 and sum(result.rows.values()) == N
    q = {Path(r["source"]).name: r["reason"] for r in pq.read_table(paths.join(result.path, "quarantine")).to_pylist()}
    assert q == {"Q.ogg": "truncated", "Z.ogg": "empty_file"}
    assert m["quarantine_by_reason"] == {"truncated": 1, "empty_file": 1}

    # manifest: the audio contract plus what CTC and the speaker split need
    assert m["task"] == "ctc" and m["vocab"]["target"] == list(ABC) and m["ctc"]["blank_index"] == 26
    assert m["shape"]["n_mels"] == 40 and m["shape"]["sample_rate"] == 16000
    assert m["stats"]["std"] > 0.5 and np.isfinite(m["stats"]["mean"])
    assert 2 <= m["lengths"]["target"]["min"] <= m["lengths"]["target"]["max"] <= 7
    assert 50 < m["lengths"]["n_frames"]["min"] <= m["lengths"]["n_frames"]["max"] <= 1000
    assert m["held_out"]["speakers"] == ["en_GB"] and m["held_out"]["split"] == "test"
    assert m["splice"]["clips_per_speaker"] == {"en": 26, "en_GB": 26}
    assert sum(sum(c.values()) for c in m["speakers"].values()) == N
    assert set(m["speakers"]["test"]) >= {"en_GB"} and "en_GB" not in m["speakers"]["train"]
    assert {f["name"] for f in m["schema"]} >= {"features", "n_frames", "transcript", "target_ids", "speaker"}

    rows = {s: pq.read_table(paths.join(result.path, s)).to_pylist() for s in SPLITS}
    assert {s: len(r) for s, r in rows.items()} == result.rows
    assert all(result.rows[s] > 0 for s in SPLITS)
    for r in (r for s in SPLITS for r in rows[s]):
        feats = np.frombuffer(r["features"], np.float32).reshape(r["n_frames"], 40)
        assert np.isfinite(feats).all() and r["n_frames"] > 25 * len(r["transcript"])   # >= 250 ms a letter
        assert "".join(ABC[i] for i in r["target_ids"]) == r["transcript"] and r["target_length"] == len(r["transcript"])
        assert r["synthetic"] == r["speaker"].startswith("espeak:")
        if r["speaker"] == "en":   # its Q and Z clips are bad: it never says those letters
            assert not set(r["transcript"]) & {"q", "z"}

    # splits follow the word: no ordering is heard in two splits
    words = {s: {r["transcript"] for r in rows[s]} for s in SPLITS}
    assert not words["train"] & words["test"] and not words["train"] & words["val"] and not words["val"] & words["test"]
    # the held-out speaker is only in test, and says only words no training speaker says in train
    speakers = {s: Counter(r["speaker"] for r in rows[s]) for s in SPLITS}
    assert speakers["test"]["en_GB"] > 0 and all(speakers[s]["en_GB"] == 0 for s in ("train", "val"))
    assert {s: dict(c) for s, c in speakers.items()} == m["speakers"]
    assert speakers["train"]["espeak:en-us"] > 0 and speakers["train"]["en"] > 0

    again = prepare.run(exp, spark)
    assert again.skipped and again.version == result.version


def test_generation_is_seeded_per_utterance(clip_tree, make_exp, tmp_path):
    """Utterance i depends on (seed, i) alone, not on which task makes it or what came before."""
    exp = _exp(make_exp, clip_tree, tmp_path)
    src = exp.data.source.model_dump(mode="json")
    from sparkzoo.pipelines.dataset import source_listing

    ctx = {"source": src, "clips": splice.clip_map(source_listing(exp), src), "audio": exp.data.audio.model_dump(),
           "seed": 7, "dataset": "d", "root": src["path"], "val_fraction": 0.1, "test_fraction": 0.1}
    a = [splice.utterance(i, ctx) for i in (5, 6)]
    b = splice.utterance(5, ctx)
    assert np.array_equal(a[0][0], b[0]) and a[0][1:] == b[1:]
    assert not np.array_equal(a[0][0][:1000], splice.utterance(5, {**ctx, "seed": 8})[0][:1000])


def test_bad_splice_configs_fail_at_load_or_before_launch(clip_tree, make_exp, spark, tmp_path):
    with pytest.raises(ConfigError, match="held_out_speakers"):
        config.load(CONF, ["data.source.held_out_speakers=[fr]"])
    with pytest.raises(ConfigError, match="every speaker is held out"):
        config.load(CONF, ["data.source.speakers=[en_GB]", "data.source.synthetic_voices=[]"])
    with pytest.raises(DataError, match="no clips for speaker"):
        prepare.run(_exp(make_exp, clip_tree, tmp_path, "data.source.speakers=[en, en_GB, de]"), spark)
    with pytest.raises(DataError, match="word list"):
        prepare.run(_exp(make_exp, clip_tree, tmp_path, f"data.source.words={tmp_path}/no_such.txt"), spark)
