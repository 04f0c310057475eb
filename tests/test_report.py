"""The analytics report: aligned text table, self-contained HTML page with a PNG chart, run_report."""

from __future__ import annotations

import base64
import re
from datetime import datetime, timedelta, timezone

import pytest

from cds_service.report import format_report_text, run_report, write_report_html
from cds_service.store import CardRecord, CardStore, FeedbackEntry, OverrideReasonCount, TopicReport

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=timezone.utc)
SERVICE = "mtor-inhibitor-safety"


def report_row(topic="mtor-ddi-strong-cyp3a4", indicator="warning", issued=12, accepted=3, overridden=1,
               reasons=()) -> TopicReport:
    return TopicReport(topic, indicator, issued, accepted, overridden, issued - accepted - overridden, tuple(reasons))


def test_text_table_columns_line_up():
    text = format_report_text([
        report_row(),
        report_row("mtor-live-vaccine", "critical", issued=1234, accepted=0, overridden=0),
    ])
    header, first, second = text.splitlines()[:3]
    assert header.split("  ")[0] == "Topic" and "Override rate" in header
    # numbers are right-aligned under their header: the columns end at the same place
    for column in ("Issued", "Accepted", "Overridden", "No feedback"):
        end = header.index(column) + len(column)
        assert first[end - 1].isdigit() and second[end - 1].isdigit(), column
        assert first[end:end + 1] in ("", " ")
    assert first.startswith("mtor-ddi-strong-cyp3a4  warning ")
    assert first.endswith("25.0%")
    assert second.endswith("-")  # no feedback: no rate, not 0%
    assert "1234" in second


def test_text_lists_override_reasons_by_topic():
    text = format_report_text([
        report_row(overridden=3, reasons=[
            OverrideReasonCount("patient-aware", "https://example.org/o", "Patient aware of risk", 2),
            OverrideReasonCount(None, None, None, 1),
        ])
    ])
    lines = text.splitlines()
    reasons = lines[lines.index("") + 1:]
    assert reasons[0].split() == ["Topic", "Indicator", "Override", "reason", "Cards"]
    assert re.fullmatch(r"mtor-ddi-strong-cyp3a4\s+warning\s+Patient aware of risk \[patient-aware\]\s+2", reasons[1])
    assert re.fullmatch(r"mtor-ddi-strong-cyp3a4\s+warning\s+\(no reason given\)\s+1", reasons[2])


def test_text_for_an_empty_period():
    assert format_report_text([]) == "No cards were issued in this period.\n"


@pytest.fixture
def store(tmp_path):
    store = CardStore.from_url(f"sqlite:///{tmp_path / 'cards.sqlite3'}")
    store.migrate()
    cards = []
    for week in range(3):
        for n in range(4):
            cards.append(CardRecord(
                uuid=f"w{week}-{n}", service_id=SERVICE, hook="order-sign", topic="<b>mtor-ddi</b>",
                indicator="warning", hook_instance="hi", patient_hash="0" * 64, trigger_key="MedicationRequest/1",
                issued_at=T0 + timedelta(weeks=week, hours=n),
            ))
    store.record_cards(cards)
    store.flush()
    at = T0 + timedelta(weeks=4)
    store.record_feedback(SERVICE, [
        FeedbackEntry("w0-0", "overridden", at, reason_code="aware", reason_system="s", reason_display="Aware & agreed"),
        FeedbackEntry("w0-1", "accepted", at, accepted_suggestions=("s1",)),
        FeedbackEntry("w1-0", "overridden", at),
    ])
    yield store
    store.close()


def embedded_png(page: str) -> bytes:
    match = re.search(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert match, "no embedded PNG"
    return base64.b64decode(match.group(1))


def test_html_page_is_self_contained_with_chart_and_escaped_table(store, tmp_path):
    path = tmp_path / "report.html"
    write_report_html(store, None, None, path)
    page = path.read_text(encoding="utf-8")
    assert embedded_png(page).startswith(b"\x89PNG\r\n\x1a\n")
    assert "<td>&lt;b&gt;mtor-ddi&lt;/b&gt;</td>" in page  # topics are data, never markup
    assert "<b>mtor-ddi</b>" not in page
    assert "<td>12</td>" in page  # issued
    assert "Aware &amp; agreed [aware]" in page
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched from elsewhere


def test_html_page_for_an_empty_period_still_has_a_chart(store, tmp_path):
    path = tmp_path / "empty.html"
    write_report_html(store, datetime(2030, 1, 1, tzinfo=timezone.utc), None, path)
    page = path.read_text(encoding="utf-8")
    assert "No cards were issued in this period." in page
    assert embedded_png(page).startswith(b"\x89PNG")


def test_run_report_returns_text_and_writes_html(store, tmp_path):
    url = str(store.engine.url)
    text = run_report(url, T0, T0 + timedelta(weeks=1), tmp_path / "week.html")
    outcomes = text.split("\n\n")[0].splitlines()
    assert outcomes[1].split() == ["<b>mtor-ddi</b>", "warning", "4", "1", "1", "2", "50.0%"]  # first week only
    assert len(outcomes) == 2
    assert embedded_png((tmp_path / "week.html").read_text()).startswith(b"\x89PNG")


def test_run_report_on_a_new_database_reports_nothing(tmp_path):
    assert run_report(f"sqlite:///{tmp_path / 'new.sqlite3'}", None, None, None) == (
        "No cards were issued in this period.\n"
    )
    assert not list(tmp_path.glob("*.html"))
