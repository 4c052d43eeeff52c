"""Where an epoch of the default SASRec goes on a sparse log: torch.profiler over training steps and
over one validation pass (issue 35, item 1). The data and split are the ones ``lmrec train --dataset
D`` uses; the model is built as ``fit`` builds it (the config resolved for the log), but its steps are
run here one by one so the profiler can see them.

    .venv/bin/python benchmarks/sparse_profile.py --dataset ../shared/data/amazon-games-2018 --threads 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from harness import load_split, setup_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()
    setup_threads(args.threads)

    from torch.profiler import ProfilerActivity, profile

    from lmrec.cache import default_cache
    from lmrec.data.batch import QueryBatch
    from lmrec.models.sequential import SASRec, SequenceEncoder, SequenceTask
    from lmrec.train.validation import validation_ndcg

    split = load_split(args.cache_dir or default_cache(), args.dataset)
    train, valid = split.train_dataset(), split.eval_set("valid")
    model = SASRec()
    model.config = model.config.for_data(train)
    model.n_items, model.n_users, model.device = train.n_items, train.n_users, torch.device("cpu")
    model.net = SequenceEncoder(model.n_items, model.config)
    model.popularity = torch.from_numpy(train.item_popularity().astype(np.float32))
    model.unseen = model.popularity == 0
    model.teacher = model.category_vectors = None
    histories = QueryBatch.from_interactions(train.interactions, np.arange(model.n_users))
    task = SequenceTask(model, histories, "causal")
    optimizer = torch.optim.AdamW(model.net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    batches = list(task.batches(0, gen))
    targets = sum(int((b[:, 1:] > 0).sum()) for b in batches)
    print(f"{len(batches)} batches, {targets} targets, {len(valid)} validation users, {model.n_items} items")

    def step(seq: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = task.loss(model.net, seq, gen)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for seq in batches[:3]:  # warm-up
        step(seq)
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for seq in batches[3 : 3 + args.steps]:
            step(seq)
    seconds = time.perf_counter() - t0
    epoch = seconds / args.steps * len(batches)
    print(f"{args.steps} steps: {seconds:.2f} s, an epoch of {len(batches)} steps ≈ {epoch:.1f} s")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    model.net.eval()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        ndcg = validation_ndcg(model, valid)
    print(f"validation pass: {time.perf_counter() - t0:.1f} s (NDCG@10 {ndcg:.4f} after {args.steps + 3} steps)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
