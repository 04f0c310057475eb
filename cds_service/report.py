"""The feedback report: how clinicians answered each card topic, as text and as a self-contained HTML page.

The analytics queries live here (the card store only writes and reads single records). Each card counts
once, by its latest feedback. The rates, as the report states them:

- acceptance = cards accepted / cards that offered a suggestion (a card without one can only be overridden);
- override rate = cards overridden / cards issued;
- feedback coverage = cards with any feedback / cards issued. EHRs never report ignored cards, so a card
  without feedback may have been read and ignored, or never seen.

"Issued" counts the cards sent to the EHR; "suppressed" counts identical cards held back because a
clinician had recently overridden one (CDS_SUPPRESS_OVERRIDDEN_HOURS), which were never sent.

The chart needs matplotlib, an optional extra (`pip install 'mtor-cds[report]'`): the text report does not.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

import sqlalchemy as sa

from cds_service.store import CardStore
from cds_service.store.models import card_feedback, issued_card

COMMENTS_SHOWN = 10  # distinct free-text comments listed per topic and override reason (the most recent)
COMMENT_CHARS = 200  # each comment is cut to this length in the report
CHART_COLUMNS = 4  # small multiples per row
NO_SUGGESTION = "n/a*"
NO_SUGGESTION_NOTE = "* cards of this topic offer no suggestion: they can only be overridden."
DEFINITIONS = (
    "Acceptance = accepted / cards that offered a suggestion.",
    "Override rate = overridden / cards issued.",
    "Feedback coverage = cards with any feedback / cards issued (EHRs never report ignored cards).",
    "Each card counts once, by its latest feedback. Suppressed = identical cards held back, never shown.",
)


class ReportExtraMissing(RuntimeError):
    """The HTML report was asked for but matplotlib (the `report` extra) is not installed."""


# --- what the report counts ---------------------------------------------------------------------


@dataclass
class Outcomes:
    """Card counts of one topic (or all topics, or one week of one topic)."""

    issued: int = 0
    suppressed: int = 0
    with_suggestion: int = 0
    with_feedback: int = 0
    accepted: int = 0
    overridden: int = 0

    def add(self, other: Outcomes) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def offers_suggestions(self) -> bool:
        return self.with_suggestion > 0

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.with_suggestion if self.with_suggestion else None

    @property
    def override_rate(self) -> float | None:
        return self.overridden / self.issued if self.issued else None

    @property
    def feedback_coverage(self) -> float | None:
        return self.with_feedback / self.issued if self.issued else None


@dataclass(frozen=True)
class TopicOutcomes:
    topic: str
    display: str
    outcomes: Outcomes


@dataclass(frozen=True)
class WeekOutcomes:
    """Cards of one topic issued in the ISO week starting on ``week`` (a Monday, UTC)."""

    topic: str
    week: date
    outcomes: Outcomes


@dataclass
class OverrideReason:
    """How often one override reason (or none: code None) was the latest feedback on a topic's cards."""

    topic: str
    code: str | None
    system: str | None
    display: str | None
    count: int = 0
    comments: list[tuple[datetime, str]] = field(default_factory=list)  # (outcome time, comment)

    @property
    def label(self) -> str:
        if self.code is None:
            return "(no reason given)"
        return f"{self.display} [{self.code}]" if self.display else self.code

    def recent_comments(self) -> list[str]:
        """The distinct comments, most recent first, each with how often it was given when more than once."""
        counts: dict[str, int] = defaultdict(int)
        for _, text in sorted(self.comments, reverse=True):
            counts[text] += 1  # dicts keep insertion order: the most recent use of each text first
        return [text if n == 1 else f"{text} (×{n})" for text, n in counts.items()][:COMMENTS_SHOWN]

    @property
    def comments_not_shown(self) -> int:
        return max(len({text for _, text in self.comments}) - COMMENTS_SHOWN, 0)


@dataclass(frozen=True)
class Report:
    since: datetime | None
    until: datetime | None
    topics: list[TopicOutcomes]  # by display name
    total: Outcomes
    weeks: list[WeekOutcomes]  # by topic, then week
    reasons: list[OverrideReason]  # by topic, then most given first

    def display_of(self, topic: str) -> str:
        return next((t.display for t in self.topics if t.topic == topic), topic)


