"""Error rates and BLEU as sums, so ranks can allreduce them and divide once (as ``evaluation`` does).

The counting is done by well-kept libraries, imported lazily inside the functions that evaluation calls:
edit distances by jiwer (``process_words``), BLEU by sacreBLEU. Everything under ``models/`` travels
inside every logged MLflow model, which must load and score where only torch and numpy exist, so no
module here imports either library at its top, and scoring (``Task.outputs``) never calls these.

Error rates work on token-id lists (``PAD``/``BOS``/``EOS`` stripped by the caller). BLEU works on
detokenised text (the ids joined to strings with the task's vocabulary and joiner, ``<unk>`` written as
``⁇``: ``tasks.sequence.bleu_text``), as sacreBLEU
figures are computed: per batch the 10 corpus statistics sacreBLEU sums over segments, in its order
``[sys_len, ref_len, correct_1..4, total_1..4]``; the ranks add those arrays, and ``bleu`` turns the
sum into sacreBLEU's corpus score (0-100) with ``BLEU.compute_bleu``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import numpy as np

BLEU_ORDER = 4
BLEU_SMOOTH = "exp"        # sacrebleu.corpus_bleu's default, so our figure equals its figure


def ids_as_words(seq: Sequence[int]) -> str:
    """One sentence of ids as a string of distinct words jiwer can align (``t12 t7 t7``): reversible."""
    return " ".join(f"t{int(t)}" for t in seq)


def error_rate_sums(hyps: Sequence[Sequence[int]], refs: Sequence[Sequence[int]]) -> dict[str, float]:
    """Token error rate pieces (edits over reference tokens) and whole-sequence errors (WER on words).

    ``edits`` is the Levenshtein distance summed over rows (substitutions, deletions, insertions, each
    cost 1), computed by ``jiwer.process_words`` on the ids written as words; ``seq_errors`` counts rows
    with any edit. The same keys and values as a hand-written Levenshtein (tests/test_metric_libraries.py).
    """
    out = {"edits": 0.0, "ref_tokens": 0.0, "seq_errors": 0.0, "seqs": float(len(refs))}
    if not len(refs):
        return out
    import jiwer

    got = jiwer.process_words([ids_as_words(r) for r in refs], [ids_as_words(h) for h in hyps])
    out["edits"] = float(got.substitutions + got.deletions + got.insertions)
    out["ref_tokens"] = float(sum(len(r) for r in refs))
    out["seq_errors"] = float(sum(any(c.type != "equal" for c in row) for row in got.alignments))
    return out


def bleu_tokenize(joiner: str) -> str:
    """sacreBLEU's tokenizer for a task's output text.

    Word-level output (joiner ``" "``) uses sacreBLEU's default ``13a``, the one published figures use.
    Character-level output (joiner ``""``, e.g. a char tokenizer's captions) has no spaces to split
    words on; ``13a`` would make each sentence one "word" and BLEU all-or-nothing, so it uses ``char``
    (BLEU over character n-grams): comparable with other char-tokenised sacreBLEU figures only, which the
    signature (``tok:char``) says.
    """
    return "13a" if joiner else "char"


@lru_cache(maxsize=None)
def _metric(tokenize: str) -> Any:
    from sacrebleu.metrics import BLEU

    # force: our references are the prepared tokens joined again, so "text that looks tokenised" is expected
    return BLEU(tokenize=tokenize, smooth_method=BLEU_SMOOTH, max_ngram_order=BLEU_ORDER, force=True)


def bleu_sums(hyps: Sequence[str], refs: Sequence[str], tokenize: str = "13a") -> np.ndarray:
    """sacreBLEU's corpus statistics of detokenised hypotheses against one reference each.

    One float64 array ``[sys_len, ref_len, correct_1..4, total_1..4]`` (sacreBLEU's order): sums over
    sentences, so halves of a corpus add up to the whole and the array allreduces like the confusion matrix.
    """
    if not len(refs):
        return np.zeros(2 * BLEU_ORDER + 2)
    score = _metric(tokenize).corpus_score(list(hyps), [list(refs)])
    return np.asarray([score.sys_len, score.ref_len, *score.counts, *score.totals], dtype=np.float64)


def bleu(sums: np.ndarray) -> float:
    """sacreBLEU corpus BLEU-4 (0-100, exponential smoothing, brevity penalty) of summed ``bleu_sums``."""
    from sacrebleu.metrics import BLEU

    sums = np.asarray(sums)
    return float(BLEU.compute_bleu(correct=[int(c) for c in sums[2:2 + BLEU_ORDER]],
                                   total=[int(t) for t in sums[2 + BLEU_ORDER:2 + 2 * BLEU_ORDER]],
                                   sys_len=int(sums[0]), ref_len=int(sums[1]), smooth_method=BLEU_SMOOTH,
                                   max_ngram_order=BLEU_ORDER).score)


def bleu_signature(joiner: str = " ") -> str:
    """sacreBLEU's signature of the BLEU ``bleu`` reports for a task with this joiner, e.g.
    ``nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0``: log it beside the figure."""
    metric = _metric(bleu_tokenize(joiner))
    metric.corpus_score(["a"], [["a"]])       # the signature needs one scored corpus (it records nrefs)
    return str(metric.get_signature())
