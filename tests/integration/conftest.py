"""A real FHIR R4 server for the integration tests: SEKMET (sekmet-fhir, installed by .ci/sekmet.sh in its own
virtualenv), started once per session on a free loopback port with a fresh database and the fixtures loaded."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from cds_service.devkit.fixtures import load_fixtures

FIXTURES = Path(__file__).resolve().parents[2] / "fhir_fixtures"
DEFAULT_SEKMET_PYTHON = "/tmp/sekmet-venv/bin/python"
START_TIMEOUT_S = 60.0
# The simulator would play pharmacy and lab on the orders we load (dispensing, resulting): keep the data as loaded.
SEKMET_SETTINGS = "simulator:\n  enabled: false\nlog_inbound: false\nvalidation:\n  inbound: strict\n"
_RUN_SEKMET = "import sys; from sekmet.cli import app; sys.argv[0] = 'sekmet'; sys.exit(app())"


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_ready(process: subprocess.Popen, base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"SEKMET exited with {process.returncode} at start:\n{log_path.read_text()[-3000:]}")
        try:
            if requests.get(f"{base_url}/metadata", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)  # polling a starting server: the one wait these tests need
    pytest.fail(f"SEKMET not ready after {START_TIMEOUT_S:.0f} s:\n{log_path.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def sekmet_python() -> str:
    python = os.environ.get("SEKMET_PYTHON") or DEFAULT_SEKMET_PYTHON
    if not os.access(python, os.X_OK):
        pytest.skip(f"SEKMET is not installed at {python}: run `bash .ci/sekmet.sh` (or set SEKMET_PYTHON)")
    return python


@pytest.fixture(scope="session")
def sekmet(sekmet_python, tmp_path_factory) -> str:
    """The base URL of a running SEKMET holding every fixture patient and the Synthea bundles."""
    workdir = tmp_path_factory.mktemp("sekmet")
    (workdir / "settings.yaml").write_text(SEKMET_SETTINGS)
    port = _free_loopback_port()
    base_url = f"http://127.0.0.1:{port}/fhir"
    environment = {
        **os.environ,
        "SEKMET_CONFIG": str(workdir / "settings.yaml"),
        "SEKMET_DB": str(workdir / "sekmet.db"),
        "SEKMET_BASE_URL": base_url,
    }
    log_path = workdir / "sekmet.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sekmet_python, "-c", _RUN_SEKMET, "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=workdir, env=environment, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    try:
        _wait_until_ready(process, base_url, log_path)
        load_fixtures(base_url, FIXTURES)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
