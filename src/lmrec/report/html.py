"""How a report is shown (:func:`render`): the numbers :mod:`lmrec.report.data` gathers, as HTML.

Every number comes from the runs themselves (see :func:`lmrec.report.data.collect`); a section
whose data no run has is left out, never filled in.

The HTML is one file: inline CSS, no script, plots as base64 PNG, every string escaped.
"""

from __future__ import annotations

import html
import json
import math
import statistics
from pathlib import Path

import numpy as np

from lmrec.errors import LmrecError
from lmrec.evaluate.significance import paired_test
from lmrec.report.data import (
    BEYOND,
    DIVERSITY_FILE,
    INTERVALS,
    RESAMPLES,
    ReportData,
    bucket_items,
    collect,
    confidence,
    history_buckets,
    metric_names,
    popularity_buckets,
    target_scores,
    training_log,
    valid_epochs,
)
from lmrec.report.fairness import fairness_section
from lmrec.runs import Run


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float, digits: int = 4) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _p(value: float) -> str:
    if math.isnan(value):
        return "–"
    return "&lt; 0.0001" if value < 1e-4 else f"{value:.4f}"


def _table(header: list[str], rows: list[list[str]], table_id: str, caption: str = "") -> str:
    """A table; header cells are escaped here, body cells must arrive escaped (they may hold markup)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    cap = f"<caption>{_e(caption)}</caption>" if caption else ""
    return f'<table id="{_e(table_id)}">{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1100px;
padding:0 1rem;color:#1d2330;background:#fff}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #d8dce5;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.8rem 0;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d8dce5;padding:.3rem .55rem;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}th{background:#f1f3f8}
caption{caption-side:top;text-align:left;color:#555;padding-bottom:.3rem}
.ci{color:#666;font-size:.85em;white-space:nowrap}.sig{font-weight:600;color:#0a6b2d}
.worse{font-weight:600;color:#a11}dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem}
dt{font-weight:600}dd{margin:0}img{max-width:100%;height:auto;border:1px solid #eee}
.note{color:#555}code{background:#f4f5f8;padding:0 .2rem}
#runs td{text-align:left}#runs code{white-space:pre-wrap;word-break:break-word;font-size:.8em}
"""


def render(data: ReportData) -> str:
    """The report as one HTML document."""
    from lmrec.report.plots import sweep_plot, training_plot

    first = data.runs[0]
    ds = first.run.dataset
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e('lmrec report: ' + ', '.join(r.label for r in data.runs))}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>lmrec report — {_e(ds.name)}</h1>",
        f'<p class="note">{_e(", ".join(r.label for r in data.runs))}; written {_e(data.created)}.</p>',
        _protocol(data),
        _metrics(data),
    ]
    if len(data.runs) > 1:
        parts.append(_paired(data))
    parts.append(_beyond_table(data))
    parts.append(_history_breakdown(data))
    parts.append(_popularity_breakdown(data))
    parts.append(fairness_section([r.fairness for r in data.runs if r.fairness is not None], max(data.ks)))
    logs = [
        (r.label, training_log(r.run), int(r.run.meta.get("config", {}).get("eval_every", 1) or 1)) for r in data.runs
    ]
    with_logs = [(label, log, every) for label, log, every in logs if log is not None]
    if with_logs:
        png = training_plot([(label, log, valid_epochs(log, every)) for label, log, every in with_logs])
        without = [r.label for r in data.runs if training_log(r.run) is None]
        note = f" No epochs to show for {', '.join(without)} (fitted without an epoch loop)." if without else ""
        parts.append(
            '<section id="training"><h2>Training curves</h2>'
            f'<p class="note">Mean training loss per epoch and validation NDCG@10 (early stopping; the best '
            f"epoch's weights are kept).{_e(note)}</p>"
            f'<img id="training-plot" alt="training loss and validation NDCG@10 per epoch" '
            f'src="data:image/png;base64,{png}"></section>'
        )
    sweeps = [(r.label, r.sweep) for r in data.runs if r.sweep]
    if sweeps:
        png = sweep_plot([(label, rows) for label, rows in sweeps if rows])
        parts.append(
            '<section id="diversity"><h2>Relevance and diversity</h2>'
            '<p class="note">NDCG@10 against intra-list diversity for the re-ranking settings each run\'s '
            f"<code>{DIVERSITY_FILE}</code> holds.</p>"
            f'<img id="diversity-plot" alt="NDCG@10 against intra-list diversity" '
            f'src="data:image/png;base64,{png}"></section>'
        )
    parts.append(_timing(data))
    parts.append("</body></html>")
    return "\n".join(parts)


