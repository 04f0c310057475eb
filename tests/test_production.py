"""`mtor-cds serve --production`: gunicorn with the package's settings, on loopback, started and stopped for real."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import ClassVar

import pytest

from cds_service import production
from tests.conftest import ROOT
from tests.production_process import free_port
from tests.production_process import production_server as running_server


def get(url: str) -> tuple[int, dict, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read() or b"null")


@pytest.fixture
def production_server(tmp_path):
    """The real command in a subprocess: 2 workers, a temp SQLite store, JWT off (loopback only)."""
    settings = {"CDS_REQUIRE_JWT": "false", "CDS_DATABASE_URL": f"sqlite:///{tmp_path}/cards.sqlite3", "WEB_CONCURRENCY": "2",
                "GUNICORN_THREADS": "2"}
    with running_server(tmp_path, settings, lambda base: get(f"{base}/healthz")[0] == 200) as (base, process):
        yield base, process, tmp_path / "server.log"


def test_serve_production_answers_health_readiness_and_discovery_then_stops_cleanly(production_server):
    base, process, log = production_server
    status, _, body = get(f"{base}/healthz")
    assert (status, body) == (200, {"status": "ok"})
    status, _, body = get(f"{base}/readyz")
    assert status == 200 and body["status"] == "ready"
    status, headers, body = get(f"{base}/cds-services")
    assert status == 200
    assert {s["id"] for s in body["services"]} >= {"mtor-safety-patient-view", "mtor-safety-order-select"}

    # Gunicorn, not the development server, answered.
    assert "gunicorn" in log.read_text().lower() or headers.get("Server", "").startswith("gunicorn")

    process.send_signal(signal.SIGTERM)  # graceful stop, as Kubernetes does
    assert process.wait(timeout=30) == 0


def test_serve_production_reports_invalid_settings_instead_of_starting(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CDS_FHIR_DEADLINE_S": "soon"}
    done = subprocess.run(
        [sys.executable, "-m", "cds_service.cli", "serve", "--production", "--port", str(free_port())],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 2
    assert "invalid settings" in done.stderr and "CDS_FHIR_DEADLINE_S" in done.stderr


def test_settings_come_from_one_place_and_follow_the_environment():
    settings = production.gunicorn_settings({})
    assert settings["bind"] == [production.DEFAULT_BIND]
    assert settings["workers"] == production.WORKERS_PER_CPU * production.cpu_count()
    assert (settings["worker_class"], settings["threads"]) == (production.JSON_ERROR_WORKERS[production.DEFAULT_WORKER_CLASS],
                                                             production.DEFAULT_THREADS)
    assert settings["preload_app"] is True

    custom = production.gunicorn_settings({"WEB_CONCURRENCY": "3", "GUNICORN_WORKER_CLASS": "sync", "PORT": "9000"})
    assert (custom["workers"], custom["worker_class"], custom["bind"]) == (3, production.JSON_ERROR_WORKERS["sync"], ["0.0.0.0:9000"])

    # deploy/gunicorn.conf.py (what the container runs) holds exactly these settings.
    import runpy

    prefixes = ("MTOR_CDS_BIND", "PORT", "WEB_CONCURRENCY", "GUNICORN_", "CDS_LOG_LEVEL", "PROMETHEUS_")
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith(prefixes)}
    try:
        conf = runpy.run_path(str(ROOT / "deploy" / "gunicorn.conf.py"))
        expected = production.gunicorn_settings()
    finally:
        os.environ.update(saved)
        for entry in conf.get("raw_env", []):  # the private metrics directory reading the file made
            shutil.rmtree(entry.partition("=")[2], ignore_errors=True)
    assert {name: conf[name] for name in expected} == expected


def test_several_workers_get_a_new_private_metrics_directory_without_changing_the_callers_environment():
    """mkdtemp: mode 0700, a name nobody can predict (not the pid), never a directory that already existed."""
    predictable = os.path.join("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir(), f"mtor-cds-prometheus-{os.getpid()}")
    directories = []
    try:
        for _ in range(2):
            (entry,) = production.serving_settings({"WEB_CONCURRENCY": "2"})["raw_env"]
            name, _, directory = entry.partition("=")
            directories.append(directory)
            assert name == "PROMETHEUS_MULTIPROC_DIR" and os.path.basename(directory).startswith("mtor-cds-prometheus-")
            info = os.lstat(directory)
            assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.getuid()
            assert directory != predictable and os.listdir(directory) == []
        assert directories[0] != directories[1]
        # The master removes the one it made on exit, and nothing else.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directories[1]
        production.on_exit(None)
        assert not os.path.exists(directories[1]) and os.path.isdir(directories[0])
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        for directory in directories:
            shutil.rmtree(directory, ignore_errors=True)
    assert "raw_env" not in production.gunicorn_settings({"WEB_CONCURRENCY": "2"})  # reading the settings makes nothing
    assert "raw_env" not in production.serving_settings({"WEB_CONCURRENCY": "1"})
    assert "raw_env" not in production.serving_settings({"WEB_CONCURRENCY": "2", "PROMETHEUS_MULTIPROC_DIR": "/x"})
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def test_production_mode_warns_at_start_without_a_public_base_url(monkeypatch):
    class Server:
        class log:  # gunicorn's server.log
            warnings: ClassVar[list[str]] = []

            @classmethod
            def warning(cls, message, *args):
                cls.warnings.append(message % args if args else message)

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.delenv("CDS_REQUIRE_JWT", raising=False)
    monkeypatch.delenv("CDS_PUBLIC_BASE_URL", raising=False)
    production.on_starting(Server)
    assert len(Server.log.warnings) == 1 and "CDS_PUBLIC_BASE_URL is not set" in Server.log.warnings[0]
    monkeypatch.setenv("CDS_PUBLIC_BASE_URL", "https://cds.example.org")
    production.on_starting(Server)
    monkeypatch.setenv("CDS_PUBLIC_BASE_URL", "")
    monkeypatch.setenv("CDS_REQUIRE_JWT", "false")
    production.on_starting(Server)
    assert len(Server.log.warnings) == 1


def test_workers_start_with_the_masters_objects_frozen_out_of_the_garbage_collector():
    """A full collection in a worker would otherwise walk every object the master loaded (a 40 ms stall)."""
    import gc

    assert production.gunicorn_settings({})["pre_fork"] is production.pre_fork
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        production.pre_fork(server=None, worker=None)
        assert gc.get_freeze_count() > 1000  # the test process's modules, the app and the knowledge
    finally:
        gc.unfreeze()


def test_workers_that_are_recycled_or_stopped_write_the_cards_of_their_last_calls(tmp_path):
    """Cards are written in the background: a worker leaving (recycled after GUNICORN_MAX_REQUESTS, or stopped) first
    writes what it has queued, so no issued card is missing when its feedback comes."""
    import sqlite3

    sys.path.insert(0, str(ROOT / "bench"))
    from payloads import order_select_request

    body = json.dumps(order_select_request()).encode()
    settings = {"CDS_REQUIRE_JWT": "false", "CDS_DATABASE_URL": f"sqlite:///{tmp_path}/cards.sqlite3", "WEB_CONCURRENCY": "1",
                "GUNICORN_MAX_REQUESTS": "2"}
    calls = 7
    with running_server(tmp_path, settings, lambda base: get(f"{base}/healthz")[0] == 200) as (base, process):
        for _ in range(calls):
            request = urllib.request.Request(f"{base}/cds-services/mtor-safety-order-select", data=body,
                                             headers={"Content-Type": "application/json"})
            for _attempt in range(50):  # a recycled worker is replaced within a moment
                try:
                    with urllib.request.urlopen(request, timeout=10) as response:
                        assert len(json.loads(response.read())["cards"]) == 1
                    break
                except (urllib.error.URLError, ConnectionError):
                    time.sleep(0.1)
            else:
                raise AssertionError("no worker answered")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    with sqlite3.connect(tmp_path / "cards.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM issued_card").fetchone()[0] == calls


@pytest.mark.parametrize("variable", ["MTOR_CDS_BIND", "PORT"])
def test_serve_production_without_an_address_listens_where_the_environment_says(tmp_path, variable):
    """deploy/README.md: without --host/--port, `serve --production` follows MTOR_CDS_BIND or PORT, as gunicorn with
    deploy/gunicorn.conf.py does."""
    assert "without them it follows\nthe variables below" in (ROOT / "deploy" / "README.md").read_text(encoding="utf-8")
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("CDS_", "GUNICORN_", "PROMETHEUS_", "PORT", "MTOR_CDS"))},
           "PYTHONPATH": str(ROOT), "CDS_REQUIRE_JWT": "false", "CDS_DATABASE_URL": f"sqlite:///{tmp_path}/cards.sqlite3",
           "WEB_CONCURRENCY": "1", variable: f"127.0.0.1:{port}" if variable == "MTOR_CDS_BIND" else str(port)}
    with open(tmp_path / "server.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "cds_service.cli", "serve", "--production"], cwd=tmp_path, env=env,
                                   stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                    assert json.load(answer) == {"status": "ok"}
                    break
            except OSError:
                assert process.poll() is None, (tmp_path / "server.log").read_text()
                assert time.monotonic() < deadline, "server did not answer on the environment's address"
                time.sleep(0.1)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def _slow_connection(base: str, head: bytes):
    """A connection that sends `head` and then nothing more, as a slow or malicious client does."""
    import socket

    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(head)
    return sock


def test_a_request_that_does_not_arrive_in_time_frees_its_sync_worker(tmp_path):
    """Clients sending their request byte by byte held every sync worker until gunicorn killed it (30 s) when nothing
    buffered in front (the container run on its own). The worker stops reading after GUNICORN_REQUEST_ARRIVAL_TIMEOUT:
    a head cut short is dropped, a body cut short is answered 400, and /healthz is served again."""
    settings = {"CDS_REQUIRE_JWT": "false", "CDS_DATABASE_URL": f"sqlite:///{tmp_path}/cards.sqlite3", "WEB_CONCURRENCY": "2",
                "GUNICORN_REQUEST_ARRIVAL_TIMEOUT": "2"}
    with running_server(tmp_path, settings, lambda base: get(f"{base}/healthz")[0] == 200) as (base, _):
        body_head = (b"POST /cds-services/mtor-safety-patient-view HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 500\r\n\r\n{\"hook\"")
        slow = [_slow_connection(base, b"GET /healthz HTTP/1.1\r\nHo"), _slow_connection(base, body_head)]
        try:
            time.sleep(0.5)
            started = time.monotonic()
            with pytest.raises(OSError):  # both workers are held by the slow clients
                urllib.request.urlopen(f"{base}/healthz", timeout=0.8)
            assert get(f"{base}/healthz")[0] == 200  # within 5 s: the watch stopped reading both slow connections
            assert time.monotonic() - started < 5
            assert slow[0].recv(1000) == b""  # the head cut short: closed without an answer
            answer = b""
            while chunk := slow[1].recv(4000):  # the head and the body may come in separate segments
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 400") and b"cut short, or not sent in time" in answer
        finally:
            for sock in slow:
                sock.close()
    assert "A request did not arrive within 2 s" in (tmp_path / "server.log").read_text()


def test_the_deploy_readme_states_the_request_arrival_timeout():
    from tests.test_deploy import readme_table

    rows = readme_table("| variable | default | meaning |")
    assert rows["`GUNICORN_REQUEST_ARRIVAL_TIMEOUT`"] == [
        f"{production.DEFAULT_REQUEST_ARRIVAL_TIMEOUT_S} s",
        "a sync worker stops reading a request (head and body) that has not fully arrived by then: without a proxy in "
        "front, slow clients hold a worker this long, not until `GUNICORN_TIMEOUT` (0: no limit)"]


def test_the_request_arrival_timeout_is_read_once_at_start_and_0_means_no_limit():
    """0 cut every request at once (a trap for an operator who meant "off"): it is now no limit, and a negative or
    unreadable value stops the start like any other bad GUNICORN_* value instead of failing every worker's boot."""
    assert production.request_arrival_timeout_s({}) == production.DEFAULT_REQUEST_ARRIVAL_TIMEOUT_S == 10
    assert production.request_arrival_timeout_s({"GUNICORN_REQUEST_ARRIVAL_TIMEOUT": "0"}) == 0
    for bad in ("-1", "soon"):
        with pytest.raises(ValueError):
            production.gunicorn_settings({"GUNICORN_REQUEST_ARRIVAL_TIMEOUT": bad})


def test_with_no_arrival_limit_a_slow_request_is_still_answered(tmp_path):
    settings = {"CDS_REQUIRE_JWT": "false", "CDS_DATABASE_URL": f"sqlite:///{tmp_path}/cards.sqlite3", "WEB_CONCURRENCY": "1",
                "GUNICORN_REQUEST_ARRIVAL_TIMEOUT": "0"}
    with running_server(tmp_path, settings, lambda base: get(f"{base}/healthz")[0] == 200) as (base, _):
        slow = _slow_connection(base, b"GET /healthz HTTP/1.1\r\nHo")
        try:
            time.sleep(1.5)  # three of the watch's looks, had it been started
            slow.sendall(b"st: x\r\n\r\n")
            assert slow.recv(200).startswith(b"HTTP/1.1 200")
        finally:
            slow.close()
