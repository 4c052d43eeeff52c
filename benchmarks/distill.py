"""Distillation on ml-100k: a small SASRec student trained on a teacher's full-catalog distribution
(softened logits, KL + the usual cross-entropy; ``teacher=RUN``) against the same student alone.

The teacher is the default SASRec, or a larger one (``--teacher`` overrides); the student has
``--student`` overrides (default dim 16, one layer, inner 64), and the distilled one ``--distill``
overrides on top (the distillation weight and temperature). Every row is evaluated on all test
users; the paired test compares the distilled student with the student alone on per-user NDCG@10.
A language-model-initialised teacher: ``--teacher '{"item_init": "text", "text_encoder": "smollm2"}'``
(its item rows start from SmolLM2's hidden states over the item texts, cached under ``--cache-dir``).

    .venv/bin/python benchmarks/distill.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from harness import (
    BENCH,
    REPO,
    Arm,
    add_run_arguments,
    command_line,
    git_commit,
    machine,
    run_name,
    runs_root,
    setup_threads,
    train,
)

STUDENT = {"dim": 16, "layers": 1, "heads": 1, "inner": 64}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="{}", help="teacher overrides (JSON; default: the default sasrec)")
    parser.add_argument("--student", default=json.dumps(STUDENT), help="student overrides (JSON)")
    parser.add_argument(
        "--distill", action="append", default=[], help="a distilled student's extra overrides (JSON); repeatable"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-epochs", type=int, help="cap every fit's epochs (a smoke run)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "lmrec")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "distill.json")
    add_run_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    setup_threads(args.threads, args.pin)
    from lmrec.evaluate import evaluate
    from lmrec.evaluate.significance import paired_test
    from lmrec.models.sequential import count_parameters

    student = json.loads(args.student)
    rows: dict[str, dict[str, Any]] = {}
    per_user = {}
    with runs_root(args.runs, "lmrec-distill-") as runs:
        teacher_dir = runs / run_name("teacher", args.seed) / "model"  # the teacher arm's saved model
        plans = [
            ("teacher", json.loads(args.teacher)),
            ("student alone", student),
        ]
        for extra in args.distill or ["{}"]:
            label = "student distilled" + (f" {extra}" if extra != "{}" else "")
            plans.append((label, {**student, **json.loads(extra), "teacher": str(teacher_dir)}))
        for name, overrides in plans:
            t0 = time.process_time()
            cap = {"epochs": args.max_epochs} if args.max_epochs else {}
            run = train(Arm(name, "sasrec", {**overrides, **cap}), args.seed, runs, args.cache_dir)
            cpu = time.process_time() - t0
            model = run.model
            result = evaluate(model, run.split.eval_set("test"))
            per_user[name] = result.per_user["ndcg@10"]
            rows[name] = {"config": overrides, "parameters": count_parameters(model.net), "fit_cpu_s": round(cpu, 1),
                          "epochs": len(run.meta["training"]["valid"]), **result.metrics}  # fmt: skip
            print(name, json.dumps({k: v for k, v in rows[name].items() if k != "config"}), flush=True)
    distilled = [name for name in rows if name.startswith("student distilled")]
    tests = {name: paired_test(per_user["student alone"], per_user[name]) for name in distilled}
    teacher = rows["teacher"]
    print("\n| model | parameters | share of teacher | NDCG@10 | of teacher | Recall@10 | fit CPU s | epochs |")
    print("|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['parameters']:,} | {row['parameters'] / teacher['parameters']:.0%} | "
              f"{row['ndcg@10']:.4f} | {row['ndcg@10'] / teacher['ndcg@10']:.1%} | {row['recall@10']:.4f} | "
              f"{row['fit_cpu_s']:.0f} | {row['epochs']} |")  # fmt: skip
    for name, test_ in tests.items():
        print(f"\n{name} vs alone: {test_['relative_change']:+.1%} NDCG@10, t p={test_['t_pvalue']:.3g}, "
              f"Wilcoxon p={test_['wilcoxon_pvalue']:.3g}, {test_['n']} users")  # fmt: skip
    out = {
        "command": command_line(argv),
        "machine": machine(),
        "commit": git_commit(),
        "rows": rows,
        "distilled_vs_alone": tests,
    }
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
