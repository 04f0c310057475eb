"""The knowledge manifest matches the files (a reviewed change regenerates it) and no file is past its review date."""

from __future__ import annotations

import json
from datetime import date

from cds_service.knowledge.manifest import MANIFEST, build_manifest


def test_manifest_matches_every_knowledge_file():
    assert json.loads(MANIFEST.read_text(encoding="utf-8")) == build_manifest(), (
        "knowledge changed without review: run python -m cds_service.knowledge.manifest --write"
    )


def test_no_knowledge_file_is_past_its_next_review():
    overdue = [name for name, entry in build_manifest()["files"].items() if date.fromisoformat(entry["next_review"]) <= date.today()]
    assert overdue == []
