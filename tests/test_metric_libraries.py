"""The metrics the zoo reports are the well-kept libraries' figures (issue #20).

BLEU is sacreBLEU's corpus BLEU on detokenised text, summed per batch so ranks can allreduce it; edit
distances come from jiwer and equal a brute-force Levenshtein; our ECE and confusion matrix equal
torchmetrics'. A logged model never needs these libraries: loading and scoring import none of them.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from sparkzoo.models.evaluation import calibration_sums, confusion, expected_calibration_error
from sparkzoo.models.sequence_metrics import bleu, bleu_signature, bleu_sums, error_rate_sums
from sparkzoo.models.tasks import make_task

WORDS = "the a cat dog sat ran on under mat rug red blue big small".split()


def _sentences(rng: np.random.Generator, n: int, joiner: str = " ") -> list[str]:
    return [joiner.join(rng.choice(WORDS, size=rng.integers(0, 12)).tolist()) for _ in range(n)]


def _noisy(rng: np.random.Generator, refs: list[str]) -> list[str]:
    """Hypotheses that share many n-grams with their references (a word dropped, swapped or added)."""
    out = []
    for ref in refs:
        words = ref.split()
        for _ in range(rng.integers(0, 3)):
            op, i = rng.integers(0, 3), int(rng.integers(0, len(words) + 1))
            if op == 0 and words:
                del words[min(i, len(words) - 1)]
            elif op == 1 and words:
                words[min(i, len(words) - 1)] = str(rng.choice(WORDS))
            else:
                words.insert(i, str(rng.choice(WORDS)))
        out.append(" ".join(words))
    return out


@pytest.mark.parametrize("tokenize", ["13a", "char"])
def test_bleu_sums_over_halves_equal_sacrebleu_corpus_bleu(tokenize: str) -> None:
    sacrebleu = pytest.importorskip("sacrebleu")
    rng = np.random.default_rng(3)
    refs = _sentences(rng, 60) + ["the cat sat on the mat ."]
    hyps = _noisy(rng, refs[:-1]) + ["the cat sat on a mat ."]
    half = len(refs) // 2
    total = bleu_sums(hyps[:half], refs[:half], tokenize) + bleu_sums(hyps[half:], refs[half:], tokenize)
    assert total.shape == (10,)
    want = sacrebleu.corpus_bleu(hyps, [refs], tokenize=tokenize).score
    assert bleu(total) == pytest.approx(want, abs=1e-9)
    assert 5.0 < bleu(total) < 100.0      # the 0-100 scale of published figures


def test_bleu_signature_names_the_tokenizer_and_version() -> None:
    sacrebleu = pytest.importorskip("sacrebleu")
    assert bleu_signature(" ") == f"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{sacrebleu.__version__}"
    assert "tok:char" in bleu_signature("")


def test_decoding_task_reports_sacrebleu_on_detokenised_text() -> None:
    """A decoding task's BLEU equals sacreBLEU on its ids joined with the target vocabulary (an unknown
    word written as the one token ⁇, not ``<unk>``, which 13a splits into three)."""
    sacrebleu = pytest.importorskip("sacrebleu")
    vocab = ("<pad>", "<unk>", "<s>", "</s>", *WORDS)
    task = make_task("seq2seq", 0, target_vocab=vocab, joiner=" ")
    rng = np.random.default_rng(5)
    n, width = 12, 9
    target = np.zeros((n, width + 1), dtype=np.int64)
    gen = np.zeros((n, 1, width), dtype=np.int64)
    lens = np.zeros((n, 1), dtype=np.int64)
    for i in range(n):
        ref = rng.integers(4, len(vocab), size=rng.integers(3, width - 1))
        if i % 3 == 0:
            ref[-1] = 1                        # an out-of-vocabulary word in the reference: <unk>
        target[i, :len(ref) + 1] = [*ref, 3]
        hyp = ref.copy()
        hyp[rng.integers(0, len(hyp))] = rng.integers(4, len(vocab))
        gen[i, 0, :len(hyp)] = hyp
        lens[i, 0] = len(hyp)
    arrays = task.empty_arrays()
    for rows in (slice(0, 5), slice(5, n)):    # two batches (or two ranks), summed
        out = {"gen_ids": torch.from_numpy(gen[rows]), "gen_lengths": torch.from_numpy(lens[rows])}
        arrays["bleu"] = arrays["bleu"] + task.detail_arrays(out, torch.from_numpy(target[rows]))["bleu"]
    sums = {**task.empty_sums(), "seqs": float(n)}
    text = lambda ids: " ".join("\u2047" if t == 1 else vocab[t] for t in ids if t not in (0, 2, 3))  # noqa: E731
    want = sacrebleu.corpus_bleu([text(gen[i, 0, :lens[i, 0]]) for i in range(n)], [[text(t) for t in target]]).score
    assert task.finish(sums, arrays)["bleu"] == pytest.approx(want, abs=1e-9)
    assert arrays["bleu"][1] == (target > 3).sum() + (target == 1).sum()   # <unk> is one reference word
    assert task.metric_params() == {"bleu_signature": bleu_signature(" ")}


def _levenshtein(a: list[int], b: list[int]) -> int:
    """Brute-force reference: the textbook dynamic programme."""
    d = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        prev, d[0] = d[0], i
        for j, y in enumerate(b, start=1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x != y))
    return d[-1]


def test_error_rate_sums_equal_brute_force_levenshtein() -> None:
    rng = np.random.default_rng(11)
    hyps, refs = [], []
    for _ in range(300):
        refs.append(rng.integers(0, 40, size=rng.integers(0, 15)).tolist())
        hyps.append(rng.integers(0, 40, size=rng.integers(0, 15)).tolist() if rng.random() < 0.5
                    else [t if rng.random() < 0.8 else int(rng.integers(0, 40)) for t in refs[-1]])
    hyps += [[], [1, 2], [7, 7, 7]]
    refs += [[], [], [7, 7, 7]]
    got = error_rate_sums(hyps, refs)
    dists = [_levenshtein(h, r) for h, r in zip(hyps, refs)]
    assert got == {"edits": float(sum(dists)), "ref_tokens": float(sum(map(len, refs))),
                   "seq_errors": float(sum(d > 0 for d in dists)), "seqs": float(len(refs))}
    assert error_rate_sums([], []) == {"edits": 0.0, "ref_tokens": 0.0, "seq_errors": 0.0, "seqs": 0.0}


def test_ece_and_confusion_equal_torchmetrics() -> None:
    tm = pytest.importorskip("torchmetrics.classification")
    rng = np.random.default_rng(7)
    n, k = 3000, 6
    probs = torch.softmax(torch.from_numpy(rng.normal(size=(n, k)) * 2.0), dim=1)
    target = torch.from_numpy(rng.integers(0, k, size=n))
    confidence, pred = probs.max(1)
    ours = expected_calibration_error(calibration_sums(confidence.numpy(), (pred == target).numpy()))
    theirs = tm.MulticlassCalibrationError(num_classes=k, n_bins=15, norm="l1")(probs.float(), target)
    assert ours == pytest.approx(float(theirs), abs=1e-5)
    np.testing.assert_array_equal(confusion(pred.numpy(), target.numpy(), k),
                                  tm.MulticlassConfusionMatrix(num_classes=k)(pred, target).numpy())


def test_loading_and_scoring_a_model_needs_none_of_the_metric_libraries() -> None:
    """models/ travels inside every logged model: building a decoding task and writing its outputs must
    not import sacrebleu, jiwer or torchmetrics (they are imported only when a metric is computed)."""
    code = """
