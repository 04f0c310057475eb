"""Cards and errors as a person reads them in a terminal."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping
from typing import Any


def _indent(text: str, prefix: str = "    ") -> str:
    return textwrap.indent(text.strip(), prefix)


def _action(action: Mapping[str, Any]) -> str:
    target = action.get("resourceId") or ""  # a string in CDS Hooks 2.0, an array in some 1.x clients
    resource = action.get("resource")
    if isinstance(resource, Mapping):
        target = f"{resource.get('resourceType')}/{resource.get('id', '(new)')}"
    what = ", ".join(map(str, target)) if isinstance(target, list) else str(target)
    text = f"{action.get('type', '?')} {what}".rstrip()
    return f"{text}: {action['description']}" if action.get("description") else text


def format_cards(body: Mapping[str, Any]) -> str:
    """The cards of a CDS Hooks response: indicator and summary, detail, source, suggestions and their actions."""
    cards = body.get("cards") or []
    if not cards:
        return "No cards.\n"
    blocks = []
    for number, card in enumerate(cards, 1):
        source = card.get("source") or {}
        topic = (source.get("topic") or {}).get("code")
        lines = [f"[{number}] {str(card.get('indicator', '?')).upper()}: {card.get('summary', '')}"]
        if topic:
            lines.append(f"    topic: {topic}")
        if card.get("detail"):
            lines += ["", _indent(card["detail"])]
        if source.get("label"):
            lines += ["", f"    source: {source['label']}" + (f" <{source['url']}>" if source.get("url") else "")]
        for suggestion in card.get("suggestions") or ():
            recommended = " (recommended)" if suggestion.get("isRecommended") else ""
            lines.append(f"    suggestion{recommended}: {suggestion.get('label', '')}")
            lines += [f"      - {_action(action)}" for action in suggestion.get("actions") or ()]
        for link in card.get("links") or ():
            lines.append(f"    link: {link.get('label', '')} <{link.get('url', '')}>")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def format_json(body: Any) -> str:
    return json.dumps(body, indent=2, ensure_ascii=False) + "\n"


def format_error(status: int, body: bytes) -> str:
    """An HTTP error as one line: the OperationOutcome's diagnostics when there is one."""
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    if isinstance(parsed, Mapping) and parsed.get("resourceType") == "OperationOutcome":
        details = "; ".join(str(i.get("diagnostics") or i.get("code")) for i in parsed.get("issue") or ())
    elif status == 401:
        details = ("unauthorised (the service requires a trusted JWT: --sign-key PEM --issuer ISS; "
                   "for a local trial, start it with CDS_REQUIRE_JWT=false)")
    else:
        details = body[:300].decode("utf-8", "replace") if body else "(no body)"
    return f"HTTP {status}: {details}\n"
