"""The card catalogue: every card the fixtures produce, rendered as an EHR shows it, on one self-contained HTML
page a CDS governance committee can read and sign off.

The cards come through the public contract only: each scenario in fhir_fixtures/scenarios.json is POSTed to the
service (create_app on trial settings, clock pinned at the scenarios' `now`) and the JSON cards it answers are
rendered. Card text is untrusted: everything is escaped, and the Markdown `detail` is rendered by a small safe
subset renderer (paragraphs, line breaks, bullet lists, bold, italic, inline code, http(s) links).
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import re
import tempfile
from collections.abc import Iterable
from datetime import date, datetime
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit

from cds_service.findings import Topic
from cds_service.knowledge.manifest import MANIFEST

TRIAL_FHIR_SERVER = "https://ehr.example.org/fhir"
USES = ("TSC", "LAM", "transplant", "oncology")
UNKNOWN_USE = "TSC/other"
# Words in a scenario's file name or description that say which use it serves; the first use that matches wins
# (a transplant or oncology patient who also has TSC is governed by that label).
_USE_WORDS = (
    ("transplant", re.compile(r"transplant|zortress|allograft|rejection", re.IGNORECASE)),
    ("oncology", re.compile(r"oncology|cancer|carcinoma|\brcc\b|pecoma|fyarro|neuroendocrine|\bnet\b", re.IGNORECASE)),
    ("LAM", re.compile(r"\blam\b|lymphangioleiomyomatosis", re.IGNORECASE)),
    ("TSC", re.compile(r"\btsc\b|tuberous|\bsega\b|\baml\b|angiomyolipoma|seizure", re.IGNORECASE)),
)


class CatalogueError(Exception):
    """The fixtures cannot be read, or the service did not answer a scenario with 200 and cards."""


@dataclasses.dataclass(frozen=True)
class Trigger:
    """What makes a card fire: the fixture request and what scenarios.json says about it."""

    file: str
    hook: str
    description: str
    expect_topics: tuple[str, ...]
    use: str
    derived_from: str = ""  # set when the request is a fixture changed on purpose (checks-incomplete)


@dataclasses.dataclass(frozen=True)
class Entry:
    trigger: Trigger
    card: dict

    @property
    def topic(self) -> str:
        return self.card["source"]["topic"]["code"]


@dataclasses.dataclass(frozen=True)
class Catalogue:
    now: datetime
    entries: tuple[Entry, ...]
    quiet: tuple[Trigger, ...]  # scenarios that answer no card at all
    manifest: dict


def fingerprint(entries: Iterable[Entry]) -> str:
    """SHA-256 of every card's content and trigger, uuids left out: equal exactly when the reviewed text is."""

    def without_uuids(value):
        if isinstance(value, dict):
            return {k: without_uuids(v) for k, v in value.items() if k != "uuid"}
        if isinstance(value, list):
            return [without_uuids(v) for v in value]
        return value

    content = [[dataclasses.asdict(e.trigger), without_uuids(e.card)] for e in entries]
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


# --- collecting cards -----------------------------------------------------------------------------


def infer_use(scenario: dict) -> str:
    """The use a scenario serves: its `use` field if it has one, else words in its file name and description."""
    stated = str(scenario.get("use") or "").strip()
    if stated:
        return next((use for use in USES if use.lower() == stated.lower()), stated)
    text = f"{scenario.get('file', '')} {scenario.get('what', '')}".replace("-", " ")
    return next((use for use, words in _USE_WORDS if words.search(text)), UNKNOWN_USE)


