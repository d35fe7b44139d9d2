"""Text rows in the prepared-data contract: ``text``, ``token_ids``, ``length``, ``label`` or ``target_ids``.

Files (CSV / TSV / JSON-lines, or a member of a .tar.gz / .zip / wheel read in the task) are parsed in
Spark tasks into records; bad records (non-UTF-8, empty, missing label, malformed line) are flagged
there. Normalisation and tokenisation run in pandas UDFs; the vocabulary is a Spark aggregation
(count per token, ``min_count``, ``max_size``), so only the vocabulary itself reaches the driver.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from typing import Any, Iterator

import numpy as np
import pandas as pd

from ..textnorm import normalise, tokenize  # noqa: F401  (shared with the scorer: one normalisation)
from .rows import COMMON_SCHEMA, label_ids
from .quarantine import BadRecord
from .split import assign

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]
PAD, UNK, BOS, EOS = range(4)
ROW_SCHEMA = COMMON_SCHEMA + ", text string, target string"
# ---- parsing files in tasks ----------------------------------------------------------------------

def _records(data: str, src: dict[str, Any], max_field: int | None = None
             ) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(record number, fields or None, problem) for each record of a decoded file."""
    fmt = src["format"]
    if fmt in ("csv", "tsv"):
        yield from _csv_records(data, src, max_field)
        return
    if fmt == "jsonl":
        for n, line in enumerate(data.splitlines()):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield n, None, f"line {n + 1} is not JSON ({exc.msg})"
                continue
            yield n, obj if isinstance(obj, dict) else None, None if isinstance(obj, dict) else f"line {n + 1} is not an object"
        return
    if fmt == "keyed_lines":   # one pair per file: the first line, and the value of `<target_key>=`
        lines = [line.strip() for line in data.splitlines() if line.strip()]
        if lines:
            key = src["target_key"] + "="
            target = next((line[len(key):] for line in lines[1:] if line.startswith(key)), None)
            yield 0, {src["source_column"]: lines[0], src["target_column"]: target}, None
        return
    if fmt == "whitespace":
        prefix = src.get("comment_prefix")
        for n, line in enumerate(data.splitlines()):
            if not line.strip() or (prefix and line.startswith(prefix)):
                continue
            parts = line.strip().split(None, 1)
            yield n, dict(zip(src["columns"], parts)), None
        return


def _csv_records(data: str, src: dict[str, Any], max_field: int | None):
    """CSV/TSV records; a parse error (e.g. a field over ``data.text.max_record_bytes``) ends the file
    with one malformed record that names the line, since a CSV parser cannot resync after it."""
    if max_field:   # Python's default is 128 kB: a 1 MB single-line record would kill the task
        csv.field_size_limit(int(max_field))
    reader = csv.reader(io.StringIO(data, newline=""), delimiter="\t" if src["format"] == "tsv" else ",")
    names = list(src["columns"])
    rows = enumerate(reader)
    while True:
        try:
            n, fields = next(rows)
        except StopIteration:
            return
        except csv.Error as exc:
            yield reader.line_num, None, (f"line {reader.line_num} cannot be parsed ({exc}); the rest of the file is "
                                          f"not read (raise data.text.max_record_bytes for longer records)")
            return
        if n == 0 and src["header"]:
            names = [f.strip() for f in fields]
            continue
        if not fields or not any(f.strip() for f in fields):
            continue
        if src.get("comment_prefix") and fields[0].startswith(src["comment_prefix"]):
            continue
        yield n, dict(zip(names, fields)), None


