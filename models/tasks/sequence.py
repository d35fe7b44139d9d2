"""Tasks for sequence families: text classification, seq2seq, captioning and CTC speech recognition.

The same contract as ``tasks`` (tensors, loss, metric sums, scored columns), for models whose input is
a dict of padded tensors (see the sequence families' ``forward``). The loader pads ragged columns to the
chunk's longest row and puts the true lengths beside them as ``<column>__len``; ``tensors`` trims each
batch to its own longest row, so a batch of short sentences costs little even in a long-tailed set.

Each class registers itself (``@register_task``) and declares its data, plots and decoding (see ``base``).
Decoding tasks (seq2seq, captioning, CTC) evaluate with real decoding (greedy, or beam search with
``beam`` > 1), not teacher forcing: the error rate and BLEU they report are what a user of the
registered model gets. Error rates come from jiwer, BLEU from sacreBLEU on the detokenised text (0-100,
signature from ``sequence_metrics.bleu_signature(task.joiner)``); both libraries are imported only when a
metric is computed, never when a logged model is loaded or scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..sequence_metrics import bleu, bleu_signature, bleu_sums, bleu_tokenize, error_rate_sums
from .base import Batch, Task, images_to_tensor, register_task
from .vision import ClassificationTask

PAD, UNK, BOS, EOS = 0, 1, 2, 3


def trimmed(batch: Batch, column: str, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded column cut to this batch's longest row, and its lengths."""
    lengths = np.asarray(batch[f"{column}__len"])
    width = max(int(lengths.max()) if len(lengths) else 1, 1)
    values = torch.from_numpy(np.ascontiguousarray(batch[column][:, :width])).to(device, non_blocking=True)
    return values, torch.from_numpy(lengths.astype(np.int64)).to(device, non_blocking=True)


def strip_ids(ids: np.ndarray, length: int | None = None) -> list[int]:
    """Token ids of one hypothesis or reference: up to ``length`` and before the first EOS, no PAD/BOS."""
    seq = ids[:length] if length is not None else ids
    out: list[int] = []
    for t in seq.tolist():
        if t == EOS:
            break
        if t not in (PAD, BOS):
            out.append(t)
    return out


def join_tokens(ids: list[int], vocab: tuple[str, ...], joiner: str) -> str:
    return joiner.join(vocab[i] if 0 <= i < len(vocab) else "<unk>" for i in ids)


def bleu_text(ids: list[int], vocab: tuple[str, ...], joiner: str) -> str:
    """The text BLEU reads: ``join_tokens``, but an unknown word is SentencePiece's one-character ``⁇``
    (U+2047), one token for any sacreBLEU tokenizer; ``<unk>`` would be three under ``13a`` (``< unk >``)
    and inflate the reference length of a set with out-of-vocabulary words."""
    return joiner.join(vocab[i] if 0 <= i < len(vocab) and i != UNK else "\u2047" for i in ids)


