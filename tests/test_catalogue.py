"""The card catalogue: its Markdown subset, its grouping, its escaping, the CLI, and the page in headless Chromium."""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cds_service.catalogue import (
    UNKNOWN_USE,
    Catalogue,
    Entry,
    Trigger,
    collect,
    fingerprint,
    group,
    infer_use,
    render_inline,
    render_markdown,
    render_page,
)
from cds_service.cli import main
from cds_service.findings import Topic
from conftest import FIXTURES, ROOT, SCENARIOS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("CDS_ARTIFACTS_DIR") or ROOT / "artifacts")
FIRES_TOPICS = [
    t.value for t in Topic
    if t is Topic.CHECKS_INCOMPLETE  # the catalogue derives its request from a fires- fixture
    or any(t.value in s["expect_topics"] for s in SCENARIOS["scenarios"] if s["file"].startswith("fires-"))
]


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return collect(FIXTURES)


@pytest.fixture(scope="module")
def page(catalogue) -> str:
    return render_page(catalogue)


# --- Markdown subset ------------------------------------------------------------------------------


def test_blank_lines_make_paragraphs_and_single_newlines_line_breaks():
    assert render_markdown("First line\nsecond line\n\nNext paragraph") == "<p>First line<br>second line</p>\n<p>Next paragraph</p>"


def test_bold_italic_and_code_are_rendered():
    assert render_inline("**18.2 ng/mL** on _2026-11-21_ (`Observation/lvl-10b`), *about*") == (
        "<strong>18.2 ng/mL</strong> on <em>2026-11-21</em> (<code>Observation/lvl-10b</code>), <em>about</em>"
    )


def test_underscore_inside_a_word_is_not_italic_but_closes_around_it():
    assert render_inline("document 000_06611a6e; x_y") == "document 000_06611a6e; x_y"
    assert render_inline("_(seed 000_06611a6e, section)_") == "<em>(seed 000_06611a6e, section)</em>"


def test_link_is_rendered_and_may_sit_inside_italics():
    assert render_inline("_([Afinitor PI (US)](https://dailymed.nlm.nih.gov/x?setid=1&a=2), §2)_") == (
        '<em>(<a href="https://dailymed.nlm.nih.gov/x?setid=1&amp;a=2">Afinitor PI (US)</a>, §2)</em>'
    )


def test_link_url_may_hold_parentheses():
    assert render_inline("[SEGA](https://en.wikipedia.org/wiki/SEGA_(tumour))") == (
        '<a href="https://en.wikipedia.org/wiki/SEGA_(tumour)">SEGA</a>'
    )


def test_square_brackets_that_are_no_link_stay_text():
    assert render_inline("**everolimus [Afinitor]** (draft order)") == "<strong>everolimus [Afinitor]</strong> (draft order)"


@pytest.mark.parametrize("url", ["javascript:alert(1)", "data:text/html,x", "/relative", "vbscript:x"])
def test_link_to_anything_but_http_or_mailto_keeps_its_words_and_loses_the_link(url):
    assert render_inline(f"[click]({url})") == "click"


def test_html_in_markdown_is_escaped():
    rendered = render_markdown('<script>alert("x")</script> **<img src=x onerror=alert(1)>**\n- `<b>` & [<i>a</i>](https://x.org/"><script>)')
    assert "<script" not in rendered and "<img" not in rendered and "<b>" not in rendered and "<i>" not in rendered
    assert "&lt;script&gt;" in rendered and "<strong>&lt;img src=x onerror=alert(1)&gt;</strong>" in rendered
    assert "<code>&lt;b&gt;</code> &amp;" in rendered


def test_placeholder_characters_in_card_text_cannot_pull_in_other_markup():
    assert render_inline("`<x>` \ue0000\ue001") == "<code>&lt;x&gt;</code> 0"