def parse_files(frames: Iterator[pd.DataFrame], ctx: dict[str, Any]) -> Iterator[pd.DataFrame]:
    """mapInPandas body: one row per file (path, rel) in, one row per record (good or flagged) out."""
    from .sources.files import read_bytes

    src, pairs = ctx["source"], ctx["pairs"]
    text_col = src["source_column"] if pairs else src["text_column"]
    other_col = src["target_column"] if pairs else src.get("label_column")
    strip = re.compile(src["source_strip"]) if pairs and src.get("source_strip") else None
    for frame in frames:
        for f in frame.itertuples(index=False):
            where = f.rel + (f"!{src['member']}" if src.get("member") else "")
            out: dict[str, list] = {k: [] for k in ("id", "source", "text", "target", "label_name", "reason", "detail")}

            def add(rid, text=None, target=None, label=None, reason=None, detail=None):
                for k, v in zip(out, (rid, f"{f.path}{'!' + src['member'] if src.get('member') else ''}",
                                      text, target, label, reason, detail)):
                    out[k].append(v)

            try:
                raw = read_bytes(f.path, src.get("member"))
            except (OSError, KeyError, EOFError) as exc:
                add(f"{ctx['dataset']}/{where}", reason="unreadable", detail=f"cannot read {where}: {exc}")
                raw = None
            if raw is not None and not raw:
                add(f"{ctx['dataset']}/{where}", reason="empty_file", detail="the file has 0 bytes")
            elif raw:
                if b"\x00" in raw[:4096]:
                    add(f"{ctx['dataset']}/{where}", reason="wrong_type",
                        detail=f"{where} holds binary data (NUL bytes), not {src['format']} text")
                else:
                    data = raw.decode("utf-8-sig", errors="surrogateescape")
                    count = 0
                    for n, rec, problem in _records(data, src, ctx.get("max_record_bytes")):
                        if ctx["max_records"] and count >= ctx["max_records"]:
                            break
                        count += 1
                        rid = f"{ctx['dataset']}/{where}#{n}"
                        try:
                            if problem:
                                raise BadRecord("malformed", problem, "parse")
                            text, other = _fields(rec, text_col, other_col, n)
                            if strip is not None:
                                text = strip.sub("", text)
                            text = normalise(text, ctx["lowercase"])
                            if not text:
                                raise BadRecord("empty_text", f"record {n + 1} has no text in column '{text_col}'")
                            if other_col and not other:
                                raise BadRecord("missing_label" if not pairs else "missing_target",
                                                f"record {n + 1} has no value in column '{other_col}'", "label")
                        except BadRecord as bad:
                            add(rid, reason=bad.reason, detail=f"{where}: {bad.detail}")
                            continue
                        if pairs:
                            add(rid, text=text, target=normalise(other, ctx["lowercase_target"]))
                        else:
                            add(rid, text=text, label=other.strip() if other else None)
            n = len(out["id"])
            good = np.array([r is None for r in out["reason"]])
            yield pd.DataFrame({
                "id": out["id"], "source": out["source"],
                "split": assign(_split_keys(out["id"], out["text"], pairs, ctx["dataset"]), "all",
                                ctx["val_fraction"], ctx["test_fraction"]),
                "label_name": out["label_name"],
                "stage": [None if g else "parse" for g in good], "reason": out["reason"], "detail": out["detail"],
                "stat_sum": np.zeros(n), "stat_sumsq": np.zeros(n), "stat_count": np.zeros(n, np.int64),
                "text": out["text"], "target": out["target"],
            })


def _split_keys(ids: list[str], texts: list[str | None], pairs: bool, dataset: str) -> list[str]:
    """What the split hash reads: for pairs, the normalised source text, so every target of one source
    ("granting" and "granting(2)", or one caption in two files) lands in the same split and test never
    scores a word whose other pronunciation was trained on; otherwise (and for bad records) the row id."""
    if not pairs:
        return ids
    return [rid if text is None else f"{dataset}/source:{text}" for rid, text in zip(ids, texts)]


def _fields(rec: dict[str, Any] | None, text_col: str, other_col: str | None, n: int) -> tuple[str, str | None]:
    if rec is None:
        raise BadRecord("malformed", f"record {n + 1} could not be parsed", "parse")
    if text_col not in rec:
        raise BadRecord("malformed", f"record {n + 1} has no column '{text_col}' (columns: {', '.join(map(str, rec))}); "
                                     f"set data.source.columns or header", "parse")
    text = rec[text_col]
    other = rec.get(other_col) if other_col else None
    text = "" if text is None else str(text)
    other = None if other is None else str(other)
    for value in (text, other or ""):
        if any("\udc80" <= ch <= "\udcff" for ch in value):
            bad = value.encode("utf-8", errors="surrogateescape")
            raise BadRecord("non_utf8", f"record {n + 1} is not valid UTF-8 (bytes {bad[:40]!r})")
    return text, other


def read(spark, exp, listing: list[dict[str, Any]], stack: contextlib.ExitStack, *, pairs: bool = False):
    """Text records of the listed files, parsed in Spark tasks; ``pairs``: (source, target) records for
    seq2seq, else a text with an optional label."""
    from .sources.files import relative, selected

    src = exp.data.source
    chosen = [f for f in listing if selected(relative(f["path"], src.path), src.include, src.exclude)]
    if not chosen:
        from ..errors import DataError
        raise DataError(f"no files under {src.path} match data.source.include/exclude; fix them or the path")
    root = src.path if len(chosen) > 1 or chosen[0]["path"] != src.path else src.path.rsplit("/", 1)[0]
    tasks = pd.DataFrame({"path": [f["path"] for f in chosen],
                          "rel": [relative(f["path"], root) for f in chosen]})
    ctx = {"source": src.model_dump(mode="json"), "pairs": pairs, "dataset": exp.data.dataset,
           "max_records": exp.data.max_records,
           "max_record_bytes": exp.data.text.max_record_bytes,
           "lowercase": exp.data.text.lowercase,
           "lowercase_target": exp.data.text.lowercase and exp.data.text.target_tokenizer != "space",
           "val_fraction": exp.data.val_fraction, "test_fraction": exp.data.test_fraction}
    df = spark.createDataFrame(tasks).repartition(min(len(chosen), spark.sparkContext.defaultParallelism * 4))
    rows = df.mapInPandas(lambda it: parse_files(it, ctx), ROW_SCHEMA)
    # one file may hold most records: spread them before tokenising
    return rows.repartition(spark.sparkContext.defaultParallelism * exp.prepare.tasks_per_core)


