"""Scale: a log larger than memory, a million-item catalog, sampled against full softmax.

Parts (``--parts``, comma-separated; each adds its numbers to ``--out``, default
``benchmarks/results/scale.json``):

  large     write a generated log (``--events`` interactions, default 10 M, ``--users`` users,
            ``--items`` item positions, default 1.15 M of which about 1.03 M occur:
            ``lmrec.data.synthetic.write_large_log``) as Parquet in chunks, then ``lmrec prepare``
            it and ``lmrec train --model sasrec --set epochs=1`` on the prepared directory,
            each as a child process: peak RSS (``ru_maxrss`` from ``wait4``: the child and its
            children) against ``--rss-bound-gib``, CPU seconds, the
            epoch's training seconds and the validation NDCG@10 after it.
  softmax   ml-100k, default sasrec, ``loss=ce`` (chunked full softmax) against ``loss=inbatch``
            (batch targets + uniform negatives, log-Q corrected): test NDCG@10 over all test users.
  step      per training step on the large log's 1M-item catalog, for ``ce`` and ``inbatch``: CPU
            ms per step (forward, backward, AdamW) and peak RSS of a child process that holds only
            the model, the optimizer and a few thousand users' windows (the softmax runs over all
            items of the catalog).
  ann       faiss top-10 (HNSW and IVF-Flat) against the exact top-10 over the item table of the
            model ``large`` trained (1M items), queries from the last 50 items of users' histories:
            recall@10, build seconds, ms per query.

Every child is pinned by the caller (``taskset``) and runs one thread. Speeds are process CPU
time, so they hold on a shared core; RSS is the kernel's high-water mark of the process.

    taskset -c 0 .venv/bin/python benchmarks/scale.py --parts large,softmax,step,ann --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GIB = 1 << 30


def child(command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a child process to the end: exit code, CPU seconds (user + system), peak RSS (bytes) of
    the child and the children it waited for, wall seconds, and its stdout."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, env={**os.environ, **(env or {})}, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    result = {
        "rc": proc.returncode,
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # Linux reports KiB
        "wall_s": round(time.perf_counter() - started, 2),
        "stdout": out,
    }
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {proc.returncode}")
    return result


def lmrec(*args: str) -> list[str]:
    return [sys.executable, "-m", "lmrec", *args]


def prepare_log(log: Path, out: Path, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """``lmrec prepare`` of ``log`` into a fresh ``out`` in a child: its usage record and its report."""
    shutil.rmtree(out, ignore_errors=True)
    prep = child(
        lmrec(
            "prepare", "--input", str(log), "--out", str(out), "--shards", str(args.shards),
            "--batch-rows", str(args.batch_rows), "--json",
        )
    )  # fmt: skip
    return prep, json.loads(prep.pop("stdout"))


def gib(n: float) -> float:
    return round(n / GIB, 3)


# -- large: prepare + one epoch ----------------------------------------------------------------------


def part_large(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from lmrec.data.synthetic import write_large_log

    log = work / f"log-{args.events}-{args.users}-{args.items}.parquet"
    if not log.exists():
        started = time.process_time()
        rows = write_large_log(log, events=args.events, users=args.users, items=args.items, seed=0)
        print(f"wrote {rows:,} rows to {log} in {time.process_time() - started:.1f} CPU s", file=sys.stderr)
    prepared, run = work / "prepared", work / "run-large"
    shutil.rmtree(run, ignore_errors=True)
    prep, report = prepare_log(log, prepared, args)
    train_args = [
        "--cache-dir", str(work / "cache"), "train", "--dataset", str(prepared), "--model", "sasrec",
        "--set", "epochs=1", "--out", str(run), "--threads", str(args.threads), "--quiet",
    ]  # fmt: skip
    steps_file = work / "steps.json"
    if args.train_fraction < 1:  # `lmrec train` in a child that stops the epoch after that share of its batches
        command = [sys.executable, __file__, "--train-worker", json.dumps(train_args)]
        command += ["--train-fraction", str(args.train_fraction), "--steps-file", str(steps_file)]
        train = child(command)
    else:
        train = child(lmrec(*train_args))
    train.pop("stdout")
    meta = json.loads((run / "run.json").read_text())
    valid = json.loads((run / "valid.json").read_text())
    if args.train_fraction < 1:
        steps = json.loads(steps_file.read_text())
        per_step = statistics.median(steps["step_cpu_s"][1:])
        rest = train["cpu_s"] - sum(steps["step_cpu_s"])  # loading, split, setup, validation, saving
        train["fraction"] = {
            "batches_in_epoch": steps["batches"],
            "batches_run": len(steps["step_cpu_s"]),
            "cpu_ms_per_step_median": round(1000 * per_step, 1),
            "cpu_s_outside_steps": round(rest, 1),
            "extrapolated_epoch_cpu_s": round(rest + per_step * steps["batches"], 1),
        }
    bound = args.rss_bound_gib * GIB
    return {
        "log": {
            "rows": report["rows"],
            "users": report["users"],
            "items": report["items"],
            "bytes": log.stat().st_size,
        },
        "prepare": {
            **prep,
            "peak_rss_gib": gib(prep["peak_rss_bytes"]),
            "shards": report["shards"],
            "largest_batch": report["largest_batch"],
            "largest_shard": report["largest_shard"],
        },
        "train": {
            **train,
            "peak_rss_gib": gib(train["peak_rss_bytes"]),
            "train_seconds": meta["train_seconds"],
            "training": meta["training"],
            "split_sizes": meta["split_sizes"],
            "valid_ndcg@10": valid["metrics"]["ndcg@10"],
            "valid_users": valid["n_users"],
        },
        "rss_bound_gib": args.rss_bound_gib,
        "bound_met": bool(max(prep["peak_rss_bytes"], train["peak_rss_bytes"]) <= bound),
        "prepared": str(prepared),
        "run": str(run),
    }


def part_prepare(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """``lmrec prepare`` alone on the large log (as in ``large``), into a directory of its own."""
    log = work / f"log-{args.events}-{args.users}-{args.items}.parquet"
    if not log.exists():
        raise SystemExit(f"no {log}: run --parts large first")
    prep, report = prepare_log(log, work / "prepared-alone", args)
    keep = ("rows", "users", "items", "shards", "largest_batch", "largest_shard")
    return {**prep, "peak_rss_gib": gib(prep["peak_rss_bytes"]), **{k: report[k] for k in keep}}


# -- softmax: ce against inbatch on ml-100k ---------------------------------------------------------


def train_worker(args: argparse.Namespace) -> None:
    """Child: ``lmrec train`` in this process, each epoch cut to its first ``train_fraction`` of
    batches (a measured fraction of an epoch); the CPU seconds of every step go to ``steps_file``."""
    from lmrec.cli import main as lmrec_main
    from lmrec.models import sequential

    batches_of = sequential.SequenceTask.batches
    record: dict[str, Any] = {"batches": 0, "step_cpu_s": []}

    def cut(task: Any, epoch: int, gen: Any) -> Any:
        everything = list(batches_of(task, epoch, gen))
        record["batches"] = len(everything)
        keep = max(2, round(args.train_fraction * len(everything)))
        for batch in everything[:keep]:
            started = time.process_time()
            yield batch  # the trainer's step runs while this generator waits
            record["step_cpu_s"].append(time.process_time() - started)

    sequential.SequenceTask.batches = cut  # type: ignore[method-assign]
    code = lmrec_main(json.loads(args.train_worker))
    Path(args.steps_file).write_text(json.dumps(record))
    raise SystemExit(code)


def part_softmax(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rows = {}
    for loss in ("ce", "inbatch"):
        run = work / f"run-ml100k-{loss}"
        shutil.rmtree(run, ignore_errors=True)
        train = child(
            lmrec(
                "train", "--dataset", "ml-100k", "--model", "sasrec", "--set", f"loss={loss}",
                "--out", str(run), "--threads", str(args.threads), "--quiet", "--seed", str(args.seed),
            )
        )  # fmt: skip
        train.pop("stdout")
        test = json.loads(child(lmrec("evaluate", "--run", str(run), "--json"))["stdout"])
        meta = json.loads((run / "run.json").read_text())
        log = meta["training"]
        rows[loss] = {
            "test_ndcg@10": test["metrics"]["ndcg@10"],
            "test_recall@10": test["metrics"]["recall@10"],
            "test_users": test["n_users"],
            "fit_cpu_s": train["cpu_s"],
            "train_seconds": meta["train_seconds"],
            "epochs": len(log.get("valid", [])) if isinstance(log, dict) else None,
            "best_epoch": log.get("best_epoch") if isinstance(log, dict) else None,
        }
    ce, inbatch = rows["ce"]["test_ndcg@10"], rows["inbatch"]["test_ndcg@10"]
    return {**rows, "relative": round(inbatch / ce - 1, 4), "bar": -0.05, "bar_met": inbatch >= 0.95 * ce}


# -- step: ms and memory per training step over 1M items -------------------------------------------


def step_worker(args: argparse.Namespace) -> None:
    """Child: train ``args.steps`` steps of sasrec with loss ``args.step_worker`` over every item of
    the prepared log's catalog; print one JSON line."""
    import numpy as np
    import torch

    from lmrec.data.schema import Vocab
    from lmrec.data.stream import read_sequences
    from lmrec.models.sequential import SASRec, SequenceEncoder, SequenceTask, SequentialConfig
    from lmrec.train.trainer import fast_bf16

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    prepared = Path(args.prepared)
    n_items = len(Vocab.load(prepared / "items.json"))
    histories = read_sequences(prepared, rank=0, world=args.shards_read)  # every shards_read-th shard
    model = SASRec(SequentialConfig(loss=args.step_worker))
    model.n_users, model.n_items, model.device = len(histories), n_items, torch.device("cpu")
    model.net = SequenceEncoder(n_items, model.config)
    counts = np.bincount(histories.items, minlength=n_items).astype(np.float32)
    model.popularity = torch.from_numpy(counts)
    model.unseen = torch.zeros(n_items, dtype=torch.bool)  # every item in the softmax: the full 1M
    model.teacher, model.category_vectors = None, None
    task = SequenceTask(model, histories, "causal")
    optimizer = torch.optim.AdamW(model.net.parameters(), lr=model.config.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    amp = fast_bf16(model.device)
    rss_ready = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times: list[float] = []
    model.net.train()
    for i, seq in enumerate(task.batches(0, gen)):
        if i == args.steps + 1:
            break
        started = time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = task.loss(model.net, seq, gen)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i > 0:  # the first step allocates the optimizer state
            times.append(time.process_time() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = {
        "loss": args.step_worker,
        "items": n_items,
        "steps": len(times),
        "cpu_ms_per_step": round(1000 * statistics.median(times), 1),
        "peak_rss_gib": gib(peak),
        "rss_before_steps_gib": gib(rss_ready),
        "step_rss_gib": gib(peak - rss_ready),
        "bf16": amp,
        "batch_size": model.config.batch_size,
        "max_len": model.config.max_len,
    }
    print(json.dumps(out))


def part_step(args: argparse.Namespace, work: Path, large: dict[str, Any]) -> dict[str, Any]:
    prepared = large.get("prepared") or str(work / "prepared")
    rows = {}
    for loss, steps in (("inbatch", args.inbatch_steps), ("ce", args.ce_steps)):
        command = [sys.executable, __file__, "--step-worker", loss, "--prepared", prepared]
        command += ["--steps", str(steps), "--threads", str(args.threads), "--shards-read", str(args.shards)]
        result = child(command)
        rows[loss] = {
            **json.loads(result["stdout"].strip().splitlines()[-1]),
            "process_peak_rss_gib": gib(result["peak_rss_bytes"]),
        }
    rows["ce_over_inbatch_time"] = round(rows["ce"]["cpu_ms_per_step"] / rows["inbatch"]["cpu_ms_per_step"], 1)
    return rows


# -- ann: faiss recall on the trained 1M-item table --------------------------------------------------


def part_ann(args: argparse.Namespace, work: Path, large: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch

    from lmrec.data.batch import QueryBatch
    from lmrec.data.stream import read_sequences
    from lmrec.models.registry import load_model
    from lmrec.serve.ann import VectorIndex, exact_top_k

    torch.set_num_threads(args.threads)
    run, prepared = Path(large.get("run") or work / "run-large"), Path(large.get("prepared") or work / "prepared")
    model = load_model(run / "model")
    histories = read_sequences(prepared, rank=0, world=args.shards)
    n = min(args.ann_queries, len(histories))
    batch = QueryBatch.from_histories(histories.users[:n], [histories.history(i)[-50:] for i in range(n)])
    queries = model.query_embeddings(batch).vectors.numpy().astype(np.float32)
    vectors = model.item_embeddings().numpy().astype(np.float32)
    started = time.process_time()
    exact, _ = exact_top_k(queries, vectors, 10)
    exact_ms = 1000 * (time.process_time() - started) / n
    rows: dict[str, Any] = {
        "items": len(vectors),
        "dim": vectors.shape[1],
        "queries": n,
        "exact_ms_per_query": round(exact_ms, 2),
    }
    settings = {
        "hnsw": {"m": args.hnsw_m, "ef_construction": args.ef_construction, "ef_search": args.ef_search},
        "ivf": {"nlist": args.nlist, "nprobe": args.nprobe},
    }
    for kind, params in settings.items():
        started = time.process_time()
        index = VectorIndex(vectors, kind, **params)  # type: ignore[arg-type]
        build = time.process_time() - started
        started = time.process_time()
        found, _ = index.search(queries, 10)
        search_ms = 1000 * (time.process_time() - started) / n
        recall = float(
            np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.tolist(), exact.tolist(), strict=True)])
        )
        rows[kind] = {
            **params,
            "recall@10": round(recall, 4),
            "build_cpu_s": round(build, 1),
            "ms_per_query": round(search_ms, 3),
        }
        del index
    return rows


