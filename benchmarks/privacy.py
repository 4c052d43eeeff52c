"""Privacy you can measure: user-level DP-SGD BPR at several ε against non-private BPR on ml-100k,
and a membership-inference attack against each.

Quality: leave-one-out, full ranking, all 943 test users, NDCG@10/Recall@10. Attack: half of the
users (≥ 2 interactions) are members, the model trains on their interactions only, and the attack
(:func:`lmrec.privacy.membership_inference`, rank signal) tells members from the held-out half by how
well the model ranks the rest of a user's history given its first half; ROC AUC, beside the bound
e^ε / (1 + e^ε) that no ε-DP model can exceed.

    .venv/bin/python benchmarks/privacy.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilons", default="1,4,8", help="targets of the DP rows (∞ is plain BPR)")
    parser.add_argument("--dp-epochs", type=int, default=100)
    parser.add_argument("--dp-batch", type=int, default=128, help="expected users per DP step")
    parser.add_argument("--dp-lr", type=float, default=0.02)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "lmrec")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "privacy.json")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from lmrec.data.sources import load_source
    from lmrec.data.splits import leave_one_out
    from lmrec.evaluate import evaluate
    from lmrec.models import FitOptions, model_class
    from lmrec.privacy import dp_auc_bound, membership_inference, membership_split
    from lmrec.train.privacy import DPSpec

    data = load_source("ml-100k", args.cache_dir)
    split = leave_one_out(data)
    train, valid, test = split.train_dataset(), split.eval_set("valid"), split.eval_set("test")
    members = membership_split(data, 0.5, seed=0)
    bpr = model_class("bpr")
    rows: list[dict[str, Any]] = []
    settings: list[tuple[str, float | None]] = [("∞", None)] + [(e, float(e)) for e in args.epsilons.split(",")]
    for label, eps in settings:
        spec = DPSpec(epsilon=eps) if eps is not None else None
        config = {} if spec is None else {"epochs": args.dp_epochs, "batch_size": args.dp_batch, "lr": args.dp_lr}

        def fit(on: Any, stop: Any, spec: DPSpec | None = spec, config: dict = config) -> tuple[Any, float]:
            t0 = time.perf_counter()
            model = bpr(bpr.config_class.from_dict(config)).fit(on, stop, FitOptions(seed=0, dp=spec))
            return model, time.perf_counter() - t0

        model, fit_s = fit(train, valid if spec is None else None)  # DP: no early stopping
        metrics = evaluate(model, test, ks=(10,)).metrics
        attacked, _ = fit(members.train_dataset(), None)
        attack = membership_inference(attacked, members, epsilon=eps)
        privacy = model.training_log.get("privacy", {})
        rows.append(
            {
                "epsilon": label,
                "epsilon_spent": privacy.get("epsilon"),
                "delta": privacy.get("delta"),
                "noise_multiplier": privacy.get("noise_multiplier"),
                "ndcg@10": metrics["ndcg@10"],
                "recall@10": metrics["recall@10"],
                "attack_auc": attack.auc,
                "dp_auc_bound": dp_auc_bound(eps) if eps is not None else None,
                "fit_s": round(fit_s, 1),
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    base = rows[0]["ndcg@10"]
    print("ml-100k, leave-one-out, full ranking, all 943 test users; BPR (dim 64); seed 0")
    print(
        "| ε target | ε spent (δ) | noise σ | NDCG@10 | of non-private | Recall@10 | attack AUC | AUC bound | fit s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        spent = f"{r['epsilon_spent']:.2f} ({r['delta']:.1e})" if r["epsilon_spent"] is not None else "–"
        noise = f"{r['noise_multiplier']:.2f}" if r["noise_multiplier"] is not None else "–"
        bound = f"{r['dp_auc_bound']:.3f}" if r["dp_auc_bound"] is not None else "–"
        print(
            f"| {r['epsilon']} | {spent} | {noise} | {r['ndcg@10']:.4f} | {r['ndcg@10'] / base:.0%} "
            f"| {r['recall@10']:.4f} | {r['attack_auc']:.3f} | {bound} | {r['fit_s']} |"
        )
    dp = f"DP rows: {args.dp_epochs} epochs of users/{args.dp_batch} Poisson steps, lr {args.dp_lr}"
    dp += ", clip 1, PRV accountant"
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} threads"
    print(f"\n{dp}; machine: {machine}; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"rows": rows, "args": vars(args) | {"out": str(args.out), "cache_dir": str(args.cache_dir)}}, indent=2
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
