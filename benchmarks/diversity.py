"""Relevance against diversity and the long tail: MMR, DPP, calibrated and fair re-ranking of SASRec on ml-100k.

Same data, split and protocol as ``classic.py`` (time-ordered leave-one-out, full ranking, history
excluded, @10). SASRec (max_len 200, batch 32, early stopping on validation NDCG@10, seed 0) ranks
the whole catalog; each re-ranker reorders its top 100 and the metrics are taken on the new top 10:

  none         the model's own order
  mmr          maximal marginal relevance, λ ∈ {1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.3}
  dpp          greedy DPP MAP (Chen et al. 2018), θ ∈ {0.99, 0.9, 0.8, 0.7, 0.6, 0.5}
  calibration  Steck 2018, λ ∈ {0.1, 0.3, 0.5, 0.7, 0.9}
  fair         FA*IR-style fair exposure of long-tail items (Zehlike et al. 2017, α = 0.1), target
               tail share p ∈ {0.1, 0.2, 0.3, 0.4, 0.5, 0.6}
  train-reg    no re-ranking, but SASRec trained with the diversity regulariser (``diversity_weight``
               μ ∈ ``--train-weights``: μ·E[cos] of two items drawn from the predicted distribution)

MMR and DPP compare items by genre (cosine of multi-hot genre vectors; ``--similarity embedding``
uses SASRec's learned item embeddings instead). Intra-list diversity (ILD) is always measured on
the genre vectors, as ``lmrec evaluate`` does. A setting is marked when it raises ILD by ≥ 20 % for
≤ 5 % loss of NDCG@10. Every setting also reports the tail share of its top 10
(:func:`lmrec.evaluate.fairness.tail_share`: tail items are all but the most popular ones that hold
the first half of the training interactions, the set the fair re-ranker protects).

    .venv/bin/python benchmarks/diversity.py                    # train SASRec, then all settings
    .venv/bin/python benchmarks/diversity.py --run runs/sasrec  # a saved run's model instead
    .venv/bin/python benchmarks/diversity.py --smoke            # 2 epochs, to try the script

Writes ``benchmarks/results/diversity.json`` and the plot ``diversity_tradeoff.png`` (matplotlib:
``pip install 'lmrec[plot]'``); ``--smoke`` writes ``*-smoke`` files instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness import (
    BENCH,
    DASH,
    DATASET,
    REPO,
    Arm,
    add_run_arguments,
    fmt,
    git_commit,
    load_split,
    machine,
    recipe,
    run_name,
    runs_root,
    setup_threads,
    train,
    train_arm,
)

GRIDS: dict[str, list[float]] = {
    "mmr": [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.3],
    "dpp": [0.99, 0.9, 0.8, 0.7, 0.6, 0.5],
    "calibration": [0.1, 0.3, 0.5, 0.7, 0.9],
    "fair": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
}
PARAMETER = {"none": "", "mmr": "λ", "dpp": "θ", "calibration": "λ", "fair": "p", "train-reg": "μ"}
SASREC = {"max_len": 200, "batch_size": 32}
K = 10
ILD_GAIN, NDCG_LOSS = 0.20, 0.05  # the marked settings: ILD +20 % or more for at most 5 % NDCG loss


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a run directory whose model/ to re-rank instead of training")
    parser.add_argument("--save", type=Path, help="train the run into this directory (which --run accepts)")
    parser.add_argument("--similarity", choices=("genre", "embedding"), default="genre")
    parser.add_argument("--candidates", type=int, default=100, help="re-rank the model's top N")
    parser.add_argument("--methods", default="mmr,dpp,calibration,fair", help="any of mmr, dpp, calibration, fair")
    parser.add_argument("--smoke", action="store_true", help="2 training epochs, *-smoke output files")
    parser.add_argument("--train-weights", default="0.5,2", help="diversity_weight values to train SASRec with")
    parser.add_argument("--threads", type=int, default=2, help="torch / BLAS threads")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "lmrec")
    parser.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/diversity.json)")
    add_run_arguments(parser)
    parser.add_argument("--plot", type=Path, help="PNG plot (default benchmarks/results/diversity_tradeoff.png)")
    args = parser.parse_args(argv)
    suffix = "-smoke" if args.smoke else ""
    args.out = args.out or BENCH / "results" / f"diversity{suffix}.json"
    args.plot = args.plot or BENCH / "results" / f"diversity_tradeoff{suffix}.png"
    return args


def command_line(argv: list[str]) -> str:
    """The command as typed from the repository root (this script, not classic.py)."""
    python = Path(sys.executable)
    if python.is_relative_to(REPO):  # keep the venv's symlink name, e.g. .venv/bin/python
        python = python.relative_to(REPO)
    return shlex.join([str(python), str(Path(__file__).resolve().relative_to(REPO)), *argv])


def require_matplotlib() -> Any:
    """pyplot with a file-only backend; a clear message if the ``plot`` extra is missing."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("the plot needs matplotlib: pip install 'lmrec[plot]' (the plot extra)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- the model --------------------------------------------------------------------------------------


