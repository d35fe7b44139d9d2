"""Recurrent text classifiers (many-to-one): vanilla RNN, LSTM, GRU, and their bidirectional forms.

A hidden layer fed back to itself carries memory along the sequence; trained through time, a vanilla
RNN's gradients shrink step by step (the talk's vanishing gradients), which the gated LSTM and GRU
cells were built to avoid. Bidirectional nets read the sentence both ways, so every position sees
both contexts. Padded positions never enter the recurrence (packed sequences), so a sentence gets the
same prediction whatever it was batched with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .registry import InputSpec, register

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


@dataclass(frozen=True)
class RecurrentConfig:
    cell: Literal["rnn", "lstm", "gru"] = "lstm"
    bidirectional: bool = False
    embed: int = 128
    hidden: int = 128
    layers: int = 1
    dropout: float = 0.4
    pooling: str = "max"          # max | mean | last: how the sequence of states becomes one vector
    embed_dropout: float = 0.0    # dropout on the word vectors: few labelled sentences, many words to memorise
    embed_init: float = 0.0       # > 0: word vectors start uniform in +-embed_init (the LM's scale); 0 = N(0, 1)


class RecurrentClassifier(nn.Module):
    def __init__(self, spec: InputSpec, cfg: RecurrentConfig) -> None:
        super().__init__()
        if cfg.cell not in CELLS:
            raise ValueError(f"unknown cell '{cfg.cell}'; choose one of: {', '.join(CELLS)}")
        if cfg.pooling not in ("max", "mean", "last"):
            raise ValueError(f"unknown pooling '{cfg.pooling}'; choose one of: max, mean, last")
        self.cfg = cfg
        self.embedding = nn.Embedding(spec.vocab_size, cfg.embed, padding_idx=0)
        if cfg.embed_init > 0:
            _uniform_embeddings(self.embedding, cfg.embed_init)
        self.embed_drop = nn.Dropout(cfg.embed_dropout)
        extra = {"nonlinearity": "tanh"} if cfg.cell == "rnn" else {}
        self.rnn = CELLS[cfg.cell](cfg.embed, cfg.hidden, num_layers=cfg.layers, batch_first=True,
                                   bidirectional=cfg.bidirectional, dropout=cfg.dropout if cfg.layers > 1 else 0.0,
                                   **extra)
        width = cfg.hidden * (2 if cfg.bidirectional else 1)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(width, spec.num_classes))

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens, lengths = inputs["tokens"], inputs["lengths"].clamp(min=1)
        x = self.embed_drop(self.embedding(tokens))
        if bool((lengths == tokens.shape[1]).all()):
            # No padding (a scorer's chunk of equal lengths): the same recurrence, bit for bit, without
            # packing, which cost the BiLSTM 40% of its rows/s at 64 rows of 20 tokens (one thread).
            states, last = self.rnn(x)
            return self.head(self._pool(states, last, None, lengths))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        states, last = self.rnn(packed)
        return self.head(self._pool(states, last, tokens.shape[1], lengths))

    def _pool(self, states, last, width: int | None, lengths: torch.Tensor) -> torch.Tensor:
        """One vector per sentence; ``width`` None: ``states`` is a dense (n, t, features) tensor with no padding."""
        if self.cfg.pooling == "last":
            h = last[0] if isinstance(last, tuple) else last          # (layers * dirs, n, hidden)
            dirs = 2 if self.cfg.bidirectional else 1
            return torch.cat([h[-d] for d in range(dirs, 0, -1)], dim=1)
        if width is None:
            if self.cfg.pooling == "max":
                return states.amax(dim=1)
            return states.sum(dim=1) / lengths[:, None].to(states.dtype)
        out, _ = pad_packed_sequence(states, batch_first=True, total_length=width)
        real = (torch.arange(width, device=out.device)[None, :] < lengths[:, None]).unsqueeze(-1)
        if self.cfg.pooling == "max":
            return out.masked_fill(~real, float("-inf")).amax(dim=1)
        return (out * real).sum(dim=1) / lengths[:, None].to(out.dtype)


def _uniform_embeddings(table: nn.Embedding, scale: float) -> None:
    """Word vectors uniform in +-scale (padding row zero). torch's N(0, 1) start is so large that a few
    hundred Adam steps of pre-training barely move it: the learned part must dominate what is copied."""
    with torch.no_grad():
        nn.init.uniform_(table.weight, -scale, scale)
        table.weight[0].zero_()


def _create_recurrent(spec: InputSpec, **params) -> RecurrentClassifier:
    return RecurrentClassifier(spec, RecurrentConfig(**params))


def _builder(cell: str, bidirectional: bool):
    def build(spec: InputSpec, *, embed: int | None = None, hidden: int | None = None, layers: int | None = None,
              dropout: float | None = None, pooling: str | None = None,
              embed_dropout: float | None = None, embed_init: float | None = None) -> RecurrentClassifier:
        params = {"embed": embed, "hidden": hidden, "layers": layers, "dropout": dropout, "pooling": pooling,
                  "embed_dropout": embed_dropout, "embed_init": embed_init}
        return _create_recurrent(spec, cell=cell, bidirectional=bidirectional,
                                 **{k: v for k, v in params.items() if v is not None})

    build.__doc__ = f"{'Bidirectional ' if bidirectional else ''}{cell.upper()} text classifier."
    return build


for _name, _cell, _bi in (("rnn", "rnn", False), ("lstm", "lstm", False), ("gru", "gru", False),
                          ("birnn", "rnn", True), ("bilstm", "lstm", True), ("bigru", "gru", True)):
    register(_name, task="text_classification", config=RecurrentConfig)(_builder(_cell, _bi))


@dataclass(frozen=True)
class LanguageModelConfig:
    embed: int = 128
    hidden: int = 128
    layers: int = 1
    dropout: float = 0.3
    output_vocab: int = 4000      # most frequent words the softmax predicts (rarer ones are <unk>); 0 = all
    chunk: int = 8192             # positions per softmax block: bounds evaluation memory on long texts
    embed_init: float = 0.1       # word vectors start uniform in +-embed_init (see _uniform_embeddings)


class BidirectionalLanguageModel(nn.Module):
    """ELMo-style bidirectional LSTM language model: the forward states predict the next word, the
    backward states the previous one, through one softmax shared by both directions.

    It exists to pre-train on unlabelled text (the talk's RBM/DBN lesson in modern form): ``embedding``
    and ``rnn`` have the names and shapes of the BiLSTM classifier's (same ``embed``/``hidden``/``layers``),
    so ``model.init_from`` copies them into a classifier, embeddings mapped by token. The softmax covers
    only the ``output_vocab`` most frequent words (the vocabulary is ordered by count): the input side
    keeps the whole vocabulary, whose rows are what a classifier reuses, while the output side stays
    cheap enough for CPUs.

    ``forward`` returns per-row sums, not logits: ``nll`` (summed negative log-likelihood of every
    predicted word, both directions), ``predicted`` (how many) and ``correct`` (argmax hits), so a batch
    of long texts never holds (rows x positions x vocabulary) logits at once outside autograd.
    """

    def __init__(self, spec: InputSpec, cfg: LanguageModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(spec.vocab_size, cfg.embed, padding_idx=0)
        _uniform_embeddings(self.embedding, cfg.embed_init)
        self.rnn = nn.LSTM(cfg.embed, cfg.hidden, num_layers=cfg.layers, batch_first=True, bidirectional=True,
                           dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.drop = nn.Dropout(cfg.dropout)
        self.output_size = min(cfg.output_vocab or spec.vocab_size, spec.vocab_size)
        self.decoder = nn.Linear(cfg.hidden, self.output_size)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tokens, lengths = inputs["tokens"], inputs["lengths"].clamp(min=1)
        n, width = tokens.shape
        x = self.drop(self.embedding(tokens))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=width)
        out = self.drop(out)
        h = self.cfg.hidden
        # position t < length - 1: forward state t predicts token t + 1, backward state t + 1 predicts token t
        valid = (torch.arange(width - 1, device=tokens.device)[None, :] + 1) < lengths[:, None]
        states = torch.cat([out[:, :-1, :h][valid], out[:, 1:, h:][valid]])
        targets = torch.cat([tokens[:, 1:][valid], tokens[:, :-1][valid]])
        targets = targets.masked_fill(targets >= self.output_size, 1)          # outside the softmax: <unk>
        rows = torch.arange(n, device=tokens.device)[:, None].expand(n, width - 1)[valid].repeat(2)
        nll = out.new_zeros(n)
        correct = out.new_zeros(n)
        for start in range(0, len(targets), self.cfg.chunk):
            part = slice(start, start + self.cfg.chunk)
            logits = self.decoder(states[part])
            nll = nll.index_add(0, rows[part], nn.functional.cross_entropy(logits, targets[part], reduction="none"))
            hits = (logits.detach().argmax(-1) == targets[part]).to(out.dtype)
            correct = correct.index_add(0, rows[part], hits)
        predicted = (2 * (lengths - 1)).to(out.dtype)
        return {"nll": nll, "predicted": predicted, "correct": correct}


@register("bilstm_lm", task="language_model", config=LanguageModelConfig)
def bilstm_lm(spec: InputSpec, *, embed: int | None = None, hidden: int | None = None, layers: int | None = None,
              dropout: float | None = None, output_vocab: int | None = None, chunk: int | None = None,
              embed_init: float | None = None) -> BidirectionalLanguageModel:
    """Bidirectional LSTM language model (pre-training for the ``bilstm`` classifier)."""
    params = {"embed": embed, "hidden": hidden, "layers": layers, "dropout": dropout, "output_vocab": output_vocab,
              "chunk": chunk, "embed_init": embed_init}
    return BidirectionalLanguageModel(spec, LanguageModelConfig(**{k: v for k, v in params.items() if v is not None}))
