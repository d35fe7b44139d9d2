"""Every registered sequence family fits its task's contract on small padded batches, as the loader
and the scorer build them: loss is finite and backpropagates, every metric key is present, decoding
tasks decode, and scoring gets one output row per input row."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparkzoo import models
from sparkzoo.models.tasks.sequence import PAD, aligned_pairs, strip_ids

SEQUENCE_TASKS = ("text_classification", "language_model", "seq2seq", "captioning", "ctc")
SEQUENCE_FAMILIES = [n for n in models.list_models() if models.model_task(n) in SEQUENCE_TASKS]
VOCAB = ["<pad>", "<unk>", "<bos>", "<eos>"] + [f"w{i}" for i in range(16)]
CTC_VOCAB = list("abcdefgh")


def _ragged(rng: np.random.Generator, lengths: list[int], low: int, high: int, bos_eos: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Padded int64 rows as the loader delivers them (``<column>`` plus ``<column>__len``)."""
    rows = [list(rng.integers(low, high, n)) for n in lengths]
    if bos_eos:
        rows = [[2] + r + [3] for r in rows]
    width = max(len(r) for r in rows)
    out = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out, np.array([len(r) for r in rows], dtype=np.int64)


def _batch(task_name: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    lengths = [5, 2, 7, 3]
    batch: dict[str, np.ndarray] = {"label": np.array([0, 1, 0, 1], dtype=np.int64)}
    batch["token_ids"], batch["token_ids__len"] = _ragged(rng, lengths, 4, len(VOCAB))
    batch["target_ids"], batch["target_ids__len"] = _ragged(rng, [3, 1, 4, 2], 4, len(VOCAB), bos_eos=True)
    batch["caption_ids"], batch["caption_ids__len"] = batch["target_ids"], batch["target_ids__len"]
    batch["image"] = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    if task_name == "ctc":
        frames = np.array([40, 23, 31, 16])
        batch["features"] = rng.normal(size=(4, 40, 8)).astype(np.float32)
        batch["features"][np.arange(40)[None, :] >= frames[:, None]] = 0.0
        batch["features__len"] = frames
        batch["target_ids"], batch["target_ids__len"] = _ragged(rng, [3, 1, 4, 2], 0, len(CTC_VOCAB))
    return batch


@pytest.mark.parametrize("name", SEQUENCE_FAMILIES)
def test_sequence_family_fits_its_task(name):
    torch.manual_seed(0)
    task_name = models.model_task(name)
    target = CTC_VOCAB if task_name == "ctc" else VOCAB
    spec = models.InputSpec(channels=3, height=16, width=16, num_classes=2, vocab_size=len(VOCAB),
                            target_vocab_size=len(target), n_mels=8, max_length=10)
    net = models.get_model(name, spec)
    task = models.make_task(task_name, 2, target_vocab=tuple(target), max_decode=8, beam=2, top_k=2)
    batch = _batch(task_name)
    x, y = task.tensors(batch, torch.device("cpu"))
    out = task.as_float(net(x))
    loss = task.loss(out, y)
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    net.eval()
    with torch.inference_mode():
        evaluated = task.as_float(task.predict(net, x))
    sums = task.metric_sums(evaluated, y)
    assert set(sums) == set(task.empty_sums())
    arrays = {k: v + task.detail_arrays(evaluated, y).get(k, 0) for k, v in task.empty_arrays().items()}
    assert task.metric in task.finish(sums, arrays)
    with torch.inference_mode():
        inputs = task.model_inputs(batch, "cpu")
        cols = task.outputs(task.as_float(task.predict(net, inputs)), inputs)
    assert cols and all(len(v) == 4 for v in cols.values())
    if "prediction_text" in cols:
        assert all(isinstance(t, str) for t in cols["prediction_text"])
    assert models.count_parameters(net) > 0


@pytest.mark.parametrize("name", [n for n in SEQUENCE_FAMILIES if models.model_task(n) == "text_classification"])
def test_text_classifier_ignores_padding(name):
    """A sentence gets the same logits alone or padded beside a longer one (packed or masked padding)."""
    torch.manual_seed(0)
    net = models.get_model(name, models.InputSpec(num_classes=2, vocab_size=len(VOCAB))).eval()
    tokens = torch.tensor([[5, 6, 7, PAD, PAD], [8, 9, 10, 11, 12]])
    with torch.no_grad():
        both = net({"tokens": tokens, "lengths": torch.tensor([3, 5])})
        alone = net({"tokens": tokens[:1, :3], "lengths": torch.tensor([3])})
    assert torch.allclose(both[:1], alone, atol=1e-5)


def test_strip_ids_and_alignment():
    assert strip_ids(np.array([2, 5, 6, 3, 7, 0])) == [5, 6]
    assert strip_ids(np.array([5, 6, 7]), length=2) == [5, 6]
    # ref "abc" vs hyp "axc d": one substitution (b->x) and one insertion (d)
    pairs = aligned_pairs([0, 9, 2, 3], [0, 1, 2])
    assert pairs == [(0, 0), (1, 9), (2, 2), (None, 3)]


def test_language_model_ignores_padding_and_cannot_peek():
    """Per-row likelihoods do not depend on batch padding, and neither direction sees the word it
    predicts: on uniformly random words a model that could peek drives its loss towards 0, while an honest
    one cannot go much below log(number of words)."""
    torch.manual_seed(0)
    spec = models.InputSpec(vocab_size=len(VOCAB))
    net = models.get_model("bilstm_lm", spec, embed=16, hidden=16, dropout=0.0).eval()
    tokens = torch.tensor([[5, 6, 7, PAD, PAD], [8, 9, 10, 11, 12]])
    with torch.no_grad():
        both = net({"tokens": tokens, "lengths": torch.tensor([3, 5])})
        alone = net({"tokens": tokens[:1, :3], "lengths": torch.tensor([3])})
    assert torch.allclose(both["nll"][:1], alone["nll"], atol=1e-5)
    assert both["predicted"].tolist() == [4.0, 8.0]

    task = models.make_task("language_model", 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # tiny matrices: extra threads only spin on a shared machine
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(1)
    try:
        for _ in range(150):
            batch = torch.randint(4, len(VOCAB), (16, 12), generator=gen)
            loss = task.loss(net({"tokens": batch, "lengths": torch.full((16,), 12)}), None)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    assert float(loss.detach()) > 0.8 * np.log(len(VOCAB) - 4), float(loss.detach())


@pytest.mark.parametrize("family,task_name", [("bilstm", "text_classification"), ("seq2seq_attention", "seq2seq"),
                                              ("ctc_bilstm", "ctc")])
def test_scoring_in_length_sorted_chunks_gives_the_one_pass_answers(family, task_name):
    """The Predictor runs sequence models in chunks of rows sorted by length (far less padding per pass);
    the rows must come back in the caller's order with the answers a single pass gives."""
    from sparkzoo.pipelines.modelpack import Predictor

    rng = np.random.default_rng(1)
    n = 150
    lengths = rng.integers(1, 12, n).tolist()
    target = CTC_VOCAB if task_name == "ctc" else VOCAB
    spec = {"task": task_name, "family": family, "params": {}, "num_classes": 2, "stats": {"mean": 0.0, "std": 1.0},
            "vocab": {"text": VOCAB, "target": target}, "shape": {"n_mels": 8, "max_length": 12},
            "decode": {"beam": 1, "max_decode": 8}}
    if task_name == "ctc":
        frames = rng.integers(4, 40, n)
        feats = rng.normal(size=(n, 40, 8)).astype(np.float32)
        feats[np.arange(40)[None, :] >= frames[:, None]] = 0.0
        batch = {"features": feats, "features__len": frames}
    else:
        batch = dict(zip(("token_ids", "token_ids__len"), _ragged(rng, lengths, 4, len(VOCAB))))
    torch.manual_seed(0)
    module = models.get_model(family, models.InputSpec(num_classes=2, vocab_size=len(VOCAB), target_vocab_size=len(target),
                                                       n_mels=8, max_length=12))
    one_pass = Predictor(spec, module, chunk=n).predict_batch(batch)
    chunked = Predictor(spec, module, chunk=16).predict_batch(batch)
    assert set(chunked) == set(one_pass)
    for key, value in one_pass.items():
        assert len(chunked[key]) == n
        if value.dtype == object and np.asarray(value[0]).dtype.kind == "f":   # per-row float lists (beam scores)
            for got, want in zip(chunked[key], value):
                np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5, err_msg=key)
        elif value.dtype == object:   # text and token ids: exactly the same
            assert [np.asarray(v).tolist() for v in chunked[key]] == [np.asarray(v).tolist() for v in value], key
        else:
            np.testing.assert_allclose(chunked[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