def train_regularised(args: argparse.Namespace, runs: Path, weight: float) -> Any:
    """SASRec trained with the diversity regulariser at weight ``weight`` (as `lmrec train` trains it)."""
    overrides = {**SASREC, "diversity_weight": weight, **({"epochs": 2} if args.smoke else {})}
    return train(Arm(f"sasrec-diversity{weight:g}", "sasrec", overrides), 0, runs, args.cache_dir).model


def get_model(args: argparse.Namespace, split: Any, runs: Path) -> tuple[Any, dict[str, Any]]:
    """SASRec trained here as `lmrec train` trains it (early stopping on validation; the run goes to
    ``--save`` if given), or loaded from ``--run``."""
    from lmrec.data.schema import Vocab
    from lmrec.models import load_model

    if args.run is not None:
        model = load_model(args.run / "model")
        items_file = args.run / "items.json"
        if items_file.is_file() and Vocab.load(items_file) != split.dataset.items:
            raise SystemExit(f"{args.run} was trained on other items than {DATASET}")
        if model.n_items != split.dataset.n_items:
            raise SystemExit(f"{args.run}: the model has {model.n_items} items, {DATASET} {split.dataset.n_items}")
        return model, {"source": str(args.run), "model": model.name, "config": model.config.to_dict()}
    overrides = {**SASREC, **({"epochs": 2} if args.smoke else {})}
    directory = args.save if args.save is not None else runs / run_name("sasrec", 0)
    run = train_arm(Arm("sasrec", "sasrec", overrides), 0, recipe(DATASET), directory, args.cache_dir)
    model, fit_s, log = run.model, run.meta["train_seconds"], run.meta["training"]
    print(f"sasrec: {log['epochs']} epochs (best {log['best_epoch'] + 1}) in {fit_s:.0f} s", file=sys.stderr)
    info = {"source": "trained", "model": "sasrec", "config": overrides, "seed": 0, "fit_s": round(fit_s, 1)}
    info.update(epochs=log["epochs"], best_epoch=log["best_epoch"] + 1)
    return model, info


class FrozenScores:
    """The model's scores for the test queries, computed once and looked up by user row, so that
    every re-ranker sees exactly the same candidates and the model runs only once."""

    def __init__(self, model: Any, eval_set: Any, chunk: int = 256) -> None:
        import torch

        queries = eval_set.queries
        self.n_items = model.n_items
        self.position = {int(u): i for i, u in enumerate(queries.users)}
        if len(self.position) != len(queries):
            raise ValueError("one query per user expected")
        with torch.no_grad():
            parts = [
                model.score(queries.slice(s, min(len(queries), s + chunk))).float()
                for s in range(0, len(queries), chunk)
            ]
        self.scores = torch.cat(parts)

    def score(self, batch: Any) -> Any:
        rows = [self.position[int(u)] for u in batch.users]
        return self.scores[rows].clone()


# -- evaluation -------------------------------------------------------------------------------------


