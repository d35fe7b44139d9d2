"""Error rates and BLEU as sums, so ranks can allreduce them and divide once (as ``evaluation`` does).

Sequences are lists (or 1-d arrays) of token ids; ``PAD``/``BOS``/``EOS`` are stripped by the caller.
Numpy and plain Python only: the ranks, the scorer and the tests share these.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np

BLEU_ORDER = 4


def edit_distance(hyp: Sequence[int], ref: Sequence[int]) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1); one numpy row per ref token."""
    hyp, ref = list(hyp), list(ref)
    if not ref:
        return len(hyp)
    if not hyp:
        return len(ref)
    h = np.asarray(hyp)
    prev = np.arange(len(h) + 1)
    for i, r in enumerate(ref, start=1):
        sub = prev[:-1] + (h != r)
        cur = np.empty_like(prev)
        cur[0] = i
        cur[1:] = np.minimum(sub, prev[1:] + 1)
        # insertions run left to right; a cumulative min over (cur[j] - j) resolves them in one pass
        cur = np.minimum.accumulate(cur - np.arange(len(cur))) + np.arange(len(cur))
        prev = cur
    return int(prev[-1])


def error_rate_sums(hyps: Sequence[Sequence[int]], refs: Sequence[Sequence[int]]) -> dict[str, float]:
    """Token error rate pieces (edits over reference tokens) and whole-sequence errors (WER on words)."""
    edits = tokens = wrong = 0
    for hyp, ref in zip(hyps, refs):
        d = edit_distance(hyp, ref)
        edits += d
        tokens += len(ref)
        wrong += int(d > 0)
    return {"edits": float(edits), "ref_tokens": float(tokens), "seq_errors": float(wrong), "seqs": float(len(refs))}


def bleu_sums(hyps: Sequence[Sequence[int]], refs: Sequence[Sequence[int]], order: int = BLEU_ORDER) -> np.ndarray:
    """Corpus BLEU pieces: clipped n-gram matches and totals per order, hypothesis and reference lengths.

    One float64 array of length ``2 * order + 2`` so it allreduces like the confusion matrix.
    """
    out = np.zeros(2 * order + 2)
    for hyp, ref in zip(hyps, refs):
        hyp, ref = list(hyp), list(ref)
        for n in range(1, order + 1):
            h = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
            r = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
            out[n - 1] += sum(min(c, r[g]) for g, c in h.items())
            out[order + n - 1] += max(len(hyp) - n + 1, 0)
        out[2 * order] += len(hyp)
        out[2 * order + 1] += len(ref)
    return out


def bleu(sums: np.ndarray, order: int = BLEU_ORDER) -> float:
    """Corpus BLEU-``order`` (Papineni et al. 2002) with the brevity penalty; 0 when any order has no match."""
    matches, totals = sums[:order], sums[order:2 * order]
    hyp_len, ref_len = sums[2 * order], sums[2 * order + 1]
    if hyp_len == 0 or np.any(matches == 0):
        return 0.0
    log_p = float(np.mean(np.log(matches / np.maximum(totals, 1))))
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_p)