# -- the tables of RESULTS.md ----------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    """The Scale tables from a results file (``--report``)."""
    out = []
    if "large" in results:
        r = results["large"]
        log, prep, train = r["log"], r["prepare"], r["train"]
        out += [
            f"Log: {log['rows']:,} interactions, {log['users']:,} users, {log['items']:,} items"
            f" ({log['bytes'] / 2**20:.0f} MiB of Parquet); bound on peak RSS: {r['rss_bound_gib']} GiB.",
            "",
            "| step | peak RSS GiB | CPU s | wall s | notes |",
            "|---|---|---|---|---|",
            f"| `lmrec prepare` | {prep['peak_rss_gib']} | {prep['cpu_s']} | {prep['wall_s']} |"
            f" {prep['shards']} shards; at most {prep['largest_batch']:,} rows per batch,"
            f" {prep['largest_shard']:,} per shard |",
            f"| `lmrec train` sasrec, 1 epoch | {train['peak_rss_gib']} | {train['cpu_s']} | {train['wall_s']} |"
            f" {train['training']['steps']} steps, loss {train['training'].get('loss', 'auto → inbatch')};"
            f" valid NDCG@10 {train['valid_ndcg@10']} ({train['valid_users']:,} users) |",
            "",
            f"Bound met: {'yes' if r['bound_met'] else 'no'}.",
            "",
        ]
    if "softmax" in results:
        r = results["softmax"]
        out += ["| ml-100k sasrec | test NDCG@10 | Recall@10 | epochs (best) | fit CPU s |", "|---|---|---|---|---|"]
        for loss in ("ce", "inbatch"):
            x = r[loss]
            out.append(
                f"| loss={loss} | {x['test_ndcg@10']} | {x['test_recall@10']} | {x['epochs']} ({x['best_epoch']}) |"
                f" {x['fit_cpu_s']} |"
            )
        out += [
            "",
            f"inbatch against ce: {100 * r['relative']:+.1f} % (bar −5 %: {'met' if r['bar_met'] else 'not met'}).",
            "",
        ]
    if "step" in results:
        r = results["step"]
        out += [
            "| loss, all items in the softmax | items | CPU ms / step | peak RSS GiB | RSS before the steps GiB |",
            "|---|---|---|---|---|",
        ]
        for loss in ("ce", "inbatch"):
            x = r[loss]
            out.append(
                f"| {loss} | {x['items']:,} | {x['cpu_ms_per_step']} | {x['peak_rss_gib']} |"
                f" {x['rss_before_steps_gib']} |"
            )
        out += ["", f"ce takes {r['ce_over_inbatch_time']}× the CPU time of inbatch per step.", ""]
    if "ann" in results:
        r = results["ann"]
        out += [
            f"faiss over {r['items']:,} item vectors (dim {r['dim']}), {r['queries']:,} queries; exact top-10:"
            f" {r['exact_ms_per_query']} CPU ms per query.",
            "",
            "| index | settings | recall@10 | build CPU s | CPU ms / query |",
            "|---|---|---|---|---|",
        ]
        for kind in ("hnsw", "ivf"):
            x = r[kind]
            settings = ", ".join(
                f"{k} {v}" for k, v in x.items() if k not in ("recall@10", "build_cpu_s", "ms_per_query")
            )
            out.append(f"| {kind} | {settings} | {x['recall@10']} | {x['build_cpu_s']} | {x['ms_per_query']} |")
    return "\n".join(out)