def build_report(store: CardStore, since: datetime | None = None, until: datetime | None = None) -> Report:
    """Count the cards issued (or suppressed) in [since, until) and the latest feedback on each."""
    latest = _latest_feedback()
    query = (
        sa.select(
            issued_card.c.topic,
            issued_card.c.topic_display,
            issued_card.c.issued_at,
            issued_card.c.suppressed,
            (issued_card.c.offered_suggestions != "[]").label("offered_suggestion"),
            latest.c.outcome,
            latest.c.outcome_timestamp,
            latest.c.reason_code,
            latest.c.reason_system,
            latest.c.reason_display,
            latest.c.user_comment,
        )
        .select_from(issued_card.outerjoin(latest, latest.c.card_uuid == issued_card.c.uuid))
        .where(*_issued_between(since, until))
    )
    topics: dict[str, Outcomes] = defaultdict(Outcomes)
    weeks: dict[tuple[str, date], Outcomes] = defaultdict(Outcomes)
    displays: dict[str, tuple[datetime, str]] = {}  # topic -> the display of its newest card
    reasons: dict[tuple, OverrideReason] = {}
    # Weeks are bucketed here rather than in SQL, which has no portable week function.
    with store.engine.connect() as connection:
        for row in connection.execute(query.execution_options(yield_per=1000)):
            card = _count_card(row)
            topics[row.topic].add(card)
            day = row.issued_at.date()
            weeks[(row.topic, day - timedelta(days=day.weekday()))].add(card)
            if row.topic_display and (row.topic not in displays or displays[row.topic][0] < row.issued_at):
                displays[row.topic] = (row.issued_at, row.topic_display)
            if row.outcome == "overridden":
                key = (row.topic, row.reason_code, row.reason_system, row.reason_display)
                reason = reasons.setdefault(key, OverrideReason(*key))
                reason.count += 1
                if row.user_comment and row.user_comment.strip():
                    reason.comments.append((row.outcome_timestamp, _one_line(row.user_comment)))
    by_display = sorted(
        (TopicOutcomes(topic, displays.get(topic, (None, topic))[1], outcomes) for topic, outcomes in topics.items()),
        key=lambda t: (t.display.casefold(), t.topic),
    )
    total = Outcomes()
    for outcomes in topics.values():
        total.add(outcomes)
    order = {t.topic: i for i, t in enumerate(by_display)}
    return Report(
        since=since,
        until=until,
        topics=by_display,
        total=total,
        weeks=[WeekOutcomes(topic, week, weeks[(topic, week)]) for topic, week in sorted(weeks, key=lambda k: (order[k[0]], k[1]))],
        reasons=sorted(reasons.values(), key=lambda r: (order[r.topic], -r.count, r.label)),
    )


def _count_card(row) -> Outcomes:
    if row.suppressed:
        return Outcomes(suppressed=1)
    return Outcomes(
        issued=1,
        with_suggestion=int(bool(row.offered_suggestion)),
        with_feedback=int(row.outcome is not None),
        accepted=int(row.outcome == "accepted"),
        overridden=int(row.outcome == "overridden"),
    )


def _latest_feedback() -> sa.Subquery:
    """Each card's most recent feedback entry: the clinician's final word on it."""
    ranked = sa.select(
        card_feedback,
        sa.func.row_number()
        .over(
            partition_by=card_feedback.c.card_uuid,
            order_by=(card_feedback.c.outcome_timestamp.desc(), card_feedback.c.id.desc()),
        )
        .label("rank"),
    ).subquery()
    return sa.select(ranked).where(ranked.c.rank == 1).subquery("latest_feedback")


def _issued_between(since: datetime | None, until: datetime | None) -> list:
    conditions = []
    if since is not None:
        conditions.append(issued_card.c.issued_at >= _utc(since))
    if until is not None:
        conditions.append(issued_card.c.issued_at < _utc(until))
    return conditions


