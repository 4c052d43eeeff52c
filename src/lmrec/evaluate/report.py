"""Reports: a markdown table of metrics per model that always states the protocol."""

from __future__ import annotations

from typing import Any

ORDER = ("ndcg", "recall", "mrr", "hit", "precision", "map", "f1")


def metric_columns(names: set[str]) -> list[str]:
    """Metric names (``ndcg@10``, ``ild``...) in table order: @k metrics first, by :data:`ORDER`
    then k, then the others by name."""

    def key(name: str) -> tuple[int, int, str]:
        base, _, k = name.partition("@")
        rank = ORDER.index(base) if base in ORDER else len(ORDER)
        return (0 if k else 1, rank, f"{int(k):05d}" if k.isdigit() else name)

    return sorted(names, key=key)


def markdown_report(rows: dict[str, dict[str, float]], protocol: dict[str, Any], n_users: int | None = None) -> str:
    """A table with one row per model and one column per metric, followed by the protocol."""
    columns = metric_columns({k for metrics in rows.values() for k in metrics})
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, metrics in rows.items():
        cells = [f"{metrics[c]:.4f}" if c in metrics else "–" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    described = ", ".join(f"{k}: {v}" for k, v in protocol.items())
    lines.append("")
    lines.append(f"Protocol — {described}" + (f"; {n_users} users evaluated" if n_users is not None else ""))
    return "\n".join(lines)
