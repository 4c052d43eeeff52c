"""One self-contained HTML report of one or more runs (``lmrec report``).

:func:`collect` evaluates the runs on the same users and gathers what the report shows (metrics
with confidence intervals, paired tests against the first run, breakdowns, training curves,
timings); :func:`render` turns that into one HTML file with its plots embedded (matplotlib,
``pip install 'lmrec[plot]'``); :func:`write_report` does both.
"""

from lmrec.report.data import ReportData, RunSection, collect
from lmrec.report.html import render, write_report

__all__ = ["ReportData", "RunSection", "collect", "render", "write_report"]