def collect(fixture_dir: Path) -> Catalogue:
    """POST every scenario to an in-process service and keep the cards it answers."""
    try:
        scenarios = json.loads((fixture_dir / "scenarios.json").read_text(encoding="utf-8"))
        now = datetime.fromisoformat(scenarios["now"].replace("Z", "+00:00"))
        requests = [(s, json.loads((fixture_dir / s["file"]).read_text(encoding="utf-8"))) for s in scenarios["scenarios"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CatalogueError(f"cannot read the scenarios in {fixture_dir}: {exc}") from None
    requests.append(_incomplete_checks_request(requests))
    with tempfile.TemporaryDirectory(prefix="mtor-cds-catalogue-", ignore_cleanup_errors=True) as scratch:
        app = _trial_app(Path(scratch), now)
        try:
            entries, quiet = _answer_every_scenario(app, requests)
        finally:
            _close_store(app)
    manifest = json.loads(MANIFEST.read_text(encoding="utf-8"))
    return Catalogue(now=now, entries=tuple(entries), quiet=tuple(quiet), manifest=manifest)


def _answer_every_scenario(app, requests: list[tuple[dict, dict]]) -> tuple[list[Entry], list[Trigger]]:
    entries: list[Entry] = []
    quiet: list[Trigger] = []
    client = app.test_client()
    service_for_hook = {service["hook"]: service["id"] for service in client.get("/cds-services").get_json()["services"]}
    for scenario, body in requests:
        response = client.post(f"/cds-services/{service_for_hook.get(body.get('hook'), 'none')}", json=body)
        if response.status_code != 200:
            raise CatalogueError(f"{scenario['file']}: the service answered {response.status_code}")
        trigger = Trigger(
            file=scenario["file"], hook=body["hook"], description=scenario.get("what", ""),
            expect_topics=tuple(scenario.get("expect_topics") or ()), use=infer_use(scenario),
            derived_from=scenario.get("derived_from", ""),
        )
        cards = response.get_json()["cards"]
        if scenario.get("only_topic"):
            cards = [c for c in cards if c["source"]["topic"]["code"] == scenario["only_topic"]]
        entries += [Entry(trigger, card) for card in cards]
        if not cards:
            quiet.append(trigger)
    return entries, quiet


def _trial_app(scratch: Path, now: datetime):
    from cds_service import create_app
    from cds_service.settings import Settings

    # No CDS_* variable from the machine running this: the catalogue must not depend on where it is built.
    settings = Settings.from_env(
        {}, require_jwt=False, allowed_fhir_servers=(TRIAL_FHIR_SERVER,), fhir_deadline_s=1.0,
        database_url=f"sqlite:///{scratch / 'cards.sqlite3'}", log_level="ERROR",
    )
    app = create_app(settings)
    app.extensions["mtor_cds"].clock = lambda: now
    return app


def _close_store(app) -> None:
    """Let the card store's writer finish before its scratch directory goes."""
    close = getattr(getattr(app.extensions["mtor_cds"], "store", None), "close", None)
    if close:
        close()


def _incomplete_checks_request(requests: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """The first firing patient-view fixture with its lab results neither prefetched nor fetchable (no fhirServer):
    the service answers the checks-incomplete card."""
    base_file, base = next(
        ((s["file"], body) for s, body in requests if s["file"].startswith("fires-") and body.get("hook") == "patient-view"),
        (None, None),
    )
    if base is None:
        raise CatalogueError("scenarios.json lists no fires- patient-view fixture to derive the checks-incomplete card from")
    body = json.loads(json.dumps(base))
    body.get("prefetch", {}).pop("observations", None)
    body.pop("fhirServer", None)
    scenario = {
        "file": base_file,
        "derived_from": base_file,
        "what": "the same request without the observations (lab results) prefetch and with no FHIR server to fetch it from",
        "expect_topics": [Topic.CHECKS_INCOMPLETE.value],
        "only_topic": Topic.CHECKS_INCOMPLETE.value,
    }
    return scenario, body


# --- Markdown subset ------------------------------------------------------------------------------

_PLACEHOLDER = re.compile("\ue000(\\d+)\ue001")
_ESCAPED = re.compile(r"\\([!-/:-@\[-`{-~])")  # CommonMark backslash escapes of ASCII punctuation
_CODE = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"\[([^\[\]\n]+)\]\(((?:[^()\s]|\([^()\s]*\))+)\)")  # a URL may hold one level of (...)
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
_ITALIC_UNDERSCORE = re.compile(r"(?<!\w)_(?=\S)(.+?)(?<=\S)_(?!\w)")
_ITALIC_STAR = re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])")
_BULLET = re.compile(r"^( *)[-*] +(.*)$")
SAFE_URL = re.compile(r"^(https?://|mailto:)", re.IGNORECASE)


