"""The CTC family (models/ctc.py) against SEQUENCE_CONTRACT.md: shapes and frame counts after the strided
front-end, padding invariance, the greedy collapse rules, prefix beam search against brute force, and a
toy spectrogram task it must actually learn (CER through models.sequence_metrics), all on one CPU core."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
import torch

from sparkzoo import models
from sparkzoo.models.ctc import beam_decode, greedy_decode, prefix_beam_search
from sparkzoo.models.registry import InputSpec
from sparkzoo.models.sequence_metrics import error_rate_sums

torch.set_num_threads(1)
V = 5          # symbols; the blank is index V
N_MELS = 24


def _net(**params) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.get_model("ctc_bilstm", InputSpec(n_mels=N_MELS, target_vocab_size=V), hidden=16, layers=2,
                            conv_channels=4, **params)


def test_registered_as_ctc_with_a_typed_builder():
    assert "ctc_bilstm" in models.list_models() and models.model_task("ctc_bilstm") == "ctc"
    with pytest.raises(TypeError):
        models.get_model("ctc_bilstm", InputSpec(n_mels=8, target_vocab_size=3), hiden=8)   # a typo is not ignored
    with pytest.raises(ValueError, match="n_mels"):
        models.get_model("ctc_bilstm", InputSpec(channels=1, height=28, width=28, num_classes=10))
    net = models.get_model("ctc_bilstm", InputSpec(n_mels=8, target_vocab_size=3), cell="gru", hidden=None)
    assert isinstance(net.rnn, torch.nn.GRU) and net.rnn.hidden_size == 128      # None keeps the default


@pytest.mark.parametrize("subsample", [1, 2, 4])
def test_shapes_and_out_lengths_for_odd_lengths(subsample):
    net = _net(subsample=subsample).eval()
    lengths = torch.tensor([1, 2, 3, 7, 8, 9, 33])
    x = torch.randn(len(lengths), 33, N_MELS)
    with torch.no_grad():
        out = net({"features": x, "lengths": lengths})
    expect = [math.ceil(int(n) / subsample) for n in lengths]
    assert out["out_lengths"].tolist() == expect
    assert out["log_probs"].shape == (math.ceil(33 / subsample), len(lengths), V + 1)
    assert out["out_lengths"].dtype == torch.long
    assert torch.allclose(out["log_probs"].exp().sum(-1), torch.ones(out["log_probs"].shape[:2]), atol=1e-5)


@pytest.mark.parametrize("params", [{"cell": "lstm", "subsample": 4}, {"cell": "gru", "subsample": 2},
                                    {"input_norm": "layer", "subsample": 4}, {"input_norm": "none", "subsample": 1}])
def test_padding_does_not_change_the_output(params):
    """An utterance alone and the same utterance padded in a batch (padding filled with junk, not just
    zeros) give the same log-probs on its valid frames."""
    net = _net(**params).eval()
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(13, N_MELS, generator=g), torch.randn(30, N_MELS, generator=g)
    batch = torch.randn(2, 30, N_MELS, generator=g) * 5.0
    batch[0, :13], batch[1] = a, b
    with torch.no_grad():
        alone = net({"features": a[None], "lengths": torch.tensor([13])})
        both = net({"features": batch, "lengths": torch.tensor([13, 30])})
    n = int(alone["out_lengths"][0])
    assert int(both["out_lengths"][0]) == n
    assert torch.allclose(alone["log_probs"][:n, 0], both["log_probs"][:n, 0], atol=1e-5)


def test_spec_augment_masks_in_training_only():
    net = _net(freq_masks=2, freq_mask_width=4, time_masks=2, time_mask_frames=5)
    x = torch.randn(3, 40, N_MELS) + 3.0
    masked = net._spec_augment(x)
    zero = masked == 0
    assert zero.any() and not torch.equal(masked, x)
    assert zero.all(dim=1).sum() <= 3 * 2 * 4 and zero.all(dim=2).sum() <= 3 * 2 * 5   # bands / spans no wider
    assert torch.equal(masked[~zero], x[~zero])
    inputs = {"features": x, "lengths": torch.tensor([40, 40, 40])}
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(inputs)["log_probs"], net(inputs)["log_probs"])     # eval: deterministic, no masks


def test_frequency_warp_moves_formants_in_training_only():
    net = _net(freq_warp=0.2)
    ramp = torch.arange(N_MELS, dtype=torch.float32)[None, None, :].expand(4, 10, N_MELS)   # value = mel index
    warped = net._warp(ramp)
    alpha = warped[:, 0, 1]                          # mel 1 reads position alpha
    assert ((alpha >= 0.8 - 1e-6) & (alpha <= 1.2 + 1e-6)).all() and alpha.unique().numel() > 1
    interior = slice(0, int(N_MELS / 1.2))           # below the edge every mel m reads m * alpha exactly
    torch.testing.assert_close(warped[:, :, interior], ramp[:, :, interior] * alpha[:, None, None])
    assert torch.equal(warped[:, 0], warped[:, 9])   # one factor per utterance, the same on every frame
    inputs = {"features": torch.randn(2, 30, N_MELS), "lengths": torch.tensor([30, 20])}
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(inputs)["log_probs"], net(inputs)["log_probs"])     # eval: no warp


def _one_hot_log_probs(frames: list[int], peak: float = 0.9) -> torch.Tensor:
    """(T, 1, V+1) log-probs whose argmax at frame t is frames[t]."""
    lp = torch.full((len(frames), 1, V + 1), math.log((1 - peak) / V))
    for t, k in enumerate(frames):
        lp[t, 0, k] = math.log(peak)
    return lp


def test_greedy_collapses_repeats_and_drops_blanks():
    b = V
    lp = torch.cat([_one_hot_log_probs([0, 0, b, 0, 1, 1, b, b, 2, 2]),
                    _one_hot_log_probs([b, b, b, b, b, b, b, b, b, b]),
                    _one_hot_log_probs([3, b, 3, 3, 4, 4, 4, 0, 0, 0])], dim=1)
    out = greedy_decode(lp, torch.tensor([10, 10, 6]), blank=b)
    assert out["lengths"].tolist() == [4, 0, 3]
    assert out["ids"].tolist() == [[0, 0, 1, 2], [-1, -1, -1, -1], [3, 3, 4, -1]]   # padding is -1; frames past the length ignored
    assert out["scores"][0].item() == pytest.approx(10 * math.log(0.9), abs=1e-4)
    assert out["scores"][2].item() == pytest.approx(6 * math.log(0.9), abs=1e-4)
    net = _net()
    via_model = net.decode({"log_probs": lp, "out_lengths": torch.tensor([10, 10, 6])}, beam=1)
    assert torch.equal(via_model["ids"], out["ids"])


def _brute_force(lp: np.ndarray, blank: int) -> tuple[tuple[int, ...], float]:
    """The most probable labelling by summing every alignment (only for tiny T and V)."""
    totals: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(lp.shape[1]), repeat=lp.shape[0]):
        lab = tuple(k for i, k in enumerate(path) if k != blank and (i == 0 or path[i - 1] != k))
        totals[lab] = np.logaddexp(totals.get(lab, -np.inf), sum(lp[t, k] for t, k in enumerate(path)))
    return max(totals.items(), key=lambda kv: kv[1])


def test_prefix_beam_finds_the_labelling_the_best_path_misses():
    # two frames, p(a) = 0.4, p(blank) = 0.6: best path "--" -> "" (0.36), but "a" has aa + a- + -a = 0.64
    lp = torch.log(torch.tensor([[[0.4, 0.6]], [[0.4, 0.6]]]))
    greedy = greedy_decode(lp, torch.tensor([2]), blank=1)
    beam = beam_decode(lp, torch.tensor([2]), blank=1, beam=4)
    assert greedy["lengths"].item() == 0 and greedy["scores"].item() == pytest.approx(math.log(0.36), abs=1e-5)
    assert beam["ids"].tolist() == [[0]] and beam["scores"].item() == pytest.approx(math.log(0.64), abs=1e-5)


def test_prefix_beam_matches_brute_force_and_beats_greedy():
    rng = np.random.default_rng(3)
    for _ in range(12):
        logits = rng.normal(size=(5, 4)) * 2.0
        lp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
        want, want_score = _brute_force(lp, blank=3)
        got = prefix_beam_search(lp, blank=3, beam=64, prune=-np.inf)
        assert got[0][0] == want and got[0][1] == pytest.approx(want_score, abs=1e-6)
    net = _net().eval()
    with torch.no_grad():
        out = net({"features": torch.randn(6, 40, N_MELS), "lengths": torch.tensor([40, 31, 17, 9, 3, 1])})
    g, b = net.decode(out, beam=1), net.decode(out, beam=8)
    assert (b["scores"] >= g["scores"] - 1e-4).all()
    assert b["ids"].shape[0] == 6 and ((b["ids"] == -1) | (b["ids"] < V)).all() and (b["ids"] != V).all()


def _toy_batch(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Spectrogram-like sequences: symbol k lights mel band [4k, 4k + 4) for 3-7 frames, with 1-3 frames
    of noise between symbols, so the model must find the symbols and count repeats without alignment."""
    seqs, mats = [], []
    for _ in range(n):
        seq = rng.integers(0, V, size=rng.integers(2, 6)).tolist()
        frames = [rng.normal(0, 0.3, (rng.integers(1, 4), N_MELS))]
        for k in seq:
            block = rng.normal(0, 0.3, (rng.integers(3, 8), N_MELS))
            block[:, 4 * k: 4 * k + 4] += 2.0
            frames += [block, rng.normal(0, 0.3, (rng.integers(1, 4), N_MELS))]
        seqs.append(seq)
        mats.append(np.concatenate(frames).astype(np.float32))
    lengths = torch.tensor([m.shape[0] for m in mats])
    x = torch.zeros(n, int(lengths.max()), N_MELS)
    for i, m in enumerate(mats):
        x[i, : m.shape[0]] = torch.from_numpy(m)
    return x, lengths, seqs