@register_task
@dataclass(frozen=True)
class TextClassificationTask(ClassificationTask):
    """Many-to-one: a token sequence -> a class (sentence polarity). Metrics and scored columns are those
    of image classification; the input is token ids with their lengths."""

    name: ClassVar[str] = "text_classification"
    modality: ClassVar[str] = "text"
    data_hint: ClassVar[str] = "a labelled text table (see conf/pang_lee_polarity.yaml)"
    plots: ClassVar[tuple[str, ...]] = ("confusion", "reliability")
    baseline: ClassVar[str | None] = "tfidf_logistic_regression"
    columns: ClassVar[tuple[str, ...]] = ("token_ids", "label")
    sort_key: ClassVar[str | None] = "token_ids__len"
    input_columns: ClassVar[tuple[str, ...]] = ("token_ids",)

    def model_inputs(self, batch: Batch, device: torch.device | str) -> dict[str, torch.Tensor]:
        tokens, lengths = trimmed(batch, "token_ids", device)
        return {"tokens": tokens, "lengths": lengths}

    def tensors(self, batch: Batch, device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return self.model_inputs(batch, device), torch.from_numpy(batch["label"]).to(device, non_blocking=True)

    def samples(self, logits: torch.Tensor, batch: Batch, n: int) -> dict[str, np.ndarray]:
        confidence, pred = torch.softmax(logits[:n], dim=1).max(1)
        return {"tokens": np.array(batch["token_ids"][:n]), "label": np.array(batch["label"][:n]),
                "prediction": pred.cpu().numpy(), "confidence": confidence.cpu().numpy().astype(np.float64)}


@register_task
@dataclass(frozen=True)
class LanguageModelTask(Task):
    """Unsupervised pre-training on raw text: predict each word from its context (no labels read).

    The model returns per-row sums (``nll``, ``predicted``, ``correct``; see ``BidirectionalLanguageModel``);
    the headline metric is perplexity, exp of the mean negative log-likelihood per predicted word, and
    scoring writes it per row (how surprising a text is to the model: NaN for a one-word text, where
    nothing is predicted).
    """

    name: ClassVar[str] = "language_model"
    modality: ClassVar[str] = "text"
    data_hint: ClassVar[str] = ("a text table; labels are not read (data.source.label_column: null, "
                                "see conf/pang_lee_reviews_lm.yaml)")
    metric: ClassVar[str] = "perplexity"
    higher_is_better: ClassVar[bool] = False
    columns: ClassVar[tuple[str, ...]] = ("token_ids",)
    sort_key: ClassVar[str | None] = "token_ids__len"
    input_columns: ClassVar[tuple[str, ...]] = ("token_ids",)
    output_schema: ClassVar[str] = "perplexity float, predicted_tokens int"

    def model_inputs(self, batch: Batch, device: torch.device | str) -> dict[str, torch.Tensor]:
        tokens, lengths = trimmed(batch, "token_ids", device)
        return {"tokens": tokens, "lengths": lengths}

    def tensors(self, batch: Batch, device: torch.device) -> tuple[dict[str, torch.Tensor], None]:
        return self.model_inputs(batch, device), None     # the text is its own target

    def loss(self, out: dict[str, torch.Tensor], target: None) -> torch.Tensor:
        return out["nll"].sum() / out["predicted"].sum().clamp(min=1.0)

    def empty_sums(self) -> dict[str, float]:
        return {"loss": 0.0, "tokens": 0.0, "correct": 0.0}

    def metric_sums(self, out: dict[str, torch.Tensor], target: None) -> dict[str, float]:
        return {"loss": float(out["nll"].sum()), "tokens": float(out["predicted"].sum()),
                "correct": float(out["correct"].sum())}

    def finish(self, sums: dict[str, float], arrays: dict[str, np.ndarray] | None = None) -> dict[str, float]:
        tokens = max(sums["tokens"], 1.0)
        loss = sums["loss"] / tokens
        return {"loss": loss, "perplexity": float(np.exp(min(loss, 50.0))), "token_accuracy": sums["correct"] / tokens}

    def samples(self, out: dict[str, torch.Tensor], batch: Batch, n: int) -> dict[str, np.ndarray]:
        return {"tokens": np.array(batch["token_ids"][:n])}

    def outputs(self, out: dict[str, torch.Tensor], inputs: Any) -> dict[str, np.ndarray]:
        nll, predicted = out["nll"].cpu().numpy(), out["predicted"].cpu().numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            ppl = np.where(predicted > 0, np.exp(np.minimum(nll / predicted, 50.0)), np.nan)
        return {"perplexity": ppl.astype(np.float32), "predicted_tokens": predicted.astype(np.int32)}


@dataclass(frozen=True)
class _DecodingTask(Task):
    """Shared by tasks whose model writes a token sequence: teacher-forced cross-entropy for training,
    real decoding (``generate``) for evaluation and scoring."""

    target_vocab: tuple[str, ...] = ()
    joiner: str = " "
    beam: int = 1
    max_decode: int = 64
    top_k: int = 1
    metric: ClassVar[str] = "error_rate"
    higher_is_better: ClassVar[bool] = False
    writes_sequences: ClassVar[bool] = True
    decode_top_k: ClassVar[bool] = True
    output_schema: ClassVar[str] = ("prediction_text string, prediction_ids array<int>, score float, "
                                    "top_k_text array<string>, top_k_scores array<float>")
    target_column: ClassVar[str] = "target_ids"

    def source(self, batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def model_inputs(self, batch: Batch, device: torch.device | str) -> dict[str, torch.Tensor]:
        return self.source(batch, device)

    def tensors(self, batch: Batch, device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        x = self.source(batch, device)
        target, _ = trimmed(batch, self.target_column, device)
        x["target_in"] = target[:, :-1]
        return x, target[:, 1:]

    def loss(self, out: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        logits = out["logits"]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=PAD)

    def predict(self, net: Any, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Teacher-forced outputs (for the loss) plus the decoded hypotheses (for the error rate)."""
        out = dict(net(x)) if "target_in" in x else {}
        src = {k: v for k, v in x.items() if k != "target_in"}
        gen = net.generate(src, max_len=self.max_decode, beam=self.beam)
        out.update({f"gen_{k}": v for k, v in gen.items()})
        return out

    def empty_sums(self) -> dict[str, float]:
        return {"loss": 0.0, "tokens": 0.0, "correct": 0.0, "edits": 0.0, "ref_tokens": 0.0, "seq_errors": 0.0,
                "seqs": 0.0}

    def _hyps_refs(self, out: dict[str, torch.Tensor], target: torch.Tensor) -> tuple[list[list[int]], list[list[int]]]:
        ids, lens = out["gen_ids"][:, 0].cpu().numpy(), out["gen_lengths"][:, 0].cpu().numpy()
        refs = [strip_ids(t) for t in target.cpu().numpy()]
        return [strip_ids(ids[i], int(lens[i])) for i in range(len(ids))], refs

    def metric_sums(self, out: dict[str, torch.Tensor], target: torch.Tensor) -> dict[str, float]:
        sums = self.empty_sums()
        if "logits" in out:
            logits = out["logits"]
            flat = target.reshape(-1)
            real = flat != PAD
            sums["loss"] = float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), flat, ignore_index=PAD,
                                                 reduction="sum"))
            sums["tokens"] = float(real.sum())
            sums["correct"] = float(((logits.argmax(-1).reshape(-1) == flat) & real).sum())
        if "gen_ids" in out:
            sums.update(error_rate_sums(*self._hyps_refs(out, target)))
        return sums

    def empty_arrays(self) -> dict[str, np.ndarray]:
        return {"bleu": np.zeros(10)}

    def detail_arrays(self, out: dict[str, torch.Tensor], target: torch.Tensor) -> dict[str, np.ndarray]:
        """sacreBLEU's corpus statistics of this batch, on the ids joined to text with the target vocabulary."""
        if "gen_ids" not in out:
            return {}
        hyps, refs = self._hyps_refs(out, target)
        if self.target_vocab:
            text = lambda rows: [bleu_text(r, self.target_vocab, self.joiner) for r in rows]  # noqa: E731
            return {"bleu": bleu_sums(text(hyps), text(refs), bleu_tokenize(self.joiner))}
        words = lambda rows: [" ".join(map(str, r)) for r in rows]  # noqa: E731   no vocabulary: ids as words
        return {"bleu": bleu_sums(words(hyps), words(refs), "13a")}

    def metric_params(self) -> dict[str, str]:
        """What to log beside the metrics as run parameters: sacreBLEU's signature of ``bleu``."""
        return {"bleu_signature": bleu_signature(self.joiner)}

    def finish(self, sums: dict[str, float], arrays: dict[str, np.ndarray] | None = None) -> dict[str, float]:
        tokens = max(sums["tokens"], 1.0)
        out = {"loss": sums["loss"] / tokens, "token_accuracy": sums["correct"] / tokens}
        if sums["seqs"]:
            out["error_rate"] = sums["edits"] / max(sums["ref_tokens"], 1.0)
            out["sequence_error_rate"] = sums["seq_errors"] / sums["seqs"]
        if arrays and "bleu" in arrays and arrays["bleu"][0] > 0:     # [0]: words (or chars) decoded
            out["bleu"] = bleu(arrays["bleu"])
        return out

    def samples(self, out: dict[str, torch.Tensor], batch: Batch, n: int) -> dict[str, Any]:
        got: dict[str, Any] = {"target": [strip_ids(t) for t in np.asarray(batch[self.target_column][:n])]}
        if "token_ids" in batch:
            lengths = np.asarray(batch["token_ids__len"][:n])
            got["source"] = [np.asarray(batch["token_ids"][i, :lengths[i]]).tolist() for i in range(len(lengths))]
        if "gen_ids" in out:
            ids, lens = out["gen_ids"][:n, 0].cpu().numpy(), out["gen_lengths"][:n, 0].cpu().numpy()
            got["hypothesis"] = [strip_ids(ids[i], int(lens[i])) for i in range(len(ids))]
            if "gen_attention" in out:
                got["attention"] = out["gen_attention"][:n].float().cpu().numpy()
        return got

    def outputs(self, out: dict[str, torch.Tensor], inputs: Any) -> dict[str, np.ndarray]:
        ids, lens, scores = (out[f"gen_{k}"].cpu().numpy() for k in ("ids", "lengths", "scores"))
        k = min(self.top_k, ids.shape[1])
        hyps = [[strip_ids(ids[i, j], int(lens[i, j])) for j in range(k)] for i in range(len(ids))]
        texts = [[join_tokens(h, self.target_vocab, self.joiner) for h in row] for row in hyps]
        return {"prediction_text": np.array([row[0] for row in texts], dtype=object),
                "prediction_ids": _object_rows([row[0] for row in hyps]),
                "score": scores[:, 0].astype(np.float32),
                "top_k_text": _object_rows(texts),
                "top_k_scores": _object_rows([list(map(float, s[:k])) for s in scores])}


def _object_rows(rows: list[Any]) -> np.ndarray:
    """A 1-d object array whose items are lists (numpy would otherwise build a 2-d array)."""
    arr = np.empty(len(rows), dtype=object)
    arr[:] = rows
    return arr


@register_task
@dataclass(frozen=True)
class Seq2SeqTask(_DecodingTask):
    """Many-to-many (grapheme to phoneme, translation): an encoder-decoder writes the target sequence."""

    name: ClassVar[str] = "seq2seq"
    modality: ClassVar[str] = "text"
    data_hint: ClassVar[str] = "text pairs (source kind text_pairs, see conf/cmudict_g2p.yaml)"
    target_tokenizer: ClassVar[str | None] = "target_tokenizer"
    plots: ClassVar[tuple[str, ...]] = ("attention",)
    columns: ClassVar[tuple[str, ...]] = ("token_ids", "target_ids")
    sort_key: ClassVar[str | None] = "token_ids__len"
    input_columns: ClassVar[tuple[str, ...]] = ("token_ids",)

    def source(self, batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
        tokens, lengths = trimmed(batch, "token_ids", device)
        return {"tokens": tokens, "lengths": lengths}


@register_task
@dataclass(frozen=True)
class CaptioningTask(_DecodingTask):
    """One-to-many: an image encoder and a decoder that writes a caption, looking at image regions."""

    name: ClassVar[str] = "captioning"
    data_hint: ClassVar[str] = ("images with captions (data.source.caption_sidecar or caption_column, "
                                "see conf/tuxpaint_captions.yaml)")
    target_tokenizer: ClassVar[str | None] = "tokenizer"
    plots: ClassVar[tuple[str, ...]] = ("caption_attention",)
    metric: ClassVar[str] = "bleu"
    higher_is_better: ClassVar[bool] = True
    columns: ClassVar[tuple[str, ...]] = ("image", "caption_ids")
    sort_key: ClassVar[str | None] = None
    target_column: ClassVar[str] = "caption_ids"
    input_columns: ClassVar[tuple[str, ...]] = ("image",)

    def source(self, batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
        return {"image": images_to_tensor(batch["image"], self.mean, self.std).to(device, non_blocking=True)}

    def samples(self, out: dict[str, torch.Tensor], batch: Batch, n: int) -> dict[str, Any]:
        """The decoded samples plus their pixels, so the report can lay each word's attention over the image."""
        got = super().samples(out, batch, n)
        got["image"] = np.array(batch["image"][:n])
        return got

    def finish(self, sums: dict[str, float], arrays: dict[str, np.ndarray] | None = None) -> dict[str, float]:
        out = super().finish(sums, arrays)
        if sums["seqs"] and "bleu" not in out:
            out["bleu"] = 0.0   # decoded, but every caption empty: BLEU is 0, not missing
        return out


@register_task
@dataclass(frozen=True)
class CTCTask(Task):
    """Speech recognition with CTC: log-mel frames -> per-frame label distributions -> characters.

    The target vocabulary has no blank (the model's last output is the blank); the loss needs no
    alignment between frames and characters. Features are normalised with the set's statistics.
    """

    target_vocab: tuple[str, ...] = ()
    joiner: str = ""
    beam: int = 1
    name: ClassVar[str] = "ctc"
    modality: ClassVar[str] = "audio"
    data_hint: ClassVar[str] = "audio with transcripts (see conf/klettres_spelling.yaml)"
    writes_sequences: ClassVar[bool] = True
    plots: ClassVar[tuple[str, ...]] = ("char_confusion",)
    metric: ClassVar[str] = "cer"
    higher_is_better: ClassVar[bool] = False
    columns: ClassVar[tuple[str, ...]] = ("features", "target_ids")
    sort_key: ClassVar[str | None] = "features__len"
    input_columns: ClassVar[tuple[str, ...]] = ("features",)
    output_schema: ClassVar[str] = "prediction_text string, prediction_ids array<int>, score float"

    def source(self, batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
        feats, lengths = trimmed(batch, "features", device)
        return {"features": (feats.float() - self.mean) / self.std, "lengths": lengths}

    def model_inputs(self, batch: Batch, device: torch.device | str) -> dict[str, torch.Tensor]:
        return self.source(batch, device)

    def tensors(self, batch: Batch, device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        targets, target_lengths = trimmed(batch, "target_ids", device)
        return self.source(batch, device), {"targets": targets, "target_lengths": target_lengths}

    def loss(self, out: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.ctc_loss(out["log_probs"].float(), target["targets"], out["out_lengths"], target["target_lengths"],
                          blank=out["log_probs"].shape[-1] - 1, reduction="mean", zero_infinity=True)

    def predict(self, net: Any, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(net(x))
        out.update({f"dec_{k}": v for k, v in net.decode(out, beam=self.beam).items()})
        return out

    def empty_sums(self) -> dict[str, float]:
        return {"loss": 0.0, "count": 0.0, "edits": 0.0, "ref_tokens": 0.0, "seq_errors": 0.0, "seqs": 0.0}

    def _hyps_refs(self, out: dict[str, torch.Tensor], target: dict[str, torch.Tensor]):
        ids, lens = out["dec_ids"].cpu().numpy(), out["dec_lengths"].cpu().numpy()
        tgt, tl = target["targets"].cpu().numpy(), target["target_lengths"].cpu().numpy()
        return ([ids[i, :lens[i]].tolist() for i in range(len(ids))], [tgt[i, :tl[i]].tolist() for i in range(len(tgt))])

    def metric_sums(self, out: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, float]:
        per_row = F.ctc_loss(out["log_probs"].float(), target["targets"], out["out_lengths"], target["target_lengths"],
                             blank=out["log_probs"].shape[-1] - 1, reduction="none", zero_infinity=True)
        sums = {**self.empty_sums(), "loss": float(per_row.sum()), "count": float(len(per_row))}
        if "dec_ids" in out:
            sums.update(error_rate_sums(*self._hyps_refs(out, target)))
        return sums

    def empty_arrays(self) -> dict[str, np.ndarray]:
        n = len(self.target_vocab) + 1     # the last row/column is "nothing" (an insertion or a deletion)
        return {"char_confusion": np.zeros((n, n), dtype=np.int64)}

    def detail_arrays(self, out: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        if "dec_ids" not in out:
            return {}
        n = len(self.target_vocab) + 1
        table = np.zeros((n, n), dtype=np.int64)
        for hyp, ref in zip(*self._hyps_refs(out, target)):
            for r, h in aligned_pairs(hyp, ref):
                table[n - 1 if r is None else r, n - 1 if h is None else h] += 1
        return {"char_confusion": table}

    def finish(self, sums: dict[str, float], arrays: dict[str, np.ndarray] | None = None) -> dict[str, float]:
        out = {"loss": sums["loss"] / max(sums["count"], 1.0)}
        if sums["seqs"]:
            out["cer"] = sums["edits"] / max(sums["ref_tokens"], 1.0)
            out["sequence_error_rate"] = sums["seq_errors"] / sums["seqs"]
        return out

    def samples(self, out: dict[str, torch.Tensor], batch: Batch, n: int) -> dict[str, Any]:
        got: dict[str, Any] = {"features": np.array(batch["features"][:n])}
        lengths = np.asarray(batch["target_ids__len"][:n])
        got["target"] = [np.asarray(batch["target_ids"][i, :lengths[i]]).tolist() for i in range(len(lengths))]
        if "dec_ids" in out:
            ids, lens = out["dec_ids"][:n].cpu().numpy(), out["dec_lengths"][:n].cpu().numpy()
            got["hypothesis"] = [ids[i, :lens[i]].tolist() for i in range(len(ids))]
        return got

    def outputs(self, out: dict[str, torch.Tensor], inputs: Any) -> dict[str, np.ndarray]:
        ids, lens, scores = (out[f"dec_{k}"].cpu().numpy() for k in ("ids", "lengths", "scores"))
        hyps = [ids[i, :lens[i]].tolist() for i in range(len(ids))]
        return {"prediction_text": np.array([join_tokens(h, self.target_vocab, self.joiner) for h in hyps], dtype=object),
                "prediction_ids": _object_rows(hyps), "score": scores.astype(np.float32)}


def aligned_pairs(hyp: list[int], ref: list[int]) -> list[tuple[int | None, int | None]]:
    """(reference, hypothesis) token pairs along one minimal edit alignment (jiwer's); None marks an
    insertion or a deletion. Feeds the character confusion table (which letters a speaker's recordings
    turn into). Evaluation only: jiwer is imported here, never when a logged model scores."""
    import jiwer

    from ..sequence_metrics import ids_as_words

    if not ref and not hyp:
        return []
    pairs: list[tuple[int | None, int | None]] = []
    for c in jiwer.process_words(ids_as_words(ref), ids_as_words(hyp)).alignments[0]:
        r, h = ref[c.ref_start_idx:c.ref_end_idx], hyp[c.hyp_start_idx:c.hyp_end_idx]
        if c.type in ("equal", "substitute"):
            pairs += zip(r, h)
        elif c.type == "delete":
            pairs += [(t, None) for t in r]
        else:
            pairs += [(None, t) for t in h]
    return pairs
