"""Shared fixtures: an app with a pinned clock, its client, and fixture loading."""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from cds_service import create_app
from cds_service.knowledge import load_knowledge
from cds_service.knowledge.loader import FILES, KNOWLEDGE_DIR
from cds_service.services import prefetch_templates

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fhir_fixtures"
SPEC_EXAMPLES = ROOT.parent / "shared" / "cds-hooks" / "examples"
SCENARIOS = json.loads((FIXTURES / "scenarios.json").read_text())
FIXTURE_NOW = datetime.fromisoformat(SCENARIOS["now"].replace("Z", "+00:00"))
SERVICE_FOR_HOOK = {
    "patient-view": "mtor-safety-patient-view",
    "order-select": "mtor-safety-order-select",
    "order-sign": "mtor-safety-order-sign",
    "appointment-book": "mtor-safety-appointment-book",
}


# Each prefetch key's resource type, read off the service's own templates ("Observation?patient=...").
TYPE_OF_PREFETCH_KEY = {
    key: template.split("?")[0].split("/")[0] for key, template in prefetch_templates(load_knowledge()).items()
}
POSTGRES_URL = os.environ.get("CDS_TEST_POSTGRES_URL", "")
SKIP_POSTGRES = 'CDS_TEST_POSTGRES_URL is not set (run: eval "$(.ci/postgres.sh)")'


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.skipif(not POSTGRES_URL, reason=SKIP_POSTGRES))])
def empty_database_url(request, tmp_path):
    """The URL of an empty database with no tables: a SQLite file, or the CI's PostgreSQL wiped clean."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cards.sqlite3'}"
    url = _postgres_url_of_this_worker()
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE IF EXISTS card_feedback, issued_card, jwt_replay, cds_store_version"))
    engine.dispose()
    return url


def _postgres_url_of_this_worker() -> str:
    """Under pytest-xdist each worker gets its own database (<name>_gw0, ...), so that one worker's wipe
    cannot drop the tables another worker's test is using."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return POSTGRES_URL
    base = sa.engine.make_url(POSTGRES_URL)
    name = f"{base.database}_{worker}"
    engine = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        if not connection.scalar(sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}):
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


def load_fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture
def app(tmp_path):
    app = create_app(
        require_jwt=False,
        allowed_fhir_servers=("https://ehr.example.org/fhir",),
        fhir_deadline_s=3.0,  # the service default: mocked FHIR answers at once, but a loaded CI machine is slow
        database_url=f"sqlite:///{tmp_path}/cards.sqlite3",
    )
    # Pinned to the day the fixtures were written for, so that date arithmetic in rule tests is exact.
    # tests/test_fixture_dates.py runs every scenario on the real clock instead, its dates moved to today.
    app.extensions["mtor_cds"].clock = lambda: FIXTURE_NOW
    return app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def call_hook(client):
    """POST a hook request to the service for its hook; returns the Flask response."""

    def call(body: dict, service_id: str | None = None):
        return client.post(f"/cds-services/{service_id or SERVICE_FOR_HOOK[body['hook']]}", json=body)

    return call


@pytest.fixture
def knowledge(app):
    return app.extensions["mtor_cds"].knowledge


@pytest.fixture(autouse=True)
def _fresh_fhir_capabilities():
    """What FHIR servers said about batch is cached per process: each test starts without it (order-independent)."""
    from cds_service.fhir import client

    client._capabilities.clear()
    yield
    client._capabilities.clear()


# --- a knowledge directory to break: the loader's own tests -----------------------------------------


@pytest.fixture
def knowledge_copy(tmp_path) -> Path:
    """A copy of every knowledge file, for tests that break one and load the directory."""
    for name in FILES:
        shutil.copy(KNOWLEDGE_DIR / name, tmp_path / name)
    return tmp_path


def edit(directory: Path, name: str, change) -> None:
    """Change one knowledge file of a copy in place: change(document) edits the parsed JSON."""
    document = json.loads((directory / name).read_text())
    change(document)
    (directory / name).write_text(json.dumps(document))
