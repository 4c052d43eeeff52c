"""Why validation and test differ under leave-one-out on a log: how popular each part's targets were
in the training part (the log lmrec trains on), how many never appear there, and whether a target
repeats an item of the user's history. A test target is each user's last item, a step later than
the validation one: where popularity drifts, the test targets are rarer in training, and every
model (popularity included) scores lower on test than on validation.

    .venv/bin/python benchmarks/split_drift.py --dataset ../shared/data/amazon-beauty-2014
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from harness import load_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()
    from lmrec.cache import default_cache

    split = load_split(args.cache_dir or default_cache(), args.dataset)
    popularity = split.train_dataset().item_popularity()
    print(f"| {Path(args.dataset).name} | median training count | mean | never in training | repeats history |")
    print("|---|---|---|---|---|")
    for part in ("valid", "test"):
        evals = split.eval_set(part)
        targets = evals.target_items
        counts = popularity[targets]
        repeats = np.mean([bool(np.isin(evals.targets(i), evals.queries.history(i)).any()) for i in range(len(evals))])
        print(
            f"| {part} targets ({len(targets)}) | {np.median(counts):.0f} | {counts.mean():.1f} | "
            f"{(counts == 0).mean():.2%} | {repeats:.2%} |"
        )


if __name__ == "__main__":
    main()