# -- main ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="large,softmax,step,ann")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lmrec-scale"), help="logs, prepared data, runs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--items", type=int, default=1_150_000)  # ~1.03 M of them occur
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--batch-rows", type=int, default=1 << 20)
    parser.add_argument("--rss-bound-gib", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inbatch-steps", type=int, default=20)
    parser.add_argument("--ce-steps", type=int, default=3)
    parser.add_argument("--ann-queries", type=int, default=1000)
    parser.add_argument("--hnsw-m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--ef-search", type=int, default=128)
    parser.add_argument("--nlist", type=int, default=1024, help="IVF cells (k-means trains on 256 points per cell)")
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--report", action="store_true", help="print the markdown tables of --out and stop")
    parser.add_argument("--train-fraction", type=float, default=1.0, help="large: share of the epoch's batches to run")
    parser.add_argument("--train-worker", help=argparse.SUPPRESS)
    parser.add_argument("--steps-file", help=argparse.SUPPRESS)
    # the step worker (a child of --parts step)
    parser.add_argument("--step-worker", choices=["ce", "inbatch"], help=argparse.SUPPRESS)
    parser.add_argument("--prepared", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--shards-read", type=int, default=16, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step_worker:
        step_worker(args)
        return
    if args.train_worker:
        train_worker(args)
        return
    if args.report:
        print(markdown(json.loads(args.out.read_text())))
        return
    os.environ.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    os.environ.setdefault("LMREC_CACHE", str(ROOT / ".cache" / "lmrec"))  # ml-100k
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "cores_used": len(os.sched_getaffinity(0)),
        "threads": args.threads,
        "python": platform.python_version(),
        "note": "2 shared AMD EPYC cores; this process and its children pinned to one (taskset); CPU time",
    }
    for part in args.parts.split(","):
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if part == "large":
            results["large"] = part_large(args, args.work)
        elif part == "prepare":
            results["prepare"] = part_prepare(args, args.work)
        elif part == "softmax":
            results["softmax"] = part_softmax(args, args.work)
        elif part == "step":
            results["step"] = part_step(args, args.work, results.get("large", {}))
        elif part == "ann":
            results["ann"] = part_ann(args, args.work, results.get("large", {}))
        else:
            raise SystemExit(f"unknown part {part!r}")
        results[part]["date"] = started
        results[part]["command"] = " ".join(sys.argv)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        on_disk = json.loads(args.out.read_text()) if args.out.exists() else {}  # another run may have added parts
        args.out.write_text(json.dumps({**on_disk, "machine": results["machine"], part: results[part]}, indent=2))
        print(json.dumps({part: results[part]}, indent=2))


if __name__ == "__main__":
    main()
