"""Multimodal items: ID vs text vs text+attributes vs text+attributes+image, warm and cold.

Two datasets, one split protocol, 3 seeds, all lmrec (SASRec encoder; the feature variants are
text-sasrec with ``item_features``):

* ``image`` — the generated image benchmark (:mod:`lmrec.data.imagebench`): procedural PNG images
  whose content carries a hidden style that drives the user log; the text and the attributes
  (department, price, year) do not reveal it.
* ``ml-100k`` — text (title, year, genres through all-MiniLM-L6-v2) + attributes (genres multi-hot,
  year standardised). The user table (age, gender, occupation) is built and timed, but the
  sequential encoder has no user input, so no variant reads it (reported as such).

Protocol: new items. 10 % of the items are cold: they and all their interactions are removed
before training, so every model is trained (and early-stopped) on a catalog of the warm items
only, as if the cold items did not exist yet. Of the warm interactions, each user's last is the
warm test and the one before it validation. Warm NDCG@10: the warm test ranked over the trained
catalog. Then the cold items arrive: a feature variant adds them from their features alone
(``encode_items`` + ``with_new_items``, the path ``lmrec recommend --new-item`` takes) and is
measured again on the warm test with them in the catalog (what recommending new items costs the
warm ranking: a slot given to a new item is a miss there, since the cold items' interactions are
not in that test) and on the cold test (each user's cold interactions as targets, their warm
history as input) over the whole grown catalog and among the cold items alone. An ID model
cannot score an item it never saw: its cold columns are "–". The cold set is fixed (seed 0); the
model seed varies.

(Before 2026-12-02 15:00 the cold items stayed in the catalog during training, untrained, and
validation ranked them: a feature model that learned to score them crowded its own validation,
which stopped it early — ml-100k seed 0: warm NDCG@10 0.0903 over the full catalog, 0.0999 among
warm items, 98 CPU s of training, against the ID model's 0.1177 after 233 s.)

    .venv/bin/python benchmarks/multimodal.py --threads 1
    .venv/bin/python benchmarks/multimodal.py --smoke
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
from harness import BENCH, REPO, command_line, machine, thread_env

BASE = {"max_len": 50, "batch_size": 128}
VARIANTS = {
    "image": {
        "id": None,
        "text": "text",
        "text+attributes": "text,department,price,year",
        "text+attributes+image": "text,department,price,year,image",
    },
    "ml-100k": {"id": None, "text": "text", "text+attributes": "text,genres,year"},
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="image,ml-100k")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default=None, help="comma list of variant names (default: all)")
    parser.add_argument("--combine", nargs="+", type=Path, help="merge result files of earlier runs into --out")
    parser.add_argument("--item-repr", default="aligned", help="text-sasrec item_repr: text, fused or aligned")
    parser.add_argument("--epochs", type=int, default=10, help="most epochs per fit (early stopping decides)")
    parser.add_argument("--patience", type=int, default=3, help="validations without improvement before stopping")
    parser.add_argument("--image-size", type=int, default=128, help="EfficientNet-Lite0 input size (images are 64 px)")
    parser.add_argument("--items", type=int, default=400, help="generated benchmark: items")
    parser.add_argument("--users", type=int, default=800, help="generated benchmark: users")
    parser.add_argument("--smoke", action="store_true", help="2 epochs, 1 seed, a small generated set")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "lmrec")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "multimodal.json")
    return parser.parse_args(argv)


def splits(ds: Any) -> tuple[Any, Any, Any, dict[str, int]]:
    """(the warm dataset's split, the cold items' catalog rows, the cold test, sizes). The warm
    dataset holds the warm items and their interactions only (compacted: items re-indexed); of
    them each user's last row is the test and the one before it validation. The cold test indexes
    the cold items after the warm ones (row ``n_warm + j`` is the j-th row of the cold catalog),
    as a model grown by them (``with_new_items``) numbers them."""
    import pandas as pd

    from lmrec.data.batch import EvalSet, QueryBatch
    from lmrec.data.splits import Split, cold_items

    cold = cold_items(ds, share=0.1, seed=0).part == 2
    known = ds.with_interactions(ds.interactions[~cold]).compacted()
    by_user = known.interactions.groupby("user")  # rows are in time order
    from_end = by_user.cumcount(ascending=False).to_numpy()
    length = by_user["user"].transform("size").to_numpy()
    part = np.zeros(len(known.interactions), np.int8)
    part[(from_end == 0) & (length >= 3)] = 2
    part[(from_end == 1) & (length >= 3)] = 1
    warm = Split(known, part, {"split": "new items (cold items unseen in training) + warm leave-one-out", "share": 0.1})

    cold_rows = ds.interactions[cold]
    new_items = np.unique(cold_rows["item"].to_numpy())
    catalog = ds.catalog.iloc[new_items].reset_index(drop=True)
    users = known.users.rows(pd.Series(ds.users.raw(cold_rows["user"].to_numpy())))
    targets = pd.DataFrame({"user": users, "item": known.n_items + np.searchsorted(new_items, cold_rows["item"])})
    targets = targets[targets["user"] >= 0].drop_duplicates(["user", "item"])  # users with warm history only
    asked = np.unique(targets["user"].to_numpy())
    history = QueryBatch.from_interactions(known.interactions[part < 2], asked)
    target = QueryBatch.from_interactions(targets, asked)
    cold_test = EvalSet(history, target.indptr, target.items)
    sizes = warm.sizes()
    sizes.update(warm_items=known.n_items, cold_items=len(new_items), cold_test=len(target.items))
    sizes["cold_users"] = len(asked)
    return warm, catalog, cold_test, sizes


def fit(
    spec: str | None, train: Any, valid: Any, args: argparse.Namespace, seed: int, image: Any
) -> tuple[Any, float, float]:
    from lmrec.models import FitOptions, model_class

    cfg: dict[str, Any] = {**BASE, "epochs": 2 if args.smoke else args.epochs, "patience": args.patience}
    name = "sasrec"
    if spec is not None:
        name = "text-sasrec"
        cfg.update(item_repr=args.item_repr, item_features=spec)
        if args.item_repr != "fused":
            cfg["id_dropout"] = 0.0
    klass = model_class(name)
    options = FitOptions(seed=seed, cache_dir=args.cache_dir, image_encoder=image)
    t0, c0 = time.perf_counter(), time.process_time()
    model = klass(klass.config_class.from_dict(cfg)).fit(train, valid, options)
    return model, time.perf_counter() - t0, time.process_time() - c0


class OnlyAmong:
    """A model's scores with every item outside ``items`` at -inf: ranks a cold target among the
    cold items alone (does the model know *which* cold item, apart from how high cold items rank)."""

    def __init__(self, model: Any, items: np.ndarray) -> None:
        import torch

        self.model, self.n_items = model, model.n_items
        self.outside = torch.ones(model.n_items, dtype=torch.bool)
        self.outside[torch.from_numpy(items)] = False

    def score(self, batch: Any) -> Any:
        return self.model.score(batch).float().masked_fill(self.outside, float("-inf"))


def scores(model: Any, eval_set: Any) -> dict[str, float]:
    from lmrec.evaluate import evaluate

    m = evaluate(model, eval_set, metrics=("ndcg", "recall")).metrics
    return {"ndcg@10": m["ndcg@10"], "recall@10": m["recall@10"], "users": len(eval_set)}


def encoding_times(ds: Any, specs: dict[str, str | None], image: Any, n: int = 200) -> dict[str, float]:
    """CPU seconds per 1,000 items to build each feature table from scratch (no cache), on ``n``
    items (CPU time, not wall: the machine's cores were shared while this ran)."""
    from lmrec.features import item_features
    from lmrec.text import load_encoder

    catalog = ds.catalog.iloc[:n].reset_index(drop=True)
    text = load_encoder("minilm")
    out: dict[str, float] = {}
    for name, spec in specs.items():
        if spec is None:
            continue
        c0 = time.process_time()
        item_features(catalog, spec, text_encoder=text, image_encoder=image)
        out[name] = (time.process_time() - c0) / len(catalog) * 1000
    for block in ("text", "image"):
        if any(spec and block in spec.split(",") for spec in specs.values()):
            c0 = time.process_time()
            item_features(catalog, block, text_encoder=text, image_encoder=image)
            out[f"{block} only"] = (time.process_time() - c0) / len(catalog) * 1000
    return out


def run_dataset(name: str, ds: Any, args: argparse.Namespace, image: Any) -> dict[str, Any]:
    from lmrec.text import load_encoder

    warm, catalog, cold_test, sizes = splits(ds)
    train, valid, warm_test = warm.train_dataset(), warm.eval_set("valid"), warm.eval_set("test")
    n_warm = warm.dataset.n_items
    new_rows = np.arange(n_warm, n_warm + len(catalog))
    text = load_encoder("minilm")
    seeds = [0] if args.smoke else [int(s) for s in args.seeds.split(",")]
    rows = []
    wanted = args.variants.split(",") if args.variants else list(VARIANTS[name])
    variants = {v: spec for v, spec in VARIANTS[name].items() if v in wanted}
    for variant, spec in variants.items():
        for seed in seeds:
            model, seconds, cpu = fit(spec, train, valid, args, seed, image)
            row = {
                "variant": variant,
                "item_features": spec,
                "seed": seed,
                "warm": scores(model, warm_test),
                "warm_with_new": None,
                "cold": None,
                "cold_among_cold": None,
                "fit_s": seconds,
                "fit_cpu_s": cpu,
                "epochs": model.training_log.get("epochs"),
                "input_dim": int(model.net.text.shape[1]) if spec is not None else None,
            }
            if spec is not None:  # the cold items arrive, read from their features alone
                grown = model.with_new_items(model.encode_items(catalog, text, args.cache_dir / "embeddings"))
                row["warm_with_new"] = scores(grown, warm_test)
                row["cold"] = scores(grown, cold_test)
                row["cold_among_cold"] = scores(OnlyAmong(grown, new_rows), cold_test)
            rows.append(row)
            cold = row["cold"] or {"recall@10": float("nan")}
            print(
                f"{name} {variant} seed {seed}: warm NDCG@10 {row['warm']['ndcg@10']:.4f}, cold Recall@10 "
                f"{cold['recall@10']:.4f}, fit {seconds:.0f} s ({cpu:.0f} s CPU)",
                file=sys.stderr,
            )
    out: dict[str, Any] = {"sizes": sizes, "rows": rows, "summary": summarise(rows)}
    out["encode_cpu_s_per_1000"] = encoding_times(ds, variants, image, n=100 if args.smoke else 200)
    if ds.user_features is not None:
        from lmrec.features import ML100K_USER_FEATURES, user_features

        t0 = time.perf_counter()
        users = user_features(ds, ML100K_USER_FEATURES)
        out["user_features"] = {
            "spec": ML100K_USER_FEATURES,
            "columns": users.schema.dim,
            "present": {k: int(v.sum()) for k, v in users.present.items()},
            "build_s": time.perf_counter() - t0,
            "used_by_models": False,
            "why": "the sequential encoder reads item sequences only; it has no user-feature input",
        }
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per variant, the means over seeds (nan where a variant has no such measure: an ID model's
    cold columns)."""

    def mean(mine: list[dict[str, Any]], key: str, metric: str) -> float:
        return statistics.mean(r[key][metric] if r[key] else float("nan") for r in mine)

    out: dict[str, dict[str, float]] = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        out[variant] = {
            "warm_ndcg@10": mean(mine, "warm", "ndcg@10"),
            "warm_recall@10": mean(mine, "warm", "recall@10"),
            "warm_with_new_ndcg@10": mean(mine, "warm_with_new", "ndcg@10"),
            "cold_recall@10": mean(mine, "cold", "recall@10"),
            "cold_ndcg@10": mean(mine, "cold", "ndcg@10"),
            "cold_among_cold_recall@10": mean(mine, "cold_among_cold", "recall@10"),
            "fit_s_median": statistics.median(r["fit_s"] for r in mine),
            "fit_cpu_s_median": statistics.median(r["fit_cpu_s"] for r in mine),
            "seeds": len(mine),
        }
    return out


METRIC_COLUMNS = (  # summary keys, in the order of the table's metric columns
    "warm_ndcg@10",
    "warm_recall@10",
    "warm_with_new_ndcg@10",
    "cold_recall@10",
    "cold_ndcg@10",
    "cold_among_cold_recall@10",
)


def render(results: dict[str, Any], info: dict[str, Any]) -> str:
    lines = []
    for name, res in results.items():
        s = res["summary"]
        lines += [
            f"{name} ({res['sizes']}; mean of {s['id']['seeds']} seeds):",
            "",
            "| items | warm NDCG@10 | warm Recall@10 | warm NDCG@10 with the new items | cold Recall@10 "
            "| cold NDCG@10 | cold Recall@10 among cold items | fit s (median; CPU s) | encode CPU s / 1,000 items |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for variant, m in s.items():
            enc = res["encode_cpu_s_per_1000"].get(variant)
            cells = [m.get(k, float("nan")) for k in METRIC_COLUMNS]  # older result files lack some
            lines.append(
                f"| {variant} | " + " | ".join("–" if np.isnan(c) else f"{c:.4f}" for c in cells) + " | "
                f"{m['fit_s_median']:.0f}; "
                f"{m['fit_cpu_s_median']:.0f} | {'–' if enc is None else f'{enc:.1f}'} |"
            )
        blocks = {k: v for k, v in res["encode_cpu_s_per_1000"].items() if "only" in k}
        lines.append("")
        lines.append("Encoding alone, CPU s per 1,000 items: " + ", ".join(f"{k} {v:.1f}" for k, v in blocks.items()))
        if "user_features" in res:
            uf = res["user_features"]
            lines.append(f"User features {uf['spec']}: {uf['columns']} columns, not read by any model ({uf['why']}).")
        lines.append("")
    checks = info.get("checks", {})
    for key, value in checks.items():
        lines.append(f"- {key}: {value}")
    lines.append(
        f"Machine: {info['machine']['nproc']} CPU cores ({info['machine']['cpu']}), no GPU, {info['threads']} threads; "
        f"torch {info['machine']['torch']}. Date: {info['date']}. Command: `{info['command']}`"
    )
    for run in info.get("runs", [])[1:]:
        lines.append(f"and `{run['command']}` ({run['date']})")
    return "\n".join(lines)


def checks(results: dict[str, Any]) -> dict[str, str]:
    out = {}
    for key in (k for k in results if k.startswith("image")):
        s = results[key]["summary"]
        text, image = s["text"]["cold_recall@10"], s["text+attributes+image"]["cold_recall@10"]
        out[f"{key}: cold Recall@10 with images / text alone"] = (
            f"{image / text:.2f}× (target ≥ 1.5×)"
            if text
            else f"text alone {text:.4f}, with images {image:.4f}: no ratio (target ≥ 1.5×)"
        )
        t2, i2 = s["text"]["cold_among_cold_recall@10"], s["text+attributes+image"]["cold_among_cold_recall@10"]
        out[f"{key}: the same, ranked among cold items only"] = f"{i2 / t2 if t2 else float('inf'):.2f}×"
    if "ml-100k" in results:
        s = results["ml-100k"]["summary"]
        base = s["id"]["warm_ndcg@10"]
        worst = min(m["warm_ndcg@10"] for v, m in s.items() if v != "id")
        best = max(m["warm_ndcg@10"] for v, m in s.items() if v != "id")
        out["ml-100k: warm NDCG@10 of the feature variants vs ID"] = (
            f"{worst / base - 1:+.1%} (worst) / {best / base - 1:+.1%} (best) (target ≥ −1 %)"
        )
        added = [m["warm_with_new_ndcg@10"] for v, m in s.items() if v != "id" and "warm_with_new_ndcg@10" in m]
        if added:
            out["ml-100k: the same with the new items in the catalog"] = (
                f"{min(added) / base - 1:+.1%} (worst) / {max(added) / base - 1:+.1%} (best)"
            )
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.combine:
        parts = [json.loads(p.read_text()) for p in args.combine]
        info = {k: v for k, v in parts[0].items() if k not in VARIANTS and k != "checks"}
        info["runs"] = [{k: p[k] for k in ("command", "date", "epochs_cap", "seeds") if k in p} for p in parts]
        results = {
            k if p.get("item_repr", "aligned") == "aligned" else f"{k} (item_repr={p['item_repr']})": v
            for p in parts
            for k, v in p.items()
            if k in VARIANTS
        }
        info["checks"] = checks(results)
        print(render(results, info))
        args.out.write_text(json.dumps({**info, **results}, indent=2) + "\n")
        return
    os.environ.update(thread_env(args.threads))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # encoders load from their packages, never a hub
    import torch

    from lmrec.data.imagebench import image_benchmark
    from lmrec.data.sources import load_source
    from lmrec.features.images import load_image_encoder

    torch.set_num_threads(args.threads)
    image = load_image_encoder(image_size=args.image_size, cache_dir=args.cache_dir)
    results: dict[str, Any] = {}
    for name in args.datasets.split(","):
        if name == "image":
            size = {"n_items": 200, "n_users": 300} if args.smoke else {"n_items": args.items, "n_users": args.users}
            ds = image_benchmark(args.cache_dir / "image-bench", **size, size=64, missing_images=0.05, seed=0)
        else:
            ds = load_source(name, args.cache_dir)
        results[name] = run_dataset(name, ds, args, image)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"partial": True, **results}, indent=2) + "\n")  # so far
    info = {
        "threads": args.threads,
        "item_repr": args.item_repr,
        "epochs_cap": args.epochs,
        "patience": args.patience,
        "seeds": args.seeds,
        "image_size": args.image_size,
        "machine": machine(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(argv),
        "smoke": args.smoke,
    }
    info["checks"] = checks(results)
    print(render(results, info))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**info, **results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