# ---- vocabulary and ids --------------------------------------------------------------------------

def build_vocab(tokens_df, column: str, min_count: int, max_size: int, specials: list[str]) -> list[str]:
    """Specials first, then tokens by count (ties by token), from a Spark aggregation."""
    from pyspark.sql import functions as F

    room = max(max_size - len(specials), 0)
    top = (tokens_df.select(F.explode(column).alias("t")).groupBy("t").count()
           .filter(F.col("count") >= min_count).orderBy(F.desc("count"), F.asc("t")).limit(room)
           .collect())  # small: at most max_size tokens
    return specials + [r["t"] for r in top if r["t"] not in specials]


def length_stats(df, column: str) -> dict[str, float]:
    from pyspark.sql import functions as F

    r = df.agg(F.min(column).alias("min"), F.max(column).alias("max"), F.mean(column).alias("mean"),
               F.percentile_approx(column, [0.5, 0.95]).alias("p")).collect()[0]  # small: one row
    p = r["p"] or [0, 0]
    return {"min": int(r["min"] or 0), "max": int(r["max"] or 0), "mean": float(r["mean"] or 0.0),
            "p50": int(p[0]), "p95": int(p[1])}


def add_token_ids(df, exp, text_col: str, ids_col: str, how: str, specials: list[str] | None = None,
                  bos_eos: bool = False, vocab_from=None):
    """Tokenise ``text_col``, build its vocabulary over the train split, add ids and a length column.

    The vocabulary comes from train only, so val/test words the model never saw map to <unk> as they
    will at serving time. ``specials=[]`` gives a blank-free vocabulary (CTC targets).
    """
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf

    specials = SPECIALS if specials is None else specials
    max_len = exp.data.text.max_length

    @pandas_udf("array<string>")
    def toks(s: pd.Series) -> pd.Series:
        return s.map(lambda t: tokenize(t, how)[:max_len] if t is not None else [])

    tmp = f"_{ids_col}_tokens"
    df = df.withColumn(tmp, toks(F.col(text_col)))
    vocab = build_vocab(df.filter(F.col("split") == "train") if vocab_from is None else vocab_from(df), tmp,
                        exp.data.text.min_count, exp.data.text.max_size, specials)
    index = {t: i for i, t in enumerate(vocab)}
    unk = index.get("<unk>", -1)

    @pandas_udf("array<int>")
    def ids(s: pd.Series) -> pd.Series:
        def one(tokens):
            out = [index.get(t, unk) for t in tokens]
            return [BOS] + out + [EOS] if bos_eos else out
        return s.map(one)

    df = df.withColumn(ids_col, ids(F.col(tmp))).drop(tmp)
    length_col = "length" if ids_col == "token_ids" else ids_col.replace("_ids", "_length")
    df = df.withColumn(length_col, F.size(ids_col).cast("int"))
    return df, vocab, length_stats(df.filter(F.col("split") == "train"), length_col)


def finish(spark, exp, good, label_names: list[str], totals, *, pairs: bool = False) -> tuple[Any, dict[str, Any]]:
    """Token ids and vocabularies; ``pairs``: target ids too (seq2seq), else label ids (classification)."""
    df, vocab, lengths = add_token_ids(good, exp, "text", "token_ids", exp.data.text.tokenizer)
    extra: dict[str, Any] = {"vocab": {"text": vocab}, "lengths": {"text": lengths},
                             "specials": {"pad": PAD, "unk": UNK, "bos": BOS, "eos": EOS},
                             "shape": {"max_length": exp.data.text.max_length}}
    cols = ["id", "source", "text", "token_ids", "length"]
    if pairs:
        df, tvocab, tlengths = add_token_ids(df, exp, "target", "target_ids", exp.data.text.target_tokenizer,
                                             bos_eos=True)
        extra["vocab"]["target"] = tvocab
        extra["lengths"]["target"] = tlengths
        extra["task"] = "seq2seq"
        cols += ["target", "target_ids", "target_length"]
    else:
        df = df.withColumn("label", label_ids(label_names))
        extra["task"] = "classification"
        cols += ["label", "label_name"]
    return df.select("split", *cols), extra