def _utc(moment: datetime) -> datetime:
    """Aware UTC datetime; a naive one is taken to be UTC already (as the CLI's dates are)."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= COMMENT_CHARS else text[: COMMENT_CHARS - 1] + "…"


# --- tables, shared by the text and the HTML -----------------------------------------------------

TOPIC_COLUMNS = (
    "Topic", "Issued", "Suppressed", "With feedback", "Coverage",
    "Offered a suggestion", "Accepted", "Acceptance", "Overridden", "Override rate",
)
WEEK_COLUMNS = ("Week (Monday)", "Issued (n)", "Suppressed", "Accepted", "Overridden", "Override rate")
REASON_COLUMNS = ("Topic", "Override reason", "Cards")


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1%}"


def _topic_cells(name: str, n: Outcomes) -> tuple[str, ...]:
    return (
        name, str(n.issued), str(n.suppressed), str(n.with_feedback), _rate(n.feedback_coverage),
        str(n.with_suggestion), str(n.accepted), _rate(n.acceptance) if n.offers_suggestions or not n.issued else NO_SUGGESTION,
        str(n.overridden), _rate(n.override_rate),
    )


def topic_rows(report: Report) -> list[tuple[str, ...]]:
    """One row per topic (by display name), then the totals row."""
    rows = [_topic_cells(t.display, t.outcomes) for t in report.topics]
    return [*rows, _topic_cells("Total", report.total)]


def week_rows(report: Report) -> list[tuple[str, ...]]:
    """Weekly volumes over all topics."""
    weeks: dict[date, Outcomes] = defaultdict(Outcomes)
    for w in report.weeks:
        weeks[w.week].add(w.outcomes)
    return [
        (week.isoformat(), str(n.issued), str(n.suppressed), str(n.accepted), str(n.overridden), _rate(n.override_rate))
        for week, n in sorted(weeks.items())
    ]


def _align(header: tuple[str, ...], cells: Sequence[tuple[str, ...]], text_columns: int) -> list[str]:
    """Left-align the first text_columns columns, right-align the numbers after them."""
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
    lines = []
    for row in [header, *cells]:
        parts = [
            value.ljust(width) if i < text_columns else value.rjust(width)
            for i, (value, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
    return lines


def _period(report: Report) -> str:
    start = report.since.isoformat() if report.since else "the first card"
    end = report.until.isoformat() if report.until else "now"
    return f"Cards issued from {start} until {end} (UTC)."


def format_report_text(report: Report) -> str:
    """The report as aligned plain-text tables: outcomes per topic with totals, weekly volumes, override reasons."""
    if not report.topics:
        return "No cards were issued in this period.\n"
    lines = [_period(report), *DEFINITIONS, "", *_align(TOPIC_COLUMNS, topic_rows(report), text_columns=1)]
    if any(not t.outcomes.offers_suggestions and t.outcomes.issued for t in report.topics):
        lines.append(NO_SUGGESTION_NOTE)
    lines += ["", *_align(WEEK_COLUMNS, week_rows(report), text_columns=1)]
    if report.reasons:
        lines.append("")
        cells = [(report.display_of(r.topic), r.label, str(r.count)) for r in report.reasons]
        header, *rows = _align(REASON_COLUMNS, cells, text_columns=2)
        lines.append(header)
        for row, reason in zip(rows, report.reasons, strict=True):
            lines.append(row)
            lines += [f"    - {comment}" for comment in reason.recent_comments()]
    return "\n".join(lines) + "\n"


# --- the chart ------------------------------------------------------------------------------------


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ReportExtraMissing(
            "the HTML report's chart needs matplotlib, an optional extra: pip install 'mtor-cds[report]'"
        ) from None
    return Figure, FigureCanvasAgg


def override_rate_chart_png(report: Report) -> bytes:
    """Small multiples: one panel per topic, its weekly override rate (% of cards issued), each point labelled n."""
    # The object API with the Agg canvas: no pyplot, so no global backend is chosen for the process.
    Figure, FigureCanvasAgg = _matplotlib()
    by_topic: dict[str, list[WeekOutcomes]] = defaultdict(list)
    for point in report.weeks:
        if point.outcomes.issued:
            by_topic[point.topic].append(point)
    topics = [t for t in report.topics if by_topic[t.topic]]
    columns = min(CHART_COLUMNS, max(len(topics), 1))
    rows = max(math.ceil(len(topics) / columns), 1)
    figure = Figure(figsize=(3.2 * columns + 0.6, 2.4 * rows + 0.9), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    if not topics:
        axes = figure.add_subplot()
        axes.set_axis_off()
        axes.text(0.5, 0.5, "No cards issued in this period", ha="center", va="center", transform=axes.transAxes)
        return _png(figure)
    all_weeks = sorted({w.week for points in by_topic.values() for w in points})
    ticks = list(range(0, len(all_weeks), max(1, math.ceil(len(all_weeks) / 4))))
    grid = figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)
    for index, axes in enumerate(grid.flat):
        if index >= len(topics):
            axes.set_axis_off()
            continue
        topic = topics[index]
        issued = {p.week: p.outcomes for p in by_topic[topic.topic]}
        # A week without cards is a gap in the line (NaN), not a straight line across it.
        y = [100 * (issued[week].override_rate or 0.0) if week in issued else math.nan for week in all_weeks]
        axes.plot(range(len(all_weeks)), y, marker="o", markersize=4, linewidth=1.2, color="#b03a2e")
        for x, week in enumerate(all_weeks):
            if week in issued:
                axes.annotate(str(issued[week].issued), (x, y[x]), textcoords="offset points", xytext=(0, 5),
                              ha="center", fontsize=7, color="#222222",
                              bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
        axes.set_title(_wrap(topic.display), fontsize=9)
        axes.set_ylim(-5, 118)  # room above 100% for the n labels
        axes.set_yticks([0, 50, 100], ["0%", "50%", "100%"], fontsize=7)
        axes.set_xticks(ticks, [all_weeks[i].strftime("%d %b") for i in ticks], fontsize=7)
        axes.set_xlim(-0.5, len(all_weeks) - 0.5)
        axes.grid(True, alpha=0.3)
        if index + columns >= len(topics):  # no panel below: this one carries the week labels
            axes.xaxis.set_tick_params(labelbottom=True)
    figure.supylabel("Overridden, % of cards issued", fontsize=9)
    figure.supxlabel("Week of issue (Monday, UTC); numbers at points: cards issued that week (n)", fontsize=9)
    figure.suptitle("Override rate per topic and week", fontsize=11)
    return _png(figure)


def _wrap(title: str, width: int = 34) -> str:
    return title if len(title) <= width else title[: width - 1] + "…"


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


# --- the HTML page ------------------------------------------------------------------------------


def _html_table(header: tuple[str, ...], cells: list[tuple[str, ...]], total_row: bool = False) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for index, row in enumerate(cells):
        css = ' class="total"' if total_row and index == len(cells) - 1 else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>\n")
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{''.join(body)}</tbody>\n</table>"


def _reasons_html(report: Report) -> str:
    if not report.reasons:
        return "<p>No overrides in this period.</p>"
    rows = []
    for r in report.reasons:
        comments = "".join(f"<li>{html.escape(c)}</li>" for c in r.recent_comments())
        if r.comments_not_shown:
            comments += f"<li>… and {r.comments_not_shown} other comment(s)</li>"
        rows.append(
            f"<tr><td>{html.escape(report.display_of(r.topic))}</td><td>{html.escape(r.label)}</td>"
            f"<td>{r.count}</td><td>{f'<ul>{comments}</ul>' if comments else ''}</td></tr>\n"
        )
    head = "".join(f"<th>{h}</th>" for h in (*REASON_COLUMNS, "Comments (most recent first)"))
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{''.join(rows)}</tbody>\n</table>"


def report_html(report: Report) -> str:
    """A self-contained HTML page (tables and an embedded PNG chart) that can be mailed as is."""
    chart = base64.b64encode(override_rate_chart_png(report)).decode("ascii")
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    definitions = "".join(f"<li>{html.escape(d)}</li>" for d in DEFINITIONS)
    note = f"<p>{html.escape(NO_SUGGESTION_NOTE)}</p>" if any(
        not t.outcomes.offers_suggestions and t.outcomes.issued for t in report.topics) else ""
    topics = (_html_table(TOPIC_COLUMNS, topic_rows(report), total_row=True) + note
              if report.topics else "<p>No cards were issued in this period.</p>")
    weeks = _html_table(WEEK_COLUMNS, week_rows(report)) if report.weeks else ""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>mtor-cds card outcomes</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 80em; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
th, td {{ border: 1px solid #bbb; padding: 0.3em 0.7em; vertical-align: top; }}
th {{ background: #f0f0f0; }}
td:nth-child(n+2) {{ text-align: right; }}
tr.total td {{ font-weight: bold; border-top: 2px solid #555; }}
.reasons td:nth-child(2), .reasons td:nth-child(4) {{ text-align: left; }}
.reasons ul {{ margin: 0; padding-left: 1.2em; font-size: 0.9em; }}
img {{ max-width: 100%; }}
</style>
</head>
<body>
<h1>mtor-cds card outcomes</h1>
<p>{html.escape(_period(report))} Generated {generated}.</p>
<ul>{definitions}</ul>
<h2>Outcomes per topic</h2>
{topics}
<h2>Cards issued per week</h2>
{weeks or "<p>No cards were issued in this period.</p>"}
<h2>Override rate over time</h2>
<img alt="Weekly override rate per topic, one panel per topic" src="data:image/png;base64,{chart}">
<h2>Override reasons</h2>
<div class="reasons">{_reasons_html(report)}</div>
</body>
</html>
"""


def run_report(
    database_url: str | None, since: datetime | None, until: datetime | None, html_path: str | os.PathLike | None
) -> str:
    """What `mtor-cds report` does: the text report, and the HTML page too when html_path is given.

    Raises ReportExtraMissing, before reading anything, when the HTML page is asked for without matplotlib.
    """
    if html_path:
        _matplotlib()
    store = CardStore.from_url(database_url)
    try:
        store.migrate()  # an empty or older database reports zero cards rather than failing
        report = build_report(store, since, until)
    finally:
        store.close()
    if html_path:
        with open(html_path, "w", encoding="utf-8") as out:
            out.write(report_html(report))
    return format_report_text(report)
