"""Where a /recommend request's time goes, without HTTP: the service's state vs the model alone.

Times, per request and one user at a time (as the service answers them), on a trained run:
``LiveState.recommend`` (history from the dataset and the store, model, seen-item masking, titles),
``model.recommend`` alone on the same histories, and the history read alone. What the load test
(`loadtest.py`) measures beyond the first is HTTP, JSON and the client sharing the machine.

    .venv/bin/python benchmarks/serve_profile.py --run runs/sasrec-L50
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import REPO, command_line, machine, thread_env


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "lmrec")
    args = parser.parse_args(argv)
    os.environ.update(thread_env(args.threads))
    import torch

    from lmrec.data.batch import QueryBatch
    from lmrec.runs import open_run
    from lmrec.serve.state import LiveState
    from lmrec.serve.stores import open_store

    torch.set_num_threads(args.threads)
    run = open_run(args.run, args.cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        state = LiveState(run, open_store(Path(tmp) / "events.db"))
        users = run.dataset.users.ids[: args.users]
        batches = [QueryBatch.from_histories([run.dataset.users.row(u)], [state.history(u).rows]) for u in users]

        def per_call_ms(call: object, items: list) -> float:
            for x in items[:10]:
                call(x)  # type: ignore[operator]
            ms = []
            for x in items:
                started = time.perf_counter()
                call(x)  # type: ignore[operator]
                ms.append((time.perf_counter() - started) * 1000)
            return statistics.median(ms)

        stages = {
            "LiveState.recommend (k=10)": per_call_ms(lambda u: state.recommend(u, None, 10), users),
            "model.recommend alone": per_call_ms(lambda b: run.model.recommend(b, 10), batches),
            "history read (dataset + store)": per_call_ms(state.history, users),
        }
    m = machine()
    print(f"{run.meta['model']} run {args.run}, {len(users)} users, median ms per request, {args.threads} thread(s):")
    for name, ms in stages.items():
        print(f"- {name}: {ms:.2f} ms")
    print(f"Machine: {m['nproc']} CPU cores ({m['cpu']}); torch {m['torch']}. Command: `{command_line(argv)}`")


if __name__ == "__main__":
    main()