def _protocol(data: ReportData) -> str:
    first = data.runs[0].run
    ds = first.dataset
    sizes = first.meta.get("split_sizes", {})
    rows = [
        ("dataset", f"{ds.name} ({first.meta['data']['dataset']})"),
        ("catalog", f"{ds.n_users} users, {ds.n_items} items, {len(ds.interactions)} interactions"),
        ("split sizes", ", ".join(f"{k} {v}" for k, v in sizes.items())),
        *((k, v) for k, v in data.protocol.items()),
        ("filters", "; ".join(first.meta.get("filters") or []) or "none"),
        ("metrics", f"@{', @'.join(map(str, data.ks))}; {INTERVALS}"),
    ]
    cells = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows)
    models = [
        [
            _e(r.label),
            _e(r.run.directory),
            f"<code>{_e(json.dumps(r.run.meta.get('config', {})))}</code>",
            _e(r.run.meta.get("seed", "")),
            _e(r.run.meta.get("created", "")),
        ]
        for r in data.runs
    ]
    table = _table(["run", "directory", "config", "seed", "trained"], models, "runs")
    return f'<section id="protocol"><h2>Protocol</h2><dl>{cells}</dl>{table}</section>'


def _metrics(data: ReportData) -> str:
    names = metric_names(data.ks, data.runs[0].result)
    rows = []
    for r in data.runs:
        cells = [_e(r.label)]
        for name in names:
            mean, low, high = confidence(r.result.per_user[name])
            cells.append(f'{_num(mean)} <span class="ci">[{_num(low)}, {_num(high)}]</span>')
        rows.append(cells)
    caption = f"{data.runs[0].result.n_users} users; mean and 95 % bootstrap interval per metric"
    return (
        '<section id="metrics"><h2>Metrics</h2>'
        + _table(["run", *names], rows, "metrics-table", caption)
        + "</section>"
    )


def _paired(data: ReportData) -> str:
    base = data.runs[0]
    names = metric_names(data.ks, base.result)
    rows = []
    for r in data.runs[1:]:
        if list(r.result.users) != list(base.result.users):
            raise LmrecError("the runs were evaluated on different users")
        for name in names:
            t = paired_test(base.result.per_user[name], r.result.per_user[name], n_resamples=RESAMPLES)
            significant = t["ci_low"] > 0 or t["ci_high"] < 0
            klass = ("sig" if t["mean_diff"] > 0 else "worse") if significant else ""
            rel = "–" if math.isnan(t["relative_change"]) else f"{t['relative_change']:+.1%}"
            rows.append(
                [
                    _e(r.label),
                    _e(name),
                    f'<span class="{klass}">{t["mean_diff"]:+.4f}</span>',
                    _e(rel),
                    f'<span class="ci">[{t["ci_low"]:+.4f}, {t["ci_high"]:+.4f}]</span>',
                    _p(t["t_pvalue"]),
                    _p(t["wilcoxon_pvalue"]),
                ]
            )
    header = ["run", "metric", f"difference to {base.label}", "relative", "95 % CI", "paired t p", "Wilcoxon p"]
    caption = f"each run against {base.label} on the same {base.result.n_users} users (b − a)"
    return '<section id="paired"><h2>Paired tests</h2>' + _table(header, rows, "paired-table", caption) + "</section>"