def _cer(net, x, lengths, seqs, beam: int) -> float:
    net.eval()
    with torch.no_grad():
        d = net.decode(net({"features": x, "lengths": lengths}), beam=beam)
    hyps = [d["ids"][i, : int(d["lengths"][i])].tolist() for i in range(len(seqs))]
    s = error_rate_sums(hyps, seqs)
    return s["edits"] / s["ref_tokens"]


def test_learns_a_toy_spectrogram_task():
    started = time.process_time()    # CPU seconds: other jobs on a shared machine do not count
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    net = models.get_model("ctc_bilstm", InputSpec(n_mels=N_MELS, target_vocab_size=V), hidden=32, layers=1,
                           conv_channels=8, subsample=2, dropout=0.0)
    test = _toy_batch(np.random.default_rng(99), 64)
    before = _cer(net, *test, beam=1)
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    ctc = torch.nn.CTCLoss(blank=V, zero_infinity=True)
    for _ in range(250):
        x, lengths, seqs = _toy_batch(rng, 32)
        net.train()
        out = net({"features": x, "lengths": lengths})
        targets = torch.tensor([k for s in seqs for k in s])
        loss = ctc(out["log_probs"], targets, out["out_lengths"], torch.tensor([len(s) for s in seqs]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    greedy, beam = _cer(net, *test, beam=1), _cer(net, *test, beam=4)
    assert before > 0.5                 # an untrained net is far off, so the bar below means learning
    assert greedy < 0.1 and beam < 0.1, (greedy, beam)
    assert time.process_time() - started < 60
