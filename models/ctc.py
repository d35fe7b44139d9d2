"""CTC speech recognition: log-mel frames -> strided conv front-end -> bidirectional RNN -> CTC classes.

Why this shape (the talk's CTC recipe): speech has far more frames (10 ms hop) than characters, and we
do not know which frames belong to which character. CTC sums over every alignment, so the model only
needs a per-frame distribution over characters plus a blank. A stride-2 convolution over (time, mel)
halves the frame rate (x2 or x4 with two of them): fewer RNN steps, cheaper training, and spoken
letters (~300 ms) still span many output frames. The bidirectional RNN sees the whole utterance, so a
frame's class can depend on what comes after it. The output has ``target_vocab_size + 1`` classes; the
LAST one is the blank (the prepared vocabulary holds no blank; see SEQUENCE_CONTRACT.md).

Padding invariance: padded frames are zeroed before every convolution and the RNN runs on packed
sequences, so an utterance gives the same log-probs alone or padded in a batch.

Decoding: greedy best path (vectorised: argmax, collapse repeats, drop blanks) and a CTC prefix beam
search, which sums over alignments of each prefix and so can find a more probable labelling than the
single best path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .registry import InputSpec, register

NEG_INF = -math.inf


@dataclass(frozen=True)
class CTCConfig:
    cell: Literal["lstm", "gru"] = "lstm"
    hidden: int = 128          # per direction
    layers: int = 2
    dropout: float = 0.1       # between RNN layers and before the output layer
    subsample: Literal[1, 2, 4] = 2   # time reduction of the conv front-end (1 = no front-end stride)
    conv_channels: int = 32
    # "utterance": per-utterance, per-mel mean/std over the valid frames (cepstral mean/variance
    # normalisation: removes gain and channel colour, which helps on an unseen speaker/microphone);
    # "layer": LayerNorm over the mels of each frame; "none": the loader's per-set normalisation only.
    input_norm: Literal["utterance", "layer", "none"] = "utterance"
    # SpecAugment (Park et al. 2019), in training only: zero this many random bands of up to
    # freq_mask_width mels and spans of up to time_mask_frames frames per utterance. With one recording
    # per letter per real speaker, the net otherwise learns those exact spectra; masking makes it use
    # the whole shape of a letter, which is what carries over to an unseen speaker.
    freq_masks: int = 0
    freq_mask_width: int = 6
    time_masks: int = 0
    time_mask_frames: int = 8
    # Vocal tract length perturbation (Jaitly & Hinton 2013), in training only: each utterance's mel axis
    # is stretched by a random factor in 1 +- freq_warp, as a longer or shorter vocal tract shifts the
    # formants. Few real speakers: this makes new ones out of them, aimed at the unseen-speaker case.
    freq_warp: float = 0.0


def conv_out_lengths(lengths: torch.Tensor, subsample: int) -> torch.Tensor:
    """Frames after the front-end: each stride-2 conv (kernel 3, padding 1) maps L to ceil(L / 2)."""
    out = lengths.clone()
    for _ in range(int(round(math.log2(subsample)))):
        out = torch.div(out + 1, 2, rounding_mode="floor")
    return out


def _mask(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """(n, frames) bool, True on valid frames."""
    return torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]


class CTCBiRNN(nn.Module):
    """``forward({"features": (n, F, n_mels), "lengths": (n,)})`` -> ``log_probs`` (F', n, V + 1), ``out_lengths``."""

    def __init__(self, spec: InputSpec, cfg: CTCConfig) -> None:
        super().__init__()
        if spec.n_mels <= 0 or spec.target_vocab_size <= 0:
            raise ValueError(f"ctc_bilstm needs spec.n_mels and spec.target_vocab_size > 0 (got {spec.n_mels}, "
                             f"{spec.target_vocab_size}); they come from the manifest's shape and vocab")
        if cfg.subsample not in (1, 2, 4):
            raise ValueError(f"subsample must be 1, 2 or 4, not {cfg.subsample}")
        self.cfg = cfg
        self.blank = spec.target_vocab_size
        self.layer_norm = nn.LayerNorm(spec.n_mels) if cfg.input_norm == "layer" else None
        self.convs = nn.ModuleList()
        channels, mels = 1, spec.n_mels
        for _ in range(int(round(math.log2(cfg.subsample)))):
            self.convs.append(nn.Conv2d(channels, cfg.conv_channels, 3, stride=2, padding=1))
            channels, mels = cfg.conv_channels, (mels + 1) // 2
        rnn = nn.LSTM if cfg.cell == "lstm" else nn.GRU
        self.rnn = rnn(channels * mels, cfg.hidden, num_layers=cfg.layers, bidirectional=True, batch_first=True,
                       dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(2 * cfg.hidden, spec.target_vocab_size + 1)

    def _normalise(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if self.cfg.input_norm == "utterance":
            m = valid[:, :, None].to(x.dtype)
            count = m.sum(1, keepdim=True).clamp_min(1.0)
            mean = (x * m).sum(1, keepdim=True) / count
            var = (((x - mean) * m) ** 2).sum(1, keepdim=True) / count
            x = (x - mean) / torch.sqrt(var + 1e-5)
        elif self.layer_norm is not None:
            x = self.layer_norm(x)
        return x * valid[:, :, None].to(x.dtype)

    def _warp(self, x: torch.Tensor) -> torch.Tensor:
        """Each utterance's mels resampled at ``m * alpha`` (linear interpolation, edge held)."""
        n, frames, mels = x.shape
        alpha = 1.0 + (torch.rand(n, 1, device=x.device) * 2 - 1) * self.cfg.freq_warp
        pos = (torch.arange(mels, device=x.device, dtype=x.dtype)[None, :] * alpha).clamp(0, mels - 1)   # (n, M)
        lo = pos.floor().long()
        hi = (lo + 1).clamp(max=mels - 1)
        w = (pos - lo.to(x.dtype))[:, None, :]
        pick = lambda idx: torch.gather(x, 2, idx[:, None, :].expand(n, frames, mels))  # noqa: E731
        return pick(lo) * (1 - w) + pick(hi) * w

    def _spec_augment(self, x: torch.Tensor) -> torch.Tensor:
        """Random mel bands and frame spans set to 0 (the normalised mean), per utterance."""
        n, frames, mels = x.shape
        keep = torch.ones_like(x)
        for count, width, axis, size in ((self.cfg.freq_masks, self.cfg.freq_mask_width, 2, mels),
                                         (self.cfg.time_masks, self.cfg.time_mask_frames, 1, frames)):
            for _ in range(count):
                w = torch.randint(0, width + 1, (n, 1), device=x.device)
                start = (torch.rand(n, 1, device=x.device) * (size - w + 1).clamp_min(1)).long()
                pos = torch.arange(size, device=x.device)[None, :]
                band = ((pos >= start) & (pos < start + w)).to(x.dtype)           # (n, size)
                keep = keep * (1 - (band[:, None, :] if axis == 2 else band[:, :, None]))
        return x * keep

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, lengths = inputs["features"].float(), inputs["lengths"].long()
        lengths = lengths.clamp(min=1, max=x.shape[1])
        if self.training and self.cfg.freq_warp:
            x = self._warp(x)
        x = self._normalise(x, _mask(lengths, x.shape[1]))
        if self.training and (self.cfg.freq_masks or self.cfg.time_masks):
            x = self._spec_augment(x)
        h = x.unsqueeze(1)                                   # (n, 1, F, M)
        cur = lengths
        for conv in self.convs:
            h = F.relu(conv(h))
            cur = conv_out_lengths(cur, 2)
            h = h * _mask(cur, h.shape[2])[:, None, :, None].to(h.dtype)   # zero padding before the next conv
        n, c, t, m = h.shape
        h = h.permute(0, 2, 1, 3).reshape(n, t, c * m)
        packed = pack_padded_sequence(h, cur.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=t)
        logits = self.head(self.dropout(out))
        return {"log_probs": F.log_softmax(logits.float(), dim=-1).transpose(0, 1), "out_lengths": cur}

    @torch.no_grad()
    def decode(self, out: dict[str, torch.Tensor], beam: int = 1) -> dict[str, torch.Tensor]:
        """Best hypothesis per utterance: ``ids`` (n, L) long padded with -1, ``lengths`` (n,), ``scores`` (n,)
        (greedy: log-prob of the best path; beam: log-prob of the prefix, summed over its alignments)."""
        if beam <= 1:
            return greedy_decode(out["log_probs"], out["out_lengths"], self.blank)
        return beam_decode(out["log_probs"], out["out_lengths"], self.blank, beam)


def greedy_decode(log_probs: torch.Tensor, out_lengths: torch.Tensor, blank: int) -> dict[str, torch.Tensor]:
    """Best path, vectorised: argmax per frame, keep a frame if it differs from the previous one and is
    not blank (so ``a a - a`` -> ``a a`` and ``a a a`` -> ``a``), scatter the kept ids left-aligned."""
    lp = log_probs.transpose(0, 1)                                       # (n, T, V+1)
    n, t, _ = lp.shape
    best, arg = lp.max(dim=-1)                                           # (n, T)
    valid = _mask(out_lengths.to(lp.device), t)
    prev = torch.cat([torch.full_like(arg[:, :1], -1), arg[:, :-1]], dim=1)
    keep = valid & (arg != blank) & (arg != prev)
    lengths = keep.sum(1)
    width = int(lengths.max().item()) if n else 0
    ids = torch.full((n, max(width, 1)), -1, dtype=torch.long, device=lp.device)
    pos = torch.cumsum(keep.long(), dim=1) - 1
    rows = torch.arange(n, device=lp.device)[:, None].expand(n, t)
    ids[rows[keep], pos[keep]] = arg[keep]
    scores = (best * valid.to(best.dtype)).sum(1)
    return {"ids": ids[:, :max(width, 1)], "lengths": lengths, "scores": scores}


def _logadd(a: float, b: float) -> float:
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


def prefix_beam_search(lp: np.ndarray, blank: int, beam: int, prune: float = -12.0) -> list[tuple[tuple[int, ...], float]]:
    """CTC prefix beam search over one utterance's (T, V+1) log-probs (Hannun et al. 2014).

    Each prefix keeps two log-probs: ending in blank and ending in its last symbol, so ``a - a`` (two
    a's) and ``a a`` (one a) are told apart. Symbols below ``prune`` at a frame are skipped (the
    result is the same unless their paths could win, which at e^-12 they cannot in practice), but the
    top ``beam`` symbols of every frame are always tried. Returns [(prefix, log-prob)] best first.
    """
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, NEG_INF)}
    for frame in lp:
        cand = set(np.flatnonzero(frame > prune).tolist()) | set(np.argsort(frame)[-beam:].tolist())
        cand.discard(blank)
        p_blank = float(frame[blank])
        nxt: dict[tuple[int, ...], list[float]] = {}

        def add(prefix: tuple[int, ...], which: int, value: float) -> None:
            cell = nxt.setdefault(prefix, [NEG_INF, NEG_INF])
            cell[which] = _logadd(cell[which], value)

        for prefix, (pb, pnb) in beams.items():
            total = _logadd(pb, pnb)
            add(prefix, 0, total + p_blank)                   # a blank: the prefix stays, now ending in blank
            last = prefix[-1] if prefix else None
            if last is not None:
                add(prefix, 1, pnb + float(frame[last]))      # the last symbol again, no blank: collapses
            for c in cand:
                p = float(frame[c])
                if c == last:
                    add(prefix + (c,), 1, pb + p)             # a repeat needs a blank in between
                else:
                    add(prefix + (c,), 1, total + p)
        ranked = sorted(nxt.items(), key=lambda kv: _logadd(kv[1][0], kv[1][1]), reverse=True)[:beam]
        beams = {k: (v[0], v[1]) for k, v in ranked}
    return sorted(((k, _logadd(*v)) for k, v in beams.items()), key=lambda kv: kv[1], reverse=True)


def beam_decode(log_probs: torch.Tensor, out_lengths: torch.Tensor, blank: int, beam: int) -> dict[str, torch.Tensor]:
    """The best prefix of ``prefix_beam_search`` per utterance, padded with -1 like ``greedy_decode``."""
    lp = log_probs.detach().float().transpose(0, 1).cpu().numpy()
    lens = out_lengths.cpu().numpy()
    best = [prefix_beam_search(lp[i, : int(lens[i])], blank, beam)[0] for i in range(lp.shape[0])]
    width = max([len(p) for p, _ in best] + [1])
    ids = torch.full((len(best), width), -1, dtype=torch.long)
    for i, (p, _) in enumerate(best):
        ids[i, : len(p)] = torch.tensor(p, dtype=torch.long)
    return {"ids": ids.to(log_probs.device),
            "lengths": torch.tensor([len(p) for p, _ in best], dtype=torch.long, device=log_probs.device),
            "scores": torch.tensor([s for _, s in best], dtype=torch.float32, device=log_probs.device)}


def _create_ctc(spec: InputSpec, **params) -> CTCBiRNN:
    return CTCBiRNN(spec, CTCConfig(**params))


@register("ctc_bilstm", task="ctc", config=CTCConfig)
def ctc_bilstm(spec: InputSpec, *, cell: str | None = None, hidden: int | None = None, layers: int | None = None,
               dropout: float | None = None, subsample: int | None = None, conv_channels: int | None = None,
               input_norm: str | None = None, freq_masks: int | None = None, freq_mask_width: int | None = None,
               time_masks: int | None = None, time_mask_frames: int | None = None,
               freq_warp: float | None = None) -> CTCBiRNN:
    params = {"cell": cell, "hidden": hidden, "layers": layers, "dropout": dropout, "subsample": subsample,
              "conv_channels": conv_channels, "input_norm": input_norm, "freq_masks": freq_masks,
              "freq_mask_width": freq_mask_width, "time_masks": time_masks, "time_mask_frames": time_mask_frames,
              "freq_warp": freq_warp}
    return _create_ctc(spec, **{k: v for k, v in params.items() if v is not None})