def render_inline(text: str) -> str:
    """One line of Markdown to HTML: `code`, [links](http...), **bold**, _italic_ / *italic*; the rest escaped."""
    stash: list[str] = []

    def keep(fragment: str) -> str:
        stash.append(fragment)
        return f"\ue000{len(stash) - 1}\ue001"

    def link(match: re.Match) -> str:
        label = _emphasis(html.escape(match.group(1)))
        url = match.group(2)
        if not SAFE_URL.match(url):
            return keep(label)  # javascript:, data: and relative URLs lose the link, keep the words
        return keep(f'<a href="{html.escape(url)}">{label}</a>')

    text = text.replace("\ue000", "").replace("\ue001", "")
    text = _ESCAPED.sub(lambda m: keep(html.escape(m.group(1))), text)  # cards.md_text's \* \[ ... stay literal
    text = _CODE.sub(lambda m: keep(f"<code>{html.escape(m.group(1))}</code>"), text)
    text = _LINK.sub(link, text)
    rendered = _emphasis(html.escape(text))
    while _PLACEHOLDER.search(rendered):  # a link's label may hold a code span
        rendered = _PLACEHOLDER.sub(lambda m: stash[int(m.group(1))], rendered)
    return rendered


def _emphasis(escaped: str) -> str:
    escaped = _BOLD.sub(r"<strong>\1</strong>", escaped)
    escaped = _ITALIC_UNDERSCORE.sub(r"<em>\1</em>", escaped)
    return _ITALIC_STAR.sub(r"<em>\1</em>", escaped)


