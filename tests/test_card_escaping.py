"""Issue 11/13: text from FHIR never becomes Markdown on a card (no link, emphasis, heading), and resource ids stay
out of card text. Rendered with a CommonMark renderer (markdown-it-py), as an EHR would."""

from __future__ import annotations

import html
from pathlib import Path

from markdown_it import MarkdownIt

from cds_service.cards import FHIR_TEXT_MAX, md_text
from cds_service.catalogue import render_inline
from snapshots import SNOMED, condition, everolimus, hook_request, immunization, med, observation

EVIL = "**[click](javascript:alert(1))**\n# big"
EVIL_AS_TEXT = "**[click](javascript:alert(1))** # big"  # what a reader must see: the characters, on one line
MARKDOWN = MarkdownIt("commonmark")
PATIENT_VIEW = "/cds-services/mtor-safety-patient-view"
ORDER_SELECT = "/cds-services/mtor-safety-order-select"


def assert_inert(markdown: str) -> None:
    """The evil text, wherever it appears, renders as its own characters: no link, emphasis or heading from it."""
    rendered = MARKDOWN.render(markdown)
    assert "javascript:" not in "".join(part.split(">", 1)[0] for part in rendered.split("<a ")[1:]), rendered
    assert "<h1>" not in rendered and "<strong>[click" not in rendered and "<em>" not in rendered.split("click", 1)[0][-20:]
    if "click" in rendered:
        assert EVIL_AS_TEXT in html.unescape(rendered), rendered


def evil_drug(**fields) -> dict:
    return med(EVIL, rxnorm="197517", **fields)  # clarithromycin 500 MG Oral Tablet by its code; the name is the EHR's


def test_md_text_escapes_markdown_collapses_lines_and_caps_length():
    assert md_text(EVIL) == r"\*\*\[click\]\(javascript:alert\(1\)\)\*\* \# big"
    assert md_text("1. Afinitor <b>x</b> | a_b ~c~ & `d`") == r"1\. Afinitor \<b\>x\</b\> \| a\_b \~c\~ \& \`d\`"
    assert md_text("a\r\n\u2028b\tc") == "a b c"
    assert len(md_text("x" * 500)) == FHIR_TEXT_MAX and md_text("x" * 500).endswith("…")
    for text in (EVIL, "- list item", "> quote", "<script>alert(1)</script>", "| a | b |\n|---|---|"):
        rendered = MARKDOWN.render(f"- {md_text(text)}")
        assert html.unescape(rendered).count(" ".join(text.split())) == 1, rendered  # the characters, nothing else
        assert "<a" not in rendered and "<h1>" not in rendered and "<script" not in rendered and "<table" not in rendered


def test_the_catalogue_renders_escaped_fhir_text_as_its_characters():
    rendered = render_inline(f"- **{md_text(EVIL)}** and [a link](https://dailymed.nlm.nih.gov/)")
    assert html.unescape(rendered).count(EVIL_AS_TEXT) == 1 and rendered.count("<a ") == 1 and rendered.count("<strong>") == 1


def test_fhir_text_in_suggestion_labels_and_evidence_lines_is_inert(client):
    """The shared helpers: removal suggestions (the draft's name) and _describe (the pregnancy evidence)."""
    draft = evil_drug(draft=True)
    body = hook_request("order-select", medications=[everolimus()], drafts=[draft],
                        conditions=[condition(SNOMED, "77386006", EVIL)])
    answer = client.post(ORDER_SELECT, json=body).get_json()
    labels = [s["label"] for card in answer["cards"] for s in card.get("suggestions", ())]
    assert any("Remove the draft order for" in label for label in labels)
    for label in labels:  # the spec's labels are plain text: shown as written, on one line, never rendered
        assert "\n" not in label and len(label) < 200
        assert "\\" not in label
    pregnancy = hook_request("patient-view", medications=[everolimus()], conditions=[condition(SNOMED, "77386006", EVIL)])
    cards = {c["source"]["topic"]["code"]: c for c in client.post(PATIENT_VIEW, json=pregnancy).get_json()["cards"]}
    evidence = next(line for line in cards["pregnancy"]["detail"].splitlines() if "Evidence of pregnancy" in line)
    assert "click" in evidence
    assert_inert(evidence)
    assert pregnancy["prefetch"]["conditions"]["entry"][0]["resource"]["id"] not in cards["pregnancy"]["detail"]


def test_fhir_text_never_becomes_markdown_in_any_card(client):
    body = hook_request(
        "order-select",
        medications=[everolimus(), evil_drug(), med(EVIL, rxnorm="29046")],  # an interacting drug and an ACE inhibitor
        drafts=[evil_drug(draft=True), immunization(EVIL, cvx="03")],  # and a live vaccine (MMR)
        conditions=[condition(SNOMED, "77386006", EVIL)],
    )
    body["context"]["selections"] = [f"MedicationRequest/{body['context']['draftOrders']['entry'][0]['resource']['id']}"]
    for hook, path in (("order-select", ORDER_SELECT), ("patient-view", PATIENT_VIEW)):
        request = dict(body, hook=hook)
        if hook == "patient-view":
            request["context"] = {k: v for k, v in body["context"].items() if k not in ("draftOrders", "selections")}
        answer = client.post(path, json=request).get_json()
        assert answer["cards"]
        for card in answer["cards"]:
            assert_inert(card["detail"])
            for suggestion in card.get("suggestions", ()):
                assert "\n" not in suggestion["label"]  # plain text by the spec: one line, never rendered


def test_the_readme_states_how_fhir_text_is_escaped():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert f"through `cards.md_text()`: on one line, at most {FHIR_TEXT_MAX} characters" in " ".join(readme.split())


def test_bare_urls_and_addresses_in_fhir_text_cannot_become_gfm_autolinks():
    """GitHub Flavored Markdown (what CDS Hooks `detail` is) links bare "https://", "www." and e-mail addresses; in EHR
    text they are escaped so nothing is linked (checked by hand against cmark-gfm, GitHub's renderer)."""
    text = "refill at https://evil.example/pay, WWW.evil.example, ftp://x.y, mailto:q@r.s or a.b@c.org; 0.75 mg"
    assert md_text(text) == ("refill at https\\://evil.example/pay, WWW\\.evil.example, ftp\\://x.y, mailto\\:q@\u200br.s or "
                             "a.b@\u200bc.org; 0.75 mg")
    assert md_text("javascript:alert(1) at 10:30") == r"javascript:alert\(1\) at 10:30"  # other colons stay as written


def test_an_unread_hcg_unit_quoted_on_the_checks_incomplete_card_is_inert(client):
    """Review: the note naming an unread hCG quotes its value as written ("1500 mU/mL") from the record; its unit went
    into the checks-incomplete card unescaped, so an EHR's unit text could become a link, emphasis or a heading."""
    hcg = observation("21198-7", 2, text="hCG beta, serum", valueQuantity={"value": 1500, "unit": EVIL, "code": "x"})
    answer = client.post(PATIENT_VIEW, json=hook_request("patient-view", medications=[everolimus()], observations=[hcg])).get_json()
    [card] = [c for c in answer["cards"] if c["source"]["topic"]["code"] == "checks-incomplete"]
    note = next(line for line in card["detail"].splitlines() if "hCG" in line)
    assert "click" in note and "pregnancy was not checked against it" in note
    assert_inert(note)
