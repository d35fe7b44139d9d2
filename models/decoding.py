"""Bricks shared by every attention decoder: additive attention, one recurrent decoder step, and a
batched beam search.

seq2seq (text -> text) and captioning (image -> text) differ only in what the decoder looks at: encoder
states of the source words, or CNN region vectors. Both hand the decoder a ``Memory`` and reuse the same
``AttentionDecoder`` and ``beam_search``, so a fix to decoding lands in both families at once. The
Transformer decoder plugs its own step into the same ``beam_search``.

Token conventions (the prepared data follows them): ``<pad>``=0, ``<unk>``=1, ``<bos>``=2, ``<eos>``=3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

PAD, UNK, BOS, EOS = 0, 1, 2, 3
CELLS = ("gru", "lstm")

State = tuple[torch.Tensor, ...]
# one decoding step over n*k hypotheses: (last tokens (N,), state) -> (log-probs (N, V), state, attention (N, S))
Step = Callable[[torch.Tensor, State], tuple[torch.Tensor, State, torch.Tensor]]


def check_cell(cell: str) -> None:
    """Configs call this in ``__post_init__`` so a typo fails when the model is built, naming the choices."""
    if cell not in CELLS:
        raise ValueError(f"unknown cell '{cell}'; choose one of: {', '.join(CELLS)}")


def length_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(n,) lengths -> (n, size) bool, True on real positions."""
    return torch.arange(size, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of (n, S, d) counting only real positions, so padding cannot dilute it."""
    m = mask.unsqueeze(-1).to(values.dtype)
    return (values * m).sum(1) / m.sum(1).clamp(min=1.0)


@dataclass(frozen=True)
class Memory:
    """What a decoder attends over: ``values`` (n, S, d), their attention ``keys`` (n, S, a), computed
    once per sequence rather than once per step, and ``mask`` (n, S), True on real positions."""

    values: torch.Tensor
    keys: torch.Tensor
    mask: torch.Tensor

    def repeat(self, k: int) -> Memory:
        """Each row k times in a row (row-major n*k), the layout ``beam_search`` keeps its hypotheses in."""
        return Memory(*(t.repeat_interleave(k, dim=0) for t in (self.values, self.keys, self.mask)))


class AdditiveAttention(nn.Module):
    """Bahdanau attention: score_j = v . tanh(W q + U m_j). Padded positions get -inf before the
    softmax, hence exactly zero weight, so padding changes neither the context nor the picture."""

    def __init__(self, query_dim: int, memory_dim: int, attn_dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(query_dim, attn_dim, bias=False)
        self.key = nn.Linear(memory_dim, attn_dim)
        self.score = nn.Linear(attn_dim, 1, bias=False)

    def memory(self, values: torch.Tensor, mask: torch.Tensor) -> Memory:
        return Memory(values, self.key(values), mask)

    def forward(self, query: torch.Tensor, memory: Memory) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, q) query -> context (n, d) and weights (n, S)."""
        energy = self.score(torch.tanh(memory.keys + self.query(query).unsqueeze(1))).squeeze(-1)
        weights = torch.softmax(energy.masked_fill(~memory.mask, float("-inf")), dim=-1)
        return torch.bmm(weights.unsqueeze(1), memory.values).squeeze(1), weights


class AttentionDecoder(nn.Module):
    """A GRU or LSTM cell that reads the previous token and an attention context at every step.

    The query is the previous hidden state (Bahdanau): the decoder decides where to look before it
    writes. The output layer sees the new state, the context and the previous token ("deep output"),
    which lets a copy-like task read the attended value straight through. The initial state comes from
    the mean of the memory, so the decoder starts knowing roughly what the input is about.
    """

    def __init__(self, vocab: int, memory_dim: int, *, cell: str = "gru", hidden: int = 128, embed: int = 64,
                 attention: int = 0, dropout: float = 0.1) -> None:
        super().__init__()
        check_cell(cell)
        self.lstm = cell == "lstm"
        self.embed = nn.Embedding(vocab, embed, padding_idx=PAD)
        self.attention = AdditiveAttention(hidden, memory_dim, attention or hidden)
        self.cell = (nn.LSTMCell if self.lstm else nn.GRUCell)(embed + memory_dim, hidden)
        self.init = nn.Linear(memory_dim, hidden * (2 if self.lstm else 1))
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden + memory_dim + embed, vocab)

    def memory(self, values: torch.Tensor, mask: torch.Tensor) -> Memory:
        return self.attention.memory(values, mask)

    def start(self, memory: Memory) -> State:
        h = torch.tanh(self.init(masked_mean(memory.values, memory.mask)))
        return tuple(h.chunk(2, dim=-1)) if self.lstm else (h,)

    def step(self, tokens: torch.Tensor, state: State, memory: Memory) -> tuple[torch.Tensor, State, torch.Tensor]:
        """(n,) previous tokens -> logits (n, V), the new state and the attention weights (n, S)."""
        emb = self.drop(self.embed(tokens))
        context, weights = self.attention(state[0], memory)
        x = torch.cat([emb, context], dim=-1)
        state = tuple(self.cell(x, state)) if self.lstm else (self.cell(x, state[0]),)
        logits = self.out(self.drop(torch.cat([state[0], context, emb], dim=-1)))
        return logits, state, weights

    def forward(self, target_in: torch.Tensor, memory: Memory) -> dict[str, torch.Tensor]:
        """Teacher forcing: (n, T) tokens starting with BOS -> logits (n, T, V), attention (n, T, S)."""
        state = self.start(memory)
        logits, attention = [], []
        for t in range(target_in.size(1)):
            out, state, weights = self.step(target_in[:, t], state, memory)
            logits.append(out)
            attention.append(weights)
        return {"logits": torch.stack(logits, 1), "attention": torch.stack(attention, 1)}

    def generate(self, memory: Memory, max_len: int, beam: int = 1) -> dict[str, torch.Tensor]:
        wide = memory.repeat(beam)

        def step(tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor]:
            logits, state, weights = self.step(tokens, state, wide)
            return F.log_softmax(logits.float(), dim=-1), state, weights

        return beam_search(step, self.start(wide), batch=memory.mask.size(0), beam=beam, max_len=max_len,
                           width=memory.mask.size(1))