def render_markdown(text: str) -> str:
    """A card detail to HTML. Blocks: paragraphs (blank line between), bullet lists nested by two-space indent,
    a single newline as a line break. An indented line under a bullet continues it; anything else is escaped text."""
    blocks: list[str] = []
    paragraph: list[str] = []
    items: list[list] = []  # [level, [lines]]

    def flush() -> None:
        if paragraph:
            blocks.append("<p>" + "<br>".join(render_inline(line) for line in paragraph) + "</p>")
            paragraph.clear()
        if items:
            blocks.append(_render_list([(level, "<br>".join(render_inline(x) for x in lines)) for level, lines in items]))
            items.clear()

    for raw in text.expandtabs(4).splitlines():
        bullet = _BULLET.match(raw)
        if not raw.strip():
            flush()
        elif bullet:
            if paragraph:
                flush()
            items.append([len(bullet.group(1)) // 2, [bullet.group(2)]])
        elif items and raw.startswith("  "):
            items[-1][1].append(raw.strip())
        else:
            if items:
                flush()
            paragraph.append(raw.strip())
    flush()
    return "\n".join(blocks)


def _render_list(items: list[tuple[int, str]]) -> str:
    out: list[str] = []
    depth = -1
    for level, item_html in items:
        level = min(level, depth + 1)  # a bullet indented too far nests one level, not several
        if level > depth:
            out.append("<ul>")
            depth = level
        else:
            while depth > level:
                out.append("</li></ul>")
                depth -= 1
            out.append("</li>")
        out.append(f"<li>{item_html}")
    out.extend("</li></ul>" for _ in range(depth + 1))
    return "".join(out)


# --- grouping -------------------------------------------------------------------------------------


def topic_order(codes: Iterable[str]) -> list[str]:
    """Topics in the order findings.Topic defines them; codes it does not know come last, sorted."""
    known = [t.value for t in Topic]
    codes = set(codes)
    return [c for c in known if c in codes] + sorted(codes - set(known))


def use_order(uses: Iterable[str]) -> list[str]:
    ranked = (*USES, UNKNOWN_USE)
    uses = set(uses)
    return [u for u in ranked if u in uses] + sorted(uses - set(ranked))


def group(entries: Iterable[Entry]) -> dict[str, dict[str, list[Entry]]]:
    """topic -> use -> entries, both in catalogue order; entries keep the order the scenarios list them."""
    entries = list(entries)
    grouped: dict[str, dict[str, list[Entry]]] = {}
    for topic in topic_order(e.topic for e in entries):
        of_topic = [e for e in entries if e.topic == topic]
        grouped[topic] = {use: [e for e in of_topic if e.trigger.use == use] for use in use_order(e.trigger.use for e in of_topic)}
    return grouped


# --- the page -------------------------------------------------------------------------------------

_e = html.escape


def _use_label(use: str) -> str:
    return "TSC / other (use not stated in the scenario)" if use == UNKNOWN_USE else use


def _link(url: str, label: str) -> str:
    if isinstance(url, str) and SAFE_URL.match(url):
        return f'<a href="{_e(url)}">{_e(label)}</a>'
    return _e(label)


def render_page(catalogue: Catalogue) -> str:
    grouped = group(catalogue.entries)
    topic_names = {e.topic: e.card["source"]["topic"].get("display", e.topic) for e in catalogue.entries}
    uses = use_order([*USES, *(e.trigger.use for e in catalogue.entries)])  # every named use, so gaps show
    parts = [
        _header(catalogue, grouped, topic_names),
        _coverage(grouped, uses, topic_names),
        _knowledge(catalogue),
    ]
    for topic, by_use in grouped.items():
        count = sum(len(v) for v in by_use.values())
        parts.append(
            f'<section class="topic" id="topic-{_e(topic)}"><h2>{_e(topic_names[topic])} '
            f'<span class="code">{_e(topic)}</span> <span class="count">{count} card{"s" if count != 1 else ""}</span></h2>'
        )
        for use, entries in by_use.items():
            parts.append(f'<h3 class="use">Use: {_e(_use_label(use))}</h3>')
            parts.extend(_card(entry) for entry in entries)
        parts.append("</section>")
    parts.append(_quiet(catalogue.quiet))
    parts.append(_signoff())
    return _PAGE.format(css=_CSS, body="\n".join(parts))


def _header(catalogue: Catalogue, grouped: dict, topic_names: dict) -> str:
    versions = sorted({f["version"] for f in catalogue.manifest["files"].values()})
    try:
        service_version = metadata.version("mtor-cds")
    except metadata.PackageNotFoundError:
        service_version = "unknown (run from a source tree, not an installed package)"
    toc = "".join(
        f'<li><a href="#topic-{_e(t)}">{_e(topic_names[t])}</a></li>' for t in grouped
    )
    return f"""<header>
<h1>mtor-cds card catalogue</h1>
<p class="lede">Every card the service answers for the fixture scenarios, shown as an EHR shows it, with what
triggers it and where its content comes from. Cards are the service's own JSON answers to the requests in
<code>fhir_fixtures/</code>, with the clock pinned at {_e(catalogue.now.strftime("%Y-%m-%d %H:%M UTC"))}.</p>
<dl class="facts">
<dt>Service version</dt><dd>{_e(service_version)}</dd>
<dt>Knowledge version</dt><dd>{_e(", ".join(versions))} ({len(catalogue.manifest["files"])} files, below)</dd>
<dt>Cards</dt><dd>{len(catalogue.entries)} cards in {len(grouped)} topics</dd>
<dt>Card fingerprint</dt><dd><code>{fingerprint(catalogue.entries)}</code> (SHA-256 of the cards and their triggers; it
changes whenever any card text does)</dd>
</dl>
<p class="note">Single line breaks in a card's detail are shown as line breaks; some EHRs join such lines into one
paragraph. Links in details open the cited source.</p>
<nav><h2>Topics</h2><ol class="toc">{toc}</ol></nav>
</header>"""


def _coverage(grouped: dict, uses: list[str], topic_names: dict) -> str:
    head = "".join(f'<th class="num">{_e("TSC / other" if u == UNKNOWN_USE else u)}</th>' for u in uses)
    rows = []
    for topic, by_use in grouped.items():
        cells = "".join(
            f'<td class="num">{len(by_use[u])}</td>' if by_use.get(u) else '<td class="num none">–</td>' for u in uses
        )
        rows.append(f'<tr><th scope="row"><a href="#topic-{_e(topic)}">{_e(topic_names[topic])}</a></th>{cells}</tr>')
    return (
        '<section class="panel"><h2>Cards by topic and use</h2>'
        f'<table class="grid"><thead><tr><th>Topic</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
        "<p class=\"note\">Use comes from the scenario's <code>use</code> field, or failing that from its file name and "
        "description; scenarios that state none are counted under TSC / other.</p></section>"
    )


def _knowledge(catalogue: Catalogue) -> str:
    today = catalogue.now.date()
    rows = []
    for name, entry in catalogue.manifest["files"].items():
        due = date.fromisoformat(entry["next_review"]) <= today
        next_review = f'<td class="overdue">{_e(entry["next_review"])} (due)</td>' if due else f"<td>{_e(entry['next_review'])}</td>"
        rows.append(
            f"<tr><td><code>{_e(name)}</code></td><td>{_e(entry['subject'])}</td><td>{_e(entry['version'])}</td>"
            f"<td>{_e(entry['reviewed'])}</td>{next_review}<td><code>{_e(entry['sha256'][:10])}</code></td></tr>"
        )
    return (
        '<section class="panel"><h2>Knowledge the cards rest on</h2>'
        '<table class="grid knowledge"><thead><tr><th>File</th><th>Subject</th><th>Version</th><th>Reviewed</th>'
        f'<th>Next review</th><th>SHA-256</th></tr></thead><tbody>{"".join(rows)}</tbody></table></section>'
    )


def _card(entry: Entry) -> str:
    card, trigger = entry.card, entry.trigger
    indicator = card.get("indicator", "info")
    indicator = indicator if indicator in {"info", "warning", "critical"} else "info"
    source = card.get("source", {})
    source_topic = source.get("topic", {})
    return f"""<article class="entry">
{_trigger(trigger)}
<div class="card {indicator}">
<div class="card-head"><span class="indicator">{_e(indicator)}</span><span class="summary">{_e(card.get("summary", ""))}</span></div>
<div class="detail">{render_markdown(card.get("detail", ""))}</div>
{_suggestions(card)}{_links(card)}{_overrides(card)}
<div class="source">Source: {_link(source.get("url"), source.get("label", ""))}
<span class="line">Sites linked: {_e(" · ".join(_linked_sites(card)) or "none")}</span>
<span class="line">topic <code>{_e(source_topic.get("code", ""))}</code> · {_e(source_topic.get("display", ""))}</span></div>
</div>
</article>"""


def _linked_sites(card: dict) -> list[str]:
    """The sites a card sends a clinician to (source, detail links, card links), so reviewers see the publishers."""
    urls = [card.get("source", {}).get("url"), *(url for _, url in _LINK.findall(card.get("detail", "")))]
    urls += [link.get("url") for link in card.get("links") or []]
    return sorted({urlsplit(url).hostname or "" for url in urls if isinstance(url, str) and SAFE_URL.match(url)} - {""})


def _trigger(trigger: Trigger) -> str:
    origin = (
        f"<code>{_e(trigger.derived_from)}</code>, changed: {_e(trigger.description)}" if trigger.derived_from
        else f"<code>{_e(trigger.file)}</code>: {_e(trigger.description)}"
    )
    fires = ", ".join(trigger.expect_topics) or "no card expected"
    return (
        f'<div class="trigger"><span class="label">Trigger</span> <span class="hook">{_e(trigger.hook)}</span> '
        f'<span class="what">{origin}</span>'
        f'<span class="fires">scenario fires: {_e(fires)}</span></div>'
    )


def _suggestions(card: dict) -> str:
    suggestions = card.get("suggestions") or []
    if not suggestions:
        return ""
    buttons = []
    for suggestion in suggestions:
        actions = "".join(_action(a) for a in suggestion.get("actions") or [])
        recommended = '<span class="recommended">recommended</span>' if suggestion.get("isRecommended") else ""
        buttons.append(
            f'<div class="suggestion"><span class="button">{_e(suggestion.get("label", ""))}</span>{recommended}'
            f'<ul class="actions">{actions}</ul></div>'
        )
    behaviour = card.get("selectionBehavior")
    note = f'<span class="behaviour">selection: {_e(behaviour)}</span>' if behaviour else ""
    return f'<div class="suggestions"><h4>Suggestions {note}</h4>{"".join(buttons)}</div>'


def _action(action: dict) -> str:
    resource = f" <code>{_e(action['resourceId'])}</code>" if action.get("resourceId") else ""
    return f'<li><span class="action">{_e(action.get("type", ""))}</span> {_e(action.get("description", ""))}{resource}</li>'


def _links(card: dict) -> str:
    links = card.get("links") or []
    if not links:
        return ""
    items = "".join(
        f'<li>{_link(link.get("url"), link.get("label", ""))} <span class="action">{_e(link.get("type", ""))}</span></li>'
        for link in links
    )
    return f'<div class="links"><h4>Links</h4><ul>{items}</ul></div>'


def _overrides(card: dict) -> str:
    reasons = card.get("overrideReasons") or []
    if not reasons:
        return ""
    items = "".join(f'<li>{_e(r.get("display", ""))} <code>{_e(r.get("code", ""))}</code></li>' for r in reasons)
    return f'<div class="overrides"><h4>Override reasons offered</h4><ul>{items}</ul></div>'


def _quiet(quiet: tuple[Trigger, ...]) -> str:
    if not quiet:
        return ""
    rows = "".join(
        f"<tr><td><code>{_e(t.file)}</code></td><td>{_e(t.hook)}</td><td>{_e(t.description)}</td></tr>" for t in quiet
    )
    return (
        '<section class="panel" id="quiet"><h2>Scenarios that answer no card</h2>'
        "<p class=\"note\">These show where the service deliberately stays quiet.</p>"
        f'<table class="grid"><thead><tr><th>Fixture</th><th>Hook</th><th>Scenario</th></tr></thead><tbody>{rows}</tbody></table></section>'
    )


def _signoff() -> str:
    return (
        '<section class="panel signoff"><h2>Sign-off</h2><table class="grid"><tbody>'
        "<tr><th>Reviewed by</th><td></td></tr><tr><th>Role</th><td></td></tr>"
        "<tr><th>Decision</th><td></td></tr><tr><th>Date</th><td></td></tr></tbody></table></section>"
    )


def write_catalogue(out: Path, fixture_dir: Path) -> Catalogue:
    catalogue = collect(fixture_dir)
    out.write_text(render_page(catalogue), encoding="utf-8")
    return catalogue


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mtor-cds card catalogue</title>
<style>{css}</style>
</head>
<body>
<main>
{body}
</main>
</body>
</html>
"""

_CSS = """
:root { --info: #1d6fb8; --warning: #b7791f; --critical: #c53030; --ink: #1a202c; --muted: #5a6472; --line: #d8dee6; }
* { box-sizing: border-box; }
body { margin: 0; background: #eef1f5; color: var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Liberation Sans", "DejaVu Sans", Arial, sans-serif; }
main { max-width: 1080px; margin: 0 auto; padding: 28px 24px 60px; }
h1 { font-size: 28px; margin: 0 0 6px; }
h2 { font-size: 20px; margin: 0 0 12px; }
h3.use { font-size: 14px; text-transform: uppercase; letter-spacing: .06em; color: var(--muted); margin: 18px 0 8px; }
h4 { font-size: 12px; text-transform: uppercase; letter-spacing: .05em; color: var(--muted); margin: 0 0 6px; }
a { color: #1a56a0; }
code { font: 12.5px/1.4 ui-monospace, "DejaVu Sans Mono", "Liberation Mono", monospace; background: #f1f3f6;
  border-radius: 3px; padding: 0 3px; overflow-wrap: anywhere; }
.lede { max-width: 820px; margin: 0 0 12px; }
.note { color: var(--muted); font-size: 13px; }
.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0 0 8px; }
.facts dt { font-weight: 600; } .facts dd { margin: 0; }
nav h2 { font-size: 15px; margin: 12px 0 4px; }
.toc { columns: 3; margin: 0; padding-left: 22px; }
.panel, .topic { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 18px 20px; margin: 20px 0; }
.topic h2 .code { font: 13px ui-monospace, "DejaVu Sans Mono", monospace; color: var(--muted); font-weight: normal; }
.topic h2 .count { float: right; font-size: 13px; color: var(--muted); font-weight: normal; }
table.grid { border-collapse: collapse; width: 100%; font-size: 13.5px; }
.grid th, .grid td { border-bottom: 1px solid var(--line); padding: 5px 8px; text-align: left; vertical-align: top; }
.grid thead th { background: #f6f8fa; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); }
.grid .num { text-align: center; } .grid td.none { color: #a0a8b3; }
.knowledge td:first-child, .knowledge td:nth-child(n+3) { white-space: nowrap; }
.grid th[scope=row] { width: 40%; }
.grid td.overdue { color: var(--critical); font-weight: 600; }
.entry { margin: 10px 0 22px; }
.trigger { font-size: 13px; color: var(--muted); background: #f6f8fa; border: 1px dashed var(--line);
  border-radius: 6px 6px 0 0; padding: 6px 10px; border-bottom: none; }
.trigger .hook { display: inline-block; background: #334155; color: #fff; border-radius: 3px; padding: 0 6px;
  font: 12px ui-monospace, "DejaVu Sans Mono", monospace; margin-right: 4px; }
.trigger .fires { display: block; }
.card { background: #fff; border: 1px solid var(--line); border-left: 6px solid var(--info); border-radius: 0 0 6px 6px;
  padding: 12px 16px; box-shadow: 0 1px 2px rgba(0,0,0,.05); }
.card.warning { border-left-color: var(--warning); } .card.critical { border-left-color: var(--critical); }
.card-head { display: flex; align-items: baseline; gap: 10px; }
.indicator { flex: none; color: #fff; background: var(--info); border-radius: 10px; padding: 1px 9px; font-size: 11px;
  font-weight: 700; text-transform: uppercase; letter-spacing: .05em; }
.warning .indicator { background: var(--warning); } .critical .indicator { background: var(--critical); }
.summary { font-weight: 650; font-size: 16px; }
.detail { margin: 8px 0 4px; overflow-wrap: anywhere; }
.detail p { margin: 6px 0; } .detail ul { margin: 6px 0; padding-left: 22px; } .detail li { margin: 3px 0; }
.suggestions, .links, .overrides { border-top: 1px solid #edf0f3; padding-top: 8px; margin-top: 8px; }
.suggestion { margin: 4px 0; }
.button { display: inline-block; border: 1px solid #1a56a0; color: #1a56a0; border-radius: 5px; padding: 3px 10px; font-weight: 600; font-size: 14px; }
.recommended { margin-left: 8px; font-size: 12px; color: #276749; font-weight: 600; }
.actions { list-style: none; margin: 4px 0 0; padding-left: 12px; font-size: 13px; color: var(--muted); }
.action { display: inline-block; font-size: 11px; text-transform: uppercase; font-weight: 700; color: #4a5568;
  background: #edf0f3; border-radius: 3px; padding: 0 5px; }
.behaviour { text-transform: none; letter-spacing: 0; font-weight: normal; }
.overrides ul, .links ul { margin: 0; padding-left: 20px; font-size: 13.5px; }
.source { border-top: 1px solid #edf0f3; margin-top: 8px; padding-top: 6px; font-size: 13px; color: var(--muted); }
.source .line { display: block; }
.trigger .label { font-weight: 700; color: #334155; }
#quiet td:nth-child(-n+2) { white-space: nowrap; }
.signoff th { width: 25%; height: 40px; }
@media print { body { background: #fff; } .panel, .topic { break-inside: auto; border: none; } .entry { break-inside: avoid; } }
"""
