"""Scoring cost of a text model per request: the catalog's item table cached per model state or not.

A served request is one ``recommend`` call for one history. For a text model (``text-sasrec``,
``item_repr=fused``) that call used to run the text adaptor over the whole catalog twice (query and
item vectors); now the table is kept while the model does not change (``inference_table``). This
times ``--calls`` single-history ``recommend`` calls on an ml-100k-shaped log (943 users, 1,682
items, ~100k events, generated) with 384-dimensional item text vectors (MiniLM's width; random,
which costs the same), after one training epoch, the three taking turns call by call:

  sasrec             the ID model, for reference
  text-sasrec        cached (the code as it is)
  text-sasrec, old   the table recomputed on each use (as before the cache)

and counts the adaptor's passes over the catalog. Pin it to one core with one thread:

    taskset -c 1 env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/text_scoring.py
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import numpy as np
import torch

from lmrec.data.batch import QueryBatch
from lmrec.data.splits import leave_one_out
from lmrec.data.synthetic import ml1m_shaped
from lmrec.models import FitOptions, model_class
from lmrec.models.sequential import SequentialRecommender


class RandomEncoder:
    """A stand-in sentence encoder: a fixed random unit vector per text."""

    name, dim = "random-384", 384

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        out = np.stack([np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(self.dim) for t in texts])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def fit(name: str, train: object) -> SequentialRecommender:
    klass = model_class(name)
    model = klass(klass.config_class.from_dict({"epochs": 1}))
    options = FitOptions(seed=0, text_encoder=RandomEncoder(), threads=1)
    model.fit(train, None, options)  # type: ignore[arg-type]
    assert isinstance(model, SequentialRecommender)
    return model


def time_calls(models: dict[str, SequentialRecommender], histories: list[np.ndarray], calls: int) -> dict:
    """``calls`` single-history ``recommend`` calls per model, the models taking turns (so that
    whatever else the machine does falls on each alike); per model the milliseconds and the text
    adaptor's passes over the catalog."""
    passes = dict.fromkeys(models, 0)
    for name, model in models.items():
        if hasattr(model.net, "adaptor"):
            model.net.adaptor.register_forward_hook(lambda *_, name=name: passes.__setitem__(name, passes[name] + 1))
        model.recommend(QueryBatch.from_histories([-1], [histories[0]]), k=10)  # warm-up
    passes = dict.fromkeys(models, 0)
    times: dict[str, list[float]] = {name: [] for name in models}
    for i in range(calls):
        batch = QueryBatch.from_histories([-1], [histories[i % len(histories)]])
        for name, model in models.items():
            t0 = time.perf_counter()
            model.recommend(batch, k=10)
            times[name].append(time.perf_counter() - t0)
    return {
        name: {
            "median_ms": statistics.median(times[name]) * 1e3,
            "mean_ms": statistics.mean(times[name]) * 1e3,
            "passes": passes[name],
        }
        for name in models
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    data = ml1m_shaped(0, users=943, items=1682, events=100_000)
    split = leave_one_out(data)
    train = split.train_dataset()
    histories = [train.interactions["item"].to_numpy()[-50:]] + [
        np.asarray(h[-50:]) for h in train.interactions.groupby("user")["item"].apply(list).iloc[:100]
    ]
    text = fit("text-sasrec", train)
    old = copy.deepcopy(text)
    old.inference_table = lambda: old.net.item_table().detach()  # type: ignore[method-assign]
    rows = time_calls(
        {"sasrec": fit("sasrec", train), "text-sasrec": text, "text-sasrec, old": old}, histories, args.calls
    )
    print(f"{args.calls} recommend calls, one history each, {train.n_items} items, {torch.get_num_threads()} thread(s)")
    print("| model | median ms / call | mean ms / call | adaptor passes |")
    print("|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['median_ms']:.2f} | {row['mean_ms']:.2f} | {row['passes']} |")


if __name__ == "__main__":
    main()
