"""The feedback report: its counts and rates (on SQLite and PostgreSQL), the text tables, the HTML page and its chart."""

from __future__ import annotations

import base64
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib
from datetime import datetime, timedelta, timezone

import pytest

from cds_service.report import (
    COMMENTS_SHOWN,
    NO_SUGGESTION,
    ReportExtraMissing,
    build_report,
    format_report_text,
    report_html,
    run_report,
)
from cds_service.store import CardRecord, CardStore, FeedbackEntry

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=timezone.utc)  # a Monday
SERVICE = "mtor-safety-order-sign"
EHR = "https://ehr.example.org"
OVERRIDE = "https://mtor-cds.org/override"


def card(uuid: str, topic: str = "cyp3a4-interaction", *, display: str = "CYP3A4 interaction",
         suggestions: tuple[str, ...] = ("s1",), issued_at: datetime = T0) -> CardRecord:
    return CardRecord(
        uuid=uuid, service_id=SERVICE, hook="order-sign", topic=topic, indicator="warning", hook_instance="h",
        patient_hash="0" * 64, trigger_key="MedicationRequest/1", issued_at=issued_at, issuer=EHR,
        fhir_server="https://ehr.example.org/fhir", topic_display=display, suggestion_ids=suggestions,
        override_reasons=((OVERRIDE, "aware"), (OVERRIDE, "benefit")),
    )


def accepted(uuid: str, at: datetime = T0 + timedelta(days=1)) -> FeedbackEntry:
    return FeedbackEntry(uuid, "accepted", at, accepted_suggestions=("s1",))


def overridden(uuid: str, code: str | None = "aware", comment: str | None = None,
               at: datetime = T0 + timedelta(days=1)) -> FeedbackEntry:
    display = {"aware": "Patient aware & agreed", "benefit": "Benefit outweighs risk"}.get(code)
    return FeedbackEntry(uuid, "overridden", at, reason_code=code, reason_system=OVERRIDE if code else None,
                         reason_display=display, user_comment=comment)


@pytest.fixture
def store(empty_database_url):
    """4 interaction cards (offering a suggestion) and 2 infection cards (offering none) in week 1, 1 interaction
    card in week 2; one interaction card held back by suppression."""
    store = CardStore.from_url(empty_database_url)
    store.migrate()
    store.record_cards([card(f"i{n}", issued_at=T0 + timedelta(hours=n)) for n in range(4)])
    store.record_cards([card(f"f{n}", "infection", display="Infection risk", suggestions=()) for n in range(2)])
    store.record_cards([card("i-next", issued_at=T0 + timedelta(days=7))])
    store.record_suppressed([card("i-hidden", issued_at=T0 + timedelta(days=1))])
    store.flush()
    store.record_feedback(SERVICE, EHR, [
        accepted("i0"),
        overridden("i1", comment="Discussed   with\nthe transplant team"),
        overridden("i2", "benefit"),
        overridden("f0", code=None, comment="Already on prophylaxis"),
        # a card accepted, then overridden: the latest word counts
        accepted("i-next", at=T0 + timedelta(days=7, hours=1)),
        overridden("i-next", code=None, at=T0 + timedelta(days=7, hours=2)),
    ])
    yield store
    store.close()


def test_rates_are_counted_as_the_report_defines_them(store):
    report = build_report(store)
    interaction, infection = report.topics  # by display name
    assert (interaction.display, infection.display) == ("CYP3A4 interaction", "Infection risk")
    n = interaction.outcomes
    assert (n.issued, n.suppressed, n.with_suggestion, n.with_feedback, n.accepted, n.overridden) == (5, 1, 5, 4, 1, 3)
    assert n.acceptance == 1 / 5  # accepted / cards that offered a suggestion
    assert n.override_rate == 3 / 5  # overridden / cards issued
    assert n.feedback_coverage == 4 / 5  # cards with any feedback / cards issued
    f = infection.outcomes
    assert (f.issued, f.with_suggestion, f.overridden, f.offers_suggestions) == (2, 0, 1, False)
    assert f.acceptance is None and f.override_rate == 1 / 2 and f.feedback_coverage == 1 / 2
    t = report.total
    assert (t.issued, t.suppressed, t.with_feedback, t.accepted, t.overridden) == (7, 1, 5, 1, 4)


def test_weekly_volumes_bucket_by_monday_with_n(store):
    weeks = [(w.topic, w.week.isoformat(), w.outcomes.issued, w.outcomes.suppressed, w.outcomes.overridden)
             for w in build_report(store).weeks]
    assert weeks == [
        ("cyp3a4-interaction", "2025-03-03", 4, 1, 2),
        ("cyp3a4-interaction", "2025-03-10", 1, 0, 1),
        ("infection", "2025-03-03", 2, 0, 1),
    ]


