"""The feedback loop (issue 33): serve every user a top-10, record the clicks simulated users make
on it in the service's event store, retrain on them as ``lmrec retrain`` does, and repeat. How
exposure concentrates over the rounds, with the model's own lists and with a re-ranker.

Simulated users click among what they are shown: each round a user clicks ``--clicks`` of the ten
items, drawn without replacement with probability ∝ position bias 1/log2(rank + 1) × their taste
1/log2(1 + the item's rank in an oracle's list for them), the oracle being ``--oracle`` trained on
the same log (a different model from the served one, so the loop cannot only confirm itself). The
tail is fixed once, from the original training log (``lmrec.evaluate.fairness.tail_items``).

    taskset -c 0 .venv/bin/python benchmarks/feedback_loop.py --model bpr --rounds 5 --pin 0
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
from harness import BENCH, Arm, add_run_arguments, fmt, header, recipe, setup_threads, train_arm


def all_histories(run: Any) -> Any:
    from lmrec.data.batch import QueryBatch

    ds = run.dataset
    return QueryBatch.from_interactions(ds.interactions, np.arange(ds.n_users))


def oracle_ranks(oracle: Any) -> dict[str, dict[str, int]]:
    """Each user's rank (1 = best) of every item by the oracle, unseen items only, as raw IDs."""
    scores = oracle.model.score(all_histories(oracle)).numpy()
    ds = oracle.dataset
    seen = all_histories(oracle)
    for u in range(ds.n_users):
        scores[u, seen.history(u)] = -np.inf
    order = np.argsort(-scores, axis=1)
    ranks = np.empty_like(order)
    ranks[np.arange(len(order))[:, None], order] = np.arange(1, order.shape[1] + 1)
    items = np.array(ds.items.ids)
    return {user: dict(zip(items.tolist(), ranks[u].tolist(), strict=True)) for u, user in enumerate(ds.users.ids)}


def serve(run: Any, reranker: Any) -> tuple[list[str], np.ndarray]:
    """Every user's shown top-10 as raw item IDs (users by raw ID)."""
    top, _ = run.ranked(all_histories(run), 10, reranker, candidates=100)
    items = np.array([*run.dataset.items.ids, ""])  # -1 → ""
    return run.dataset.users.ids, items[top]