def test_bullets_nest_by_two_space_indent():
    text = "- one\n  - one.a\n  - one.b\n- two"
    assert render_markdown(text) == "<ul><li>one<ul><li>one.a</li><li>one.b</li></ul></li><li>two</li></ul>"


def test_a_bullet_indented_too_far_nests_one_level():
    assert render_markdown("- a\n      - b") == "<ul><li>a<ul><li>b</li></ul></li></ul>"


def test_paragraph_then_list_then_paragraph_without_blank_lines():
    assert render_markdown("Label dose:\n- A\n- B\nThe class is not on record.") == (
        "<p>Label dose:</p>\n<ul><li>A</li><li>B</li></ul>\n<p>The class is not on record.</p>"
    )


def test_an_indented_line_under_a_bullet_continues_it():
    assert render_markdown("- first\n  more of first\n- second") == "<ul><li>first<br>more of first</li><li>second</li></ul>"


# --- use and grouping -----------------------------------------------------------------------------


@pytest.mark.parametrize(("scenario", "use"), [
    ({"file": "fires-x.json", "what": "SEGA, trough low", "use": "Transplant"}, "transplant"),  # a stated use wins
    ({"file": "fires-x.json", "what": "x", "use": "paediatric epilepsy"}, "paediatric epilepsy"),
    ({"file": "fires-trough-zortress-patient-view.json", "what": "kidney transplant, TSC"}, "transplant"),
    ({"file": "fires-x.json", "what": "Fyarro for malignant PEComa"}, "oncology"),
    ({"file": "fires-lam-sirolimus.json", "what": "sirolimus 2 mg"}, "LAM"),
    ({"file": "fires-x.json", "what": "lymphangioleiomyomatosis on sirolimus"}, "LAM"),
    ({"file": "fires-x.json", "what": "cirrhosis with everolimus 10 mg for TSC-AML"}, "TSC"),
    ({"file": "fires-x.json", "what": "SEGA, latest trough 3.1 ng/mL"}, "TSC"),
    ({"file": "fires-x.json", "what": "lamotrigine with everolimus"}, UNKNOWN_USE),  # "lam" inside a word is no LAM
    ({"file": "fires-x.json", "what": "strong inhibitor selected while on everolimus"}, UNKNOWN_USE),
])
def test_use_comes_from_the_scenario(scenario, use):
    assert infer_use(scenario) == use


def entry(topic: str, use: str, summary: str = "s") -> Entry:
    card = {"summary": summary, "indicator": "info", "source": {"label": "l", "topic": {"code": topic, "display": topic}}}
    return Entry(Trigger(file="f.json", hook="patient-view", description="d", expect_topics=(topic,), use=use), card)


def test_grouping_orders_topics_as_findings_topic_and_uses_tsc_lam_transplant_oncology_then_other():
    entries = [
        entry("lipids", UNKNOWN_USE), entry("lipids", "oncology"), entry("cyp3a4-interaction", "transplant", "a"),
        entry("not-a-topic-yet", "TSC"), entry("cyp3a4-interaction", "transplant", "b"), entry("lipids", "LAM"),
        entry("lipids", "TSC"),
    ]
    grouped = group(entries)
    assert list(grouped) == ["cyp3a4-interaction", "lipids", "not-a-topic-yet"]
    assert list(grouped["lipids"]) == ["TSC", "LAM", "oncology", UNKNOWN_USE]
    assert [e.card["summary"] for e in grouped["cyp3a4-interaction"]["transplant"]] == ["a", "b"]


# --- the page -------------------------------------------------------------------------------------


def test_every_fires_topic_has_a_card_and_every_fires_fixture_triggers_one(catalogue):
    assert set(FIRES_TOPICS) <= {e.topic for e in catalogue.entries}
    fires = {s["file"] for s in SCENARIOS["scenarios"] if s["file"].startswith("fires-")}
    assert fires <= {e.trigger.file for e in catalogue.entries}
    assert not [t.file for t in catalogue.quiet if t.file.startswith("fires-")]


