"""Poisoning attacks on sequential recommenders and what defends against them (issue 33).

A log (ml-100k or a shared sparse log) is written out as a dataset directory; ``lmrec.robust``
injects fake users pushing a few unpopular target items (``--attack``: random, bandwagon or
sequence-aware, ``--fraction`` of the genuine users) and the arms train on:

  clean              the log as it is
  attacked           the log with the fake users
  detected           the attacked log less the users the unsupervised detector flags (as many as
                     the attack's share: the defender is told how many to expect)
  adversarial        the attacked log, the model trained adversarially (adversarial.eps, APR)
  adversarial/clean  the clean log, trained adversarially: what the defence costs without an attack
  text-attacked      the clean log with the targets' text rewritten to look like popular items
                     (``robust.text_attack``): does a text model rank them up?

Every arm trains through the harness (``train_run`` → ``open_run``, the path ``lmrec train`` takes)
and is measured on the genuine test users that every arm of its model keeps: NDCG@10 (paired test
against ``clean`` of the same seed), and the targets' HR@10 — the share of those users with a target
in their top 10, averaged over the targets — the attack's effect. A defence's cut is
1 − (HR(defence) − HR(clean)) / (HR(attacked) − HR(clean)).

    taskset -c 0 .venv/bin/python benchmarks/robust.py --dataset ml-100k --models sasrec \\
        --seeds 0,1,2 --runs runs/robust-ml100k --pin 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
from harness import BENCH, DASH, Arm, add_run_arguments, header, recipe, setup_threads, train_arm

ARMS = ("clean", "attacked", "detected", "adversarial", "adversarial/clean", "text-attacked")
DATA_OF = {  # which written log each arm trains on
    "clean": "clean",
    "attacked": "attacked",
    "detected": "detected",
    "adversarial": "attacked",
    "adversarial/clean": "clean",
    "text-attacked": "text-attacked",
}


def prepare_logs(args: argparse.Namespace, cache_dir: Path, where: Path) -> dict[str, Any]:
    """Make the clean, attacked, detected and text-attacked logs (seeded: the same every call), write
    each under ``where`` unless it is there already, and return the attack's record. A log written
    by an earlier call that holds other users (the detector changed since) is an error: the runs
    trained on it would no longer match the record."""
    import pandas as pd

    from lmrec.robust import (
        Attack,
        choose_targets,
        detect,
        detection_quality,
        inject,
        remove_users,
        text_attack,
        write_dataset,
    )

    dataset, _ = recipe(args.dataset).load(cache_dir)
    targets = choose_targets(dataset, args.targets, seed=args.attack_seed)
    attack = Attack(kind=args.attack, fraction=args.fraction, targets=tuple(targets), seed=args.attack_seed)
    attacked, fakes = inject(dataset, attack)
    found = detect(attacked, expected_fraction=args.fraction)
    logs = {
        "clean": dataset,
        "attacked": attacked,
        "detected": remove_users(attacked, found.flagged),
        "text-attacked": text_attack(dataset, targets, seed=args.attack_seed),
    }
    for name, data in logs.items():
        if not (where / name).is_dir():
            write_dataset(data, where / name)
            continue
        written = pd.read_csv(where / name / "interactions.csv", usecols=["user", "item"], dtype=str)
        made = data.interactions
        made = pd.DataFrame({"user": data.users.raw(made["user"]), "item": data.items.raw(made["item"])})
        if (
            not written.sort_values(["user", "item"])
            .reset_index(drop=True)
            .equals(made.sort_values(["user", "item"]).reset_index(drop=True))
        ):
            raise SystemExit(f"{where / name} holds another log than this command makes: use other --runs")
    record = {
        "attack": {"kind": args.attack, "fraction": args.fraction, "seed": args.attack_seed},
        "adversarial_eps": args.eps,
        "targets": list(targets),
        "fake_users": len(fakes),
        "genuine_users": dataset.n_users,
        "detection": detection_quality(found.flagged, fakes, n_genuine=dataset.n_users),
    }
    (where / "attack.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def measure(run: Any, targets: list[str], keep: set[str]) -> dict[str, Any]:
    """Per genuine test user of ``keep``: NDCG@10 and whether a target is in the top 10; and each
    target's HR@10."""
    result = run.per_user("test")
    raw = np.array(run.dataset.users.raw(result.users))
    rows = np.isin(raw, list(keep))
    top = result.recommendations[rows, :10]
    target_rows = run.dataset.items.rows(targets)
    hit = np.stack([(top == t).any(axis=1) for t in target_rows], axis=1)  # (users, targets)
    order = np.argsort(raw[rows])
    return {
        "users": raw[rows][order].tolist(),
        "ndcg": result.per_user["ndcg@10"][rows][order].tolist(),
        "target_hr": float(hit.mean()),
        "per_target_hr": hit.mean(axis=0).round(6).tolist(),
    }


