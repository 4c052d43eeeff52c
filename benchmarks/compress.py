"""Compressed item tables and an ONNX query encoder on a synthetic catalog (default 1M items, dim 64).

For float32 (exact), row-wise int8 and int4, and product quantization (m = 8 and 16 sub-spaces,
256 centroids): bytes held, recall@10 against the exact top-10, top-10 latency p50/p99 at batch 1
and throughput at batch 64. For the query encoder (a SequenceEncoder over the same number of
items): PyTorch eager vs ONNX Runtime fp32 vs dynamic int8, file size and latency. Two threads
everywhere (torch.set_num_threads(2), ONNX Runtime intra-op 2)::

    .venv/bin/python benchmarks/compress.py                 # 1M items
    .venv/bin/python benchmarks/compress.py --items 200000  # smaller

``--run RUN`` instead compresses a trained sequential run (e.g. SASRec on ml-100k) with every
method of ``lmrec compress`` (each a real run under ``--out``) and prints, per method: the model's
size on disk and parameter count, p50/p99 batch-1 latency and batch-64 throughput of
``recommend`` (query encode + score + seen-item masking + top-10) over test users, NDCG@10 and
Recall@10 on all test users, and the relative change against the uncompressed run::

    taskset -c 0 .venv/bin/python benchmarks/compress.py --run runs/sasrec-ml100k --threads 1

A distilled student beside its teacher (the teacher first, the base of the × columns), only the
variant a deployment would serve::

    .venv/bin/python benchmarks/compress.py --run runs/distill-beauty/distilled-seed0 \
        --teacher runs/teachers/beauty-init+fusion-seed0 --only "prune + int8" --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from lmrec.cache import default_cache
from lmrec.compress import quantize
from lmrec.compress._topk import chunked_top_k
from lmrec.compress.pq import ProductQuantizer
from lmrec.data.batch import QueryBatch
from lmrec.models.base import Recommender
from lmrec.models.sequential import SequenceEncoder, SequentialConfig

if TYPE_CHECKING:
    from lmrec.runs import Run

K = 10


def catalog(n: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """Clustered item vectors (4096 topics + noise) with a spread of norms, like a trained table."""
    centres = torch.randn(4096, d, generator=gen)
    topic = torch.randint(0, 4096, (n,), generator=gen)
    x = centres[topic] + 0.5 * torch.randn(n, d, generator=gen)
    return x * (0.5 + torch.rand(n, 1, generator=gen))


def timings(fn: Callable[[], object], reps: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def recall(got: torch.Tensor, ref: torch.Tensor) -> float:
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(got, ref, strict=True))
    return hits / ref.numel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--reps", type=int, default=20, help="batch-1 timings per method (p50/p99 over them)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--run", type=Path, help="compress this sequential run with every method instead")
    parser.add_argument("--out", type=Path, help="--run: where the compressed runs go (default: beside RUN)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="--run: the dataset cache")
    parser.add_argument(
        "--teacher", type=Path, help="--run: a run it was distilled from, timed first (the base of the × columns)"
    )
    parser.add_argument("--only", help="--run: the variants to make, comma-separated labels (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.run is not None:
        run_table(args)
        return
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    items = catalog(args.items, args.dim, gen)
    pick = torch.randint(0, args.items, (64,), generator=gen)
    queries = items[pick] + 0.3 * torch.randn(64, args.dim, generator=gen)
    chunk = 65_536

    def exact(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return chunked_top_k(lambda s, e: q @ items[s:e].T, len(items), len(q), K, chunk)

    methods: dict[str, tuple[int, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]] = {
        "fp32": (items.numel() * 4, exact)
    }
    build: dict[str, float] = {}
    for bits in (8, 4):
        start = time.perf_counter()
        table = quantize.quantize_rows(items, bits)
        build[f"int{bits}"] = time.perf_counter() - start
        methods[f"int{bits}"] = (table.nbytes, lambda q, t=table: quantize.top_k(q, t, K))
    for m in (8, 16):
        start = time.perf_counter()
        pq = ProductQuantizer.fit(items, m=m, k=256, iters=8, sample=32_768, generator=torch.Generator().manual_seed(1))
        pq_table = pq.quantize(items)
        build[f"pq m={m}"] = time.perf_counter() - start
        methods[f"pq m={m}"] = (pq_table.nbytes, lambda q, t=pq_table: t.top_k(q, K))
        methods[f"pq m={m} top100"] = (pq_table.nbytes, lambda q, t=pq_table: t.top_k(q, 100))

    ref = exact(queries)[1]
    rows = []
    for name, (nbytes, top) in methods.items():
        got = top(queries)[1]
        r = recall(got, ref)
        single = timings(lambda top=top: top(queries[:1]), args.reps)
        batch = timings(lambda top=top: top(queries), 3)
        p50, p99 = statistics.median(single), float(np.percentile(single, 99))
        rows.append((name, nbytes, r, p50, p99, 64 / statistics.median(batch)))

    print(f"# {args.items:,} items × {args.dim}, {args.threads} threads, top-{K}, 64 queries (perturbed items)")
    print("| table | MB | × smaller | recall@10 | p50 ms (b=1) | p99 ms (b=1) | queries/s (b=64) | build s |")
    print("|---|---|---|---|---|---|---|---|")
    full = rows[0][1]
    for name, nbytes, r, p50, p99, qps in rows:
        b = build.get(name.replace(" top100", ""), 0.0)
        print(
            f"| {name} | {nbytes / 2**20:.1f} | {full / nbytes:.1f} | {r:.3f} | {p50 * 1e3:.1f} | {p99 * 1e3:.1f} "
            f"| {qps:.0f} | {b:.1f} |"
        )
    print("(pq … top100: recall of the exact top-10 within PQ's top-100, i.e. before an exact re-rank of 100)")
    onnx_table(args)
    print(f"total {time.perf_counter() - t0:.0f} s")


def onnx_table(args: argparse.Namespace) -> None:
    try:
        from lmrec.compress.onnx import OnnxRunner, QueryEncoder, export_onnx, quantize_int8
    except ImportError as exc:
        print(f"ONNX skipped: {exc}")
        return
    cfg = SequentialConfig(dim=args.dim, layers=2, heads=2, inner=256, max_len=50, dropout=0.0)
    torch.manual_seed(0)
    net = SequenceEncoder(args.items, cfg).eval()
    module = QueryEncoder(net)
    gen = torch.Generator().manual_seed(2)
    seq = torch.randint(1, args.items + 1, (64, cfg.max_len), generator=gen)
    lengths = torch.full((64,), cfg.max_len, dtype=torch.int64)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        fp32 = export_onnx(module, Path(tmp) / "query.onnx")
        export_s = time.perf_counter() - start
        int8 = quantize_int8(fp32, Path(tmp) / "query.int8.onnx")
        files = {"onnx fp32": fp32, "onnx int8": int8}
        runners = {name: OnnxRunner(path, threads=args.threads) for name, path in files.items()}
        with torch.no_grad():
            ref = module(seq, lengths).numpy()
            state_bytes = sum(t.numel() * t.element_size() for t in net.state_dict().values())
            results = [("torch eager", state_bytes, 0.0, lambda s, n: module(s, n))]
        for name, runner in runners.items():
            err = float(np.abs(runner(seq, lengths) - ref).max())
            results.append((name, runner.nbytes, err, lambda s, n, r=runner: r(s.numpy(), n.numpy())))
        shape = f"dim {cfg.dim}, {cfg.layers} layers, histories of {cfg.max_len}"
        print(f"\n# query encoder: {args.items:,} items, {shape}")
        print(f"(export {export_s:.0f} s; MB: the state / the .onnx file, most of it the item table)")
        print("| encoder | MB | max abs diff vs torch | p50 ms (b=1) | p99 ms (b=1) | queries/s (b=64) |")
        print("|---|---|---|---|---|---|")
        for name, nbytes, err, fn in results:
            with torch.no_grad():
                single = timings(lambda fn=fn: fn(seq[:1], lengths[:1]), args.reps)
                batch = timings(lambda fn=fn: fn(seq, lengths), 3)
            print(
                f"| {name} | {nbytes / 2**20:.1f} | {err:.1e} | {statistics.median(single) * 1e3:.2f} "
                f"| {float(np.percentile(single, 99)) * 1e3:.2f} | {64 / statistics.median(batch):.0f} |"
            )


# -- a trained run, compressed by each method ------------------------------------------------------------
VARIANTS: list[tuple[str, str, list[str]]] = [  # label, method, --set
    ("onnx", "onnx", []),
    ("int8", "int8", []),
    ("int4", "int4", []),
    ("int8 encoder + int4 table", "int8", ["table=int4"]),
    ("pq m=16", "pq", ["m=16"]),
    ("int8 encoder + pq m=16", "pq", ["m=16", "encoder=int8"]),
    ("prune (1 head, ffn/2) + 5 ep", "prune", ["heads=1", "finetune_epochs=5"]),
    ("prune + int8", "prune", ["heads=1", "finetune_epochs=5", "encoder=int8", "table=int8"]),
    (
        "prune (1 head, ffn/4) + int8",
        "prune",
        ["heads=1", "inner=64", "finetune_epochs=5", "encoder=int8", "table=int8"],
    ),
]


class RecommendTimer:
    """Batch-1 and batch-64 ``recommend`` timings of one model over the test users, collected in
    rounds that alternate between models, so that load from elsewhere on the core hits them alike."""

    def __init__(self, model: Recommender, queries: QueryBatch) -> None:
        n = len(queries)
        self.model, self.single, self.batch = model, [], []
        self.singles = [QueryBatch.from_histories([int(queries.users[i])], [queries.history(i)]) for i in range(n)]
        self.batches = [
            QueryBatch.from_histories(queries.users[s : s + 64], [queries.history(i) for i in range(s, s + 64)])
            for s in range(0, n - 63, 64)
        ]
        self.next = 0
        for one in self.singles[:20]:  # warm-up
            model.recommend(one, k=K)

    def round(self, reps: int) -> None:
        for _ in range(reps):
            one = self.singles[self.next % len(self.singles)]
            self.next += 1
            start = time.perf_counter()
            self.model.recommend(one, k=K)
            self.single.append(time.perf_counter() - start)
        b = self.batches[self.next % len(self.batches)]
        start = time.perf_counter()
        self.model.recommend(b, k=K)
        self.batch.append(time.perf_counter() - start)

    def result(self) -> tuple[float, float, float]:
        """p50 and p99 seconds at batch 1, users/s at batch 64 (median batch)."""
        return (
            statistics.median(self.single),
            float(np.percentile(self.single, 99)),
            64 / statistics.median(self.batch),
        )


def run_table(args: argparse.Namespace) -> None:
    import json

    from lmrec.cli import main as lmrec
    from lmrec.compress.model import CompressedSequential, directory_bytes, source_parameter_count
    from lmrec.runs import open_run

    cache = args.cache_dir or default_cache()
    out = args.out or args.run.parent / f"{args.run.name}-compressed"
    source = open_run(args.run, cache)
    queries = source.split.eval_set("test").queries
    uncompressed = [(f"{source.meta['model']} (torch, {'student' if args.teacher else 'source'})", args.run, source)]
    if args.teacher:  # timed first: the base of the × columns
        uncompressed.insert(0, ("teacher (torch)", args.teacher, open_run(args.teacher, cache)))
    entries: list[tuple[str, Run, int, int, float]] = [
        (label, run, directory_bytes(path / "model"), source_parameter_count(run.model), 0.0)
        for label, path, run in uncompressed
    ]
    only = set(args.only.split(",")) if args.only else {label for label, _, _ in VARIANTS}
    for label, method, sets in [v for v in VARIANTS if v[0] in only]:
        target = out / label.replace(" (1 head, ffn/2) + 5 ep", "").replace(" (1 head, ffn/4)", "-ffn4")
        target = target.with_name(target.name.replace(" + ", "+").replace(" ", "-").replace("=", ""))
        if not (target / "run.json").exists():
            argv = ["--cache-dir", str(cache), "compress", "--run", str(args.run), "--method", method]
            code = lmrec([*argv, *[f"--set={s}" for s in sets], "--out", str(target), "--quiet"])
            if code != 0:
                print(f"  {label}: lmrec compress failed ({code})")
                continue
        run = open_run(target, cache)
        assert isinstance(run.model, CompressedSequential)
        run.model.set_threads(args.threads)
        record = json.loads((target / "run.json").read_text())["compress"]
        entries.append((label, run, record["bytes_after"], record["parameters_after"], record["seconds"]))

    metrics = [run.evaluate("test")["metrics"] for _, run, *_ in entries]
    timers = [RecommendTimer(run.model, queries) for _, run, *_ in entries]
    rounds = 10
    for _ in range(rounds):
        for timer in timers:
            timer.round(max(1, args.reps // rounds))
    rows = [
        (label, nbytes, params, *timer.result(), m["ndcg@10"], m["recall@10"], seconds)
        for (label, _, nbytes, params, seconds), timer, m in zip(entries, timers, metrics, strict=True)
    ]
    base = rows[0]
    print(f"\n# {args.run} compressed: {source.dataset.name}, {len(queries)} test users, {args.threads} thread(s)")
    print(
        f"(recommend = query encode + score + seen-item masking + top-10; {args.reps} batch-1 calls per model in"
        f" {rounds} rounds alternating between models; ONNX Runtime intra-op threads = torch threads)"
    )
    print(
        "| model | KB on disk | × smaller | parameters | p50 ms (b=1) | × faster | p99 ms (b=1) | users/s (b=64) "
        "| NDCG@10 | Δ NDCG | Recall@10 | Δ Recall | compress s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, nbytes, params, p50, p99, qps, ndcg, rec, seconds in rows:
        print(
            f"| {label} | {nbytes / 1024:.1f} | {base[1] / nbytes:.2f} | {params:,} | {p50 * 1e3:.2f} "
            f"| {base[3] / p50:.2f} | {p99 * 1e3:.2f} | {qps:.0f} | {ndcg:.4f} | {100 * (ndcg / base[6] - 1):+.1f} % "
            f"| {rec:.4f} | {100 * (rec / base[7] - 1):+.1f} % | {seconds:.0f} |"
        )


if __name__ == "__main__":
    main()
