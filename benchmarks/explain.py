"""Grounded explanations on ml-100k: how many LLM-written sentences pass the grounding check.

For ``--users`` random test users (seed 0, the users ``lmrec evaluate --sample`` draws) EASE, fit
here on the training part (seconds), recommends one item; SmolLM2-135M-Instruct (``--llm``) explains
it, citing the history items most similar to it by co-occurrence in the training data (as
``lmrec recommend --explain`` does for EASE). Rows:

* framed — the sentence frame ``Because you liked "T1" [and "T2"], <reason words>``: title slots
  decoded under a trie of the candidate history titles, free reason words without quotes;
* free   — (``--free``) the same model writing the whole sentence from the same prompt.

"Passed" is the share of explanations whose model-written sentence passed the grounding check (the
others fell back to the template). Tokens are the reply's tokens; seconds are per explanation, one
thread, one user at a time.

    .venv/bin/python benchmarks/explain.py --threads 1            # 100 users
    .venv/bin/python benchmarks/explain.py --threads 1 --free     # and the unconstrained sentence
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from harness import REPO, Arm, add_run_arguments, runs_root, setup_threads, train


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--llm", default="smollm2", help="smollm2 (the packaged SmolLM2-135M) or a local HF model dir")
    parser.add_argument("--free", action="store_true", help="also measure the unconstrained sentence")
    parser.add_argument("--examples", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "lmrec")
    add_run_arguments(parser)
    return parser.parse_args(argv)


class ChatOnly:
    """A local LM seen only through ``chat``, so the explainer takes its free-sentence path."""

    def __init__(self, lm: Any) -> None:
        self.lm, self.name = lm, lm.name

    def chat(self, messages: Any, max_new_tokens: int = 64, temperature: float = 0.0) -> Any:
        return self.lm.chat(messages, max_new_tokens, temperature)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_threads(args.threads, args.pin)
    from lmrec.llm.explain import Explainer
    from lmrec.llm.lm import load_lm
    from lmrec.rerank.similarity import CooccurrenceSimilarity

    with runs_root(args.runs, "lmrec-explain-") as runs:  # EASE as `lmrec train --model ease` trains it
        run = train(Arm("ease", "ease"), 0, runs, args.cache_dir)
    split, ease, fit_s = run.split, run.model, run.meta["train_seconds"]
    train_set = split.train_dataset()
    test = split.eval_set("test").sample(args.users, seed=args.seed)
    titles = split.dataset.titles(list(range(split.dataset.n_items)))
    similarity = CooccurrenceSimilarity.from_interactions(train_set)
    lm = load_lm(args.llm, args.cache_dir, args.device)
    top, _ = ease.recommend(test.queries, k=1)
    print(
        f"ml-100k, {len(test)} test users (seed {args.seed}); EASE fit {fit_s:.1f} s; LM {lm.name}; "
        f"{args.threads} thread(s)"
    )
    rows = [("framed", Explainer(titles, similarity, lm))]
    if args.free:
        rows.append(("free", Explainer(titles, similarity, ChatOnly(lm))))
    for name, explainer in rows:
        outs, seconds = [], []
        for i in range(len(test)):
            h = test.queries.history(i)
            started = time.perf_counter()
            outs.append(explainer.explain(h, int(top[i, 0])))
            seconds.append(time.perf_counter() - started)
        passed = [o for o in outs if o.generated]
        similar = [explainer.evidence(test.queries.history(i), o.item) for i, o in enumerate(outs)]
        print(
            f"\n## {name}: {len(passed)}/{len(outs)} model-written explanations passed the grounding check "
            f"({len(passed) / max(1, len(outs)):.0%}); the rest fell back to the template"
        )
        print(
            f"tokens per explanation: mean {statistics.mean(o.tokens for o in outs):.1f}, "
            f"median {statistics.median(o.tokens for o in outs):.0f}"
        )
        print(
            f"seconds per explanation: median {statistics.median(seconds):.2f}, mean {statistics.mean(seconds):.2f}, "
            f"total {sum(seconds):.0f}"
        )
        if passed:
            print(
                f"titles cited per passed explanation: {statistics.mean(len(o.cited) for o in passed):.2f}; "
                f"the LM's first title is the most similar history item in "
                f"{sum(o.cited[0] == s[0] for o, s in zip(outs, similar, strict=True) if o.generated)}/{len(passed)}"
            )
        failed = [o for o in outs if not o.generated]
        if failed:
            print(f"{len(failed)} failed; the first (the model's sentence, and the catalog titles found in it):")
            for o in failed[:5]:
                found = [titles[r] for r in sorted(explainer.mentioned(o.draft))][:4]
                print(f"  - {o.draft!r}: {found}")
        print(f"\nexamples ({name}):")
        for i, o in enumerate(outs[: args.examples]):
            flag = "model" if o.generated else "template"
            print(f"  {i + 1:>2}. [{flag}] recommended {titles[o.item]!r}: {o.text}")


if __name__ == "__main__":
    main()
