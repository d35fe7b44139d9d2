"""Audio rows in the prepared-data contract: log-mel ``features`` (float32, frames x mels) + ``n_frames``.

Inside Spark tasks: soundfile decode (WAV / FLAC / OGG), mono, resample to ``data.audio.sample_rate``
(polyphase), log-mel with a Hann-window STFT and a triangular mel filterbank written here in numpy
(torchaudio does not load beside this torch). Silent, too-long, empty, truncated and mislabelled
files are quarantined. Normalisation statistics are one Spark aggregation over the train split;
transcripts become character ids over a blank-free vocabulary (CTC adds its blank after it).
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import re
from typing import Any, Iterator

import numpy as np
import pandas as pd

from .rows import COMMON_SCHEMA, label_ids
from .quarantine import BadRecord
from .split import assign

ROW_SCHEMA = COMMON_SCHEMA + (", features binary, n_frames int, n_mels int, sample_rate int, duration double, "
                              "transcript string")
EXT_FORMAT = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG"}


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters, evenly spaced on the HTK mel scale, area-normalised."""
    bins = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fb = np.zeros((n_mels, bins.size))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        up = (bins - lo) / max(mid - lo, 1e-9)
        down = (hi - bins) / max(hi - mid, 1e-9)
        fb[m] = np.maximum(0.0, np.minimum(up, down))
        fb[m] *= 2.0 / max(hi - lo, 1e-9)          # Slaney-style: equal area, so wide bands are not louder
    return fb.astype(np.float32)


def log_mel(y: np.ndarray, settings: dict[str, Any]) -> np.ndarray:
    """float32 (frames, n_mels): log(mel power + 1e-6) of a mono signal at settings['sample_rate']."""
    sr = int(settings["sample_rate"])
    win = max(1, int(round(sr * settings["win_ms"] / 1000.0)))
    hop = max(1, int(round(sr * settings["hop_ms"] / 1000.0)))
    n_fft = 1 << (win - 1).bit_length()
    if y.size < win:
        y = np.pad(y, (0, win - y.size))
    n_frames = 1 + (y.size - win) // hop
    frames = np.lib.stride_tricks.as_strided(y, shape=(n_frames, win), strides=(y.strides[0] * hop, y.strides[0]))
    spec = np.fft.rfft(frames * np.hanning(win).astype(np.float32), n=n_fft, axis=1)
    power = (spec.real ** 2 + spec.imag ** 2).astype(np.float32)
    fb = mel_filterbank(sr, n_fft, int(settings["n_mels"]), float(settings["fmin"]),
                        float(settings["fmax"] or sr / 2.0))
    return np.log(power @ fb.T + 1e-6).astype(np.float32)


