"""The sequence families without Spark: registry and shapes, padding invariance, the generate contract
(checked against teacher-forced re-scoring), beam search on a hand-made model where greedy is wrong, and
toy tasks each family must learn in seconds on one CPU core."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sparkzoo.models import InputSpec, count_parameters, get_model, model_task
from sparkzoo.models.decoding import BOS, EOS, PAD, beam_search, length_mask

DIGITS = 10                       # tokens 4..13
VOCAB = 4 + DIGITS
TEXT = InputSpec(vocab_size=VOCAB, target_vocab_size=VOCAB, num_classes=2, max_length=12)
IMAGE = InputSpec(channels=3, height=16, width=16, target_vocab_size=4 + 4 + 3, max_length=4)
SMALL = {"seq2seq_attention": {"hidden": 32, "embed": 16}, "transformer_seq2seq": {"d_model": 32, "ff": 64},
         "transformer_classifier": {"d_model": 32, "ff": 64},
         "caption_attention": {"widths": [8, 16], "hidden": 32, "embed": 16}}
GENERATORS = ["seq2seq_attention", "transformer_seq2seq", "caption_attention"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def digit_batch(n: int, gen: torch.Generator, *, low: int = 3, high: int = 8) -> dict[str, torch.Tensor]:
    """Random digit strings of lengths low..high-1, padded with PAD."""
    lengths = torch.randint(low, high, (n,), generator=gen)
    size = int(lengths.max())
    tokens = torch.randint(4, VOCAB, (n, size), generator=gen) * length_mask(lengths, size)
    return {"tokens": tokens, "lengths": lengths}


def reverse_targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[BOS] reversed source [EOS], padded: the data's target layout."""
    n, size = batch["tokens"].shape
    target = torch.zeros(n, size + 2, dtype=torch.long)
    target[:, 0] = BOS
    for i, length in enumerate(batch["lengths"].tolist()):
        target[i, 1:length + 1] = batch["tokens"][i, :length].flip(0)
        target[i, length + 1] = EOS
    return target


