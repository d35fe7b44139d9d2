"""Drift on real data: the Fashion-MNIST CNN (trained on the CI subsample, which logs its reference profile)
scores the test split (nothing moves), the same split inverted and brightness-shifted, and OpenCV's
handwritten digits resized to 28x28 (moves are flagged, the job ends with exit code 4 when
score.drift_fail_above is set); a text classifier scores its
own test split and out-of-domain text (the GPL-3 licence, tokenised with the model's vocabulary), its
penultimate layer projected on the reference's principal directions; a tiny CTC model on spliced KLettres
speech scores its own test split, the same utterances 20 dB quieter, and the same utterances spliced again
under loud noise. Real local Spark, real Parquet, real SQLite MLflow store."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sparkzoo.pipelines import drift, monitoring, paths, prepare, score, scoring, track, train
from sparkzoo.pipelines.dataset import open_prepared
from sparkzoo.pipelines.errors import DriftError
from sparkzoo.pipelines.textnorm import tokenize

from .conftest import CONF, ROOT, SUBSAMPLE, run_cli
from .test_ui import ML, _open, _screenshot, browser, mlflow_ui  # noqa: F401  (browser is a fixture)

GPL = Path("/usr/share/common-licenses/GPL-3")
DIGITS = Path.home() / ".cache" / "sparkzoo" / "data" / "digits.png"   # OpenCV's sheet: 50 x 100 digits of 20x20
TEXT_CONF = ROOT / "conf" / "pang_lee_polarity.yaml"
AUDIO_CONF = ROOT / "conf" / "klettres_spelling.yaml"
LOG_FLOOR = 1e-6   # prepare's log-mel is log(mel power + 1e-6) (pipelines/prepare/audio.py log_mel)


def _shifted(spark, src: str, dst: Path, how: str) -> str:
    """The prepared test split with its pixel bytes changed in Spark (inverted, or 60 levels brighter)."""
    def change(frames):
        for f in frames:
            x = np.frombuffer(b"".join(f["image"]), np.uint8).reshape(len(f), -1).astype(np.int16)
            y = 255 - x if how == "invert" else np.clip(x + 60, 0, 255)
            f["image"] = [row.astype(np.uint8).tobytes() for row in y]
            yield f

    df = spark.read.parquet(src)
    df.mapInPandas(change, df.schema).write.parquet(str(dst))
    return str(dst)


def test_fashion_mnist_no_drift_then_inverted_and_brighter(trained, make_exp, spark, tmp_path):
    out = tmp_path / "pred"
    base = [f"score.output={out}"]
    exp = make_exp(*base)
    ref = monitoring.load_reference(exp, trained.run_id)
    assert ref is not None and ref["rows"] > 0 and "pixel_mean" in ref["features"]
    assert sum(ref["features"]["predicted_class"]["counts"].values()) == ref["rows"]

    same = score.run(make_exp(*base, "score.run_date=2026-06-01"), spark)
    block = same.drift
    dirs = drift.direction_names(drift.EMBEDDING_DIRECTIONS)
    assert ref["embedding_directions"]["method"] == "pca" and len(ref["embedding_directions"]["vectors"]) == len(dirs)
    assert block["moved"] == [] and set(block["features"]) >= {*drift.IMAGE_FEATURES, *drift.EMBEDDING_FEATURES,
                                                         *dirs, "predicted_class", "confidence"}
    for name, f in block["features"].items():
        assert f["psi"] < 0.2 and f["js"] < 0.3, (name, f)             # every figure under its threshold
        assert f["ks"] is None or f["ks"] < 0.15, (name, f)
    part = json.loads((out / f"model_version={same.model_version}" / "run_date=2026-06-01" / "_manifest.json").read_text())
    assert part["drift"]["moved"] == [] and part["drift"]["rows"] == same.scored_rows
    page = Path(block["report"]).read_text()
    # a reference logged before the directions existed: compared on the four summaries, nothing breaks
    old = {k: v for k, v in drift.edges_of(ref).items() if k not in dirs}
    sample = spark.read.parquet(open_prepared(exp).split_dir("test"))
    with scoring.shipped_model(spark, exp, exp.model_name, same.model_version) as shipped:
        legacy = drift.profile(sample, None, shipped.spec, old, model=(shipped.file, shipped.key),
                               rows=same.scored_rows)
    assert set(drift.EMBEDDING_FEATURES) <= set(legacy["features"]) and not set(dirs) & set(legacy["features"])
    assert "no feature moved" in page and "pixel_mean" in page and "<svg" in page and "src=" not in page and "<link" not in page

    test_dir = open_prepared(exp).split_dir("test")
    inverted = _shifted(spark, test_dir, tmp_path / "inverted", "invert")
    with pytest.raises(DriftError) as err:
        score.run(make_exp(*base, f"score.input_path={inverted}", "score.run_date=2026-06-02",
                           "score.drift_fail_above=0.5"), spark)
    assert "pixel_mean" in str(err.value) and "\n" not in str(err.value)
    # the scores were still written and marked, with the drift in their manifest
    part = json.loads((out / f"model_version={same.model_version}" / "run_date=2026-06-02" / "_manifest.json").read_text())
    assert {"pixel_mean", "dark_fraction", "bright_fraction"} <= set(part["drift"]["moved"])
    assert set(dirs) & set(part["drift"]["moved"])             # the embeddings went somewhere else, too
    assert part["drift"]["features"]["pixel_mean"]["ks"] > 0.5

    brighter = _shifted(spark, test_dir, tmp_path / "brighter", "brighter")
    sets = [f"workspace={exp.workspace}", "spark.master=local[2]", f"data.max_records={SUBSAMPLE}",
            "spark.conf.spark.ui.enabled=false", *base, f"score.input_path={brighter}", "score.run_date=2026-06-03",
            "score.drift_fail_above=0.5"]
    args = [a for s in sets for a in ("--set", s)]
    cli = run_cli("score", "-c", str(CONF), *args)
    assert cli.returncode == 4, cli.stderr[-3000:]
    said = [line for line in cli.stderr.splitlines() if "drift_fail_above" in line]
    assert len(said) == 1 and "pixel_mean" in said[0], cli.stderr[-3000:]   # one line naming what moved
    assert "Traceback" not in cli.stderr

    # a different world altogether: 2,000 OpenCV handwritten digits resized to 28x28, in the scoring schema
    sheet = np.asarray(Image.open(DIGITS).convert("L"))
    cells = [sheet[r:r + 20, c:c + 20] for r in range(0, 1000, 20) for c in range(0, 2000, 20)][::2][:2000]
    digits = tmp_path / "digits.parquet"
    pd.DataFrame({"id": [f"digit/{i}" for i in range(len(cells))],
                  "image": [np.asarray(Image.fromarray(c).resize((28, 28), Image.BILINEAR), np.uint8).tobytes()
                            for c in cells]}).to_parquet(digits)
    with pytest.raises(DriftError) as err:
        score.run(make_exp(*base, f"score.input_path={digits}", "score.run_date=2026-06-04",
                           "score.drift_fail_above=0.5"), spark)
    part = json.loads((out / f"model_version={same.model_version}" / "run_date=2026-06-04" / "_manifest.json").read_text())
    assert len(part["drift"]["moved"]) >= 3 and "drift_fail_above=0.5" in str(err.value)

    # the monitoring experiment: one run per scoring date, with the figures as metrics
    c = track.client(exp)
    mon = c.get_experiment_by_name(monitoring.monitoring_experiment(exp))
    runs = c.search_runs([mon.experiment_id], filter_string=f"tags.`sparkzoo.model_name` = '{exp.model_name}'")
    by_date = {r.data.tags["sparkzoo.run_date"]: r for r in runs}
    assert {"2026-06-01", "2026-06-02", "2026-06-03", "2026-06-04"} <= set(by_date)
    assert by_date["2026-06-01"].data.metrics["pixel_mean.psi"] < 0.2 < by_date["2026-06-02"].data.metrics["pixel_mean.psi"]
    assert by_date["2026-06-03"].data.metrics["features_moved"] >= 1


def test_text_model_own_test_split_vs_out_of_domain_text(make_exp, spark, tmp_path):
    def text_exp(*extra: str):
        return make_exp("data.max_records=null", "train.epochs=1", "train.num_proc=1", "mlflow.model_name=drift_bilstm",
                        "model.params={embed: 16, hidden: 16, pooling: max, dropout: 0.0}",
                        f"score.output={tmp_path / 'pred'}", *extra, conf=TEXT_CONF)

    prepared = prepare.run(text_exp(), spark)
    trained = train.run(text_exp(), spark)
    ref = monitoring.load_reference(text_exp(), trained.run_id)
    assert {"length", "oov_rate", "token_distribution", "predicted_class"} <= set(ref["features"])

    dirs = drift.direction_names(drift.EMBEDDING_DIRECTIONS)
    assert {*drift.EMBEDDING_FEATURES, *dirs} <= set(ref["features"])   # the text classifier's penultimate layer
    assert ref["embedding_directions"]["dim"] == 32                     # max pooling over 2 x 16 BiLSTM states

    own = score.run(text_exp("score.run_date=2026-07-01"), spark)
    assert own.drift["features"]["oov_rate"]["psi"] < 0.2 and own.drift["features"]["length"]["psi"] < 0.2
    assert own.drift["features"]["token_distribution"]["psi"] < 0.2
    assert not set(own.drift["moved"]) & {*drift.EMBEDDING_FEATURES, *dirs}, own.drift["moved"]

    # out of domain: licence prose, tokenised exactly as prepare tokenises, with the model's vocabulary
    vocab = {t: i for i, t in enumerate(prepared.manifest["vocab"]["text"])}
    how, max_len = text_exp().data.text.tokenizer, text_exp().data.text.max_length
    lines = [ln.strip().lower() for ln in GPL.read_text().splitlines() if len(ln.split()) >= 4]
    ids = [[vocab.get(t, drift.UNK) for t in tokenize(ln, how)][:max_len] for ln in lines]
    ood = tmp_path / "gpl.parquet"
    pd.DataFrame({"id": [f"gpl/{i}" for i in range(len(lines))], "text": lines,
                  "token_ids": [np.asarray(x, np.int32) for x in ids]}).to_parquet(ood)
    with pytest.raises(DriftError) as err:
        score.run(text_exp(f"score.input_path={ood}", "score.run_date=2026-07-02", "score.drift_fail_above=0.25"), spark)
    assert re.search(r"oov_rate|token_distribution", str(err.value))
    part = json.loads(next((tmp_path / "pred").glob("model_version=*/run_date=2026-07-02/_manifest.json")).read_text())
    assert set(dirs) & set(part["drift"]["moved"]), part["drift"]["moved"]   # prose lands elsewhere in the space


def _gain(spark, src: str, dst: Path, db: float) -> str:
    """The split's log-mel frames as if the recording were ``db`` louder: the mel power of a signal scaled by
    g is g^2 times its power, exactly (STFT and filterbank are linear), so undo the log floor, scale, redo."""
    def change(frames):
        for f in frames:
            f["features"] = [np.log((np.exp(np.frombuffer(b, np.float32).astype(np.float64)) - LOG_FLOOR)
                                    * 10 ** (db / 10) + LOG_FLOOR).astype(np.float32).tobytes() for b in f["features"]]
            yield f

    df = spark.read.parquet(src)
    df.mapInPandas(change, df.schema).write.parquet(str(dst))
    return str(dst)


def test_audio_ctc_model_own_test_split_vs_quieter_and_noisy_speech(make_exp, spark, tmp_path):
    """Spelled letter strings spliced from the real KLettres recordings of a-j (no synthetic voices: fast),
    a one-epoch CTC model; the split is by word, so test utterances are words val never had."""
    def audio_exp(*extra: str):
        return make_exp("data.source.symbols=abcdefghij", "data.source.min_symbols=2", "data.source.max_symbols=4",
                        "data.source.words=null", "data.source.utterances=1000", "data.source.utterances_per_task=250",
                        "data.source.speakers=[en]", "data.source.held_out_speakers=[]",
                        "data.source.synthetic_voices=[]", "data.val_fraction=0.3", "data.test_fraction=0.3",
                        "data.max_records=null", "model.params={hidden: 16, layers: 1, subsample: 4}",
                        "train.epochs=1", "train.batch_size=16", "train.num_proc=1", "mlflow.model_name=drift_ctc",
                        f"score.output={tmp_path / 'pred'}", *extra, conf=AUDIO_CONF)

    prepared = prepare.run(audio_exp(), spark)
    trained = train.run(audio_exp(), spark)
    ref = monitoring.load_reference(audio_exp(), trained.run_id)
    assert set(drift.AUDIO_FEATURES) <= set(ref["features"]) and ref["rows"] == prepared.rows["val"]
    assert 0.5 < ref["features"]["duration_seconds"]["edges"][4] < 4.0   # 2-4 spoken letters with gaps

    own = score.run(audio_exp("score.run_date=2026-08-01"), spark)
    assert set(own.drift["features"]) == set(drift.AUDIO_FEATURES) and own.drift["moved"] == [], own.drift["features"]

    quiet = _gain(spark, open_prepared(audio_exp()).split_dir("test"), tmp_path / "quiet", -20.0)
    with pytest.raises(DriftError) as err:
        score.run(audio_exp(f"score.input_path={quiet}", "score.run_date=2026-08-02", "score.drift_fail_above=1.0"),
                  spark)
    assert "loudness_db" in str(err.value)
    moved = _moved(tmp_path / "pred", "2026-08-02")
    assert {"loudness_db", "mel_mean"} <= moved and not moved & {"duration_seconds", "pause_fraction"}, moved

    # the same utterances (same seed: words, letters, gaps, gains) spliced again under 0-5 dB SNR noise
    noisy = audio_exp("data.dataset=drift_ctc_noisy", "data.source.snr_db=[0, 5]")
    assert prepare.run(noisy, spark).rows["test"] == prepared.rows["test"]
    loud = score.run(audio_exp(f"score.input_path={open_prepared(noisy).split_dir('test')}", "score.run_date=2026-08-03"),
                     spark)
    moved = set(loud.drift["moved"])
    assert {"pause_fraction", "mel_centroid"} <= moved and "duration_seconds" not in moved, loud.drift["features"]


def _moved(out: Path, date: str) -> set[str]:
    part = json.loads(next(out.glob(f"model_version=*/run_date={date}/_manifest.json")).read_text())
    return set(part["drift"]["moved"])


def test_browser_shows_the_monitoring_run(trained, make_exp, spark, workspace, tmp_path, browser):
    """The monitoring experiment as a person sees it in `sparkzoo ui` (headless Chromium); the screenshot
    is docs/SCHEDULING.md's picture (SPARKZOO_DOC_IMAGES=docs/img refreshes it)."""
    exp = make_exp(f"score.output={tmp_path / 'pred'}")
    for date in ("2026-06-10", "2026-06-11"):
        score.run(make_exp(f"score.output={tmp_path / 'pred'}", f"score.run_date={date}"), spark)
    mon = track.client(exp).get_experiment_by_name(monitoring.monitoring_experiment(exp))
    with mlflow_ui(workspace) as url:
        text = _open(browser, f"{url}/#/experiments/{mon.experiment_id}/runs?{ML}&compareRunsMode=CHART",
                     f"{exp.model_name}-2026-06-11", "bright_fraction.psi", "Model metrics")
        assert f"{exp.model_name}-2026-06-10" in text
        shot = _screenshot(browser, "mlflow_monitoring.png")
    assert shot.stat().st_size > 10_000