def run_settings(
    model: Any, split: Any, args: argparse.Namespace, regularised: dict[float, Any] | None = None
) -> list[dict[str, Any]]:
    from lmrec.evaluate import evaluate
    from lmrec.evaluate.beyond import beyond_accuracy
    from lmrec.evaluate.fairness import tail_items, tail_share
    from lmrec.rerank import DPP, MMR, Calibrated, FairExposure, make_similarity

    ds, test = split.dataset, split.eval_set("test")
    cats = list(ds.catalog["categories"])
    genre_vectors = ds.category_matrix()
    popularity = split.train_dataset().item_popularity()
    is_tail = tail_items(popularity)
    histories = [test.queries.history(i) for i in range(len(test))]
    similarity = make_similarity(args.similarity, ds, model)
    frozen = FrozenScores(model, test)

    def measure(method: str, value: float | None, reranker: Any, scorer: Any = frozen) -> dict[str, Any]:
        started = time.perf_counter()
        result = evaluate(scorer, test, ks=(K,), reranker=reranker, candidates=args.candidates)
        seconds = time.perf_counter() - started
        beyond = beyond_accuracy(
            result.recommendations,
            n_items=ds.n_items,
            item_popularity=popularity,
            n_users=ds.n_users,
            item_vectors=genre_vectors,
            item_categories=cats,
            histories=histories,
        )
        beyond["tail_share"] = tail_share(result.recommendations, is_tail)
        row = {
            "method": method,
            "value": value,
            "reranker": repr(reranker) if reranker is not None else None,
            "metrics": {"ndcg@10": result.metrics["ndcg@10"], "recall@10": result.metrics["recall@10"], **beyond},
            "seconds": round(seconds, 3),
        }
        print(f"{method} {'' if value is None else value}: ndcg@10 {row['metrics']['ndcg@10']:.4f}, "
              f"ild {beyond['ild']:.4f}, tail share {beyond['tail_share']:.4f} ({seconds:.1f} s)",
              file=sys.stderr)  # fmt: skip
        return row

    rows = [measure("none", None, None)]
    methods = [m for m in args.methods.split(",") if m]
    for method in methods:
        if method not in GRIDS:
            raise SystemExit(f"unknown method {method!r}; choose from {', '.join(GRIDS)}")
        for value in GRIDS[method]:
            reranker: Any
            if method == "mmr":
                reranker = MMR(similarity, lam=value)
            elif method == "dpp":
                reranker = DPP(similarity, theta=value)
            elif method == "fair":
                reranker = FairExposure(is_tail, p=value)
            else:
                reranker = Calibrated(cats, lam=value)
            rows.append(measure(method, value, reranker))
    for weight, trained in (regularised or {}).items():
        rows.append(measure("train-reg", weight, None, FrozenScores(trained, test)))
    base = rows[0]["metrics"]
    for row in rows:
        m = row["metrics"]
        row["delta_ndcg"] = m["ndcg@10"] / base["ndcg@10"] - 1 if base["ndcg@10"] else math.nan
        row["delta_ild"] = m["ild"] / base["ild"] - 1 if base["ild"] else math.nan
        row["marked"] = bool(row["delta_ild"] >= ILD_GAIN and row["delta_ndcg"] >= -NDCG_LOSS)
    return rows


# -- report -----------------------------------------------------------------------------------------


def _pct(value: float) -> str:
    return DASH if value is None or math.isnan(value) else f"{value:+.1%}"


