"""Language models generate, re-rank and explain recommendations on ml-100k (bounded, CPU-sized).

Protocol: time-ordered leave-one-out, the whole catalog ranked, history excluded, metrics @10, on
the same ``--users`` randomly drawn test users for every row (a generated list is a ranking; items
outside it rank after it). Rows:

* sasrec                   — the fast sequential baseline (max_len 50), full model;
* tiger                    — semantic IDs (residual k-means over MiniLM title embeddings) and a
                             small transformer that generates them, beam search under the code trie;
* llm-gen zero-shot        — SmolLM2-135M-Instruct writes titles under the catalog trie, no tuning;
* llm-gen LoRA             — the same after ``--sft-steps`` LoRA steps of next-title SFT;
* sasrec + LLM rerank      — SmolLM2 re-orders SASRec's top ``--candidates`` (letters, answer read
                             in one forward pass, ``--permutations`` shuffled orders averaged),
                             zero-shot and after ``--rerank-steps`` LoRA steps.

Also: the unconstrained model's out-of-catalog rate (hallucination) on ``--free-users`` users, and
grounded explanations for the top item of ``--explain-users`` users (share that passed the
grounding check; the others fell back to the template). Latency is per user, one at a time.

    .venv/bin/python benchmarks/llm.py                 # ~45 minutes on 2 CPU cores
    .venv/bin/python benchmarks/llm.py --smoke         # minutes: checks the script
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from harness import (
    BENCH,
    REPO,
    Arm,
    add_run_arguments,
    command_line,
    git_commit,
    machine,
    recipe,
    run_name,
    runs_root,
    setup_threads,
    train_arm,
)

METRICS = ("ndcg@10", "recall@10", "mrr@10")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100, help="test users every row is measured on")
    parser.add_argument("--sft-steps", type=int, default=60)
    parser.add_argument("--sft-batch", type=int, default=8)
    parser.add_argument(
        "--sft-run", type=Path, help="a run of `lmrec train --model llm-gen` to measure instead of fine-tuning here"
    )
    parser.add_argument("--tiger-epochs", type=int, default=50, help="at most (early stopping on validation)")
    parser.add_argument("--lm", default="smollm2", help="smollm2 (the packaged SmolLM2-135M) or a local HF model dir")
    parser.add_argument("--rerank-steps", type=int, default=40)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--permutations", type=int, default=3)
    parser.add_argument("--beams", type=int, default=10)
    parser.add_argument("--free-users", type=int, default=30)
    parser.add_argument("--explain-users", type=int, default=20)
    parser.add_argument("--parts", default="sasrec,tiger,gen,rerank,explain")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "lmrec")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "llm.json")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.users, args.sft_steps, args.rerank_steps, args.free_users, args.explain_users = 8, 2, 2, 3, 3
    return args


def measure(model: Any, test: Any, reranker: Any = None, candidates: int = 20) -> dict[str, Any]:
    """Metrics on ``test`` and the median seconds per user, from one pass that serves one user per
    call, as the service does (the metrics are per-user means, so this equals one batched call)."""
    from lmrec.evaluate import evaluate

    per_user: dict[str, list[float]] = {m: [] for m in METRICS}
    seconds = []
    tokens_before = getattr(model, "generated_tokens", 0)
    for i in range(len(test)):
        one = test.subset(np.arange(len(test)) == i)
        started = time.perf_counter()
        result = evaluate(model, one, metrics=("ndcg", "recall", "mrr"), reranker=reranker, candidates=candidates)
        seconds.append(time.perf_counter() - started)
        for m in METRICS:
            per_user[m].append(result.metrics[m])
    tokens = (getattr(model, "generated_tokens", 0) - tokens_before) / max(1, len(test))
    return {
        **{m: float(np.mean(v)) for m, v in per_user.items()},
        "s_per_user": statistics.median(seconds),
        **({"tokens_per_user": tokens} if reranker is None and tokens else {}),
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    setup_threads(args.threads, args.pin)
    with runs_root(args.runs, "lmrec-llm-") as runs:
        experiment(args, argv, runs)


def experiment(args: argparse.Namespace, argv: list[str], runs: Path) -> None:
    from lmrec.data.batch import QueryBatch
    from lmrec.data.sources import load_source
    from lmrec.data.splits import leave_one_out
    from lmrec.llm.explain import Explainer
    from lmrec.llm.lm import load_lm
    from lmrec.models.llmgen import hallucination_rate
    from lmrec.rerank import item_vectors_of
    from lmrec.rerank.llm import LLMReranker
    from lmrec.rerank.similarity import EmbeddingSimilarity

    parts = args.parts.split(",")
    split = leave_one_out(load_source("ml-100k", args.cache_dir))
    train = split.train_dataset()
    full_test = split.eval_set("test")
    test = full_test.sample(args.users, seed=args.seed)  # the users `lmrec evaluate --sample` draws
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    info = {
        "users": len(test),
        "threads": args.threads,
        "device": args.device,
        "machine": machine(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(argv),
        "commit": git_commit(),
        "smoke": args.smoke,
    }

    def save() -> None:
        """Written after every row, so a run cut short still leaves what it measured."""
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**info, "rows": rows, **extra}, indent=2) + "\n")

    def fit(name: str, config: dict[str, Any], label: str | None = None) -> tuple[Any, float]:
        """``name`` as `lmrec train --model NAME --set ...` trains it, read back from its run."""
        run = train_arm(
            Arm(label or name, name, config), args.seed, recipe(), runs / run_name(label or name, args.seed),
            args.cache_dir, device=args.device,
        )  # fmt: skip
        run.model.training_log = run.meta["training"]
        return run.model, run.meta["train_seconds"]

    def row(name: str, model: Any, fit_s: float, **kw: Any) -> None:
        rows.append({"model": name, **measure(model, test, **kw), "fit_s": fit_s})
        print(f"{name}: {rows[-1]}", file=sys.stderr, flush=True)
        save()

    sasrec, sasrec_s = fit("sasrec", {"max_len": 50, "batch_size": 32, "epochs": 5 if args.smoke else 200})
    row("sasrec", sasrec, sasrec_s)
    if "tiger" in parts:
        tiger, tiger_s = fit("tiger", {"epochs": 2 if args.smoke else args.tiger_epochs})
        row("tiger", tiger, tiger_s)
    gen_config = {"lm": args.lm, "beams": args.beams, "max_history": 10, "prompt_budget": 128}
    sft = None
    if "gen" in parts:
        zero, zero_s = fit("llm-gen", {**gen_config, "lora_r": 0}, "llm-gen-zero-shot")
        row("llm-gen zero-shot", zero, zero_s)
        histories = [test.queries.history(i) for i in range(min(args.free_users, len(test)))]
        extra["free_zero_shot"] = hallucination_rate(zero, histories)
        if args.sft_run is not None:
            sft, sft_s, steps = _open_llm_gen_run(args.sft_run, args.cache_dir, train)
        else:
            sft_config = {**gen_config, "steps": args.sft_steps, "batch_size": args.sft_batch}
            (sft, sft_s), steps = fit("llm-gen", sft_config, "llm-gen-lora"), args.sft_steps
        row(f"llm-gen LoRA ({steps} steps)", sft, sft_s)
        extra["free_lora"] = hallucination_rate(sft, histories)
        extra["sft_seconds_per_step"] = sft.training_log["seconds"] / max(1, sft.training_log["steps"])
        print(f"hallucination: {extra['free_zero_shot']} / {extra['free_lora']}", file=sys.stderr, flush=True)
    titles = train.titles(list(range(train.n_items)))
    if "rerank" in parts:
        reranker = LLMReranker(
            load_lm(args.lm, args.cache_dir, args.device), titles, args.candidates, args.permutations
        )
        row(f"sasrec + LLM rerank zero-shot (top {args.candidates})", sasrec, sasrec_s, reranker=reranker)
    if "rerank" in parts and args.rerank_steps > 0:
        started = time.perf_counter()
        losses = reranker.finetune(train, sasrec, steps=args.rerank_steps, seed=args.seed)
        extra["rerank_finetune"] = {
            "steps": args.rerank_steps,
            "seconds": time.perf_counter() - started,
            "loss_first5": float(np.mean(losses[:5])),
            "loss_last5": float(np.mean(losses[-5:])),
        }
        row(f"sasrec + LLM rerank LoRA ({args.rerank_steps} steps)", sasrec, sasrec_s, reranker=reranker)
    if "explain" in parts:
        lm = sft.lm if sft is not None else load_lm(args.lm, args.cache_dir, args.device)
        vectors = item_vectors_of(sasrec)
        assert vectors is not None
        explainer = Explainer(titles, EmbeddingSimilarity(vectors), lm)
        outs, seconds = [], []
        for i in range(min(args.explain_users, len(test))):
            h = test.queries.history(i)
            top, _ = sasrec.recommend(QueryBatch.from_histories([-1], [h]), k=1)
            started = time.perf_counter()
            outs.append(explainer.explain(h, int(top[0, 0])))
            seconds.append(time.perf_counter() - started)
        extra["explain"] = {
            "users": len(outs),
            "generated_and_grounded": sum(o.generated for o in outs) / max(1, len(outs)),
            "tokens": statistics.mean(o.tokens for o in outs) if outs else 0,
            "s_per_explanation": statistics.median(seconds) if seconds else 0,
            "examples": [{"item": titles[o.item], "text": o.text, "generated": o.generated} for o in outs[:5]],
        }
    save()
    print(render(rows, extra, info))


def _open_llm_gen_run(directory: Path, cache_dir: Path, train: Any) -> tuple[Any, float, int]:
    """The model of an llm-gen run, its training seconds and SFT steps; it must share our split."""
    from lmrec.runs import open_run

    run = open_run(directory, cache_dir)
    if run.meta["model"] != "llm-gen" or len(run.split.train_dataset().interactions) != len(train.interactions):
        raise SystemExit(f"{directory}: not an llm-gen run on ml-100k's leave-one-out split")
    run.model.training_log = run.meta["training"]
    return run.model, run.meta["train_seconds"], run.meta["config"]["steps"]


def render(rows: list[dict[str, Any]], extra: dict[str, Any], info: dict[str, Any]) -> str:
    lines = [
        f"{info['users']} test users (the same for every row), leave-one-out, full ranking, @10:",
        "",
        "| model | NDCG@10 | Recall@10 | MRR@10 | s per user | tokens decoded per user | fit s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['ndcg@10']:.4f} | {r['recall@10']:.4f} | {r['mrr@10']:.4f} | "
            f"{r['s_per_user']:.3f} | {r.get('tokens_per_user', 0):.0f} | {r['fit_s']:.0f} |"
        )
    for key, label in (("free_zero_shot", "zero-shot"), ("free_lora", "LoRA")):
        if key in extra:
            f = extra[key]
            lines.append(
                f"\nUnconstrained generation ({label}): out-of-catalog rate {f['rate']:.0%}, "
                f"a title from the history {f['history_repeats']:.0%}, "
                f"{f['tokens_per_answer']:.1f} tokens and {f['seconds_per_answer']:.2f} s per answer; "
                f"examples: {f['examples'][:3]}. With the trie: 0 % by construction."
            )
    if "sft_seconds_per_step" in extra:
        lines.append(f"\nLoRA SFT: {extra['sft_seconds_per_step']:.1f} s per step (batch 8).")
    if "rerank_finetune" in extra:
        f = extra["rerank_finetune"]
        lines.append(
            f"\nRe-ranker LoRA: {f['steps']} steps in {f['seconds']:.0f} s, loss {f['loss_first5']:.3f} → "
            f"{f['loss_last5']:.3f}."
        )
    if "explain" in extra:
        e = extra["explain"]
        lines.append(
            f"\nExplanations ({e['users']} users' top item): {e['generated_and_grounded']:.0%} written by the LLM and "
            f"grounded, the rest from the template; {e['tokens']:.1f} tokens, {e['s_per_explanation']:.2f} s each."
        )
        for x in e["examples"]:
            lines.append(f"- {x['item']}: {x['text']}{'' if x['generated'] else ' (template)'}")
    lines.append(
        f"\nMachine: {info['machine']['nproc']} CPU cores ({info['machine']['cpu']}), GPU: {info['machine']['gpu']}, "
        f"{info['threads']} threads; torch {info['machine']['torch']}. Date: {info['date']}. "
        f"Command: `{info['command']}`"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
