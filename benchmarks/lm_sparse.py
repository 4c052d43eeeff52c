"""Language-model items against the tuned CE-SASRec on a sparse shared log (issue 34).

Arms (all ``sasrec`` on the tuned CE-SASRec settings — the original SASRec block, one head, a
64-wide feed-forward, dropout 0.6, no weight decay — trained with the same full-softmax CE and the
same early stopping through the harness, i.e. ``train_run`` → ``open_run``, every test user):

  ce-sasrec        the baseline
  text-init        the ID table started from whitened MiniLM item text (item_init=text)
  fusion           + score-level text fusion, its weight chosen on validation (fusion.choose)
  init+fusion      both
  init+fusion/shuffled, init+fusion/random
                   the controls: the same model with the item→text map shuffled
                   (text_encoder=shuffled:minilm) and with random 384-d vectors (random:384)

``--published`` trains every arm on the published CE-SASRec's schedule (batch 512, lr 5e-4, up to
200 epochs, patience 20) instead of batch 128, lr 1e-3 and 60 epochs.

Besides the harness's table (paired tests against ce-sasrec) it prints NDCG@10 by the popularity of
each test user's target item in training (head / torso / tail: the most popular items holding the
first, second and last third of training interactions). Arms can be trained by two processes at
once into the same ``--runs`` (one per core) and the table built by a last call that reuses them::

    taskset -c 0 .venv/bin/python benchmarks/lm_sparse.py --dataset ../shared/data/amazon-beauty-2014 \\
        --arms ce-sasrec init+fusion --seeds 0,1,2 --runs runs/lm-sparse --pin 0
    .venv/bin/python benchmarks/lm_sparse.py --dataset ../shared/data/amazon-beauty-2014 --seeds 0,1,2 \\
        --runs runs/lm-sparse      # every arm, reusing the runs: the table
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
from harness import BENCH, Arm, run_arms

TUNED = {
    "block": "sasrec",
    "heads": "1",
    "inner": "64",
    "dropout": "0.6",
    "weight_decay": "0",
    "epochs": "60",
    "patience": "10",
}
# the published CE-SASRec's schedule on top (MTandHJ/CE-SCE-LLMRec: batch 512, lr 5e-4, 200 epochs;
# its best epochs 105-140), early-stopped at patience 20: --recipe published
PUBLISHED = {**TUNED, "batch_size": "512", "lr": "5e-4", "epochs": "200", "patience": "20"}
FUSION = {"fusion.choose": "0,2,4,6,8"}
INIT = {"item_init": "text"}
ARMS = {
    "ce-sasrec": TUNED,
    "text-init": {**TUNED, **INIT},
    "fusion": {**TUNED, **FUSION},
    "init+fusion": {**TUNED, **INIT, **FUSION},
    "init+fusion/shuffled": {**TUNED, **INIT, **FUSION, "text_encoder": "shuffled:minilm"},
    "init+fusion/random": {**TUNED, **INIT, **FUSION, "text_encoder": "random:384"},
}


def popularity_breakdown(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Mean NDCG@10 (over seeds and users) of each arm for the users whose test target is a head,
    torso or tail item of training."""
    from lmrec.cache import default_cache
    from lmrec.runs import open_run

    first = next(iter(report["arms"].values()))["seeds"][0]["run"]
    run = open_run(Path(first), default_cache())
    counts = run.split.train_dataset().item_popularity().astype(float)
    order = np.argsort(-counts, kind="stable")
    share = np.cumsum(counts[order]) / counts.sum()
    bucket = np.empty(len(counts), dtype=object)
    bucket[order] = np.where(share <= 1 / 3, "head", np.where(share <= 2 / 3, "torso", "tail"))
    test = run.split.eval_set("test")
    groups = np.array([bucket[test.targets(i)[0]] for i in range(len(test))])
    out: dict[str, dict[str, float]] = {}
    for name, arm in report["arms"].items():
        per_user = np.mean([s["per_user"] for s in arm["seeds"]], axis=0)
        out[name] = {g: round(float(per_user[groups == g].mean()), 5) for g in ("head", "torso", "tail")}
    out["users"] = {g: int((groups == g).sum()) for g in ("head", "torso", "tail")}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="a shared log directory (interactions.csv + items.csv)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pin", default="", help="CPU cores to pin to, e.g. 0")
    parser.add_argument("--runs", type=Path, default=Path("runs/lm-sparse"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--epochs", type=int, help="cap every arm at this many epochs (patience 5) instead of 60 (10)")
    parser.add_argument(
        "--defaults", action="store_true", help="sasrec's defaults under every arm instead of the tuned CE-SASRec's"
    )
    parser.add_argument("--published", action="store_true", help="the published CE-SASRec's schedule (PUBLISHED)")
    args = parser.parse_args(argv)

    log = Path(args.dataset).name
    tuned = {} if args.defaults else PUBLISHED if args.published else TUNED
    if args.epochs:
        tuned = {**tuned, "epochs": str(args.epochs), "patience": "5"}
    arms = [
        Arm(name, "sasrec", {**tuned, **{k: v for k, v in ARMS[name].items() if k not in TUNED}}) for name in args.arms
    ]
    recipe = "-defaults" if args.defaults else "-published" if args.published else ""
    tag = recipe + (f"-e{args.epochs}" if args.epochs else "")
    out = args.out or BENCH / "results" / f"lm-sparse-{log}{tag}.json"
    report = run_arms(
        arms,
        [int(s) for s in args.seeds.split(",")],
        baseline=args.arms[0],
        runs_dir=args.runs / f"{log}{tag}",
        out=out,
        dataset=args.dataset,
        argv=sys.argv[1:] if argv is None else argv,
        title=f"Language-model items against the tuned CE-SASRec on {log}",
        threads=args.threads,
        pin=[int(c) for c in args.pin.split(",") if c] or None,
    )
    print("\n| arm | valid NDCG@10 (best epoch) | with fusion | fusion weight chosen (per seed) | fit s |")
    print("|---|---|---|---|---|")
    for name, arm in report["arms"].items():
        chosen, valid, fused = [], [], []
        for seed in arm["seeds"]:
            training = json.loads((Path(seed["run"]) / "run.json").read_text())["training"]
            fusion = training.get("fusion") or {}
            chosen.append(str(fusion.get("weight", "–")))
            valid.append(max(training["valid"]))
            fused.append(max(fusion["valid_ndcg@10"].values()) if fusion else valid[-1])
        print(
            f"| {name} | {statistics.fmean(valid):.4f} | {statistics.fmean(fused):.4f} | {', '.join(chosen)} | "
            f"{arm['summary']['fit_s']} |"
        )
    report["popularity"] = popularity_breakdown(report)
    print("\n| arm | head | torso | tail |\n|---|---|---|---|")
    for name, row in report["popularity"].items():
        print(f"| {name} | {row['head']} | {row['torso']} | {row['tail']} |")
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
