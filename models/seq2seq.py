"""Encoder-decoder with additive attention (Bahdanau et al. 2015): the talk's many-to-many shape.

A bidirectional RNN reads the source, so every source position has a state that knows both its left
and right context; the decoder does not squeeze the source into one vector (the bottleneck of plain
seq2seq) but looks back at every encoder state with learned weights at each step. Those weights are the
alignment picture the run logs. Decoding (greedy and beam) lives in ``decoding`` and is shared with the
captioning family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .decoding import PAD, AttentionDecoder, AttentionEncoderDecoder, Memory, check_cell, length_mask
from .registry import InputSpec, register


@dataclass(frozen=True)
class Seq2SeqConfig:
    cell: Literal["gru", "lstm"] = "gru"   # for encoder and decoder
    hidden: int = 128          # per direction in the encoder; the decoder state
    embed: int = 64
    layers: int = 1            # encoder layers
    attention: int = 0         # additive attention size; 0 = hidden
    dropout: float = 0.1

    def __post_init__(self) -> None:
        check_cell(self.cell)


class RecurrentEncoder(nn.Module):
    """Embedding + bidirectional GRU/LSTM over packed sequences: pad tokens never enter the recurrence,
    so the backward direction starts at each row's last real token and padding cannot change any state."""

    def __init__(self, vocab: int, *, cell: str, hidden: int, embed: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed, padding_idx=PAD)
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(embed, hidden, num_layers=layers, batch_first=True, bidirectional=True,
                       dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.out_dim = 2 * hidden

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, S) tokens, (n,) lengths -> states (n, S, 2*hidden) (zeros on padding), mask (n, S)."""
        lengths = lengths.clamp(min=1)        # an empty source still gets one (pad) position to attend to
        packed = pack_padded_sequence(self.drop(self.embed(tokens)), lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        states, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=tokens.size(1))
        return self.drop(states), length_mask(lengths, tokens.size(1))


class Seq2SeqAttention(AttentionEncoderDecoder):
    def __init__(self, spec: InputSpec, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.encoder = RecurrentEncoder(spec.vocab_size, cell=cfg.cell, hidden=cfg.hidden, embed=cfg.embed,
                                        layers=cfg.layers, dropout=cfg.dropout)
        self.decoder = AttentionDecoder(spec.target_vocab_size, self.encoder.out_dim, cell=cfg.cell,
                                        hidden=cfg.hidden, embed=cfg.embed, attention=cfg.attention,
                                        dropout=cfg.dropout)

    def encode(self, inputs: dict[str, torch.Tensor]) -> Memory:
        return self.decoder.memory(*self.encoder(inputs["tokens"], inputs["lengths"]))


def _create_seq2seq(spec: InputSpec, **params) -> Seq2SeqAttention:
    return Seq2SeqAttention(spec, Seq2SeqConfig(**params))


@register("seq2seq_attention", task="seq2seq", config=Seq2SeqConfig)
def seq2seq_attention(spec: InputSpec, *, cell: str | None = None, hidden: int | None = None,
                      embed: int | None = None, layers: int | None = None, attention: int | None = None,
                      dropout: float | None = None) -> Seq2SeqAttention:
    params = {"cell": cell, "hidden": hidden, "embed": embed, "layers": layers, "attention": attention,
              "dropout": dropout}
    return _create_seq2seq(spec, **{k: v for k, v in params.items() if v is not None})
