"""The knowledge manifest: each file's subject, version, review dates and SHA-256, so drift fails a test.

Regenerate after a reviewed change:  python -m cds_service.knowledge.manifest --write
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from cds_service.knowledge.loader import FILES, KNOWLEDGE_DIR

MANIFEST = KNOWLEDGE_DIR / "manifest.json"


def build_manifest(directory: Path = KNOWLEDGE_DIR) -> dict:
    files = {}
    for name in FILES:
        raw = (directory / name).read_bytes()
        meta = json.loads(raw)["meta"]
        files[name] = {
            "subject": meta["subject"],
            "version": meta["version"],
            "reviewed": meta["reviewed"],
            "next_review": meta["next_review"],
            "sha256": hashlib.sha256(raw).hexdigest(),
        }
    return {"files": files}


def main(argv: list[str]) -> int:
    manifest = build_manifest()
    if "--write" in argv:
        MANIFEST.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return 0
    current = json.loads(MANIFEST.read_text(encoding="utf-8"))
    if current != manifest:
        print("knowledge/manifest.json is out of date: review the change, then run with --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
