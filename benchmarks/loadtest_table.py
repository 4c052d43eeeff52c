"""The service's load-test table: the median over rounds of each configuration in a loadtest.py JSONL.

Rows are grouped by their ``--label`` without its leading round tag (``r1 after`` -> ``after``); only
labels starting with one of ``--rounds`` are read.

    .venv/bin/python benchmarks/loadtest_table.py benchmarks/results/loadtest-service.jsonl --rounds r1 r2 r3
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jsonl", type=Path)
    parser.add_argument("--rounds", nargs="+", required=True)
    args = parser.parse_args()
    groups: dict[str, list[dict]] = {}
    for line in args.jsonl.read_text().splitlines():
        row = json.loads(line)
        tag, _, name = row["label"].partition(" ")
        if tag in args.rounds:
            groups.setdefault(name, []).append(row)
    header = "| configuration | store | workers | req/s (median; each round) | p50 ms | p95 ms | p99 ms "
    print(header + "| server CPU ms/req | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, rows in groups.items():
        rps = statistics.median(r["throughput_rps"] for r in rows)
        p50, p95, p99 = (statistics.median(r["latency_ms"][q] for r in rows) for q in ("p50", "p95", "p99"))
        cpu = statistics.median(r["cpu_ms_per_request"]["server"] for r in rows)
        each = ", ".join(f"{r['throughput_rps']:.0f}" for r in rows)
        errors = f"{sum(r['errors'] for r in rows)} / {sum(r['requests'] for r in rows)}"
        print(
            f"| {name} | {rows[0]['store']} | {rows[0]['workers']} | {rps:.0f} ({each}) "
            f"| {p50:.1f} | {p95:.1f} | {p99:.1f} | {cpu:.2f} | {errors} |"
        )


if __name__ == "__main__":
    main()
