"""Choose the sequential defaults on validation: train candidate settings over seeds on ml-100k
and rank them by validation NDCG@10 (the choice); test NDCG@10 is printed beside it, not used.

Each ``--case NAME:K=V,K=V`` is a set of overrides of the model's defaults; the row ``default``
(no overrides) is always trained first. Every fit early-stops on validation NDCG@10 as
``lmrec train`` does. Results go to benchmarks/results/tune-MODEL.json after every fit, so a
run can be stopped and its finished rows kept.

    .venv/bin/python benchmarks/tune.py --threads 1 --seeds 0,1,2 \\
        --case drop5:dropout=0.5 --case len100:max_len=100
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from classic import BENCH, REPO, command_line, load_split, machine, thread_env


def parse_case(text: str) -> tuple[str, dict[str, str]]:
    name, _, sets = text.partition(":")
    overrides = dict(kv.split("=", 1) for kv in sets.split(",") if kv)
    return name, overrides


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sasrec", help="a sequential model: sasrec or bert4rec")
    parser.add_argument("--case", action="append", default=[], metavar="NAME:K=V,K=V")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "lmrec")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/tune-MODEL.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    import os

    os.environ.update(thread_env(args.threads))
    import torch

    from lmrec.evaluate import evaluate
    from lmrec.evaluate.significance import paired_test
    from lmrec.models import FitOptions
    from lmrec.models.registry import model_class

    torch.set_num_threads(args.threads)
    out = args.out or BENCH / "results" / f"tune-{args.model}.json"
    split = load_split(args.cache_dir)
    train, valid, test = split.train_dataset(), split.eval_set("valid"), split.eval_set("test")
    seeds = [int(s) for s in args.seeds.split(",")]
    cases = dict([("default", {})] + [parse_case(c) for c in args.case])
    result: dict[str, Any] = {"command": command_line(argv), "machine": machine(), "model": args.model, "rows": {}}
    per_user: dict[str, list[np.ndarray]] = {}
    for name, overrides in cases.items():
        fits = []
        for seed in seeds:
            klass = model_class(args.model)
            model = klass(klass.config_class.from_dict(overrides))
            t0 = time.process_time()
            model.fit(train, valid, FitOptions(seed=seed, cache_dir=args.cache_dir))
            cpu = time.process_time() - t0
            scores = evaluate(model, test)
            per_user.setdefault(name, []).append(scores.per_user["ndcg@10"])
            log = model.training_log
            fits.append(
                {
                    "seed": seed,
                    "valid_ndcg@10": max(log["valid"]),
                    "test_ndcg@10": scores.metrics["ndcg@10"],
                    "test_recall@10": scores.metrics["recall@10"],
                    "epochs": len(log["valid"]),
                    "fit_cpu_s": round(cpu, 1),
                }
            )
            print(name, json.dumps(fits[-1]), flush=True)
            result["rows"][name] = {"overrides": overrides, "fits": fits}
            out.write_text(json.dumps(result, indent=1))

    def mean(row: dict[str, Any], key: str) -> float:
        return float(np.mean([f[key] for f in row["fits"]]))

    ranked = sorted(result["rows"], key=lambda n: -mean(result["rows"][n], "valid_ndcg@10"))
    base = np.mean(per_user["default"], axis=0)
    print("\n| case | overrides | valid NDCG@10 | test NDCG@10 | test vs default | Wilcoxon p | epochs | fit CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ranked:
        row = result["rows"][name]
        change, p = "–", "–"
        if name != "default":
            row["paired_vs_default"] = test_ = paired_test(base, np.mean(per_user[name], axis=0))
            change, p = f"{test_['relative_change']:+.1%}", f"{test_['wilcoxon_pvalue']:.3g}"
        sets = ", ".join(f"{k}={v}" for k, v in row["overrides"].items()) or "–"
        print(
            f"| {name} | {sets} | {mean(row, 'valid_ndcg@10'):.4f} | {mean(row, 'test_ndcg@10'):.4f} | {change} | {p} "
            f"| {mean(row, 'epochs'):.0f} | {mean(row, 'fit_cpu_s'):.0f} |"
        )
    result["chosen_on_validation"] = ranked[0]
    print(f"\nchosen on validation: {ranked[0]}; {len(seeds)} seed(s) {seeds}, {len(base)} test users")
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