import sys, numpy as np, torch
import sparkzoo.models, sparkzoo.models.sequence_metrics, sparkzoo.models.evaluation
from sparkzoo.models.tasks import make_task
task = make_task("captioning", 0, target_vocab=("<pad>", "<unk>", "<s>", "</s>", "a", "cat"), joiner=" ")
out = {"gen_ids": torch.tensor([[[4, 5, 3]]]), "gen_lengths": torch.tensor([[2]]), "gen_scores": torch.tensor([[-0.5]])}
assert task.outputs(out, None)["prediction_text"][0] == "a cat"
loaded = sorted(m for m in ("sacrebleu", "jiwer", "torchmetrics", "rapidfuzz") if m in sys.modules)
print(loaded)
sys.exit(1 if loaded else 0)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ctc_alignment_pairs_are_a_minimal_edit_alignment() -> None:
    """The character confusion table's pairs (jiwer's alignment) cover both sequences in order and cost
    exactly the Levenshtein distance."""
    from sparkzoo.models.tasks.sequence import aligned_pairs

    rng = np.random.default_rng(2)
    for _ in range(300):
        ref = rng.integers(0, 6, size=rng.integers(0, 10)).tolist()
        hyp = rng.integers(0, 6, size=rng.integers(0, 10)).tolist()
        pairs = aligned_pairs(hyp, ref)
        assert [r for r, _ in pairs if r is not None] == ref and [h for _, h in pairs if h is not None] == hyp
        assert sum(r != h for r, h in pairs) == _levenshtein(hyp, ref)
