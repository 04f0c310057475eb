"""Settings: read from CDS_* at create_app() time, validated with every problem named, all documented."""

from __future__ import annotations

import dataclasses

import pytest

from cds_service import create_app
from cds_service.settings import SETTING_HELP, Settings, SettingsError
from conftest import ROOT


def test_defaults_need_a_jwt_and_allow_any_https_fhir_server():
    settings = Settings.from_env({})
    assert settings.require_jwt is True and settings.allowed_fhir_servers == ()


def test_environment_values_are_parsed_to_their_types():
    settings = Settings.from_env({
        "CDS_REQUIRE_JWT": "false",
        "CDS_ALLOWED_FHIR_SERVERS": "https://a.example.org/fhir, https://b.example.org/r4",
        "CDS_FHIR_DEADLINE_S": "1.5",
        "CDS_PUBLIC_BASE_URL": "https://cds.example.org/",
    })
    assert settings.require_jwt is False
    assert settings.allowed_fhir_servers == ("https://a.example.org/fhir", "https://b.example.org/r4")
    assert settings.fhir_deadline_s == 1.5 and settings.public_base_url == "https://cds.example.org"


def test_every_bad_value_is_named_at_once():
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"CDS_REQUIRE_JWT": "maybe", "CDS_FHIR_DEADLINE_S": "-1", "CDS_MAX_BODY_BYTES": "lots"})
    message = str(caught.value)
    assert all(name in message for name in ("CDS_REQUIRE_JWT", "CDS_FHIR_DEADLINE_S", "CDS_MAX_BODY_BYTES"))


def test_plain_http_fhir_servers_are_refused_except_on_loopback():
    with pytest.raises(SettingsError, match="must be https"):
        Settings.from_env({"CDS_ALLOWED_FHIR_SERVERS": "http://ehr.example.org/fhir"})
    assert Settings.from_env({"CDS_ALLOWED_FHIR_SERVERS": "http://127.0.0.1:8090/fhir"}).allowed_fhir_servers


def test_create_app_reads_the_environment_when_called(monkeypatch, tmp_path):
    monkeypatch.setenv("CDS_REQUIRE_JWT", "false")
    monkeypatch.setenv("CDS_DATABASE_URL", f"sqlite:///{tmp_path}/cards.sqlite3")
    assert create_app().test_client().get("/cds-services").status_code == 200
    monkeypatch.setenv("CDS_REQUIRE_JWT", "true")
    assert create_app().test_client().get("/cds-services").status_code == 401


def test_every_setting_has_help_and_a_row_in_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for field in dataclasses.fields(Settings):
        assert SETTING_HELP.get(field.name), field.name
        assert f"`CDS_{field.name.upper()}`" in readme, field.name


def test_the_readme_settings_table_is_the_settings_table():
    """One row per setting, in order, with the default and help text of its row in cds_service/settings.py."""
    from cds_service.settings import documented_default, env_name_of

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = [line for line in readme.splitlines() if line.startswith("| `CDS_")]
    expected = [
        f"| `{env_name_of(f.name)}` | `{documented_default(f.name)}` | {SETTING_HELP[f.name]} |"
        for f in dataclasses.fields(Settings)
    ]
    assert rows == expected


def test_every_setting_parses_its_documented_default_back_to_the_default():
    from cds_service.settings import documented_default

    for field in dataclasses.fields(Settings):
        shown = documented_default(field.name)
        if shown != "(unset)":
            assert field.metadata["parser"](shown) == field.default, field.name


def test_documented_literal_defaults():
    """Pinned as literals: a change to a default must change this test and the README together."""
    defaults = Settings()
    assert (defaults.require_jwt, defaults.jwt_clock_skew_s, defaults.jwt_max_lifetime_s) == (True, 60, 300)
    assert (defaults.fhir_deadline_s, defaults.fhir_max_pages, defaults.cors_origins) == (3.0, 60, ("*",))