def decode(content: bytes | None, ext: str, settings: dict[str, Any]) -> tuple[np.ndarray, float]:
    """Bytes -> (mono float32 signal at the target rate, duration in s); ``BadRecord`` when unusable."""
    import soundfile as sf

    if not content:
        raise BadRecord("empty_file", "the file has 0 bytes")
    try:
        with sf.SoundFile(io.BytesIO(content)) as fh:
            fmt, rate, frames = fh.format, fh.samplerate, fh.frames
            want = EXT_FORMAT.get(ext.lower())
            if want is not None and fmt != want:
                raise BadRecord("wrong_type", f"the file is {fmt} audio behind a .{ext} extension; rename or re-encode it")
            if frames > 0 and rate > 0 and frames / float(rate) > float(settings["max_seconds"]):
                # from the header, before decoding: an hour-long clip must not be read into memory first
                raise BadRecord("too_long", f"the header says {frames / float(rate):.1f}s, longer than "
                                            f"data.audio.max_seconds={settings['max_seconds']}")
            data = fh.read(dtype="float32", always_2d=True)
    except BadRecord:
        raise
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as exc:
        raise BadRecord("unreadable", f"soundfile cannot decode {len(content)} bytes ({exc})") from None
    if frames > 0 and data.shape[0] < frames:
        raise BadRecord("truncated", f"the header promises {frames} frames, only {data.shape[0]} decode")
    if data.shape[0] == 0:
        raise BadRecord("truncated", "no audio frames decode")
    duration = data.shape[0] / float(rate)
    if duration > float(settings["max_seconds"]):
        raise BadRecord("too_long", f"{duration:.1f}s is longer than data.audio.max_seconds={settings['max_seconds']}")
    y = data.mean(axis=1)
    peak = float(np.max(np.abs(y))) if y.size else 0.0
    if peak <= 10 ** (float(settings["silence_dbfs"]) / 20.0):
        level = 20 * math.log10(peak) if peak > 0 else float("-inf")
        raise BadRecord("silent", f"peak level {level:.1f} dBFS is below data.audio.silence_dbfs={settings['silence_dbfs']}")
    target = int(settings["sample_rate"])
    if rate != target:
        from scipy.signal import resample_poly

        g = math.gcd(int(rate), target)
        y = resample_poly(y, target // g, int(rate) // g).astype(np.float32)
    return np.ascontiguousarray(y, dtype=np.float32), duration


def transform_audio(content: bytes | None, ext: str, settings: dict[str, Any]) -> tuple[np.ndarray, float]:
    """The whole per-file transform (the benchmark's plain loop calls exactly this)."""
    y, duration = decode(content, ext, settings)
    return log_mel(y, settings), duration


def _label(rel: str, src: dict[str, Any]) -> tuple[str | None, str | None]:
    label = transcript = None
    if src.get("label_level") is not None:
        parts = rel.split("/")[:-1]
        with contextlib.suppress(IndexError):
            label = parts[src["label_level"]]
    if src.get("label_regex"):
        m = re.search(src["label_regex"], rel)
        label = m.group(1).lower() if m else None
    if src.get("transcript_regex"):
        m = re.search(src["transcript_regex"], rel)
        transcript = m.group(1) if m else None
    return label, transcript


def sidecar_transcript(path: str, sidecar: dict[str, Any]) -> str | None:
    """The transcript line of the text file beside a clip (read in the task), or None when the file or
    its line is missing. Undecodable bytes are a bad record, not a crash."""
    folder, name = os.path.split(path)
    stem = re.sub(sidecar["strip"], "", os.path.splitext(name)[0]) if sidecar["strip"] else os.path.splitext(name)[0]
    from .sources.files import read_bytes

    try:
        raw = read_bytes(os.path.join(folder, stem + sidecar["suffix"]))   # through pipelines/paths: S3/HDFS too
    except OSError:
        return None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRecord("non_utf8", f"transcript file {stem}{sidecar['suffix']} is not UTF-8 ({exc})") from None
    for line in text.splitlines():
        if line.startswith(sidecar["key"]):
            return line[len(sidecar["key"]):].strip() or None
    return None


def decode_files(frames: Iterator[pd.DataFrame], ctx: dict[str, Any]) -> Iterator[pd.DataFrame]:
    """mapInPandas body over binaryFile rows (path, content [, label_name, transcript]); ``ctx["tree"]``:
    a file tree (include/exclude pick the files, the path gives label and transcript), else an index."""
    from .sources.files import check_source, local, relative, row_content, selected

    src, settings, tree = ctx["source"], ctx["audio"], ctx["tree"]
    for frame in frames:
        out: dict[str, list] = {k: [] for k in ("id", "source", "label_name", "transcript", "features", "n_frames",
                                                "duration", "reason", "detail", "sum", "sumsq", "count")}
        for row in frame.itertuples(index=False):
            path = local(row.path)
            rel = relative(path, ctx["root"])
            if tree and not selected(rel, src["include"], src["exclude"]):
                continue
            rid = f"{ctx['dataset']}/{rel}"
            feats, reason, detail, dur = None, None, None, 0.0
            if tree:
                label, transcript = _label(rel, src)
            else:
                label = getattr(row, "label_name", None) or None
                transcript = getattr(row, "transcript", None) or None
            try:
                check_source(path, ctx["root"], getattr(row, "read_error", None))
                if src.get("transcript_sidecar"):
                    transcript = sidecar_transcript(path, src["transcript_sidecar"])
                if ctx["needs_label"] and not label:
                    raise BadRecord("missing_label", f"no label for {rel} (label_level / label_regex / label column)")
                if ctx["needs_transcript"] and not transcript:
                    raise BadRecord("missing_label", f"no transcript for {rel} (transcript_regex / transcript_sidecar / "
                                                     f"transcript column)")
                feats, dur = transform_audio(row_content(row, path), os.path.splitext(path)[1].lstrip("."), settings)
            except BadRecord as bad:
                reason, detail = bad.reason, bad.detail
            f64 = feats.astype(np.float64) if feats is not None else None
            for k, v in (("id", rid), ("source", path), ("label_name", label if feats is not None else None),
                         ("transcript", transcript.lower() if transcript and feats is not None else None),
                         ("features", feats.tobytes() if feats is not None else None),
                         ("n_frames", feats.shape[0] if feats is not None else 0), ("duration", dur),
                         ("reason", reason), ("detail", detail),
                         ("sum", float(f64.sum()) if f64 is not None else 0.0),
                         ("sumsq", float((f64 ** 2).sum()) if f64 is not None else 0.0),
                         ("count", int(f64.size) if f64 is not None else 0)):
                out[k].append(v)
        if not out["id"]:
            continue
        n = len(out["id"])
        yield pd.DataFrame({
            "id": out["id"], "source": out["source"],
            "split": assign(out["id"], "all", ctx["val_fraction"], ctx["test_fraction"]),
            "label_name": out["label_name"],
            "stage": [None if r is None else "decode" for r in out["reason"]], "reason": out["reason"],
            "detail": out["detail"], "stat_sum": out["sum"], "stat_sumsq": out["sumsq"],
            "stat_count": np.array(out["count"], dtype=np.int64),
            "features": out["features"], "n_frames": np.array(out["n_frames"], dtype=np.int32),
            "n_mels": np.full(n, int(settings["n_mels"]), dtype=np.int32),
            "sample_rate": np.full(n, int(settings["sample_rate"]), dtype=np.int32),
            "duration": out["duration"], "transcript": out["transcript"],
        })


def _context(exp, root: str, tree: bool, needs_label: bool, needs_transcript: bool) -> dict[str, Any]:
    """What ``decode_files`` needs in the task: small, plain values (no config objects)."""
    return {"source": exp.data.source.model_dump(mode="json"), "dataset": exp.data.dataset,
            "audio": exp.data.audio.model_dump(mode="json"), "val_fraction": exp.data.val_fraction,
            "test_fraction": exp.data.test_fraction, "root": root, "tree": tree, "needs_label": needs_label,
            "needs_transcript": needs_transcript}


def read_folder(spark, exp, listing: list[dict[str, Any]]):
    """Clips of a file tree, decoded in Spark tasks; label and transcript from the path or a sidecar."""
    from .sources import files

    src = exp.data.source
    ctx = _context(exp, src.path, True, src.label_level is not None or bool(src.label_regex),
                   bool(src.transcript_regex or src.transcript_sidecar))
    # paths from the driver's listing; each task reads its own files (files.row_content)
    return files.folder_rows(spark, exp, listing, lambda it: decode_files(it, ctx), ROW_SCHEMA)


def read_index(spark, exp):
    """Clips an index table names (relative to its folder), with label / transcript columns."""
    from .sources import files

    src = exp.data.source
    base = files.local(src.path).rsplit("/", 1)[0]
    ctx = _context(exp, base, False, bool(src.label_column), bool(src.transcript_column))
    texts = {"transcript": (src.transcript_column, "any")} if src.transcript_column else {}
    return (files.index_with_content(spark, exp, base, src.label_column, texts)
            .mapInPandas(lambda it: decode_files(it, ctx), ROW_SCHEMA))


def features_manifest(exp, good, totals) -> dict[str, Any]:
    """The manifest entries every log-mel dataset shares: train-split feature mean/std (from the
    aggregated sums), the transform's settings, and frame-count statistics (a Spark aggregation)."""
    from pyspark.sql import functions as F

    from . import manifest as manifest_mod
    from . import text

    train = totals.get("train", {"sum": 0.0, "sumsq": 0.0, "count": 0})
    stats = manifest_mod.pixel_stats(train["sum"] or 0.0, train["sumsq"] or 0.0, float(train["count"] or 0))
    a = exp.data.audio
    return {
        "stats": stats,
        "shape": {"n_mels": a.n_mels, "sample_rate": a.sample_rate, "hop_ms": a.hop_ms, "win_ms": a.win_ms},
        "features": {"kind": "log_mel", "dtype": "float32", "layout": "frames x n_mels", "log_floor": 1e-6},
        "lengths": {"n_frames": text.length_stats(good.filter(F.col("split") == "train"), "n_frames")},
    }


def ctc_manifest(vocab: list[str]) -> dict[str, Any]:
    """Where CTC's blank goes: after the (blank-free) character vocabulary."""
    return {"blank_index": len(vocab), "note": "the vocabulary holds no blank; CTC uses id len(vocab)"}


def finish(spark, exp, good, label_names: list[str], totals) -> tuple[Any, dict[str, Any]]:
    from . import text

    src = exp.data.source
    extra = features_manifest(exp, good, totals)
    cols = ["id", "source", "features", "n_frames", "n_mels", "sample_rate", "duration"]
    df = good
    has_transcript = any(getattr(src, k, None) for k in ("transcript_regex", "transcript_column", "transcript_sidecar"))
    if has_transcript:
        df, vocab, lengths = text.add_token_ids(df, exp, "transcript", "target_ids", "char", specials=[],
                                                vocab_from=lambda d: d)
        extra["vocab"] = {"target": vocab}
        extra["ctc"] = ctc_manifest(vocab)
        extra["lengths"]["target"] = lengths
        extra["task"] = "ctc"
        cols += ["transcript", "target_ids", "target_length"]
    if label_names:
        df = df.withColumn("label", label_ids(label_names))
        cols += ["label", "label_name"]
        extra.setdefault("task", "classification")
    extra.setdefault("task", "features")
    return df.select("split", *cols), extra