def render(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    header = [
        "method", "parameter", "NDCG@10", "ΔNDCG %", "Recall@10", "ILD", "ΔILD %", "category coverage",
        "miscalibration", "coverage", "novelty", "tail share", "s", f"ILD ≥ +{ILD_GAIN:.0%}, NDCG ≥ −{NDCG_LOSS:.0%}",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        m = row["metrics"]
        param = DASH if row["value"] is None else f"{PARAMETER[row['method']]}={row['value']:g}"
        cells = [
            row["method"], param, fmt(m["ndcg@10"], 4), _pct(row["delta_ndcg"]), fmt(m["recall@10"], 4),
            fmt(m["ild"], 4), _pct(row["delta_ild"]), fmt(m["category_coverage"], 4),
            fmt(m["miscalibration"], 4), fmt(m["coverage"], 4), fmt(m["novelty"], 2), fmt(m["tail_share"], 4),
            fmt(row["seconds"], 2),
            "✓" if row["marked"] else "",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    marked = [f"{r['method']} {PARAMETER[r['method']]}={r['value']:g}" for r in rows if r["marked"]]
    listed = ", ".join(marked) if marked else "none"
    lines.append(f"Marked (ILD up ≥ {ILD_GAIN:.0%} at ≤ {NDCG_LOSS:.0%} NDCG@10 loss): {listed}.")
    model = info["model"]
    trained = (
        f"SASRec {json.dumps(model['config'])}, seed 0, {model['epochs']} epochs (best {model['best_epoch']}), "
        f"fit {model['fit_s']:.0f} s"
        if model["source"] == "trained"
        else f"{model['model']} from {model['source']}"
    )
    lines.append(
        f"Model: {trained}. Re-ranking the top {info['candidates']} by {info['similarity']} similarity "
        f"(MMR, DPP); ILD over genre vectors; novelty in bits; tail share: share of the top-10 slots "
        f"holding items outside the head (the most popular items with half the training interactions; "
        f"the fair re-ranker's protected group); s: evaluation incl. re-ranking of "
        f"{info['n_users']} users (model scores computed once)."
    )
    mach = info["machine"]
    lines.append(
        f"Machine: {mach['nproc']} CPU cores ({mach['cpu']}), no GPU, {info['threads']} threads; "
        f"torch {mach['torch']}, Python {mach['python']}. Date: {info['date']}. Command: `{info['command']}`"
    )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """NDCG@10 against ILD (left) and against the tail share of the top 10 (right), one curve per method."""
    plt = require_matplotlib()
    fig, (ild_ax, tail_ax) = plt.subplots(1, 2, figsize=(13, 5.5), dpi=120, sharey=True)
    base = rows[0]["metrics"]
    lines = (
        ("mmr", "tab:blue"), ("dpp", "tab:orange"), ("calibration", "tab:green"), ("fair", "tab:purple"),
        ("train-reg", "tab:red"),
    )  # fmt: skip
    for ax, metric, label in (
        (ild_ax, "ild", "intra-list diversity @10 (genres)"),
        (tail_ax, "tail_share", "tail share of the top 10 (items outside the popular head)"),
    ):
        ax.scatter([base[metric]], [base["ndcg@10"]], marker="*", s=180, color="black", zorder=3,
                   label="no re-ranking")  # fmt: skip
        for method, color in lines:
            points = [r for r in rows if r["method"] == method]
            if not points:
                continue
            xs = [r["metrics"][metric] for r in points]
            ys = [r["metrics"]["ndcg@10"] for r in points]
            ax.plot(xs, ys, marker="o", color=color, label=method.upper() if method in ("mmr", "dpp") else method)
            for r, x, y in zip(points, xs, ys, strict=True):
                ax.annotate(f"{PARAMETER[method]}={r['value']:g}", (x, y), textcoords="offset points",
                            xytext=(4, 4), fontsize=7, color=color)  # fmt: skip
        ax.axhline(base["ndcg@10"] * (1 - NDCG_LOSS), color="grey", linestyle=":", linewidth=1,
                   label=f"NDCG@10 −{NDCG_LOSS:.0%}")  # fmt: skip
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    ild_ax.axvline(base["ild"] * (1 + ILD_GAIN), color="grey", linestyle="--", linewidth=1,
                   label=f"ILD +{ILD_GAIN:.0%}")  # fmt: skip
    ild_ax.set_ylabel("NDCG@10")
    ild_ax.legend(loc="lower left", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    setup_threads(args.threads, args.pin)  # before numpy / torch load their thread pools
    require_matplotlib()  # fail before training, not after
    split = load_split(args.cache_dir)
    with runs_root(args.runs, "lmrec-diversity-") as runs:
        model, model_info = get_model(args, split, runs)
        weights = [float(w) for w in args.train_weights.split(",") if w]
        regularised = {w: train_regularised(args, runs, w) for w in weights}
    rows = run_settings(model, split, args, regularised)
    info = {
        "dataset": DATASET,
        "protocol": {**split.protocol, "ranking": "full catalog", "exclude": "history (train + valid)", "k": K},
        "model": model_info,
        "candidates": args.candidates,
        "similarity": args.similarity,
        "n_users": len(split.eval_set("test")),
        "smoke": args.smoke,
        "threads": args.threads,
        # classic.machine() asks nproc, which answers OMP_NUM_THREADS once that is set
        "machine": {**machine(), "nproc": len(os.sched_getaffinity(0))},
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(argv),
        "commit": git_commit(),
    }
    print(render(rows, info))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**info, "rows": rows}, indent=2) + "\n")
    title = f"SASRec on {DATASET}: re-ranking the top {args.candidates} ({args.similarity} similarity)"
    plot(rows, args.plot, title + (" — smoke run, 2 epochs" if args.smoke else ""))
    print(f"\nWrote {args.out} and {args.plot}", file=sys.stderr)


if __name__ == "__main__":
    main()