def test_embedding_directions_are_the_reference_principal_axes_or_seeded_for_wide_layers(prepared, spark):
    """fit_directions on real vectors (Fashion-MNIST test pixels, 784 wide): Spark ML's PCA gives the same
    axes as numpy's SVD of the centred sample; a layer wider than PCA_MAX_DIM (the pixels twice, 1,568)
    gets seeded random unit vectors, the same on every call."""
    test = paths.join(prepared.path, "test")
    images = spark.read.parquet(test).select("image").limit(300).toPandas()["image"]   # small: the test's own check
    rows = [np.frombuffer(b, np.uint8).astype(np.float32) / 255 for b in images]
    narrow = spark.createDataFrame(pd.DataFrame({"embedding": [r.tolist() for r in rows]}))
    got = drift.fit_directions(narrow)
    x = np.stack(rows).astype(np.float64)
    _, _, vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    axes = np.asarray(got["vectors"])
    assert got["method"] == "pca" and got["dim"] == 784 and axes.shape == (drift.EMBEDDING_DIRECTIONS, 784)
    cos = np.abs(np.sum(axes[:3] * vt[:3], axis=1))   # the leading axes, up to sign
    assert (cos > 0.99).all(), cos

    wide = spark.createDataFrame(pd.DataFrame({"embedding": [np.concatenate([r, r]).tolist() for r in rows[:20]]}))
    first, again = drift.fit_directions(wide), drift.fit_directions(wide)
    assert first["method"] == "random" and first["dim"] == 2 * 784 > drift.PCA_MAX_DIM
    assert first["vectors"] == again["vectors"]
    assert np.allclose(np.linalg.norm(np.asarray(first["vectors"]), axis=1), 1.0, atol=1e-5)