def _beyond_table(data: ReportData) -> str:
    names = [n for n in BEYOND if all(n in r.beyond for r in data.runs)]
    rows = [[_e(r.label), *(_num(r.beyond[n]) for n in names)] for r in data.runs]
    k = max(data.ks)
    caption = f"over every evaluated user's top {k}; ILD on genre vectors"
    return (
        '<section id="beyond"><h2>Beyond accuracy</h2>'
        + _table(["run", *names], rows, "beyond-table", caption)
        + "</section>"
    )


def _history_breakdown(data: ReportData) -> str:
    k = max(data.ks)
    metric = f"ndcg@{k}"
    buckets = history_buckets(data.eval_set)
    header = ["history length", "users", *(f"{r.label} {metric}" for r in data.runs)]
    rows = []
    for label, mask in buckets:
        cells = [_e(label), str(int(mask.sum()))]
        for r in data.runs:
            mean, low, high = confidence(r.result.per_user[metric][mask])
            cells.append(f'{_num(mean)} <span class="ci">[{_num(low)}, {_num(high)}]</span>')
        rows.append(cells)
    caption = "users by the number of interactions before the evaluated part"
    return (
        '<section id="by-history"><h2>By history length</h2>'
        + _table(header, rows, "history-table", caption)
        + "</section>"
    )


def _popularity_breakdown(data: ReportData) -> str:
    k = max(data.ks)
    buckets = popularity_buckets(data.item_popularity, data.eval_set.target_items)
    counts = bucket_items(data.item_popularity)
    header = ["target item", "catalog items", "targets"]
    for r in data.runs:
        header += [f"{r.label} hit@{k}", f"{r.label} ndcg@{k}"]
    rows = []
    for label, mask in buckets:
        cells = [_e(label), str(counts.get(label, 0)), str(int(mask.sum()))]
        for r in data.runs:
            hit, dcg = target_scores(r.target_ranks)
            cells += [_num(float(hit[mask].mean())), _num(float(dcg[mask].mean()))]
        rows.append(cells)
    has_cold = any(label.startswith("cold") for label, _ in buckets)
    note = (
        "Targets by the training popularity of the item (distinct users): head items make up the first third of "
        "training interactions, torso the second, tail the rest"
        + ("; cold items have none (the split held them out)." if has_cold else "; no target is a cold item.")
        + f" hit@{k}: the target is in the top {k}; ndcg@{k}: 1/log2(rank + 1) of that target alone."
    )
    return (
        f'<section id="by-popularity"><h2>By item popularity</h2><p class="note">{_e(note)}</p>'
        + _table(header, rows, "popularity-table")
        + "</section>"
    )


def _timing(data: ReportData) -> str:
    rows = []
    for r in data.runs:
        meta, log = r.run.meta, training_log(r.run)
        epochs = str(len(log["losses"])) if log else "–"
        best = str(int(log.get("best_epoch", -1)) + 1) if log and log.get("best_epoch", -1) >= 0 else "–"
        lat = r.latency_ms
        rows.append(
            [
                _e(r.label),
                _num(float(meta.get("train_seconds", math.nan)), 1),
                _e(epochs),
                _e(best),
                _num(r.eval_seconds / max(1, r.result.n_users) * 1000, 3),
                _num(statistics.median(lat), 2) if lat else "–",
                _num(float(np.percentile(lat, 95)), 2) if lat else "–",
            ]
        )
    header = [
        "run",
        "fit s",
        "epochs",
        "best epoch",
        "ms per user, batched",
        "ms per request, median",
        "ms per request, p95",
    ]
    n = len(data.runs[0].latency_ms)
    note = (
        "fit: wall-clock seconds of training (run.json); batched: this report's full-catalog scoring of every "
        f"evaluated user divided by their number; per request: model.recommend for one user at a time, {n} users, "
        "on this machine now"
    )
    return (
        '<section id="timing"><h2>Fit time and latency</h2>' + _table(header, rows, "timing-table", note) + "</section>"
    )


def write_report(
    runs: list[Run],
    out: Path,
    part: str = "test",
    ks: tuple[int, ...] = (10,),
    sample: int | None = None,
) -> Path:
    """Evaluate ``runs`` and write the HTML report to ``out``."""
    text = render(collect(runs, part, ks, sample))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
