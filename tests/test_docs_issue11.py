"""docs/issue-11-closing.md names, for each item of issue 11, the test that proves it: every named test exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTE = ROOT / "docs" / "issue-11-closing.md"


def test_every_test_the_closing_note_names_exists():
    named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", NOTE.read_text())
    assert len(named) >= 30
    for file, test in named:
        tree = ast.parse((ROOT / "tests" / file).read_text())
        functions = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        assert test in functions, f"{file}::{test}"
