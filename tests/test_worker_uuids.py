"""Card and suggestion uuids are unique across the real production server's forked workers, and across a worker
killed and respawned and a graceful reload (SIGHUP) of every worker (issue 11). The app is preloaded in the gunicorn
master before it forks: state created at import must not make the workers repeat each other's ids.
(tests/test_card_ids.py forks in-process; this one runs `mtor-cds serve --production`.)"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from run_bench import ServerConfig, Servers, http, process_cpu_s  # noqa: E402
from soak import workers_of  # noqa: E402

WORKERS = 3
FIXTURE = ROOT / "fhir_fixtures" / "fires-cyp3a4-clarithromycin-order-select.json"  # a card with a suggestion


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    running = Servers(ServerConfig("sync", WORKERS, 1), 10, tmp_path_factory.mktemp("workers"), None)
    yield running
    running.stop()


def ids_of(servers: Servers, calls: int) -> list[str]:
    body = json.loads(FIXTURE.read_text())

    def one(_: int) -> list[str]:
        status, answer = http(f"{servers.base}/cds-services/mtor-safety-order-select", body)
        assert status == 200 and answer["cards"], answer
        return [i for card in answer["cards"] for i in (card["uuid"], *(s["uuid"] for s in card.get("suggestions", ())))]

    with ThreadPoolExecutor(2 * WORKERS) as pool:
        return [i for ids in pool.map(one, range(calls)) for i in ids]


def wait_for_workers(master: int, gone: set[int] = frozenset(), timeout_s: float = 30) -> list[int]:
    """The master's workers once there are WORKERS of them and none of `gone` is left."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = workers_of(master)
        if len(pids) == WORKERS and not set(pids) & gone:
            return pids
        time.sleep(0.1)
    raise AssertionError(f"workers not replaced: {workers_of(master)} (gone: {gone})")


def cpu_ticks(pids: list[int]) -> dict[int, float]:
    return {pid: process_cpu_s(pid)[0] for pid in pids}


def test_uuids_are_unique_across_workers_a_respawn_and_a_reload(servers):
    master = servers.server.pid
    first = wait_for_workers(master)
    before = cpu_ticks(first)
    ids = ids_of(servers, 30)
    busy = [pid for pid, cpu in cpu_ticks(first).items() if cpu > before[pid]]
    assert len(busy) >= 2, "the calls were not spread over several workers"  # else the test proves nothing

    os.kill(first[0], signal.SIGKILL)  # a crashed worker: the master forks a new one from its preloaded app
    respawned = wait_for_workers(master, gone={first[0]})
    assert set(respawned) - set(first)
    ids += ids_of(servers, 30)

    os.kill(master, signal.SIGHUP)  # a graceful reload: every worker is replaced by a fresh fork
    reloaded = wait_for_workers(master, gone=set(respawned))
    ids += ids_of(servers, 30)

    repeated = {i: n for i, n in Counter(ids).items() if n > 1}
    assert len(ids) >= 2 * 90 and not repeated, repeated  # a card and its suggestion per call
    assert not set(reloaded) & set(first)
