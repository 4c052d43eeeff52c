"""Where a sequential training step goes: CPU milliseconds per batch of SASRec on the
MovieLens-1M-shaped log, split into batching, encoder forward, loss forward, backward and
optimizer step. Process CPU time (not wall), so other load on the machine inflates it little.

Run it against another commit by pointing PYTHONPATH at that tree's ``src`` (the data generator
is read from this tree):

    .venv/bin/python benchmarks/speed_profile.py --threads 1 [--amp]
    PYTHONPATH=/tmp/old/src .venv/bin/python benchmarks/speed_profile.py --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def load_generator():  # type: ignore[no-untyped-def]
    """``ml1m_shaped`` from this tree, whichever lmrec is imported."""
    spec = importlib.util.spec_from_file_location("synthetic", HERE.parent / "src/lmrec/data/synthetic.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ml1m_shaped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import lmrec
    from lmrec.data.batch import QueryBatch
    from lmrec.data.splits import leave_one_out
    from lmrec.models.sequential import SASRec, SequenceEncoder, SequenceTask

    train = leave_one_out(load_generator()(0)).train_dataset()
    model = SASRec()
    model.n_items, model.n_users, model.device = train.n_items, train.n_users, torch.device("cpu")
    model.net = SequenceEncoder(model.n_items, model.config)
    model.popularity = torch.from_numpy(train.item_popularity().astype(np.float32))
    model.unseen = model.popularity == 0
    model.teacher = model.category_vectors = None
    task = SequenceTask(model, QueryBatch.from_interactions(train.interactions, np.arange(model.n_users)), "causal")
    optimizer = torch.optim.AdamW(model.net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    parts = dict.fromkeys(("batching", "encoder forward", "loss forward", "backward", "optimizer"), 0.0)
    batches = iter(task.batches(0, gen))

    def timed(part: str):  # type: ignore[no-untyped-def]
        @contextlib.contextmanager
        def clock():  # type: ignore[no-untyped-def]
            t0 = time.process_time()
            yield
            parts[part] += time.process_time() - t0

        return clock()

    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp)
    for i in range(args.batches + 1):
        if i == 1:  # the first batch warms up
            parts = dict.fromkeys(parts, 0.0)
        with timed("batching"):
            seq = next(batches)
        with timed("encoder forward"), autocast:
            table = model.net.item_table()
            inputs, targets = seq[:, :-1], seq[:, 1:]
            keep = targets > 0
            hidden = model.net(inputs, causal=True, table=table)[keep]
        with timed("loss forward"), autocast:
            loss = model._loss(hidden, targets[keep] - 1, gen, table)
        with timed("backward"):
            loss.backward()
        with timed("optimizer"):
            optimizer.step()
            optimizer.zero_grad()
    total = sum(parts.values())
    print(f"lmrec from {Path(lmrec.__file__).parent}; {len(task.windows)} windows of <= 51, batch 128, amp={args.amp}")
    print("| part | ms per batch | share |\n|---|---|---|")
    for part, seconds in parts.items():
        print(f"| {part} | {seconds / args.batches * 1000:.1f} | {seconds / total:.0%} |")
    per_batch = total / args.batches
    epoch = per_batch * len(task.windows) / 128
    print(f"| total | {per_batch * 1000:.0f} | epoch of {len(task.windows) / 128:.0f} batches ≈ {epoch:.0f} s CPU |")


if __name__ == "__main__":
    sys.exit(main())