def genuine_users(run: Any, fakes_prefix: str = "fake-") -> set[str]:
    return {u for u in run.dataset.users.ids if not u.startswith(fakes_prefix)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--models", nargs="+", default=["sasrec", "text-sasrec"])
    p.add_argument("--arms", nargs="+", default=list(ARMS[:5]), choices=ARMS)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="options for every model")
    p.add_argument("--attack", default="bandwagon", choices=("random", "bandwagon", "sequence"))
    p.add_argument("--fraction", type=float, default=0.01, help="fake users as a share of genuine users")
    p.add_argument("--targets", type=int, default=5, help="unpopular target items")
    p.add_argument("--attack-seed", type=int, default=0)
    p.add_argument("--eps", type=float, default=0.5, help="adversarial.eps of the adversarial arms")
    p.add_argument("--seeds", default="0")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, help="default: benchmarks/results/robust-DATASET.json")
    add_run_arguments(p)
    args = p.parse_args(argv)
    setup_threads(args.threads, args.pin)
    from lmrec.cache import default_cache
    from lmrec.evaluate.significance import paired_test

    cache_dir = default_cache()
    runs = args.runs or Path("runs") / f"robust-{Path(args.dataset).name}"
    where = runs / "data" / f"{args.attack}-{args.fraction:g}"
    record = prepare_logs(args, cache_dir, where)
    seeds = [int(s) for s in args.seeds.split(",")]
    shared = dict(kv.split("=", 1) for kv in args.set)
    report: dict[str, Any] = {"title": "Poisoning attacks and defences", **header(argv), **record, "models": {}}
    for model in args.models:
        per_arm: dict[str, list[dict[str, Any]]] = {arm: [] for arm in args.arms}
        for seed in seeds:
            trained = {}
            for arm in args.arms:
                options = dict(shared)
                if arm.startswith("adversarial"):
                    options["adversarial.eps"] = str(args.eps)
                spec = Arm(f"{model} {arm}", model, options, data={"dataset": str(where / DATA_OF[arm])})
                run_dir = runs / f"{model}-{arm.replace('/', '_')}-seed{seed}"
                trained[arm] = train_arm(spec, seed, recipe(args.dataset), run_dir, cache_dir)
            keep = set.intersection(*(genuine_users(run) for run in trained.values()))
            measured = {arm: measure(run, record["targets"], keep) for arm, run in trained.items()}
            for arm, m in measured.items():
                base = measured["clean"]
                assert m["users"] == base["users"]
                row = {
                    "seed": seed,
                    "ndcg@10": round(float(np.mean(m["ndcg"])), 6),
                    "target_hr@10": round(m["target_hr"], 6),
                    "per_target_hr@10": m["per_target_hr"],
                    "users": len(m["users"]),
                    "fit_s": trained[arm].meta.get("train_seconds"),
                }
                if arm != "clean":
                    row["vs_clean"] = paired_test(base["ndcg"], m["ndcg"])
                per_arm[arm].append(row)
                print(f"{model} {arm} seed {seed}: ndcg {row['ndcg@10']:.4f} target HR {row['target_hr@10']:.4f}")
        report["models"][model] = summarise(per_arm)
    out = args.out or BENCH / "results" / f"robust-{Path(args.dataset).name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    table = render(report)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
    return report


def summarise(per_arm: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Means over seeds, the attack's lift, each defence's cut of it and its cost on clean NDCG@10."""

    def mean(arm: str, key: str) -> float:
        return statistics.fmean(r[key] for r in per_arm[arm])

    out: dict[str, Any] = {"arms": per_arm}
    if "clean" in per_arm and "attacked" in per_arm:
        hr_clean, hr_attacked = mean("clean", "target_hr@10"), mean("attacked", "target_hr@10")
        out["lift"] = round(hr_attacked - hr_clean, 6)
        for arm in per_arm:
            row = {"ndcg@10": round(mean(arm, "ndcg@10"), 6), "target_hr@10": round(mean(arm, "target_hr@10"), 6)}
            row["ndcg_vs_clean"] = round(row["ndcg@10"] / mean("clean", "ndcg@10") - 1, 6)
            if arm in ("detected", "adversarial") and out["lift"] > 0:
                row["lift_cut"] = round(1 - (row["target_hr@10"] - hr_clean) / out["lift"], 6)
            out.setdefault("summary", {})[arm] = row
    return out


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    detection = report["detection"]
    lines = [
        f"## {report['title']}: {report['attack']['kind']} attack, {report['fake_users']} fake users "
        f"({report['attack']['fraction']:.1%}) pushing {len(report['targets'])} targets",
        "",
        f"Machine: {m['cpu']}, torch {m['torch']}, {m['torch_threads']} thread(s). Commit {report['commit']}, "
        f"{report['date']}. Command: `{report['command']}`",
        "",
        f"Detector: precision {detection['precision']:.3f}, recall {detection['recall']:.3f}, "
        f"genuine users removed {detection['genuine_removed']} ({detection['genuine_removed_share']:.2%}). "
        f"Adversarial arms: adversarial.eps={report.get('adversarial_eps')}.",
        "",
        "| model | arm | seeds | NDCG@10 (genuine) | vs clean | p (paired, per seed) | target HR@10 | lift cut |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, result in report["models"].items():
        for arm, rows in result["arms"].items():
            s = result.get("summary", {}).get(arm, {})
            ps = ", ".join(f"{r['vs_clean']['t_pvalue']:.2g}" for r in rows if "vs_clean" in r) or DASH
            ndcg = statistics.fmean(r["ndcg@10"] for r in rows)
            std = statistics.stdev(r["ndcg@10"] for r in rows) if len(rows) > 1 else 0.0
            hr = statistics.fmean(r["target_hr@10"] for r in rows)
            vs = f"{s['ndcg_vs_clean']:+.1%}" if arm != "clean" and s else DASH
            cut = f"{s['lift_cut']:.0%}" if "lift_cut" in s else DASH
            lines.append(f"| {model} | {arm} | {len(rows)} | {ndcg:.4f} ± {std:.4f} | {vs} | {ps} | {hr:.4f} | {cut} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