def test_override_reasons_come_with_their_comments(store):
    reasons = [(r.topic, r.label, r.count, r.recent_comments()) for r in build_report(store).reasons]
    assert reasons == [
        ("cyp3a4-interaction", "(no reason given)", 1, []),
        ("cyp3a4-interaction", "Benefit outweighs risk [benefit]", 1, []),
        ("cyp3a4-interaction", "Patient aware & agreed [aware]", 1, ["Discussed with the transplant team"]),
        ("infection", "(no reason given)", 1, ["Already on prophylaxis"]),
    ]


def test_only_the_most_recent_distinct_comments_are_listed(store):
    assert COMMENTS_SHOWN == 10  # docs/feedback.md
    store.record_cards([card(f"c{n}", issued_at=T0 + timedelta(days=2)) for n in range(COMMENTS_SHOWN + 3)])
    store.flush()
    store.record_feedback(SERVICE, EHR, [
        overridden(f"c{n}", "benefit", comment=f"comment {n:02}", at=T0 + timedelta(days=3, minutes=n))
        for n in range(COMMENTS_SHOWN + 3)
    ])
    benefit = next(r for r in build_report(store).reasons if r.code == "benefit")
    assert benefit.recent_comments() == [f"comment {n:02}" for n in range(COMMENTS_SHOWN + 2, 2, -1)]


def test_period_is_by_issue_time_and_naive_dates_are_utc(store):
    week_two = build_report(store, since=T0 + timedelta(days=7))
    assert [(t.topic, t.outcomes.issued) for t in week_two.topics] == [("cyp3a4-interaction", 1)]
    first_hours = build_report(store, until=datetime(2025, 3, 3, 10, 0))  # naive: UTC; the cards of 09:00
    assert [(t.topic, t.outcomes.issued) for t in first_hours.topics] == [("cyp3a4-interaction", 1), ("infection", 2)]
    assert build_report(store, since=datetime(2026, 1, 1, tzinfo=timezone.utc)).topics == []


def test_topic_takes_the_display_of_its_newest_card(store):
    store.record_cards([card("renamed", display="Strong CYP3A4 interaction", issued_at=T0 + timedelta(days=8))])
    store.flush()
    assert [t.display for t in build_report(store).topics] == ["Infection risk", "Strong CYP3A4 interaction"]


# --- the text -----------------------------------------------------------------------------------


def test_text_has_definitions_topic_rows_by_display_name_and_a_totals_row(store):
    text = format_report_text(build_report(store))
    assert "Acceptance = accepted / cards that offered a suggestion." in text
    assert "Override rate = overridden / cards issued." in text
    assert "Feedback coverage = cards with any feedback / cards issued" in text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("Topic "))
    rows = [re.split(r"\s{2,}", line) for line in lines[header:header + 4]]
    assert rows[0] == ["Topic", "Issued", "Suppressed", "With feedback", "Coverage", "Offered a suggestion",
                       "Accepted", "Acceptance", "Overridden", "Override rate"]
    assert rows[1] == ["CYP3A4 interaction", "5", "1", "4", "80.0%", "5", "1", "20.0%", "3", "60.0%"]
    assert rows[2] == ["Infection risk", "2", "0", "1", "50.0%", "0", "0", NO_SUGGESTION, "1", "50.0%"]
    assert rows[3] == ["Total", "7", "1", "5", "71.4%", "5", "1", "20.0%", "4", "57.1%"]
    assert "* cards of this topic offer no suggestion: they can only be overridden." in text
    # numbers are right-aligned: each column ends where its header ends
    for column in ("Issued", "Suppressed", "Override rate"):
        end = lines[header].index(column) + len(column)
        assert all(line[end - 1] in "0123456789%" for line in lines[header + 1:header + 4]), column


def test_text_lists_weekly_volumes_and_reasons_with_comments(store):
    text = format_report_text(build_report(store))
    weekly = re.findall(r"^(2025-\d\d-\d\d)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\S+)$", text, re.M)
    assert weekly == [("2025-03-03", "6", "1", "1", "3", "50.0%"), ("2025-03-10", "1", "0", "0", "1", "100.0%")]
    reasons = text[text.index("Override reason"):].splitlines()
    assert re.fullmatch(r"CYP3A4 interaction\s+Patient aware & agreed \[aware\]\s+1", reasons[3])
    assert reasons[4] == "    - Discussed with the transplant team"
    assert reasons[-1] == "    - Already on prophylaxis"


