"""The report's plots, drawn with matplotlib's Agg canvas (no pyplot, no display, no global
backend switch) and returned as base64 PNG for an ``<img src="data:...">``."""

from __future__ import annotations

import base64
import io
from typing import Any

from lmrec.errors import LmrecError


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise LmrecError("the report's plots need matplotlib: pip install 'lmrec[plot]'") from None
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def training_plot(curves: list[tuple[str, dict[str, Any], list[int]]]) -> str:
    """Training loss and validation score per epoch, one line per run: (label, log, the epochs
    of the log's validation scores)."""
    fig = _figure(10, 3.6)
    loss_ax, valid_ax = fig.subplots(1, 2)
    for label, log, valid_at in curves:
        losses = log["losses"]
        loss_ax.plot(range(1, len(losses) + 1), losses, marker="o", markersize=3, label=label)
        if log.get("valid"):
            valid_ax.plot(valid_at, log["valid"], marker="o", markersize=3, label=label)
            best = int(log.get("best_epoch", -1))
            if 0 <= best < len(losses) and best + 1 in valid_at:
                valid_ax.plot([best + 1], [log["valid"][valid_at.index(best + 1)]], "k*", markersize=9)
    loss_ax.set(title="training loss", xlabel="epoch", ylabel="mean loss")
    valid_ax.set(title="validation NDCG@10 (★ best epoch)", xlabel="epoch", ylabel="NDCG@10")
    for ax in (loss_ax, valid_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _png(fig)


def sweep_plot(sweeps: list[tuple[str, list[dict[str, Any]]]]) -> str:
    """NDCG@10 against ILD, one line per (run, re-ranking method), points labelled by parameter."""
    fig = _figure(6.5, 4.2)
    ax = fig.subplots()
    for label, rows in sweeps:
        methods = dict.fromkeys(str(r.get("method")) for r in rows)
        for method in methods:
            points = [r for r in rows if str(r.get("method")) == method]
            x = [float(r["metrics"]["ild"]) for r in points]
            y = [float(r["metrics"]["ndcg@10"]) for r in points]
            ax.plot(x, y, marker="o", markersize=4, label=f"{label}: {method}")
            for r, xi, yi in zip(points, x, y, strict=True):
                if r.get("value") is not None:
                    ax.annotate(f"{r['value']:g}", (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="intra-list diversity (ILD@10)", ylabel="NDCG@10", title="relevance against diversity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)
