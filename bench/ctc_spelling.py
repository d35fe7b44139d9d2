"""Issue 9's CTC bars on the spliced KLettres set, measured with a plain single-process torch loop.

Why a loop of its own: the generic sequence training/scoring integration (Horovod ranks, MLflow, the
``ctc`` task) is built separately against SEQUENCE_CONTRACT.md; until it lands this script shows what
``ctc_bilstm`` reaches on ``conf/klettres_spelling.yaml``'s data. It reads the prepared Parquet (as one
training rank would, pyarrow, no Spark), trains with ``torch.nn.CTCLoss`` under a time budget, and
reports CER (edits / reference letters, ``models.sequence_metrics``) greedy and beam on: val (unseen
words, training speakers), test rows of the training speakers (unseen words), and test rows of each
held-out speaker (unseen real speaker), plus that speaker's letter confusion table.

    .venv/bin/python bench/ctc_spelling.py --set data.source.utterances=8000 --minutes 20
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np

from _common import experiment


def _load(ds, split: str) -> list[dict]:
    import pyarrow.parquet as pq

    cols = ["features", "n_frames", "n_mels", "target_ids", "transcript", "speaker"]
    return [r for f in ds.split_files(split) for r in pq.read_table(f["path"], columns=cols).to_pylist()]


def _batch(rows: list[dict], n_mels: int):
    import torch

    lengths = torch.tensor([r["n_frames"] for r in rows])
    x = torch.zeros(len(rows), int(lengths.max()), n_mels)
    for i, r in enumerate(rows):
        x[i, : r["n_frames"]] = torch.from_numpy(np.frombuffer(r["features"], np.float32).reshape(r["n_frames"], n_mels).copy())
    return {"features": x, "lengths": lengths}


def _align(hyp: list[int], ref: list[int]) -> list[tuple[int, int]]:
    """(ref symbol, hyp symbol) pairs of a minimal edit alignment; -1 marks an insertion or a deletion."""
    d = np.zeros((len(ref) + 1, len(hyp) + 1), dtype=np.int32)
    d[:, 0], d[0, :] = np.arange(len(ref) + 1), np.arange(len(hyp) + 1)
    for i in range(1, len(ref) + 1):
        for j in range(1, len(hyp) + 1):
            d[i, j] = min(d[i - 1, j] + 1, d[i, j - 1] + 1, d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]))
    i, j, out = len(ref), len(hyp), []
    while i or j:
        if i and j and d[i, j] == d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]):
            out.append((ref[i - 1], hyp[j - 1]))
            i, j = i - 1, j - 1
        elif i and d[i, j] == d[i - 1, j] + 1:
            out.append((ref[i - 1], -1))
            i -= 1
        else:
            out.append((-1, hyp[j - 1]))
            j -= 1
    return out[::-1]


def evaluate(net, rows: list[dict], n_mels: int, beam: int, batch: int = 64) -> tuple[float, list[list[int]]]:
    import torch

    from sparkzoo.models.sequence_metrics import error_rate_sums

    net.eval()
    hyps = []
    with torch.inference_mode():
        for k in range(0, len(rows), batch):
            chunk = rows[k: k + batch]
            d = net.decode(net(_batch(chunk, n_mels)), beam=beam)
            hyps += [d["ids"][i, : int(d["lengths"][i])].tolist() for i in range(len(chunk))]
    s = error_rate_sums(hyps, [r["target_ids"] for r in rows])
    return s["edits"] / max(s["ref_tokens"], 1.0), hyps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", default=[], help="config override, as for sparkzoo")
    ap.add_argument("--minutes", type=float, default=20.0, help="training time budget")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--beam", type=int, default=8)
    args = ap.parse_args()

    import torch

    from sparkzoo import models
    from sparkzoo.pipelines.dataset import open_prepared

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    exp = experiment(*args.set, conf="conf/klettres_spelling.yaml")
    ds = open_prepared(exp)
    m = ds.manifest
    vocab, n_mels = m["vocab"]["target"], int(m["shape"]["n_mels"])
    held = set(m["held_out"]["speakers"])
    train, val, test = (_load(ds, s) for s in ("train", "val", "test"))
    seen = [r for r in test if r["speaker"] not in held]
    unseen = {s: [r for r in test if r["speaker"] == s] for s in sorted(held)}
    print(f"rows: train={len(train)} val={len(val)} test seen={len(seen)} "
          + " ".join(f"test {s}={len(r)}" for s, r in unseen.items()))
    spec = models.InputSpec(n_mels=n_mels, target_vocab_size=len(vocab))
    net = models.get_model(exp.model.name, spec, **exp.model.params)
    print(f"{exp.model.name} {exp.model.params}: {models.count_parameters(net):,} parameters")
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    ctc = torch.nn.CTCLoss(blank=len(vocab), zero_infinity=True)
    rng = np.random.default_rng(0)
    order = np.argsort([r["n_frames"] for r in train])      # length buckets: little padding per batch
    batches = [order[k: k + args.batch] for k in range(0, len(order), args.batch)]
    started, epoch = time.time(), 0
    while time.time() - started < args.minutes * 60:
        epoch += 1
        net.train()
        losses = []
        for b in rng.permutation(len(batches)):
            rows = [train[i] for i in batches[b]]
            out = net(_batch(rows, n_mels))
            targets = torch.tensor([t for r in rows for t in r["target_ids"]])
            loss = ctc(out["log_probs"], targets, out["out_lengths"], torch.tensor([len(r["target_ids"]) for r in rows]))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            losses.append(float(loss.detach()))
            if time.time() - started > args.minutes * 60:
                break
        cer, _ = evaluate(net, val[:300], n_mels, beam=1)
        print(f"epoch {epoch}: loss {np.mean(losses):.3f}, val CER (greedy, 300 rows) {cer:.3f}, "
              f"{time.time() - started:.0f}s", flush=True)

    print(f"trained {epoch} epochs in {time.time() - started:.0f}s")
    for name, rows in [("val (unseen words)", val), ("test, training speakers (unseen words)", seen)] + \
            [(f"test, held-out speaker {s}", r) for s, r in unseen.items()]:
        g, _ = evaluate(net, rows, n_mels, beam=1)
        t = time.time()
        b, hyps = evaluate(net, rows, n_mels, beam=args.beam)
        print(f"CER {name}: greedy {g:.4f}, beam{args.beam} {b:.4f} ({len(rows)} rows, beam {time.time() - t:.0f}s)")
    for s, rows in unseen.items():
        _, hyps = evaluate(net, rows, n_mels, beam=1)
        pairs = Counter(p for h, r in zip(hyps, rows) for p in _align(h, r["target_ids"]))
        print(f"letter confusion, {s} (ref -> hyp: count; '-' = deleted / inserted), greedy:")
        per_ref = Counter()
        for (ref, hyp), c in pairs.items():
            per_ref[ref] += c
        for ref in range(-1, len(vocab)):
            wrong = {hyp: c for (r, hyp), c in pairs.items() if r == ref and hyp != ref}
            if not wrong and ref != -1:
                continue
            name = vocab[ref] if ref >= 0 else "-"
            shown = ", ".join(f"{vocab[h] if h >= 0 else '-'}:{c}" for h, c in sorted(wrong.items(), key=lambda kv: -kv[1]))
            print(f"  {name}: {per_ref[ref] - sum(wrong.values())}/{per_ref[ref]} right; {shown}")


if __name__ == "__main__":
    main()