def _pixel_stats_in_int64(u: np.ndarray) -> np.ndarray:
    """The five statistics the slow, obvious way: every pixel widened to int64 first."""
    u = u.reshape(len(u), -1).astype(np.int64)
    p = u.shape[1]
    total, squares = u.sum(axis=1), (u * u).sum(axis=1)
    return np.column_stack([total / p / 255.0, np.sqrt((p * squares - total * total).astype(np.float64)) / p / 255.0,
                            (u < drift.DARK_BELOW).sum(axis=1) / p, (u >= drift.BRIGHT_FROM).sum(axis=1) / p,
                            np.abs(np.diff(u, axis=1)).sum(axis=1) / (p - 1) / 255.0])


def test_pixel_statistics_are_exact_in_narrow_and_wide_sums(prepared):
    """The scorer sums pixels in uint32 where a row's sum of squares fits and in uint64 where it does not
    (a 300x300x3 image); both agree with int64 arithmetic to the last bit on real Fashion-MNIST rows and
    on all-white rows, the worst case for overflow."""
    import pyarrow.parquet as pq

    raw = pq.read_table(paths.join(prepared.path, "test"), columns=["image"]).column("image").to_pylist()[:500]
    assert len(raw) >= 6
    small = np.frombuffer(b"".join(raw), np.uint8).reshape(len(raw), 28, 28)
    white = np.full((3, 28, 28), 255, np.uint8)
    wide = np.tile(small[:6].reshape(6, -1), (1, 345))[:, :300 * 300 * 3].reshape(6, 300, 300, 3)
    wide[0] = 255
    for u in (small, white, wide):
        got = drift.pixel_stats(u)
        assert list(got.columns) == list(drift.IMAGE_FEATURES)
        assert np.array_equal(got.to_numpy(), _pixel_stats_in_int64(u)), u.shape