class AttentionEncoderDecoder(nn.Module):
    """The contract's ``forward`` / ``generate`` for any family made of an encoder that turns the inputs
    into a ``Memory`` and an ``AttentionDecoder``; subclasses write ``encode`` only."""

    decoder: AttentionDecoder

    def encode(self, inputs: dict[str, torch.Tensor]) -> Memory:
        raise NotImplementedError

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.decoder(inputs["target_in"], self.encode(inputs))

    def generate(self, inputs: dict[str, torch.Tensor], max_len: int, beam: int = 1) -> dict[str, torch.Tensor]:
        return self.decoder.generate(self.encode(inputs), max_len, beam)


def _pick(history: torch.Tensor, parent: torch.Tensor) -> torch.Tensor:
    """history (n, k, ...) re-ordered along the beam axis by parent (n, k)."""
    return history[torch.arange(parent.size(0), device=parent.device).unsqueeze(1), parent]


def beam_search(step: Step, state: State, *, batch: int, beam: int, max_len: int, width: int) -> dict[str, torch.Tensor]:
    """Beam search over ``batch`` rows at once: the n*k hypotheses run as one batch through ``step``.

    ``state`` holds tensors whose first dim is n*k (row-major: row i's beams at i*k .. i*k+k-1). Beams are
    pruned by their summed log-prob; an ended beam stays in its slot with its score frozen (it may only
    extend by padding at no cost), so decoding stops as soon as every beam of every row has ended. After
    ``max_len`` tokens the only choice left is EOS, so every hypothesis ends and is scored the same way.
    PAD and BOS are never emitted, so PAD in ``ids`` always means "past the end".
    The survivors are then ranked by the length-normalised score (sum of log-probs including EOS,
    divided by tokens + 1). ``beam=1`` is greedy decoding.

    Returns the contract's dict: ``ids`` (n, k, L) without BOS, cut before EOS, padded with PAD;
    ``lengths`` (n, k); ``scores`` (n, k), best first; ``attention`` (n, L, width) of each row's best
    hypothesis (zeros past its end). L is the longest hypothesis, at least 1.
    """
    n, k = batch, beam
    device = state[0].device
    tokens = torch.full((n * k,), BOS, dtype=torch.long, device=device)
    scores = torch.full((n, k), float("-inf"), device=device)
    scores[:, 0] = 0.0                                      # k copies of BOS: only the first may expand
    ended = torch.zeros(n, k, dtype=torch.bool, device=device)
    lengths = torch.zeros(n, k, dtype=torch.long, device=device)
    ids = torch.zeros(n, k, 0, dtype=torch.long, device=device)
    attention = torch.zeros(n, k, 0, width, device=device)
    offsets = torch.arange(n, device=device).unsqueeze(1) * k
    for t in range(max_len + 1):
        logp, state, weights = step(tokens, state)
        vocab = logp.size(-1)
        logp = logp.view(n, k, vocab)
        choices = torch.arange(vocab, device=device)
        banned = (choices != EOS) if t == max_len else (choices == PAD) | (choices == BOS)
        logp = logp.masked_fill(banned, float("-inf"))
        frozen = torch.full_like(logp[:1, :1], float("-inf"))
        frozen[..., PAD] = 0.0
        logp = torch.where(ended.unsqueeze(-1), frozen, logp)
        scores, flat = (scores.unsqueeze(-1) + logp).view(n, k * vocab).topk(k, dim=1)
        parent, token = flat // vocab, flat % vocab
        state = tuple(s.index_select(0, (parent + offsets).view(-1)) for s in state)
        was_ended = ended.gather(1, parent)
        ended = was_ended | (token == EOS)
        lengths = lengths.gather(1, parent) + (~ended).long()
        ids = torch.cat([_pick(ids, parent), token.masked_fill(ended, PAD).unsqueeze(-1)], dim=-1)
        seen = _pick(weights.view(n, k, -1).float(), parent) * (~was_ended).unsqueeze(-1)
        attention = torch.cat([_pick(attention, parent), seen.unsqueeze(2)], dim=2)
        tokens = token.view(-1)
        if bool(ended.all()):
            break
    normalised = scores / (lengths + 1)
    normalised, order = normalised.sort(dim=1, descending=True)
    lengths = lengths.gather(1, order)
    size = max(int(lengths.max()), 1)
    ids = _pick(ids, order)[..., :size]
    ids = ids.masked_fill(torch.arange(size, device=device) >= lengths.unsqueeze(-1), PAD)
    best = attention[torch.arange(n, device=device), order[:, 0], :size]
    best = best * (torch.arange(size, device=device) < lengths[:, :1]).unsqueeze(-1)
    return {"ids": ids, "lengths": lengths, "scores": normalised, "attention": best}
