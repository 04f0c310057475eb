"""The analytics report: how clinicians answered each card topic, as text and as an HTML page.

Override rates tell the knowledge authors which rules fire too often or on the wrong patients.
The rate is overridden / (accepted + overridden): cards that were ignored are never reported
by the EHR, so they cannot be told apart from cards that were never seen.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections import defaultdict
from datetime import datetime, timezone

from cds_service.store import CardStore, TopicReport, WeeklyOutcomes

_COLUMNS = ("Topic", "Indicator", "Issued", "Accepted", "Overridden", "No feedback", "Override rate")
_REASON_COLUMNS = ("Topic", "Indicator", "Override reason", "Cards")


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1%}"


def _table_cells(rows: list[TopicReport]) -> list[tuple[str, ...]]:
    return [
        (r.topic, r.indicator, str(r.issued), str(r.accepted), str(r.overridden), str(r.no_feedback), _rate(r.override_rate))
        for r in rows
    ]


def _reason_cells(rows: list[TopicReport]) -> list[tuple[str, ...]]:
    return [(r.topic, r.indicator, reason.label, str(reason.count)) for r in rows for reason in r.override_reasons]


def _align(header: tuple[str, ...], cells: list[tuple[str, ...]], text_columns: int) -> list[str]:
    """Left-align the first text_columns columns, right-align the numbers after them."""
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
    lines = []
    for row in [header, *cells]:
        parts = [
            value.ljust(width) if i < text_columns else value.rjust(width)
            for i, (value, width) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(parts).rstrip())
    return lines


def format_report_text(rows: list[TopicReport]) -> str:
    """The report as aligned plain-text tables: outcomes per topic, then override reasons."""
    if not rows:
        return "No cards were issued in this period.\n"
    lines = _align(_COLUMNS, _table_cells(rows), text_columns=2)
    reasons = _reason_cells(rows)
    if reasons:
        lines += ["", *_align(_REASON_COLUMNS, reasons, text_columns=3)]
    return "\n".join(lines) + "\n"


def _html_table(header: tuple[str, ...], cells: list[tuple[str, ...]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>\n" for row in cells)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def override_rate_chart_png(weeks: list[WeeklyOutcomes]) -> bytes:
    """A PNG line chart of the weekly override rate of each topic."""
    # The object API with the Agg canvas: no pyplot, so no global backend is chosen for the process.
    from matplotlib import dates
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    by_topic: dict[str, list[WeeklyOutcomes]] = defaultdict(list)
    for week in weeks:
        if week.override_rate is not None:
            by_topic[week.topic].append(week)
    for topic, points in sorted(by_topic.items()):
        axes.plot([p.week for p in points], [100 * p.override_rate for p in points], marker="o", label=topic)
    if by_topic:
        week_count = len({p.week for points in by_topic.values() for p in points})
        axes.xaxis.set_major_locator(dates.WeekdayLocator(byweekday=dates.MO, interval=-(-week_count // 12)))
        axes.xaxis.set_major_formatter(dates.DateFormatter("%Y-%m-%d"))
        axes.legend(loc="best", fontsize="small")
        figure.autofmt_xdate()
    else:
        axes.text(0.5, 0.5, "No feedback in this period", ha="center", va="center", transform=axes.transAxes)
    axes.set_ylim(0, 100)
    axes.set_ylabel("Overridden, % of cards with feedback")
    axes.set_xlabel("Week of issue (Monday, UTC)")
    axes.set_title("Override rate per topic and week")
    axes.grid(True, alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _period(since: datetime | None, until: datetime | None) -> str:
    start = since.isoformat() if since else "the first card"
    end = until.isoformat() if until else "now"
    return f"Cards issued from {start} until {end} (UTC)."


def write_report_html(store: CardStore, since: datetime | None, until: datetime | None, path: str | os.PathLike) -> None:
    """Write a self-contained HTML page (tables and an embedded PNG chart) that can be mailed as is."""
    rows = store.report(since, until)
    chart = base64.b64encode(override_rate_chart_png(store.weekly_outcomes(since, until))).decode("ascii")
    reasons = _reason_cells(rows)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>mtor-cds card outcomes</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
th, td {{ border: 1px solid #bbb; padding: 0.3em 0.7em; }}
td:nth-child(n+3) {{ text-align: right; }}
</style>
</head>
<body>
<h1>mtor-cds card outcomes</h1>
<p>{html.escape(_period(since, until))} Generated {generated}.</p>
<p>Override rate = overridden / (accepted + overridden); the EHR never reports ignored cards.
Each card counts once, by its latest feedback.</p>
<h2>Outcomes per topic</h2>
{_html_table(_COLUMNS, _table_cells(rows)) if rows else "<p>No cards were issued in this period.</p>"}
<h2>Override reasons</h2>
{_html_table(_REASON_COLUMNS, reasons) if reasons else "<p>No overrides in this period.</p>"}
<h2>Override rate over time</h2>
<img alt="Weekly override rate per topic" src="data:image/png;base64,{chart}">
</body>
</html>
"""
    with open(path, "w", encoding="utf-8") as out:
        out.write(page)


def run_report(
    database_url: str | None, since: datetime | None, until: datetime | None, html_path: str | os.PathLike | None
) -> str:
    """What `mtor-cds report` does: the text report, and the HTML page too when html_path is given."""
    store = CardStore.from_url(database_url)
    try:
        store.migrate()  # an empty or older database reports zero cards rather than failing
        text = format_report_text(store.report(since, until))
        if html_path:
            write_report_html(store, since, until, html_path)
        return text
    finally:
        store.close()
