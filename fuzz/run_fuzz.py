"""Send many generated requests to mtor-cds and count the 5xx answers (the goal is 0).

Runs the properties of tests/test_fuzz.py at scale, plus schemathesis cases generated from
cds_service/openapi.yaml. In-process (WSGI) by default; --url sends the same requests to a running
server instead. See fuzz/README.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import requests  # noqa: E402
import schemathesis  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from test_fuzz import (  # noqa: E402
    SCHEMA_CHECKS,
    SERVICE_IDS,
    garbage_added,
    hook_bodies,
    json_values,
    make_fuzz_app,
    mutated_calls,
    schema_cases,
)

# Share of the requests each generator sends; schemathesis is ~20x slower per case, hence its small share.
SCHEMATHESIS_SHARE = 0.15
SHARES = {"json-bodies": 0.35, "mutated-fixtures": 0.35, "garbage-entries": 0.12, "raw-bytes": 0.09, "feedback": 0.09}


class Progress:
    """A line on stderr at most every `every_s` seconds while a run goes: requests sent of the total, 5xx so far."""

    def __init__(self, total: int, every_s: float = 10.0, clock=time.monotonic, out=sys.stderr):
        self.total, self.every_s, self.clock, self.out = total, every_s, clock, out
        self.started = self.last = clock()

    def update(self, sent: int, server_errors: int) -> None:
        now = self.clock()
        if now - self.last >= self.every_s:
            self.last = now
            print(f"fuzz: {sent}/{self.total} requests, {server_errors} answered 5xx, {now - self.started:.0f} s",
                  file=self.out, flush=True)


class Target:
    """Where requests go (the in-process app or a server) and what came back."""

    def __init__(self, url: str | None, app, progress: Progress | None = None):
        self.url, self.app, self.progress = url, app, progress
        self.server_error_count = 0
        self.client = None if url else app.test_client()
        self.statuses: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.server_errors: list[dict] = []  # the first 20, to show
        self.nonconforming: list[str] = []  # the first 20, to show
        self.nonconforming_count = 0

    def post(self, generator: str, path: str, data: bytes, content_type: str | None) -> int:
        if self.client:
            status = self.client.post(path, data=data, content_type=content_type).status_code
        else:
            headers = {"Content-Type": content_type} if content_type else {}
            status = requests.post(self.url + path, data=data, headers=headers, timeout=30).status_code
        self.record(generator, status, {"path": path, "content_type": content_type, "body": data[:2000].decode("utf-8", "replace")})
        return status

    def sent(self) -> int:
        return sum(sum(counter.values()) for counter in self.statuses.values())

    def record(self, generator: str, status: int, example: dict) -> None:
        self.statuses[generator][status] += 1
        if status >= 500:
            self.server_error_count += 1
            if len(self.server_errors) < 20:
                self.server_errors.append({"generator": generator, "status": status, **example})
        if self.progress:
            self.progress.update(self.sent(), self.server_error_count)


def run_generator(count: int, strategy, send) -> None:
    """Draw `count` examples from the strategy and send each; failures are counted, not raised (no shrinking)."""

    @settings(max_examples=count, deadline=None, database=None, derandomize=False, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(example):
        send(example)

    run()


def fuzz(target: Target, total: int) -> None:
    """Schemathesis first; then the hypothesis generators share the rest, topped up until `total` were sent."""
    run_schemathesis(target, round(total * SCHEMATHESIS_SHARE))
    json_post = lambda name: lambda pair: target.post(name, pair[0], json.dumps(pair[1]).encode(), "application/json")  # noqa: E731
    services = st.sampled_from([*SERVICE_IDS, "unknown-service"]).map(lambda s: f"/cds-services/{s}")
    generators = {
        "json-bodies": (st.tuples(services, hook_bodies), json_post("json-bodies")),
        "mutated-fixtures": (mutated_calls().map(lambda c: (f"/cds-services/{c[0]}", c[1])), json_post("mutated-fixtures")),
        "garbage-entries": (garbage_added().map(lambda c: ("/cds-services/mtor-safety-order-select", c)), json_post("garbage-entries")),
        "feedback": (st.tuples(st.sampled_from(SERVICE_IDS).map(lambda s: f"/cds-services/{s}/feedback"), json_values), json_post("feedback")),
        "raw-bytes": (
            st.tuples(st.sampled_from(SERVICE_IDS), st.binary(max_size=500), st.sampled_from(["application/json", "text/plain", None])),
            lambda t: target.post("raw-bytes", f"/cds-services/{t[0]}", t[1], t[2]),
        ),
    }
    remaining = total - target.sent()
    for name, (strategy, send) in generators.items():
        run_generator(max(1, round(remaining * SHARES[name])), strategy, send)
    while target.sent() < total:  # hypothesis skips repeated examples, so a generator may send fewer than asked
        run_generator(total - target.sent(), *generators["json-bodies"])


def run_schemathesis(target: Target, count: int) -> None:
    cases = schema_cases(target.app) if target.app else _schema_cases_from_server(target.url)
    per_case = max(1, count // len(cases))
    for operation, mode in cases:

        def send(case, operation=operation, mode=mode):
            response = case.call(base_url=target.url) if target.url else case.call()
            target.record("schemathesis", response.status_code, {"case": case.as_curl_command()[:2000]})
            try:
                case.validate_response(response, checks=SCHEMA_CHECKS)
            except Exception as failure:  # counted and reported below; the run goes on
                target.nonconforming_count += 1
                if len(target.nonconforming) < 20:
                    target.nonconforming.append(f"{mode.value} {operation.method.upper()} {operation.path}: {str(failure)[:300]}")

        run_generator(per_case, operation.as_strategy(generation_mode=mode), send)


def _schema_cases_from_server(url: str):
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(url + "/openapi.yaml")
    operations = [result.ok() for result in schema.get_all_operations()]
    return [(op, mode) for op in operations for mode in GenerationMode if mode is GenerationMode.POSITIVE or op.method == "post"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000, help="about how many requests to send (default 10000)")
    parser.add_argument("--url", help="base URL of a running server (with CDS_REQUIRE_JWT=false); default: the app in-process")
    args = parser.parse_args(argv)
    url = args.url.rstrip("/") if args.url else None
    with tempfile.TemporaryDirectory() as tmp:
        app = None if url else make_fuzz_app(f"sqlite:///{tmp}/cards.sqlite3", log_level="ERROR")  # no line per request
        target = Target(url, app, Progress(args.requests))
        started = time.monotonic()
        fuzz(target, args.requests)
        elapsed = time.monotonic() - started
        if target.app:
            target.app.extensions["mtor_cds"].store.close()

    total = target.sent()
    server_errors = sum(n for c in target.statuses.values() for status, n in c.items() if status >= 500)
    print(f"{total} requests in {elapsed:.0f} s against {url or 'the app in-process'}")
    for generator, counter in target.statuses.items():
        print(f"  {generator:18} {sum(counter.values()):6}  " + "  ".join(f"{s}:{n}" for s, n in sorted(counter.items())))
    print(f"5xx answers: {server_errors}")
    print(f"schemathesis conformance failures: {target.nonconforming_count}")
    for example in target.server_errors:
        print(json.dumps(example)[:1000])
    for failure in target.nonconforming:
        print(failure)
    return 1 if server_errors or target.nonconforming_count else 0


if __name__ == "__main__":
    sys.exit(main())