def test_checks_incomplete_card_comes_from_a_fixture_without_its_lab_results(catalogue):
    [incomplete] = [e for e in catalogue.entries if e.topic == "checks-incomplete"]
    assert incomplete.trigger.derived_from.startswith("fires-") and incomplete.trigger.hook == "patient-view"
    assert incomplete.card["indicator"] == "info"


def test_page_is_the_same_on_every_build_and_its_fingerprint_follows_card_text(catalogue, page):
    again = collect(FIXTURES)
    assert render_page(again) == page
    assert fingerprint(again.entries) in page
    changed = list(again.entries)
    changed[0] = Entry(changed[0].trigger, {**changed[0].card, "summary": changed[0].card["summary"] + "."})
    assert fingerprint(changed) != fingerprint(again.entries)


def test_page_is_self_contained(page):
    lowered = page.lower()
    for needle in ("<script", "<link", "<img", "<iframe", "@import", "url(", "src="):
        assert needle not in lowered, needle


def test_page_shows_each_card_with_its_trigger_source_suggestions_and_override_reasons(catalogue, page):
    clari = next(e for e in catalogue.entries if e.trigger.file == "fires-cyp3a4-clarithromycin-order-select.json")
    assert page.count('<article class="entry">') == len(catalogue.entries)
    for text in (clari.card["summary"], clari.trigger.description, clari.card["source"]["label"],
                 clari.card["suggestions"][0]["label"], clari.card["overrideReasons"][0]["display"]):
        assert html.escape(text) in page, text
    assert '<div class="card critical">' in page
    for entry in catalogue.manifest["files"].values():
        assert all(html.escape(entry[key]) in page for key in ("subject", "version", "reviewed", "next_review"))


def test_each_card_names_the_sites_it_links_to():
    card = {
        "summary": "s", "indicator": "info",
        "detail": "See [label](https://www.fda.gov/x) and [bad](javascript:alert(1)) and [again](https://www.fda.gov/y).",
        "source": {"label": "PI", "url": "https://dailymed.nlm.nih.gov/dailymed/x", "topic": {"code": "lipids", "display": "Lipids"}},
        "links": [{"label": "SmPC", "url": "https://www.ema.europa.eu/en/x", "type": "absolute"}],
    }
    trigger = Trigger(file="f.json", hook="patient-view", description="d", expect_topics=("lipids",), use="TSC")
    page = render_page(Catalogue(datetime(2026, 11, 23, tzinfo=timezone.utc), (Entry(trigger, card),), (), {"files": {}}))
    assert "Sites linked: dailymed.nlm.nih.gov · www.ema.europa.eu · www.fda.gov" in page


def test_coverage_table_lists_every_named_use_even_without_cards(page):
    table = page[page.index("Cards by topic and use"):page.index("Knowledge the cards rest on")]
    assert all(f'<th class="num">{use}</th>' in table for use in ("TSC", "LAM", "transplant", "oncology"))


def test_card_text_cannot_inject_markup():
    evil = "<script>alert(1)</script>"
    card = {
        "summary": evil, "detail": f"{evil}\n- **{evil}**", "indicator": "critical\"><script>",
        "source": {"label": evil, "url": "javascript:alert(1)", "topic": {"code": f"x{evil}", "display": evil}},
        "suggestions": [{"label": evil, "actions": [{"type": evil, "description": evil, "resourceId": evil}]}],
        "overrideReasons": [{"code": evil, "display": evil}], "selectionBehavior": evil,
        "links": [{"label": evil, "url": "javascript:alert(1)", "type": evil}],
    }
    trigger = Trigger(file=evil, hook=evil, description=evil, expect_topics=(evil,), use=evil)
    manifest = {"files": {evil: {"subject": evil, "version": evil, "reviewed": "2026-01-01", "next_review": "2027-01-01", "sha256": evil}}}
    page = render_page(Catalogue(datetime(2026, 11, 23, tzinfo=timezone.utc), (Entry(trigger, card),), (trigger,), manifest))
    assert "<script" not in page and "javascript:" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