def test_text_for_an_empty_period(store):
    assert format_report_text(build_report(store, since=datetime(2030, 1, 1))) == "No cards were issued in this period.\n"


# --- the HTML page and its chart ----------------------------------------------------------------


def embedded_png(page: str) -> bytes:
    match = re.search(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert match, "no embedded PNG"
    return base64.b64decode(match.group(1))


def png_size(png: bytes) -> tuple[int, int]:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def test_html_page_is_self_contained_escaped_and_has_a_totals_row(store):
    store.record_cards([card("x", "<b>x</b>", display="<b>Bold</b> topic")])
    store.flush()
    page = report_html(build_report(store))
    assert png_size(embedded_png(page))[0] > 0
    assert "<td>&lt;b&gt;Bold&lt;/b&gt; topic</td>" in page  # topics are data, never markup
    assert "<b>Bold</b>" not in page
    assert "Patient aware &amp; agreed [aware]" in page
    assert "<li>Discussed with the transplant team</li>" in page
    assert '<tr class="total"><td>Total</td><td>8</td>' in page
    assert f"<td>{NO_SUGGESTION}</td>" in page
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched from elsewhere


def test_chart_has_one_panel_per_topic_and_stays_readable_with_fourteen(empty_database_url):
    store = CardStore.from_url(empty_database_url)
    store.migrate()
    topics = [f"topic-{n:02}" for n in range(14)]
    store.record_cards([card(f"{t}-{w}", t, display=f"Topic {t}", issued_at=T0 + timedelta(weeks=w))
                        for t in topics for w in range(8)])
    store.flush()
    width, height = png_size(embedded_png(report_html(build_report(store))))
    store.close()
    # 4 panels a row, 4 rows: wider than a single chart, and tall enough for each panel to be read
    assert (width, height) == pytest.approx((1340, 1050), rel=0.15)


def test_run_report_returns_text_and_writes_html(store, tmp_path):
    text = run_report(str(store.engine.url.render_as_string(hide_password=False)), T0, T0 + timedelta(weeks=1),
                      tmp_path / "week.html")
    assert re.search(r"^Total\s+6\s+1\s", text, re.M)  # the first week only
    assert png_size(embedded_png((tmp_path / "week.html").read_text()))[0] > 0


def test_run_report_on_a_new_database_reports_nothing(tmp_path):
    assert run_report(f"sqlite:///{tmp_path / 'new.sqlite3'}", None, None, None) == (
        "No cards were issued in this period.\n"
    )
    assert not list(tmp_path.glob("*.html"))


def test_html_report_without_matplotlib_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ReportExtraMissing, match=r"pip install 'mtor-cds\[report\]'"):
        run_report(f"sqlite:///{tmp_path / 'r.sqlite3'}", None, None, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()
    # the text report needs no matplotlib
    assert run_report(f"sqlite:///{tmp_path / 'r.sqlite3'}", None, None, None).startswith("No cards")


# --- in a real browser --------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium) for the screenshot")
def test_headless_chromium_renders_the_page_with_its_chart(store, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(report_html(build_report(store)), encoding="utf-8")
    shot = tmp_path / "report.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--hide-scrollbars", "--window-size=1400,2000", f"--screenshot={shot}", page.as_uri()],
        check=True, capture_output=True, timeout=120, cwd=tmp_path,
    )
    from matplotlib import image

    pixels = image.imread(shot)
    assert pixels.shape[:2] == (2000, 1400)
    # the chart's line colour (#b03a2e) is on screen: the embedded PNG was decoded and drawn by the browser
    line_colour = (0xB0 / 255, 0x3A / 255, 0x2E / 255)
    near = [abs(pixels[..., channel] - value) < 0.06 for channel, value in enumerate(line_colour)]
    assert (near[0] & near[1] & near[2]).sum() > 200


def test_matplotlib_is_an_optional_extra_not_a_base_dependency():
    project = tomllib.loads((pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("matplotlib")]
    assert [d for d in project["optional-dependencies"]["report"] if d.startswith("matplotlib")]
    assert "mtor-cds[report]" in project["optional-dependencies"]["test"]  # so that the chart tests can run


def test_repeated_comments_are_listed_once_with_their_count(store):
    store.record_cards([card(f"r{n}") for n in range(3)])
    store.flush()
    store.record_feedback(SERVICE, EHR, [overridden(f"r{n}", "benefit", comment="Short course") for n in range(3)])
    benefit = next(r for r in build_report(store).reasons if r.code == "benefit")
    assert benefit.recent_comments() == ["Short course (×3)"]