def reverse_batch(n: int, gen: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    batch = digit_batch(n, gen)
    target = reverse_targets(batch)
    return {**batch, "target_in": target[:, :-1]}, target[:, 1:]


COLOURS = torch.eye(3)            # red, green, blue squares on black


def squares_batch(n: int, gen: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """16x16 images with coloured squares in two of the four quadrants (jittered); the caption names each
    occupied quadrant (tokens 4..7) then its colour (8..10), quadrants in reading order."""
    image = torch.zeros(n, 3, 16, 16)
    target = torch.zeros(n, 6, dtype=torch.long)
    target[:, 0], target[:, 5] = BOS, EOS
    for i in range(n):
        quadrants = sorted(torch.randperm(4, generator=gen)[:2].tolist())
        for j, q in enumerate(quadrants):
            colour = int(torch.randint(3, (1,), generator=gen))
            dy, dx = torch.randint(0, 4, (2,), generator=gen).tolist()
            y, x = 8 * (q // 2) + dy, 8 * (q % 2) + dx
            image[i, :, y:y + 5, x:x + 5] = COLOURS[colour].view(3, 1, 1)
            target[i, 1 + 2 * j], target[i, 2 + 2 * j] = 4 + q, 8 + colour
    return {"image": image - 0.5, "target_in": target[:, :-1]}, target[:, 1:]


def model(name: str, spec: InputSpec, **params) -> torch.nn.Module:
    return get_model(name, spec, **{**SMALL[name], **params})


def inputs_for(name: str, gen: torch.Generator, n: int = 6) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    return squares_batch(n, gen) if name == "caption_attention" else reverse_batch(n, gen)


def train(net: torch.nn.Module, make_batch, steps: int, *, lr: float = 3e-3) -> None:
    opt = torch.optim.Adam(net.parameters(), lr)
    net.train()
    for _ in range(steps):
        x, y = make_batch()
        out = net(x)
        if isinstance(out, dict):
            loss = F.cross_entropy(out["logits"].transpose(1, 2), y, ignore_index=PAD)
        else:
            loss = F.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()


def token_accuracy(ids: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor) -> float:
    """Share of reference tokens (EOS excluded) the hypothesis gets right in place; a wrong length counts."""
    ref = target.masked_fill(target == EOS, PAD)
    size = max(ids.size(1), ref.size(1))
    ids, ref = F.pad(ids, (0, size - ids.size(1))), F.pad(ref, (0, size - ref.size(1)))
    real = ref != PAD
    return float(((ids == ref) & real).sum() / real.sum()) * float((lengths == real.sum(1)).float().mean())


def rescore(net: torch.nn.Module, inputs: dict[str, torch.Tensor], ids: torch.Tensor,
            lengths: torch.Tensor) -> torch.Tensor:
    """Length-normalised log-prob of given hypotheses (plus EOS) under teacher forcing."""
    n, size = ids.shape
    target = torch.zeros(n, size + 2, dtype=torch.long)
    target[:, 0] = BOS
    target[:, 1:size + 1] = ids
    target[torch.arange(n), lengths + 1] = EOS
    logp = F.log_softmax(net({**inputs, "target_in": target[:, :-1]})["logits"], dim=-1)
    picked = logp.gather(2, target[:, 1:].unsqueeze(-1)).squeeze(-1) * length_mask(lengths + 1, size + 1)
    return picked.sum(1) / (lengths + 1)


# --- registry and shapes -------------------------------------------------------------------------------


@pytest.mark.parametrize("name,task", [("seq2seq_attention", "seq2seq"), ("transformer_seq2seq", "seq2seq"),
                                       ("transformer_classifier", "text_classification"),
                                       ("caption_attention", "captioning")])
def test_registered_with_its_task(name, task):
    assert model_task(name) == task
    assert count_parameters(get_model(name, IMAGE if task == "captioning" else TEXT)) > 0


@pytest.mark.parametrize("name", GENERATORS)
def test_teacher_forced_shapes_and_gradients(name):
    gen = torch.Generator().manual_seed(1)
    spec = IMAGE if name == "caption_attention" else TEXT
    net = model(name, spec)
    x, y = inputs_for(name, gen)
    out = net(x)
    n, steps = x["target_in"].shape
    width = 16 if name == "caption_attention" else x["tokens"].size(1)
    assert out["logits"].shape == (n, steps, spec.target_vocab_size)
    assert out["attention"].shape == (n, steps, width)
    F.cross_entropy(out["logits"].transpose(1, 2), y, ignore_index=PAD).backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    with torch.no_grad():   # weights sum to one without dropout (MultiheadAttention drops attention weights)
        assert torch.allclose(net.eval()(x)["attention"].sum(-1), torch.ones(n, steps), atol=1e-5)


def test_classifier_shape():
    x = digit_batch(5, torch.Generator().manual_seed(2))
    assert model("transformer_classifier", TEXT)(x).shape == (5, 2)


@pytest.mark.parametrize("params", [{"cell": "gruu"}, {"d_model": 30, "heads": 4}])
def test_bad_configs_fail_when_built(params):
    name = "seq2seq_attention" if "cell" in params else "transformer_classifier"
    with pytest.raises(ValueError, match="choose one of|multiple of"):
        get_model(name, TEXT, **params)


# --- padding invariance -----------------------------------------------------------------------------


def padded(x: dict[str, torch.Tensor], extra: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The same rows with ``extra`` more columns and random garbage in every position past ``lengths``:
    a model that reads ``lengths`` properly cannot tell the difference."""
    tokens = F.pad(x["tokens"], (0, extra))
    garbage = torch.randint(4, VOCAB, tokens.shape, generator=gen)
    tokens = torch.where(length_mask(x["lengths"], tokens.size(1)), tokens, garbage)
    return {**x, "tokens": tokens}


@pytest.mark.parametrize("name,params", [("seq2seq_attention", {"cell": "gru"}),
                                         ("seq2seq_attention", {"cell": "lstm", "layers": 2}),
                                         ("transformer_seq2seq", {})])
def test_seq2seq_ignores_padding(name, params):
    gen = torch.Generator().manual_seed(3)
    net = model(name, TEXT, **params).eval()
    x, _ = reverse_batch(6, gen)
    wide = padded(x, 4, gen)
    size = x["tokens"].size(1)
    with torch.no_grad():
        a, b = net(x), net(wide)
        beam_a, beam_b = net.generate(x, max_len=6, beam=3), net.generate(wide, max_len=6, beam=3)
    assert torch.allclose(a["logits"], b["logits"], atol=1e-5)
    assert torch.allclose(a["attention"], b["attention"][..., :size], atol=1e-6)
    past_end = ~length_mask(x["lengths"], size + 4).unsqueeze(1).expand_as(b["attention"])
    assert b["attention"][past_end].abs().max() == 0
    assert torch.equal(beam_a["ids"], beam_b["ids"])
    assert torch.allclose(beam_a["scores"], beam_b["scores"], atol=1e-5)


def test_classifier_ignores_padding():
    gen = torch.Generator().manual_seed(4)
    net = model("transformer_classifier", TEXT).eval()
    x = digit_batch(6, gen)
    with torch.no_grad():
        assert torch.allclose(net(x), net(padded(x, 5, gen)), atol=1e-5)


@pytest.mark.parametrize("pooling", ["max", "mean", "last"])
def test_recurrent_classifier_unpacked_path_matches_packed(pooling):
    """Rows of one length skip packing (the scorer's equal-length chunks); the answer must not change."""
    gen = torch.Generator().manual_seed(5)
    net = get_model("bilstm", TEXT, pooling=pooling).eval()
    tokens = torch.randint(4, VOCAB, (6, 7), generator=gen)
    x = {"tokens": tokens, "lengths": torch.full((6,), 7)}
    with torch.no_grad():   # the same rows with a padded column go through pack_padded_sequence
        assert torch.allclose(net(x), net(padded(x, 3, gen)), atol=1e-6)


def test_equal_length_chunks_cover_every_row_once():
    import numpy as np

    from sparkzoo.pipelines.modelpack import equal_length_chunks

    lengths = np.sort(np.random.default_rng(0).integers(1, 40, 3_000))
    bounds = equal_length_chunks(lengths, 64)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(lengths)
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:])) and all(0 < hi - lo <= 64 for lo, hi in bounds)
    uniform = sum(hi - lo for lo, hi in bounds if lengths[lo] == lengths[hi - 1])
    assert uniform / len(lengths) > 0.9   # ~77 rows per length: nearly every chunk needs no padding


# --- the generate contract --------------------------------------------------------------------------


@pytest.mark.parametrize("name", GENERATORS)
@pytest.mark.parametrize("beam", [1, 3])
def test_generate_follows_the_contract_and_scores_match_teacher_forcing(name, beam):
    """Untrained nets wander, which exercises every path: hypotheses of all lengths, some hitting max_len.
    The reported score of every hypothesis must equal its teacher-forced, length-normalised log-prob."""
    gen = torch.Generator().manual_seed(5)
    net = model(name, IMAGE if name == "caption_attention" else TEXT).eval()
    x, _ = inputs_for(name, gen, n=5)
    max_len = 5
    with torch.no_grad():
        out = net.generate(x, max_len=max_len, beam=beam)
        ids, lengths, scores, attention = out["ids"], out["lengths"], out["scores"], out["attention"]
        size = ids.size(2)
        assert ids.shape == (5, beam, size) and lengths.shape == scores.shape == (5, beam)
        assert size == max(int(lengths.max()), 1) and size <= max_len
        inside = length_mask(lengths.view(-1), size).view(5, beam, size)
        assert (ids[~inside] == PAD).all()
        assert not torch.isin(ids[inside], torch.tensor([PAD, BOS, EOS])).any()
        assert (scores[:, :-1] >= scores[:, 1:]).all() and (scores <= 0).all()
        width = 16 if name == "caption_attention" else x["tokens"].size(1)
        assert attention.shape == (5, size, width)
        best_rows = length_mask(lengths[:, 0], size)
        assert torch.allclose(attention[best_rows].sum(-1), torch.ones(int(best_rows.sum())), atol=1e-5)
        assert (attention[~best_rows] == 0).all()
        for k in range(beam):
            assert torch.allclose(rescore(net, x, ids[:, k], lengths[:, k]), scores[:, k], atol=1e-4)
        if beam > 1:
            assert not torch.equal(ids[:, 0], ids[:, 1])   # distinct hypotheses, not k copies of one


def toy_step(tokens: torch.Tensor, state: tuple[torch.Tensor, ...]):
    """A fixed bigram model where greedy is wrong: after BOS, token 4 (p=.6) beats 5 (p=.4), but after 4
    every continuation is unlikely (EOS .3, ten others .07) while after 5 EOS is nearly certain (.99)."""
    table = torch.full((VOCAB, VOCAB), 1e-9)
    table[BOS, 4], table[BOS, 5] = 0.6, 0.4
    table[4, 4:] = 0.07
    table[4, EOS] = 0.3
    table[5, EOS], table[5, 6] = 0.99, 0.01
    logp = (table / table.sum(1, keepdim=True)).log()
    return logp[tokens], state, torch.ones(len(tokens), 1)


def test_beam_search_beats_greedy_on_a_hand_made_model():
    state = (torch.zeros(2, 1),)
    greedy = beam_search(toy_step, state, batch=2, beam=1, max_len=4, width=1)
    beam = beam_search(toy_step, (torch.zeros(4, 1),), batch=2, beam=2, max_len=4, width=1)
    assert greedy["ids"][:, 0, 0].tolist() == [4, 4] and greedy["lengths"].tolist() == [[1], [1]]
    assert torch.allclose(greedy["scores"][:, 0], torch.tensor((math.log(0.6) + math.log(0.3)) / 2), atol=1e-4)
    assert beam["ids"][:, :, 0].tolist() == [[5, 4], [5, 4]]
    assert torch.allclose(beam["scores"][:, 0], torch.tensor((math.log(0.4) + math.log(0.99)) / 2), atol=1e-4)
    assert (beam["scores"][:, 0] > greedy["scores"][:, 0]).all()


def test_max_len_forces_an_end():
    """A model that never wants to stop still returns hypotheses of max_len tokens, scored with EOS."""
    def babble(tokens, state):
        logp = torch.full((len(tokens), VOCAB), -20.0)
        logp[:, 7] = 0.0
        return logp, state, torch.zeros(len(tokens), 2)

    out = beam_search(babble, (torch.zeros(3, 1),), batch=3, beam=1, max_len=4, width=2)
    assert out["ids"].tolist() == [[[7, 7, 7, 7]]] * 3 and out["lengths"].tolist() == [[4]] * 3
    assert torch.allclose(out["scores"], torch.full((3, 1), -20.0 / 5))


# --- toy tasks they must learn -----------------------------------------------------------------------


def learns(net: torch.nn.Module, make_batch, held_out, *, steps: int, max_len: int, lr: float = 3e-3):
    """Train on fresh batches, then decode held-out rows greedily and with beam 4: both must reach 0.95
    token accuracy, and beam search must score no worse than greedy on every row. Returns the held-out
    inputs, targets and the greedy result for family-specific checks."""
    train(net, make_batch, steps=steps, lr=lr)
    x, y = held_out
    with torch.no_grad():
        greedy = net.generate(x, max_len=max_len)
        beam = net.generate(x, max_len=max_len, beam=4)
    assert token_accuracy(greedy["ids"][:, 0], greedy["lengths"][:, 0], y) >= 0.95
    assert token_accuracy(beam["ids"][:, 0], beam["lengths"][:, 0], y) >= 0.95
    assert (beam["scores"][:, 0] >= greedy["scores"][:, 0] - 1e-5).all()
    return x, y, greedy


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_seq2seq_attention_learns_to_reverse_digits(cell):
    gen = torch.Generator().manual_seed(6)
    net = get_model("seq2seq_attention", TEXT, cell=cell, hidden=64, embed=32, dropout=0.0)
    x, _, greedy = learns(net, lambda: reverse_batch(64, gen), reverse_batch(200, torch.Generator().manual_seed(7)),
                          steps=160, max_len=10)
    # reversing: output position t attends mostly to source position length-1-t
    lengths = x["lengths"]
    wanted = (lengths.unsqueeze(1) - 1 - torch.arange(greedy["attention"].size(1))).clamp(min=0)
    looked = greedy["attention"].argmax(-1)
    real = length_mask(lengths, looked.size(1))
    assert float((looked == wanted)[real].float().mean()) >= 0.8


def test_transformer_seq2seq_learns_to_reverse_digits():
    gen = torch.Generator().manual_seed(8)
    net = get_model("transformer_seq2seq", TEXT, d_model=64, heads=4, layers=2, ff=128, dropout=0.0)
    learns(net, lambda: reverse_batch(64, gen), reverse_batch(200, torch.Generator().manual_seed(9)),
           steps=200, max_len=10, lr=2e-3)


def test_caption_attention_names_squares_and_looks_at_them():
    gen = torch.Generator().manual_seed(10)
    net = get_model("caption_attention", IMAGE, widths=[16, 32], hidden=64, embed=32, dropout=0.0)
    _, y, greedy = learns(net, lambda: squares_batch(64, gen), squares_batch(200, torch.Generator().manual_seed(11)),
                          steps=100, max_len=6)
    # while naming a square (its quadrant, then its colour) the decoder looks inside that quadrant:
    # the 4x4 region grid has 2x2 regions per quadrant, a quarter of the mass if attention were uniform
    grid = greedy["attention"][:, :4].reshape(200, 4, 2, 2, 2, 2)        # (n, step, qrow, row, qcol, col)
    quadrant = (y[:, [0, 0, 2, 2]] - 4)                                  # the quadrant each step names
    mass = grid.sum((3, 5))[torch.arange(200).unsqueeze(1), torch.arange(4), quadrant // 2, quadrant % 2]
    assert float(mass.mean()) >= 0.6


def test_transformer_classifier_learns_a_presence_rule():
    """Label 1 when digit token 9 occurs anywhere in the string: needs attention to every position."""
    def batch(n: int, gen: torch.Generator):
        x = digit_batch(n, gen, low=4, high=12)
        x["tokens"] = torch.where(x["tokens"] == 9, torch.full_like(x["tokens"], 10), x["tokens"])
        label = torch.randint(2, (n,), generator=gen)
        where = (torch.rand(n, generator=gen) * x["lengths"]).long()
        x["tokens"][torch.arange(n), where] = torch.where(label == 1, 9, x["tokens"][torch.arange(n), where])
        return x, label

    gen = torch.Generator().manual_seed(12)
    net = get_model("transformer_classifier", TEXT, d_model=32, heads=4, layers=1, ff=64, dropout=0.0)
    train(net, lambda: batch(64, gen), steps=150)
    x, label = batch(400, torch.Generator().manual_seed(13))
    with torch.no_grad():
        assert float((net(x).argmax(1) == label).float().mean()) >= 0.95
