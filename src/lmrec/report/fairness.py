"""The report's Fairness section: tail share and provider exposure per run, then one table per
user grouping (history length, each user attribute) with every run's mean metric and gap.

The numbers are :func:`lmrec.evaluate.fairness.evaluation_fairness`'s, the same that ``lmrec evaluate`` prints.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any

from lmrec.evaluate.fairness import TAIL_RULE


@dataclass
class RunFairness:
    """One run's fairness: its label, metrics (``tail_share@K``, ``provider_*``) and extras
    (``groups``, ``providers``) as :func:`lmrec.evaluate.fairness.evaluation_fairness` returns them."""

    label: str
    metrics: dict[str, float]
    extras: dict[str, Any]


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.4f}"


def _table(header: list[str], rows: list[list[str]], table_id: str, caption: str) -> str:
    """A table as html.py draws them; body cells arrive escaped."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return (
        f'<table id="{_e(table_id)}"><caption>{_e(caption)}</caption><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


def fairness_section(runs: list[RunFairness], k: int) -> str:
    """The section as HTML: exposure per run, then the user-group tables (left out when no run has groups)."""
    tail = f"tail_share@{k}"
    has_providers = any("providers" in r.extras for r in runs)
    header = ["run", tail] + (["providers exposed", "provider_coverage", "provider_gini"] if has_providers else [])
    rows = []
    for r in runs:
        cells = [_e(r.label), _num(r.metrics.get(tail))]
        if has_providers:
            p = r.extras.get("providers")
            cells += [
                _e(f"{p['exposed']} of {p['total']}") if p else "–",
                _num(r.metrics.get("provider_coverage")),
                _num(r.metrics.get("provider_gini")),
            ]
        rows.append(cells)
    column = next((r.extras["providers"]["column"] for r in runs if "providers" in r.extras), None)
    caption = f"share of the top-{k} slots that hold tail items ({TAIL_RULE})" + (
        f"; providers from the catalog column {column!r}, exposure = top-{k} slots, Gini 0 = even" if column else ""
    )
    parts = ['<section id="fairness"><h2>Fairness</h2>', _table(header, rows, "fairness-table", caption)]
    parts += _group_tables(runs)
    parts.append("</section>")
    return "".join(parts)


def _group_tables(runs: list[RunFairness]) -> list[str]:
    """One table per grouping: a row per group (users, each run's mean), then each run's gap."""
    with_groups = [r for r in runs if r.extras.get("groups")]
    if not with_groups:
        return []
    first = with_groups[0].extras["groups"]
    metric, min_users = first["metric"], first["min_users"]
    out = [
        f'<p class="note">{_e(metric)} per user group; gap: highest minus lowest group mean over groups of at '
        f"least {min_users} users (– when fewer than two such groups).</p>"
    ]
    for n, (name, grouping) in enumerate(first["by"].items()):
        header = [name, "users", *(f"{r.label} {metric}" for r in with_groups)]
        rows = []
        for group, values in grouping["groups"].items():
            cells = [_e(group), str(values["users"])]
            for r in with_groups:
                theirs = r.extras["groups"]["by"].get(name, {}).get("groups", {}).get(group)
                cells.append(_num(theirs[metric]) if theirs else "–")
            rows.append(cells)
        gaps = ["<strong>gap</strong>", ""]
        for r in with_groups:
            theirs = r.extras["groups"]["by"].get(name, {})
            gap = theirs.get("gap")
            between = theirs.get("gap_between")
            gaps.append(f"{_num(gap)} ({_e(' − '.join(between))})" if gap is not None and between else "–")
        rows.append(gaps)
        how = grouping.get("of") or grouping.get("bins") or "user attribute"
        out.append(_table(header, rows, f"groups-{n}", f"users by {name} ({how})"))
    skipped = first.get("skipped") or {}
    if skipped:
        why = "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
        out.append(f'<p class="note">Not grouped: {_e(why)}.</p>')
    return out
