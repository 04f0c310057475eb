"""The gates DEVELOPERS.md documents: CI runs ruff and mypy before the tests, with tools the `test` extra installs."""

from __future__ import annotations

import tomllib

from conftest import ROOT


def test_ci_runs_ruff_and_mypy_before_the_tests():
    text = (ROOT / ".ci" / "run").read_text()
    assert "&& ruff check . && mypy cds_service" in text
    assert text.index("ruff check .") < text.index("mypy cds_service") < text.index("python -m pytest")


def test_the_test_extra_installs_the_gate_tools():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extra = {requirement.split(">")[0] for requirement in pyproject["project"]["optional-dependencies"]["test"]}
    assert {"ruff", "mypy"} <= extra
    assert {"E", "F", "I", "B"} <= set(pyproject["tool"]["ruff"]["lint"]["select"])


def test_mypy_checks_every_module_with_no_error_codes_waived():
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert mypy["packages"] == ["cds_service"] and mypy["check_untyped_defs"] is True
    assert not [o for o in mypy.get("overrides", []) if o.get("disable_error_code") or o.get("ignore_errors")]


def test_ruff_waives_nothing_per_file():
    lint = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]
    assert not lint.get("per-file-ignores")
