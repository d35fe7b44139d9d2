"""Transformers (Vaswani et al. 2017): the talk's "self-attention only" end of sequence learning.

No recurrence: every position attends to every other one in one step, so paths between far-apart
tokens are short and training parallelises over positions. Order comes only from the position
encodings (sinusoidal here: no parameters and no length limit). Padding is excluded with key padding
masks everywhere, so a padded batch gives the same answers as the unpadded rows. Sizes default small,
because these families must train on CPUs too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .decoding import PAD, State, beam_search, length_mask, masked_mean
from .registry import InputSpec, register


@dataclass(frozen=True)
class TransformerConfig:
    d_model: int = 64
    heads: int = 4
    layers: int = 2            # encoder layers (and decoder layers for seq2seq)
    ff: int = 128
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.d_model % self.heads:
            raise ValueError(f"d_model={self.d_model} must be a multiple of heads={self.heads}")


def sinusoidal_positions(length: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """(length, dim) sin/cos encodings at geometrically spaced wavelengths, computed for any length."""
    pos = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table


class TokenEmbedding(nn.Module):
    """Token embedding plus sinusoidal positions, then dropout. Embeddings start at std d**-0.5 and are
    scaled by sqrt(d) (as in the paper), so tokens and positions enter at the same unit scale: torch's
    default N(0, 1) start would make tokens sqrt(d) times louder and order hard to learn."""

    def __init__(self, vocab: int, cfg: TransformerConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, cfg.d_model, padding_idx=PAD)
        with torch.no_grad():
            nn.init.normal_(self.embed.weight, std=cfg.d_model ** -0.5)
            self.embed.weight[PAD].zero_()
        self.scale = math.sqrt(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) * self.scale
        return self.drop(x + sinusoidal_positions(tokens.size(1), x.size(-1), x.device).to(x.dtype))


class TextEncoder(nn.Module):
    """Pre-norm Transformer encoder over tokens; returns states (n, S, d) and the real-position mask."""

    def __init__(self, vocab: int, cfg: TransformerConfig) -> None:
        super().__init__()
        self.embed = TokenEmbedding(vocab, cfg)
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.heads, cfg.ff, cfg.dropout, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, norm=nn.LayerNorm(cfg.d_model),
                                             enable_nested_tensor=False)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = length_mask(lengths.clamp(min=1), tokens.size(1))
        return self.encoder(self.embed(tokens), src_key_padding_mask=~mask), mask


class TransformerClassifier(nn.Module):
    """Encoder, mean of the real positions, linear: many-to-one (sentence -> label)."""

    def __init__(self, spec: InputSpec, cfg: TransformerConfig) -> None:
        super().__init__()
        self.encoder = TextEncoder(spec.vocab_size, cfg)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.d_model, spec.num_classes))

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(masked_mean(*self.encoder(inputs["tokens"], inputs["lengths"])))


class ProbedDecoderLayer(nn.TransformerDecoderLayer):
    """A decoder layer that keeps its cross-attention weights (averaged over heads) in ``last_attention``:
    the stock layer asks for none, and these weights are the alignment picture the run logs."""

    last_attention: torch.Tensor | None = None

    def _mha_block(self, x: torch.Tensor, mem: torch.Tensor, attn_mask: torch.Tensor | None,
                   key_padding_mask: torch.Tensor | None, is_causal: bool = False) -> torch.Tensor:
        x, self.last_attention = self.multihead_attn(x, mem, mem, attn_mask=attn_mask,
                                                     key_padding_mask=key_padding_mask, is_causal=is_causal,
                                                     need_weights=True, average_attn_weights=True)
        return self.dropout2(x)


class TransformerSeq2Seq(nn.Module):
    """Encoder-decoder Transformer: causal self-attention over the target prefix, cross-attention to the
    source. Generation re-reads the whole prefix each step (no key/value cache): simple, and cheap at the
    lengths this zoo decodes."""

    def __init__(self, spec: InputSpec, cfg: TransformerConfig) -> None:
        super().__init__()
        self.encoder = TextEncoder(spec.vocab_size, cfg)
        self.embed = TokenEmbedding(spec.target_vocab_size, cfg)
        layer = ProbedDecoderLayer(cfg.d_model, cfg.heads, cfg.ff, cfg.dropout, batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, cfg.layers, norm=nn.LayerNorm(cfg.d_model))
        self.out = nn.Linear(cfg.d_model, spec.target_vocab_size)

    def decode(self, target_in: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """(n, T) target prefix -> logits (n, T, V) and the last layer's cross-attention (n, T, S)."""
        x = self.embed(target_in)
        causal = nn.Transformer.generate_square_subsequent_mask(x.size(1), device=x.device, dtype=x.dtype)
        x = self.decoder(x, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=~mask)
        last: ProbedDecoderLayer = self.decoder.layers[-1]
        return {"logits": self.out(x), "attention": last.last_attention}

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.decode(inputs["target_in"], *self.encoder(inputs["tokens"], inputs["lengths"]))

    def generate(self, inputs: dict[str, torch.Tensor], max_len: int, beam: int = 1) -> dict[str, torch.Tensor]:
        memory, mask = self.encoder(inputs["tokens"], inputs["lengths"])
        memory, wide = memory.repeat_interleave(beam, 0), mask.repeat_interleave(beam, 0)

        def step(tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor]:
            prefix = torch.cat([state[0], tokens.unsqueeze(1)], dim=1)
            out = self.decode(prefix, memory, wide)
            return F.log_softmax(out["logits"][:, -1].float(), dim=-1), (prefix,), out["attention"][:, -1]

        start = (torch.zeros(memory.size(0), 0, dtype=torch.long, device=memory.device),)
        return beam_search(step, start, batch=mask.size(0), beam=beam, max_len=max_len, width=mask.size(1))


def _create_transformer(cls: type[nn.Module], spec: InputSpec, **params) -> nn.Module:
    return cls(spec, TransformerConfig(**params))


def _given(**params) -> dict:
    return {k: v for k, v in params.items() if v is not None}


@register("transformer_classifier", task="text_classification", config=TransformerConfig)
def transformer_classifier(spec: InputSpec, *, d_model: int | None = None, heads: int | None = None,
                           layers: int | None = None, ff: int | None = None,
                           dropout: float | None = None) -> TransformerClassifier:
    return _create_transformer(TransformerClassifier, spec, **_given(d_model=d_model, heads=heads, layers=layers,
                                                                     ff=ff, dropout=dropout))


@register("transformer_seq2seq", task="seq2seq", config=TransformerConfig)
def transformer_seq2seq(spec: InputSpec, *, d_model: int | None = None, heads: int | None = None,
                        layers: int | None = None, ff: int | None = None,
                        dropout: float | None = None) -> TransformerSeq2Seq:
    return _create_transformer(TransformerSeq2Seq, spec, **_given(d_model=d_model, heads=heads, layers=layers,
                                                                  ff=ff, dropout=dropout))
