"""Privacy you can measure: user-level DP-SGD BPR and SASRec at several ε against their
non-private versions on ml-100k, and a membership-inference attack against each.

Quality: leave-one-out, full ranking, all 943 test users, NDCG@10/Recall@10. Attack: half of the
users (≥ 2 interactions) are members, the model trains on their interactions only, and the attack
(:func:`lmrec.privacy.membership_inference`, rank signal) tells members from the held-out half by how
well the model ranks the rest of a user's history given its first half; ROC AUC, beside the bound
e^ε / (1 + e^ε) that no ε-DP model can exceed.

SASRec: the non-private row is the default ``sasrec`` (early stopping on validation; its attacked
twin trains for as many epochs). The DP rows first pick a setting from ``--sasrec-grid`` by
validation NDCG@10 at ε = 8 (that selection looks at the data and is not itself accounted), then
train it at every ε for a fixed number of epochs; the attacked twins keep the sampling rate and
the number of steps (so the same noise).

    .venv/bin/python benchmarks/privacy.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# the DP SASRec setting (picked on validation at ε = 8; see RESULTS.md): small, few large steps
# every user in every step (q = 1), 20 steps, a window of up to 100 of the user's items per example, no weight
# decay (decay towards zero fights the few steps), the ID rows started from the catalog's (public) text
SASREC_DP: dict[str, Any] = {
    "dim": 16, "inner": 32, "layers": 1, "heads": 1, "dropout": 0.0, "max_len": 100, "item_init": "text",
    "epochs": 20, "batch_size": 943, "lr": 0.02, "weight_decay": 0.0, "clip": 1.0,
}  # fmt: skip


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilons", default="1,4,8", help="targets of the DP rows (∞ is the non-private model)")
    parser.add_argument("--dp-epochs", type=int, default=100, help="bpr")
    parser.add_argument("--dp-batch", type=int, default=128, help="bpr: expected users per DP step")
    parser.add_argument("--dp-lr", type=float, default=0.02, help="bpr")
    parser.add_argument("--models", default="bpr,sasrec", help="which families get rows: bpr, sasrec")
    parser.add_argument(
        "--sasrec-grid",
        default=json.dumps([SASREC_DP]),
        help="JSON list of sasrec DP settings (config keys, plus clip); the best on validation at ε = 8 is used",
    )
    parser.add_argument(
        "--sasrec-rows", default="baseline,dp", help="sasrec rows to run: baseline (∞) and/or dp (the ε rows)"
    )
    parser.add_argument(
        "--accountant", default="prv", choices=("prv", "rdp"), help="rdp for very large ε (PRV's search overflows)"
    )
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
    from lmrec.runs import DataRecipe, train_run
    from lmrec.train.privacy import DPSpec

    data = load_source("ml-100k", args.cache_dir)
    split = leave_one_out(data)
    valid, test = split.eval_set("valid"), split.eval_set("test")
    members = membership_split(data, 0.5, seed=0)
    epsilons = [float(e) for e in args.epsilons.split(",")]
    families = args.models.split(",")
    rows: list[dict[str, Any]] = []
    selection: list[dict[str, Any]] = []

    runs_dir = tempfile.TemporaryDirectory(prefix="lmrec-privacy-")  # the runs, removed at the end

    def trained(name: str, config: dict, spec: DPSpec | None) -> tuple[Any, float]:
        """``name`` as `lmrec train --model NAME --set ... [--dp-epsilon ...]` trains it (DP fits do not
        early-stop: the private path reads no validation)."""
        out = Path(runs_dir.name) / f"run{len(list(Path(runs_dir.name).iterdir()))}"
        options = FitOptions(seed=0, dp=spec, cache_dir=args.cache_dir)  # cache_dir: item text embeddings
        run = train_run(DataRecipe("ml-100k"), name, config, out, args.cache_dir, options)
        return run.model, run.meta["train_seconds"]

    def fit(name: str, config: dict, on: Any, stop: Any, spec: DPSpec | None) -> tuple[Any, float]:
        """The attack's twin, on the members' half: no data recipe describes it (not train_run)."""
        klass = model_class(name)
        t0 = time.perf_counter()
        options = FitOptions(seed=0, dp=spec, cache_dir=args.cache_dir)  # cache_dir: item text embeddings
        model = klass(klass.config_class.from_dict(config)).fit(on, stop, options)
        return model, time.perf_counter() - t0

    def row(name: str, label: str, eps: float | None, config: dict, attack_config: dict, clip: float) -> None:
        spec = DPSpec(epsilon=eps, clip=clip, accountant=args.accountant) if eps is not None else None
        model, fit_s = trained(name, config, spec)
        metrics = evaluate(model, test, ks=(10,)).metrics
        if spec is None and name == "sasrec":  # the twin trains as long as the early-stopped model did
            attack_config = attack_config | {"epochs": model.training_log["best_epoch"] + 1}
        attacked, _ = fit(name, attack_config, members.train_dataset(), None, spec)
        attack = membership_inference(attacked, members, epsilon=eps)
        privacy = model.training_log.get("privacy", {})
        rows.append(
            {
                "model": name,
                "epsilon": label,
                "epsilon_spent": privacy.get("epsilon"),
                "delta": privacy.get("delta"),
                "noise_multiplier": privacy.get("noise_multiplier"),
                "steps": privacy.get("steps"),
                "ndcg@10": metrics["ndcg@10"],
                "recall@10": metrics["recall@10"],
                "attack_auc": attack.auc,
                "dp_auc_bound": dp_auc_bound(eps) if eps is not None else None,
                "fit_s": round(fit_s, 1),
                "config": config | ({"clip": clip} if eps is not None else {}),
            }
        )
        print(json.dumps(rows[-1], ensure_ascii=False), file=sys.stderr, flush=True)

    if "bpr" in families:
        dp_bpr = {"epochs": args.dp_epochs, "batch_size": args.dp_batch, "lr": args.dp_lr}
        row("bpr", "∞", None, {}, {}, 1.0)
        for eps in epsilons:
            row("bpr", f"{eps:g}", eps, dp_bpr, dp_bpr, 1.0)
    if "sasrec" in families:
        grid = json.loads(args.sasrec_grid)
        best, best_valid = (grid[0], 0.0) if len(grid) == 1 else (None, -1.0)  # one setting: nothing to pick
        for setting in grid if len(grid) > 1 else []:  # selection on validation users at ε = 8
            config = {k: v for k, v in setting.items() if k != "clip"}
            spec = DPSpec(epsilon=8.0, clip=setting.get("clip", 1.0))
            model, fit_s = trained("sasrec", config, spec)
            value = evaluate(model, valid, ks=(10,)).metrics["ndcg@10"]
            selection.append({"setting": setting, "valid_ndcg@10": value, "fit_s": round(fit_s, 1)})
            print(json.dumps(selection[-1]), file=sys.stderr, flush=True)
            if value > best_valid:
                best, best_valid = setting, value
        assert best is not None
        if "baseline" in args.sasrec_rows:
            row("sasrec", "∞", None, {}, {}, 1.0)
        config = {k: v for k, v in best.items() if k != "clip"}
        for eps in epsilons if "dp" in args.sasrec_rows else []:
            row("sasrec", f"{eps:g}", eps, config, config, best.get("clip", 1.0))

    runs_dir.cleanup()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} threads"
    print(f"ml-100k, leave-one-out, full ranking, all 943 test users; seed 0; machine: {machine}")
    when = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    print(f"{when}; {args.accountant.upper()} accountant, δ = 1/(10·users), unit: the user")
    if selection:
        print("\nSASRec DP settings on validation (ε = 8):")
        for s in selection:
            print(f"- {json.dumps(s['setting'])}: valid NDCG@10 {s['valid_ndcg@10']:.4f} ({s['fit_s']} s)")
    print(
        "\n| model | ε target | ε spent (δ) | noise σ | steps | NDCG@10 | of non-private | Recall@10 "
        "| attack AUC | AUC bound | fit s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    base = {r["model"]: r["ndcg@10"] for r in rows if r["epsilon"] == "∞"}
    base = {r["model"]: base.get(r["model"], float("nan")) for r in rows}  # dp rows alone: no share
    for r in rows:
        spent = f"{r['epsilon_spent']:.2f} ({r['delta']:.1e})" if r["epsilon_spent"] is not None else "–"
        noise = f"{r['noise_multiplier']:.2f}" if r["noise_multiplier"] is not None else "–"
        bound = f"{r['dp_auc_bound']:.3f}" if r["dp_auc_bound"] is not None else "–"
        print(
            f"| {r['model']} | {r['epsilon']} | {spent} | {noise} | {r['steps'] or '–'} | {r['ndcg@10']:.4f} "
            f"| {r['ndcg@10'] / base[r['model']]:.0%} | {r['recall@10']:.4f} | {r['attack_auc']:.3f} | {bound} "
            f"| {r['fit_s']} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "rows": rows,
                "sasrec_selection": selection,
                "args": vars(args) | {"out": str(args.out), "cache_dir": str(args.cache_dir)},
                "machine": machine,
                "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
            },
            indent=2,
            ensure_ascii=False,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
