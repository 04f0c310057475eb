"""`mtor-cds serve --production` in a subprocess, for tests: started on a free loopback port, waited for, stopped.

One place for what test_production.py, test_replay_cache.py and test_deploy.py each need (bench/run_bench.py, a tool
run on its own, keeps its own copy).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import ROOT

START_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def production_server(workdir: Path, settings: Mapping[str, str], ready: Callable[[str], bool],
                      port: int | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """Serve from `workdir` with `settings` (on top of an environment cleared of CDS_*, GUNICORN_*, PROMETHEUS_* and
    PORT); yields (base URL, process) once `ready(base)` is true. The log is `workdir/server.log`. Stopped with
    SIGTERM (as Kubernetes does), killed if it does not stop in 30 s."""
    port = port or free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CDS_", "GUNICORN_", "PROMETHEUS_", "PORT"))},
        "PYTHONPATH": str(ROOT),
        **settings,
    }
    log_path = workdir / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cds_service.cli", "serve", "--production", "--host", "127.0.0.1", "--port", str(port)],
            cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=log,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if ready(base):
                    break
            except OSError:
                pass
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "server did not answer in time"
            time.sleep(0.1)
        yield base, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
