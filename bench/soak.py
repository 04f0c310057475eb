"""Soak the production server for N minutes with a mixed stream of hook calls and feedback (issue 11).

    python bench/soak.py                        # 10 minutes; prints a Markdown report; exit 1 on any failure
    python bench/soak.py --minutes 0.25 --workers 2 --concurrency 2 --rate 8      # a quick check

Loopback only, bounded: it starts `mtor-cds serve --production` (gunicorn, --workers sync workers, JWT
verification ON with a fresh EC key, a trusted-issuers file with its public JWK inline, CDS_PUBLIC_BASE_URL
set, a temporary SQLite card store) and bench/fhir_stub.py on the FHIR allowlist. Then --concurrency client
threads send about --rate requests/s in all, each signed with a fresh JWT (its own jti):

  - every hook-call fixture in fhir_fixtures/ (patient-view, order-select, order-sign, all prefetched),
  - patient-view with no prefetch (the service fetches 8 queries from the stub),
  - a feedback POST for received cards, at least --feedback-delay-s later (cards are stored asynchronously):
    accepted with a suggestion the card offered, or overridden with one of its override reasons.

It checks: 0 errors (every hook call and feedback answers 200: no 5xx, no 4xx; no traceback, error log line or
worker timeout in the server log), card and suggestion uuids unique across all workers, and worker memory: the
RSS of every worker is sampled from /proc every --sample-s seconds; after a warm-up a worker's RSS may not grow
by more than --max-growth-mb. Worker recycling (GUNICORN_MAX_REQUESTS) is off by default (--max-requests 0),
so that a leak shows instead of being reset.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import json
import os
import random
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
from payloads import patient_view_request  # noqa: E402
from run_bench import ServerConfig, Servers  # noqa: E402

ISSUER = "https://soak-ehr.invalid"
KID = "soak-1"
FEEDBACK_SHARE = 0.5  # of received cards, how many get feedback


@dataclasses.dataclass
class Tally:
    """What the client threads saw; guarded by `lock`."""

    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    calls: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # kind -> requests
    errors: list[str] = dataclasses.field(default_factory=list)  # first few, for the report
    error_count: int = 0
    ids: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # card and suggestion uuids
    cards: int = 0
    pending_feedback: collections.deque = dataclasses.field(default_factory=collections.deque)  # (due, service, entry)

    def error(self, text: str) -> None:
        with self.lock:
            self.error_count += 1
            if len(self.errors) < 10:
                self.errors.append(text[:300])


def fixtures() -> list[dict[str, Any]]:
    """Every hook-call fixture (fully prefetched), as an EHR would send it."""
    return [json.loads(path.read_text()) for path in sorted((ROOT / "fhir_fixtures").glob("*.json")) if path.name != "scenarios.json"]


class Client:
    """Signs each request like an EHR: ES384, kid, iss, aud = the URL called, a fresh jti, 5-minute lifetime."""

    def __init__(self, base: str, key: ec.EllipticCurvePrivateKey):
        self.base, self.key = base, key

    def token(self, path: str) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": f"{self.base}{path}", "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
        return jwt.encode(claims, self.key, algorithm="ES384", headers={"kid": KID, "typ": "JWT"})

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token(path)}", **({"Content-Type": "application/json"} if data else {})}
        request = urllib.request.Request(f"{self.base}{path}", data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


def jwt_settings(workdir: Path, key: ec.EllipticCurvePrivateKey):
    """The server settings for JWT verification: a trusted-issuers file with the public key inline."""
    public = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    public.update({"kid": KID, "use": "sig", "alg": "ES384"})
    issuers = workdir / "trusted-issuers.json"
    issuers.write_text(json.dumps({"issuers": {ISSUER: {"jwks": {"keys": [public]}}}}))

    def env(base: str, fhir_base: str) -> dict[str, str]:
        return {"CDS_REQUIRE_JWT": "true", "CDS_TRUSTED_ISSUERS": str(issuers), "CDS_PUBLIC_BASE_URL": base,
                "CDS_ALLOWED_FHIR_SERVERS": fhir_base}
    return env


def feedback_entry(card: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Accept a suggestion the card offered, else override it with one of its reasons (or with none)."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    suggestions = [s["uuid"] for s in card.get("suggestions", ()) if "uuid" in s]
    if suggestions and rng.random() < 0.5:
        return {"card": card["uuid"], "outcome": "accepted", "acceptedSuggestions": [{"id": suggestions[0]}], "outcomeTimestamp": now}
    entry: dict[str, Any] = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": now}
    if card.get("overrideReasons"):
        entry["overrideReason"] = {"reason": rng.choice(card["overrideReasons"]), "userComment": "soak test"}
    return entry


def client_loop(client: Client, services: dict[str, str], stub_base: str, tally: Tally, stop_at: float,
                interval_s: float, feedback_delay_s: float, seed: int) -> None:
    rng = random.Random(seed)
    hook_calls = fixtures()
    next_at = time.monotonic()
    while (now := time.monotonic()) < stop_at:
        if now < next_at:
            time.sleep(min(next_at - now, stop_at - now))
            continue
        next_at += interval_s
        with tally.lock:
            due = tally.pending_feedback.popleft() if tally.pending_feedback and tally.pending_feedback[0][0] <= now else None
        if due:
            _, service, entry = due
            status, body = client.call("POST", f"/cds-services/{service}/feedback", {"feedback": [entry]})
            with tally.lock:
                tally.calls["feedback"] += 1
            if status != 200:
                tally.error(f"feedback {entry['outcome']}: {status} {body[:200]!r}")
            continue
        if rng.random() < 0.2:
            request, kind = patient_view_request(stub_base), "patient-view (fetched)"
        else:
            request = rng.choice(hook_calls)
            kind = f"{request['hook']} (prefetched)"
        request = {**request, "hookInstance": str(uuid.uuid4())}
        service = services[request["hook"]]
        status, body = client.call("POST", f"/cds-services/{service}", request)
        with tally.lock:
            tally.calls[kind] += 1
        if status != 200:
            tally.error(f"{kind}: {status} {body[:200]!r}")
            continue
        cards = json.loads(body).get("cards", [])
        with tally.lock:
            tally.cards += len(cards)
            for card in cards:
                tally.ids[card["uuid"]] += 1
                for suggestion in card.get("suggestions", ()):
                    tally.ids[suggestion["uuid"]] += 1
                if rng.random() < FEEDBACK_SHARE:
                    tally.pending_feedback.append((time.monotonic() + feedback_delay_s, service, feedback_entry(card, rng)))


# --- memory -------------------------------------------------------------------------------------


def workers_of(master_pid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii") as handle:
                    if int(handle.read().rsplit(")", 1)[1].split()[1]) == master_pid:
                        pids.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return sorted(pids)


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def sample_memory(master_pid: int, samples: dict[int, list[tuple[float, float]]], started: float, stop: threading.Event,
                  every_s: float) -> None:
    while True:
        for pid in workers_of(master_pid):
            rss = rss_mb(pid)
            if rss is not None:
                samples.setdefault(pid, []).append((time.monotonic() - started, rss))
        if stop.wait(every_s):
            return


@dataclasses.dataclass(frozen=True)
class WorkerMemory:
    pid: int
    start_mb: float  # first sample after the warm-up
    end_mb: float
    max_mb: float
    slope_mb_per_min: float  # least squares over the samples after the warm-up

    @property
    def growth_mb(self) -> float:
        return self.end_mb - self.start_mb


def memory_of(samples: dict[int, list[tuple[float, float]]], warmup_s: float) -> list[WorkerMemory]:
    """Per worker: RSS after the warm-up (its first samples, while imports and caches settle), at the end, its
    maximum and its slope. Workers with fewer than two samples after the warm-up are left out."""
    result = []
    for pid, series in sorted(samples.items()):
        settled = [(t, mb) for t, mb in series if t - series[0][0] >= warmup_s]
        if len(settled) < 2:
            continue
        mean_t = sum(t for t, _ in settled) / len(settled)
        mean_mb = sum(mb for _, mb in settled) / len(settled)
        spread = sum((t - mean_t) ** 2 for t, _ in settled)
        slope = sum((t - mean_t) * (mb - mean_mb) for t, mb in settled) / spread * 60 if spread else 0.0
        result.append(WorkerMemory(pid, settled[0][1], settled[-1][1], max(mb for _, mb in series), slope))
    return result


# --- the run ------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    key = ec.generate_private_key(ec.SECP384R1())
    with tempfile.TemporaryDirectory(prefix="mtor-cds-soak-") as tmp:
        workdir = Path(tmp)
        servers = Servers(ServerConfig("sync", args.workers, 1), args.fhir_delay_ms, workdir, args.max_requests,
                          extra_env=jwt_settings(workdir, key))
        try:
            return soak(args, servers, Client(servers.base, key))
        finally:
            servers.stop()


def soak(args: argparse.Namespace, servers: Servers, client: Client) -> int:
    status, body = client.call("GET", "/cds-services")
    if status != 200:
        print(f"discovery answered {status}: {body[:200]!r}", file=sys.stderr)
        return 1
    services = {s["hook"]: s["id"] for s in json.loads(body)["services"]}
    unsigned = urllib.request.Request(f"{servers.base}/cds-services")
    try:
        urllib.request.urlopen(unsigned, timeout=5)
        print("JWT verification is off: a call without a token was answered", file=sys.stderr)
        return 1
    except urllib.error.HTTPError as exc:
        if exc.code != 401:
            raise
    tally, samples, stop = Tally(), {}, threading.Event()
    duration_s = args.minutes * 60
    warmup_s = min(60.0, duration_s / 4)
    load_before = os.getloadavg()
    started = time.monotonic()
    sampler = threading.Thread(target=sample_memory, args=(servers.server.pid, samples, started, stop, args.sample_s), daemon=True)
    sampler.start()
    stop_at = started + duration_s
    threads = [threading.Thread(target=client_loop, args=(client, services, servers.fhir_base, tally, stop_at,
                                                          args.concurrency / args.rate, args.feedback_delay_s, n))
               for n in range(args.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    stop.set()
    sampler.join()
    load_after = os.getloadavg()
    log = servers.log_path.read_text(errors="replace")
    log_errors = [line for line in log.splitlines() if "Traceback" in line or '"level":"error"' in line or "WORKER TIMEOUT" in line]
    memory = memory_of(samples, warmup_s)
    duplicates = sum(n - 1 for n in tally.ids.values() if n > 1)
    grown = [m for m in memory if m.growth_mb > args.max_growth_mb]
    requests = sum(tally.calls.values())
    failures = []
    if tally.error_count:
        failures.append(f"{tally.error_count} request(s) failed")
    if log_errors:
        failures.append(f"{len(log_errors)} error line(s) in the server log")
    if duplicates:
        failures.append(f"{duplicates} repeated uuid(s)")
    if grown:
        failures.append(f"worker RSS grew more than {args.max_growth_mb:g} MB: " + ", ".join(f"{m.pid} +{m.growth_mb:.1f} MB" for m in grown))
    if not memory:
        failures.append("no worker memory samples after the warm-up")
    if not tally.calls["feedback"] or requests < 10:
        failures.append("too few requests or no feedback sent")
    print(report(args, elapsed, tally, requests, duplicates, log_errors, memory, warmup_s, load_before, load_after, failures))
    return 1 if failures else 0


def report(args, elapsed, tally, requests, duplicates, log_errors, memory, warmup_s, load_before, load_after, failures) -> str:
    lines = [
        f"## Soak {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC: {'PASS' if not failures else 'FAIL'}",
        "",
        f"- command: `python bench/soak.py --minutes {args.minutes:g} --workers {args.workers} --concurrency {args.concurrency} "
        f"--rate {args.rate:g}` (sync workers, JWT on, GUNICORN_MAX_REQUESTS={args.max_requests}, FHIR stub delay "
        f"{args.fhir_delay_ms:g} ms)",
        f"- duration: {elapsed:.0f} s; requests: {requests} ({requests / elapsed:.1f}/s): "
        + ", ".join(f"{kind} {n}" for kind, n in sorted(tally.calls.items())),
        f"- errors: {tally.error_count} (non-200 answers); server log error lines: {len(log_errors)}",
        f"- cards: {tally.cards}; card and suggestion uuids: {len(tally.ids)} distinct, {duplicates} repeated",
        f"- load average (1/5/15 min): before {' '.join(f'{x:.2f}' for x in load_before)}, "
        f"after {' '.join(f'{x:.2f}' for x in load_after)} (machine: {os.cpu_count()} CPUs, shared)",
        f"- worker RSS (MB), after a {warmup_s:.0f} s warm-up, sampled every {args.sample_s:g} s:",
        "",
        "| worker pid | start | end | max | growth | slope (MB/min) |",
        "|---|---|---|---|---|---|",
        *(f"| {m.pid} | {m.start_mb:.1f} | {m.end_mb:.1f} | {m.max_mb:.1f} | {m.growth_mb:+.1f} | {m.slope_mb_per_min:+.2f} |" for m in memory),
    ]
    lines += ["", *(f"- FAIL: {f}" for f in failures), *(f"  - {e}" for e in tally.errors), *(f"  - log: {e[:200]}" for e in log_errors[:5])]
    return "\n".join(lines).rstrip() + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=4, help="gunicorn sync workers (default 4)")
    parser.add_argument("--concurrency", type=int, default=4, help="client threads (default 4)")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second in all (default 20)")
    parser.add_argument("--fhir-delay-ms", type=float, default=20.0, help="the stub's answer delay (default 20)")
    parser.add_argument("--feedback-delay-s", type=float, default=2.0, help="feedback at least this long after its card")
    parser.add_argument("--sample-s", type=float, default=10.0, help="RSS sampling interval (default 10 s)")
    parser.add_argument("--max-growth-mb", type=float, default=30.0, help="largest RSS growth of a worker after warm-up")
    parser.add_argument("--max-requests", type=int, default=0, help="GUNICORN_MAX_REQUESTS (default 0: no recycling)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