def exposure(shown: np.ndarray, tail: set[str], catalog: int) -> dict[str, float]:
    """How concentrated the lists shown this round are: over items (Gini of slots per catalog item,
    the tail's share, coverage, the top 1 %'s share) and over users (homogenisation: the mean
    Jaccard overlap of two users' lists, Chaney et al. 2018)."""
    from scipy import sparse

    from lmrec.evaluate.beyond import gini_index

    filled = shown[shown != ""]
    vocab = {item: row for row, item in enumerate(sorted(set(filled)))}
    rows = np.vectorize(lambda i: vocab.get(i, -1))(shown)
    counts = np.bincount(rows[rows >= 0], minlength=catalog)
    user, slot = np.nonzero(rows >= 0)
    lists = sparse.csr_array((np.ones(len(user)), (user, rows[user, slot])), shape=(len(rows), catalog))
    common = (lists @ lists.T).toarray()
    sizes = np.asarray(lists.sum(axis=1)).ravel()
    jaccard = common / np.maximum(sizes[:, None] + sizes[None, :] - common, 1)
    n = len(rows)
    return {
        "homogenisation": round(float((jaccard.sum() - np.trace(jaccard)) / (n * (n - 1))), 4),
        "gini": round(gini_index(rows, catalog), 4),
        "tail_share": round(float(np.isin(filled, list(tail)).mean()), 4),
        "coverage": round(len(vocab) / catalog, 4),
        "top1%_share": round(float(np.sort(counts)[::-1][: max(1, catalog // 100)].sum() / len(filled)), 4),
    }


def collected(now: list[str], so_far: list[str], tail: set[str], items: Any) -> dict[str, float]:
    """What the loop feeds back: the tail share of this round's clicks, and how concentrated all
    the clicks so far are (the Gini index of clicks per catalog item)."""
    from lmrec.evaluate.beyond import gini_index

    return {
        "clicks": len(now),
        "clicks_tail_share": round(float(np.isin(now, list(tail)).mean()), 4),
        "clicks_gini": round(gini_index(items.rows(so_far)[:, None], len(items)), 4),
    }


def clicks(
    users: list[str], shown: np.ndarray, taste: dict[str, dict[str, int]], n: int, stamp: float, rng: Any
) -> list[Any]:
    from lmrec.serve.records import Event

    position = 1 / np.log2(np.arange(2, shown.shape[1] + 2))
    events = []
    for user, row in zip(users, shown, strict=True):
        ranks = taste.get(user, {})
        liking = np.array([1 / np.log2(1 + ranks[i]) if i in ranks else 0.0 for i in row])
        weight = position * liking
        if weight.sum() == 0:
            continue
        picked = rng.choice(len(row), size=min(n, int((weight > 0).sum())), replace=False, p=weight / weight.sum())
        events += [Event(user=user, item=str(row[j]), type="click", timestamp=stamp) for j in picked]
    return events


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--model", default="bpr", help="the served model, retrained every round")
    p.add_argument("--oracle", default="ease", help="the simulated users' taste")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--clicks", type=int, default=3, help="clicks per user per round")
    p.add_argument("--rerank", default="fair", help="the re-ranker of the second policy (lmrec.rerank)")
    p.add_argument("--value", type=float, default=0.3, help="its trade-off value")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=BENCH / "results" / "feedback-loop.json")
    add_run_arguments(p)
    args = p.parse_args(argv)
    setup_threads(args.threads, args.pin)
    from lmrec.cache import default_cache
    from lmrec.evaluate.fairness import tail_items
    from lmrec.models.base import FitOptions
    from lmrec.rerank import make_reranker
    from lmrec.serve.retrain import retrain
    from lmrec.serve.store import SQLiteStore

    cache_dir = default_cache()
    root = args.runs or Path("runs") / "feedback-loop"
    data = recipe(args.dataset)
    first = train_arm(Arm("served", args.model), args.seed, data, root / "round0", cache_dir)
    oracle = train_arm(Arm("oracle", args.oracle), args.seed, data, root / "oracle", cache_dir)
    taste = oracle_ranks(oracle)
    train = first.split.train_dataset()
    tail = set(np.array(train.items.ids)[tail_items(train.item_popularity())].tolist())
    catalog = train.n_items
    report: dict[str, Any] = {"title": "The feedback loop", **header(argv), "policies": {}}
    for policy in ("model", args.rerank):
        where = root / policy
        shutil.rmtree(where, ignore_errors=True)  # each policy's loop starts afresh from round 0
        store = SQLiteStore(where / "events.db")
        rng = np.random.default_rng(args.seed)
        run, rounds, clicked = first, [], []
        for r in range(args.rounds + 1):
            reranker = None if policy == "model" else make_reranker(args.rerank, args.value, run.split.train_dataset())
            users, shown = serve(run, reranker)
            rounds.append({"round": r, **exposure(shown, tail, catalog)})
            print(f"{policy} round {r}: {rounds[-1]}", file=sys.stderr)
            if r == args.rounds:
                break
            stamp = float(run.dataset.interactions["timestamp"].max()) + 1
            events = clicks(users, shown, taste, args.clicks, stamp, rng)
            store.add_events(events)
            clicked += [e.item for e in events]
            rounds[-1] |= collected([e.item for e in events], clicked, tail, train.items)
            options = FitOptions(seed=args.seed, cache_dir=cache_dir)
            run = retrain(run.directory, store, where / f"round{r + 1}", cache_dir, options)
        store.close()
        report["policies"][policy] = rounds
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    table = render(report, args)
    args.out.with_suffix(".md").write_text(table + "\n")
    print(table)
    return report


def render(report: dict[str, Any], args: argparse.Namespace) -> str:
    m = report["machine"]
    lines = [
        f"## {report['title']}: {args.model} served, {args.oracle} as the users' taste, {args.clicks} clicks a "
        f"user a round",
        "",
        f"Machine: {m['cpu']}, torch {m['torch']}. Commit {report['commit']}, {report['date']}. "
        f"Command: `{report['command']}`",
        "",
        "| policy | round | exposure Gini | tail share of top-10 | coverage | top-1 % items' share "
        "| homogenisation | clicks' tail share | Gini of all clicks so far |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for policy, rounds in report["policies"].items():
        for r in rounds:
            lines.append(
                f"| {policy} | {r['round']} | {r['gini']:.4f} | {r['tail_share']:.4f} | {r['coverage']:.4f} "
                f"| {r['top1%_share']:.4f} | {r['homogenisation']:.4f} | {fmt(r.get('clicks_tail_share'), 4)} "
                f"| {fmt(r.get('clicks_gini'), 4)} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