# --- the command ----------------------------------------------------------------------------------


def test_catalogue_command_writes_the_page(tmp_path, capsys):
    out = tmp_path / "catalogue.html"
    assert main(["catalogue", "--out", str(out), "--fixtures", str(FIXTURES)]) == 0
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert f"written to {out}" in capsys.readouterr().err


def test_catalogue_command_defaults_to_card_catalogue_html_from_fhir_fixtures(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fhir_fixtures").symlink_to(FIXTURES, target_is_directory=True)
    assert main(["catalogue"]) == 0
    assert (tmp_path / "card-catalogue.html").is_file()


def test_catalogue_command_without_fixtures_is_a_usage_error(tmp_path, capsys):
    assert main(["catalogue", "--out", str(tmp_path / "c.html"), "--fixtures", str(tmp_path)]) == 2
    assert "cannot read the scenarios" in capsys.readouterr().err
    assert not (tmp_path / "c.html").exists()


def test_catalogue_command_names_a_fixture_the_service_refuses(tmp_path, capsys):
    good = "fires-trough-high-patient-view.json"
    refused = json.loads((FIXTURES / good).read_text())
    del refused["prefetch"]["medications"]  # and no fhirServer to fetch them from: 412
    (tmp_path / good).write_text((FIXTURES / good).read_text())
    (tmp_path / "fires-refused.json").write_text(json.dumps(refused))
    scenarios = {"now": SCENARIOS["now"], "scenarios": [{"file": good, "expect_topics": ["trough-high"], "what": "w"},
                                                        {"file": "fires-refused.json", "expect_topics": [], "what": "r"}]}
    (tmp_path / "scenarios.json").write_text(json.dumps(scenarios))
    assert main(["catalogue", "--out", str(tmp_path / "c.html"), "--fixtures", str(tmp_path)]) == 2
    assert "fires-refused.json: the service answered 412" in capsys.readouterr().err


# --- in a real browser ----------------------------------------------------------------------------


class _Dom(HTMLParser):
    """Text nodes, and the cards inside each topic section."""

    def __init__(self):
        super().__init__()
        self.texts: list[str] = []
        self.cards_in_topic: dict[str, int] = {}
        self._topic = ""

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section" and (attrs.get("id") or "").startswith("topic-"):
            self._topic = attrs["id"].removeprefix("topic-")
            self.cards_in_topic[self._topic] = 0
        elif tag == "section":
            self._topic = ""
        if tag == "div" and "card" in (attrs.get("class") or "").split() and self._topic:
            self.cards_in_topic[self._topic] += 1

    def handle_data(self, data):
        if data.strip():
            self.texts.append(data.strip())


def _chromium(*args: str, tmp_path: Path) -> str:
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.mark.skipif(not CHROMIUM, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_chromium_renders_every_topic_with_no_raw_markdown_and_a_screenshot_is_kept(page, tmp_path):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    html_file = ARTIFACTS / "catalogue.html"
    html_file.write_text(page, encoding="utf-8")
    dom = _Dom()
    dom.feed(_chromium("--dump-dom", html_file.as_uri(), tmp_path=tmp_path))
    assert {topic: dom.cards_in_topic.get(topic, 0) > 0 for topic in FIRES_TOPICS} == dict.fromkeys(FIRES_TOPICS, True)
    leftovers = [t for t in dom.texts if "**" in t or "](" in t or "`" in t or "_(" in t or t.startswith(("- ", "* "))]
    assert leftovers == []

    screenshot = ARTIFACTS / "catalogue.png"
    screenshot.unlink(missing_ok=True)
    _chromium(f"--screenshot={screenshot}", "--window-size=1280,4000", "--hide-scrollbars", html_file.as_uri(), tmp_path=tmp_path)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 50_000
