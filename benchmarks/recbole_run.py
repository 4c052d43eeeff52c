"""Run one RecBole 1.2.1 model under lmrec's protocol and print ``RESULT {json}``.

Adapted from the shared peer script (shared/peers/recbole_run.py); the RecBole configuration is
the same: time-ordered leave-one-out (``LS: valid_and_test``, ``order: TO``), full ranking grouped
by user (RecBole excludes the user's training items), Recall/NDCG/MRR @10, NDCG@10 for early
stopping. Changes from the shared script:

- checkpoints go to ``--checkpoint-dir`` (or ``$RECBOLE_CHECKPOINT_DIR``; by default a temporary
  directory, removed afterwards) instead of a fixed path. The process also runs from that
  directory, because RecBole writes ``./log/`` and ``./log_tensorboard/`` into the working
  directory, with no setting to move them;
- torch uses ``$THREADS`` threads (default 2);
- ``--curve FILE`` records every validation (epoch, seconds since training began, NDCG@10) as
  JSON after each epoch, and ``--budget-s S`` stops training after the first validation past S
  seconds (the curve is kept; the run then ends without a test result).

Runs with the interpreter of ``benchmarks/.venv-recbole`` (made by ``recbole_env.sh``)::

    benchmarks/.venv-recbole/bin/python benchmarks/recbole_run.py MODEL DATA_DIR DATASET [EPOCHS]

``DATA_DIR`` holds ``DATASET/DATASET.inter`` (a RecBole atomic file).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

SEQUENTIAL = ("SASRec", "BERT4Rec", "GRU4Rec")


def config(model: str, data_path: Path, epochs: int, checkpoint_dir: Path) -> dict[str, Any]:
    """RecBole's config dict: the shared peer script's, with our checkpoint directory."""
    cfg: dict[str, Any] = {
        "data_path": str(data_path),
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "metrics": ["Recall", "NDCG", "MRR"],
        "topk": [10],
        "valid_metric": "NDCG@10",
        "epochs": epochs,
        "stopping_step": 5,
        "train_batch_size": 256,
        "eval_batch_size": 4096,
        "MAX_ITEM_LIST_LENGTH": int(os.environ.get("MAXLEN", "50")),
        "show_progress": False,
        "seed": 2026,
        "reproducibility": True,
        "device": "cpu",
        "use_gpu": False,
        "checkpoint_dir": str(checkpoint_dir / "saved"),
    }
    if model in SEQUENTIAL:
        cfg.update(
            {
                "loss_type": "CE",
                "train_neg_sample_args": None,
                "hidden_size": 64,
                "inner_size": 256,
                "n_layers": 2,
                "n_heads": 2,
                "hidden_dropout_prob": 0.2,
                "attn_dropout_prob": 0.2,
                "learning_rate": 0.001,
            }
        )
    return cfg


def patch_torch_load() -> None:
    """RecBole 1.2.1 pickles its Config into checkpoints, which torch>=2.6 refuses to load by
    default (weights_only=True). These are checkpoints this process just wrote."""
    load = torch.load
    torch.load = lambda *a, **k: load(*a, **{**k, "weights_only": False})  # type: ignore[assignment]


class OutOfTime(Exception):
    """Raised from a validation once the time budget is spent."""


def record_curve(curve_file: Path | None, budget_s: float | None) -> list[dict[str, float]]:
    """Wrap RecBole's Trainer._valid_epoch so that each validation appends (epoch, seconds since
    the first training epoch began, score) to the curve, written out at once."""
    from recbole.trainer import Trainer

    curve: list[dict[str, float]] = []
    started: list[float] = []
    train_epoch, valid_epoch = Trainer._train_epoch, Trainer._valid_epoch

    def timed_train(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not started:
            started.append(time.perf_counter())
        return train_epoch(self, *args, **kwargs)

    def timed_valid(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        score, result = valid_epoch(self, *args, **kwargs)
        elapsed = time.perf_counter() - started[0]
        curve.append({"epoch": len(curve), "seconds": round(elapsed, 1), "ndcg@10": float(score)})
        print("CURVE", json.dumps(curve[-1]), flush=True)
        if curve_file is not None:
            curve_file.write_text(json.dumps(curve, indent=1))
        if budget_s is not None and elapsed > budget_s:
            raise OutOfTime(f"stopped after {elapsed:.0f} s (budget {budget_s:.0f} s)")
        return score, result

    Trainer._train_epoch, Trainer._valid_epoch = timed_train, timed_valid  # type: ignore[method-assign]
    return curve


def run(
    model: str,
    data_path: Path,
    dataset: str,
    epochs: int,
    checkpoint_dir: Path,
    curve_file: Path | None = None,
    budget_s: float | None = None,
) -> dict[str, Any]:
    """Train and test ``model``; the RESULT record (wall time covers data loading, fit and test)."""
    patch_torch_load()
    from recbole.quick_start import run_recbole  # imported after the patch, as in the peer script

    curve = record_curve(curve_file, budget_s)

    cfg = config(model, data_path.resolve(), epochs, checkpoint_dir)
    cwd = Path.cwd()
    os.chdir(checkpoint_dir)
    try:
        t0 = time.time()
        try:
            res = run_recbole(model=model, dataset=dataset, config_dict=cfg)
        except OutOfTime as stop:
            return {"model": model, "dataset": dataset, "stopped": str(stop), "curve": curve}
        wall = time.time() - t0
    finally:
        os.chdir(cwd)
    return {
        "curve": curve,
        "model": model,
        "dataset": dataset,
        "wall_s": round(wall, 1),
        "threads": torch.get_num_threads(),
        "test": {k: float(v) for k, v in res["test_result"].items()},
        "valid": {k: float(v) for k, v in res["best_valid_result"].items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="RecBole model name, e.g. Pop, ItemKNN, EASE, BPR")
    parser.add_argument("data_dir", type=Path, help="directory holding DATASET/DATASET.inter")
    parser.add_argument("dataset", help="dataset name, e.g. ml-100k")
    parser.add_argument("epochs", type=int, nargs="?", default=200)
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=os.environ.get("RECBOLE_CHECKPOINT_DIR"),
        help="where RecBole's checkpoints and logs go (default: a temporary directory, removed)",
    )
    parser.add_argument("--curve", type=Path, help="write the per-epoch validation curve here (JSON)")
    parser.add_argument("--budget-s", type=float, help="stop after the first validation past this many seconds")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))

    temporary = args.checkpoint_dir is None
    checkpoint_dir = Path(tempfile.mkdtemp(prefix="recbole-")) if temporary else args.checkpoint_dir
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = run(
            args.model, args.data_dir, args.dataset, args.epochs, checkpoint_dir.resolve(), args.curve, args.budget_s
        )
    finally:
        if temporary:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
    print("RESULT", json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
