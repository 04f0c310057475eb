"""Benchmark the production server (gunicorn, `mtor-cds serve --production`) on loopback.

    python bench/run_bench.py                                  # defaults: < 3 min, writes bench/results/latest.md
    python bench/run_bench.py --configs sync:8:1,gthread:4:8   # compare worker settings (class:workers:threads)

Per configuration it starts the server (CDS_REQUIRE_JWT=false, a temporary SQLite store) and two FHIR
stubs (bench/fhir_stub.py: every query answered after --fhir-delay-ms; one of them also answers FHIR
batch), then measures with `wrk` (Debian: apt-get install wrk), for 1, 8 and 32 concurrent connections:

  healthz             GET /healthz: a constant JSON answer through the same stack (the baseline)
  floor               POST the order-select body with a wrong hook: read, parsed and refused with 400 before any
                      record is read. What a call of that size costs in this stack whatever the rules do; its 400s
                      are expected, not errors
  order-select        POST mtor-safety-order-select with a ~33 KB prefetch (bench/payloads.py): one critical card
  patient-view        POST mtor-safety-patient-view with no prefetch, to a server without batch: 8 parallel GETs
  patient-view-batch  the same, to a server whose CapabilityStatement lists batch: one POST with the 8 queries

and reports requests/s, p50 and p99 latency, server CPU ms per request (user + system time of the
gunicorn master and workers, from /proc, before and after each run) and throughput as a share of the
baseline at the same concurrency. Then the growth table: order-select with records of 10, 60, 300 and
1,000 resources (--growth), CPU ms per request each. The load average is recorded with the figures, and
a warning written when it was above 0.5 (the figures are then not valid). Only loopback is used.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
from payloads import floor_request, order_select_request, patient_view_request, sized_order_select_request  # noqa: E402 (bench/ on the path)

sys.path.insert(0, str(BENCH.parent))
from cds_service.production import DEFAULT_WORKER_CLASS, gunicorn_settings  # noqa: E402  (the shipped defaults)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WRK_SCRIPT = """
local path = os.getenv("BENCH_BODY")
if path and path ~= "" then
  local f = assert(io.open(path, "rb"))
  wrk.method = "POST"
  wrk.body = f:read("*a")
  wrk.headers["Content-Type"] = "application/json"
  f:close()
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"non_2xx":%d,"socket_errors":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
"""

# Targets from issue 15 (2-CPU machine, quiet).
ORDER_SELECT_CPU_MS = 0.8  # server CPU per call
ORDER_SELECT_SHARE = 0.4  # of the baseline's requests/s at the same concurrency
PATIENT_VIEW_CPU_MS = 3.0
PATIENT_VIEW_ROUND_TRIPS = 2.0  # p99 at 8 connections, in FHIR round trips (--fhir-delay-ms)
GROWTH_SIZES = (10, 60, 300, 1000)  # resources in the record
GROWTH_STEP = 2.0  # "linear, no step": no segment of the growth table costs more per resource than this × the cheapest
QUIET_LOAD = 0.5  # load average above which the figures are not valid
FLOOR = "floor"  # the scenario that measures the stack's own cost of a call of order-select's size


@dataclass
class Result:
    scenario: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_request: float
    non_2xx: int
    socket_errors: int
    baseline_ratio: float | None = None

    @property
    def errors(self) -> int:
        """Answers that were not what the scenario asks for (the floor's 400s are what it asks for)."""
        return self.socket_errors + (0 if self.scenario == FLOOR else self.non_2xx)


@dataclass(frozen=True)
class ServerConfig:
    worker_class: str
    workers: int
    threads: int

    @classmethod
    def parse(cls, text: str) -> ServerConfig:
        worker_class, workers, threads = text.split(":")
        return cls(worker_class, int(workers), int(threads))

    def __str__(self) -> str:
        return f"{self.worker_class}:{self.workers}:{self.threads}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_cpu_s(pid: int) -> tuple[float, float, int]:
    """(own user+system s, reaped children's user+system s, parent pid) from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    ppid, utime, stime, cutime, cstime = int(fields[1]), *(int(x) for x in fields[11:15])
    return (utime + stime) / CLOCK_TICKS, (cutime + cstime) / CLOCK_TICKS, ppid


def server_cpu_s(master_pid: int) -> float:
    """CPU time of the gunicorn master, its live workers and its exited (reaped) workers."""
    own, reaped, _ = process_cpu_s(master_pid)
    total = own + reaped
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != master_pid:
            try:
                cpu, _, ppid = process_cpu_s(int(entry))
            except (OSError, IndexError, ValueError):
                continue
            if ppid == master_pid:
                total += cpu
    return total


def http(url: str, body: dict | None = None, timeout: float = 10) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, json.loads(response.read() or b"null")


class Servers:
    """The FHIR stub and the production server, started for one configuration and stopped after."""

    def __init__(self, config: ServerConfig, fhir_delay_ms: float, workdir: Path, max_requests: int | None,
                 extra_env: Callable[[str, str], Mapping[str, str]] | None = None):
        """extra_env(server base URL, FHIR stub base URL): more server settings (bench/soak.py turns JWT on)."""
        self.workdir = workdir
        self.stubs: list[subprocess.Popen] = []
        self.fhir_base = self._start_stub(fhir_delay_ms, batch=False)
        self.fhir_batch_base = self._start_stub(fhir_delay_ms, batch=True)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CDS_", "GUNICORN_", "WEB_CONCURRENCY", "PROMETHEUS_"))}
        env.update(
            PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
            CDS_REQUIRE_JWT="false",
            CDS_DATABASE_URL=f"sqlite:///{workdir}/cards.sqlite3",
            CDS_ALLOWED_FHIR_SERVERS=f"{self.fhir_base},{self.fhir_batch_base}",
            CDS_PATIENT_HASH_SALT="bench",
            WEB_CONCURRENCY=str(config.workers),
            GUNICORN_WORKER_CLASS=config.worker_class,
            GUNICORN_THREADS=str(config.threads),
        )
        if max_requests is not None:
            env["GUNICORN_MAX_REQUESTS"] = str(max_requests)
        if extra_env is not None:
            env.update(extra_env(self.base, self.fhir_base))
        self.log_path = workdir / f"server-{config}.log"
        with open(self.log_path, "wb") as log:
            self.server = subprocess.Popen(
                [sys.executable, "-m", "cds_service.cli", "serve", "--production", "--host", "127.0.0.1",
                 "--port", str(self.port)],
                cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                if http(f"{self.base}/healthz", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            if self.server.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start; see {self.log_path}")
            time.sleep(0.1)

    def _start_stub(self, fhir_delay_ms: float, batch: bool) -> str:
        command = [sys.executable, str(BENCH / "fhir_stub.py"), "--port", "0", "--delay-ms", str(fhir_delay_ms)]
        stub = subprocess.Popen([*command, *(["--batch"] if batch else [])], stdout=subprocess.PIPE, text=True)
        self.stubs.append(stub)
        line = stub.stdout.readline()
        match = re.match(r"listening on (\d+)", line)
        if not match:
            self.stop()
            raise RuntimeError(f"FHIR stub did not start: {line!r}")
        return f"http://127.0.0.1:{match.group(1)}/fhir"

    def stop(self) -> None:
        for process in (getattr(self, "server", None), *self.stubs):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        for stub in self.stubs:
            if stub.stdout:
                stub.stdout.close()


def check_answers(servers: Servers, bodies: dict[str, Path]) -> dict[str, str]:
    """Before measuring: each scenario answers what it should (else the numbers would mean nothing)."""
    notes = {}
    try:
        http(f"{servers.base}/cds-services/mtor-safety-order-select", json.loads(bodies[FLOOR].read_text()))
        raise RuntimeError(f"{FLOOR} was answered, not refused")
    except urllib.error.HTTPError as refused:
        if refused.code != 400:
            raise RuntimeError(f"{FLOOR} answered {refused.code}, not 400") from None
        notes[FLOOR] = "the order-select body with hook patient-view: refused with 400 after its JSON is parsed"
    for name, body in bodies.items():
        if name.startswith(("order-select", "growth-")):
            status, answer = http(f"{servers.base}/cds-services/mtor-safety-order-select", json.loads(body.read_text()))
            cards = [(c["source"]["topic"]["code"], c["indicator"]) for c in answer["cards"]]
            if status != 200 or ("cyp3a4-interaction", "critical") not in cards:
                raise RuntimeError(f"{name} answered {status} {cards}")
            if name == "order-select":
                notes[name] = f"{len(body.read_bytes()) // 1024} KB body; cards: {cards}"
    for name, base in (("patient-view", servers.fhir_base), ("patient-view-batch", servers.fhir_batch_base)):
        stats_url = base.rsplit("/fhir", 1)[0] + "/_stats"
        http(f"{servers.base}/cds-services/mtor-safety-patient-view", json.loads(bodies[name].read_text()))  # asks metadata
        before = http(stats_url)[1]
        started = time.perf_counter()
        status, answer = http(f"{servers.base}/cds-services/mtor-safety-patient-view", json.loads(bodies[name].read_text()))
        took_ms = (time.perf_counter() - started) * 1000
        after = http(stats_url)[1]
        requests, batched = after["requests"] - before["requests"], after["batched"] - before["batched"]
        cards = [(c["source"]["topic"]["code"], c["indicator"]) for c in answer["cards"]]
        expected = (1, 8) if name == "patient-view-batch" else (8, 0)
        if status != 200 or (requests, batched) != expected or any(topic == "checks-incomplete" for topic, _ in cards):
            raise RuntimeError(f"{name} answered {status} after {requests} FHIR requests ({batched} in batches), cards {cards}")
        how = "one batch of 8 queries" if batched else "8 FHIR queries in parallel"
        notes[name] = f"{how} per call; one call alone: {took_ms:.0f} ms; cards: {cards}"
    return notes


def run_wrk(url: str, connections: int, duration_s: int, script: Path, body: Path | None) -> dict:
    env = {**os.environ, "BENCH_BODY": str(body) if body else ""}
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--timeout", "5s", "-s", str(script), url]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=duration_s + 30, check=False)
    line = next((out for out in done.stdout.splitlines() if out.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed: {done.stdout}\n{done.stderr}")
    return json.loads(line[len("BENCH_JSON "):])


def measure(servers: Servers, scenario: str, url: str, connections: int, duration_s: int, warmup_s: int,
            script: Path, body: Path | None) -> Result:
    if warmup_s > 0:
        run_wrk(url, connections, warmup_s, script, body)
    master = servers.server.pid
    cpu_before = server_cpu_s(master)
    stats = run_wrk(url, connections, duration_s, script, body)
    cpu_after = server_cpu_s(master)
    requests = max(stats["requests"], 1)
    return Result(
        scenario=scenario,
        connections=connections,
        rps=stats["requests"] / (stats["duration_us"] / 1e6),
        p50_ms=stats["p50_us"] / 1000,
        p99_ms=stats["p99_us"] / 1000,
        cpu_ms_per_request=(cpu_after - cpu_before) * 1000 / requests,
        non_2xx=stats["non_2xx"],
        socket_errors=stats["socket_errors"],
    )


def run_config(config: ServerConfig, args: argparse.Namespace, workdir: Path) -> tuple[list[Result], dict[str, str]]:
    servers = Servers(config, args.fhir_delay_ms, workdir, args.max_requests)
    try:
        requests = {
            "order-select": order_select_request(),
            FLOOR: floor_request(),
            "patient-view": patient_view_request(servers.fhir_base),
            "patient-view-batch": patient_view_request(servers.fhir_batch_base),
            **{f"growth-{size}": sized_order_select_request(size) for size in args.growth},
        }
        bodies = {name: workdir / f"{name}.json" for name in requests}
        for name, request in requests.items():
            bodies[name].write_text(json.dumps(request, separators=(",", ":")))
        script = workdir / "bench.lua"
        script.write_text(WRK_SCRIPT)
        notes = check_answers(servers, bodies)
        hook = f"{servers.base}/cds-services/mtor-safety-"
        scenarios = [
            ("healthz", f"{servers.base}/healthz", None),
            (FLOOR, f"{hook}order-select", bodies[FLOOR]),
            ("order-select", f"{hook}order-select", bodies["order-select"]),
            ("patient-view", f"{hook}patient-view", bodies["patient-view"]),
            ("patient-view-batch", f"{hook}patient-view", bodies["patient-view-batch"]),
        ]
        results = []
        for name, url, body in scenarios:
            for connections in args.connections:
                results.append(measure(servers, name, url, connections, args.duration, args.warmup, script, body))
                report(config, results[-1])
        for size in args.growth:  # CPU per call by record size: one concurrency is enough
            results.append(measure(servers, f"growth-{size}", f"{hook}order-select", args.growth_connections,
                                   args.duration, args.warmup, script, bodies[f"growth-{size}"]))
            report(config, results[-1])
        baseline = {r.connections: r.rps for r in results if r.scenario == "healthz"}
        for result in results:
            result.baseline_ratio = result.rps / baseline[result.connections] if baseline.get(result.connections) else None
        return results, notes
    finally:
        servers.stop()


def report(config: ServerConfig, result: Result) -> None:
    print(f"  {config} {result.scenario:18s} c={result.connections:<3d} {result.rps:8.0f} req/s  p50 {result.p50_ms:6.1f} ms"
          f"  p99 {result.p99_ms:6.1f} ms  cpu {result.cpu_ms_per_request:5.2f} ms/req", file=sys.stderr)


def verdicts(results: list[Result], fhir_delay_ms: float) -> list[str]:
    """The targets of issue 15, checked: one line each."""
    by = {(r.scenario, r.connections): r for r in results}
    lines = []

    def check(ok: bool, text: str) -> None:
        lines.append(f"- {'PASS' if ok else 'MISS'}: {text}")

    for c in (8, 32):
        if (r := by.get(("order-select", c))) and r.baseline_ratio is not None:
            check(r.baseline_ratio >= ORDER_SELECT_SHARE, f"order-select at {c}: {r.baseline_ratio:.2f}× baseline (≥ {ORDER_SELECT_SHARE})")
    if (r := by.get(("order-select", 8))):
        check(r.p99_ms <= 10, f"order-select p99 at 8: {r.p99_ms:.1f} ms (≤ 10)")
    if (r := by.get(("order-select", 32))):
        check(r.p99_ms <= 30, f"order-select p99 at 32: {r.p99_ms:.1f} ms (≤ 30)")
    for scenario, target in (("order-select", ORDER_SELECT_CPU_MS), ("patient-view", PATIENT_VIEW_CPU_MS),
                             ("patient-view-batch", PATIENT_VIEW_CPU_MS)):
        worst = max((r.cpu_ms_per_request for r in results if r.scenario == scenario), default=None)
        if worst is not None:
            check(worst <= target, f"{scenario} CPU: at most {worst:.2f} ms per request (≤ {target:g})")
    for scenario in ("patient-view", "patient-view-batch"):
        if (r := by.get((scenario, 8))):
            limit = PATIENT_VIEW_ROUND_TRIPS * fhir_delay_ms
            check(r.p99_ms <= limit, f"{scenario} p99 at 8: {r.p99_ms:.1f} ms (≤ {limit:g}, {PATIENT_VIEW_ROUND_TRIPS:g} round trips)")
    for c in (8, 32):  # not a target: what the stack leaves of the targets before the record is read
        if (r := by.get((FLOOR, c))) and r.baseline_ratio is not None:
            lines.append(f"- floor at {c} (not a target: the same body refused with 400 before its record is read): "
                         f"{r.cpu_ms_per_request:.2f} ms CPU per request, {r.baseline_ratio:.2f}× baseline, p99 {r.p99_ms:.1f} ms")
    growth = growth_segments(results)
    if growth:
        slopes = [slope for _, _, slope in growth]
        check(max(slopes) <= GROWTH_STEP * max(min(slopes), 1e-6),
              "growth linear, no step: CPU per added resource " + ", ".join(f"{a}→{b}: {s * 1000:.1f} µs" for a, b, s in growth)
              + f" (no segment > {GROWTH_STEP:g}× the cheapest)")
    errors = sum(r.errors for r in results)
    check(errors == 0, f"{errors} non-2xx answers or socket errors in all runs")
    return lines


def growth_segments(results: list[Result]) -> list[tuple[int, int, float]]:
    """(from size, to size, CPU ms per added resource) between consecutive rows of the growth table."""
    sizes = sorted((int(r.scenario.split("-")[1]), r.cpu_ms_per_request) for r in results if r.scenario.startswith("growth-"))
    return [(a, b, (cb - ca) / (b - a)) for (a, ca), (b, cb) in zip(sizes, sizes[1:], strict=False)]


def load_warning(load_before: float, load_after: float) -> list[str]:
    """Judged by the load before the run: the run itself (wrk, the stub, the server) raises the load after it, so
    `load_after` is recorded beside the figures but says nothing about other processes."""
    if load_before <= QUIET_LOAD:
        return []
    return [f"**WARNING: load average {load_before:.2f} > {QUIET_LOAD} before the run: the machine was not idle; these "
            "figures are not valid (rerun with nothing else running).**", ""]


def table(results: list[Result], config: ServerConfig | None = None) -> list[str]:
    head = "| config " if config else ""
    rows = [
        f"{head}| scenario | conns | req/s | p50 ms | p99 ms | server CPU ms/req | × baseline req/s | errors |",
        f"{'|---' if config else ''}|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ratio = f"{r.baseline_ratio:.2f}" if r.baseline_ratio is not None else "-"
        rows.append(
            f"{f'| {config} ' if config else ''}| {r.scenario} | {r.connections} | {r.rps:,.0f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} "
            f"| {r.cpu_ms_per_request:.2f} | {ratio} | {r.errors} |"
        )
    return rows


def growth_table(results: list[Result]) -> list[str]:
    rows = ["| resources | server CPU ms/req | req/s |", "|---:|---:|---:|"]
    for r in sorted((r for r in results if r.scenario.startswith("growth-")), key=lambda r: int(r.scenario.split("-")[1])):
        rows.append(f"| {r.scenario.split('-')[1]} | {r.cpu_ms_per_request:.2f} | {r.rps:,.0f} |")
    return rows


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import gunicorn

    return (f"{len(os.sched_getaffinity(0))} CPUs usable ({model}), {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, gunicorn {gunicorn.__version__}, wrk (1 thread, on the same CPUs)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shipped = gunicorn_settings({})
    parser.add_argument("--configs", default=f"{DEFAULT_WORKER_CLASS}:{shipped['workers']}:{shipped['threads']}",
                        help="worker_class:workers:threads, comma-separated (default: the shipped cds_service/production.py settings)")
    parser.add_argument("--connections", default="1,8,32", type=lambda s: [int(x) for x in s.split(",")],
                        help="concurrent connections, comma-separated (default 1,8,32)")
    parser.add_argument("--growth", default=",".join(map(str, GROWTH_SIZES)), type=lambda s: [int(x) for x in s.split(",") if x],
                        help="record sizes of the growth table, comma-separated, empty for none (default 10,60,300,1000)")
    parser.add_argument("--growth-connections", type=int, default=8, help="connections for the growth table (default 8)")
    parser.add_argument("--duration", type=int, default=5, help="seconds measured per run (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of load before each run, 0 for none (default 1)")
    parser.add_argument("--fhir-delay-ms", type=float, default=50.0, help="FHIR stub delay per query (default 50)")
    parser.add_argument("--max-requests", type=int, default=None, help="GUNICORN_MAX_REQUESTS (default: the shipped one)")
    parser.add_argument("--out", type=Path, default=None, help="Markdown results (default: bench/results/latest.md "
                        "for a single config, else bench/results/sweep.md)")
    parser.add_argument("--notes", type=Path, default=BENCH / "results" / "notes.md",
                        help="Markdown appended to the results (analysis, profile); skipped when missing")
    return parser


def main() -> int:
    args = build_parser().parse_args()
    if not shutil.which("wrk"):
        print("run_bench: wrk not found (Debian: apt-get install -y wrk)", file=sys.stderr)
        return 2
    configs = [ServerConfig.parse(c) for c in args.configs.split(",")]
    out = args.out or BENCH / "results" / ("latest.md" if len(configs) == 1 else "sweep.md")

    started = time.monotonic()
    load_before = os.getloadavg()
    all_results: list[tuple[ServerConfig, list[Result], dict[str, str]]] = []
    with tempfile.TemporaryDirectory(prefix="mtor-cds-bench-") as tmp:
        for config in configs:
            print(f"config {config}", file=sys.stderr)
            workdir = Path(tmp) / str(config).replace(":", "-")
            workdir.mkdir()
            results, notes = run_config(config, args, workdir)
            all_results.append((config, results, notes))
    load_after = os.getloadavg()[0]

    lines = [
        "# Benchmark results" if len(configs) == 1 else "# Worker configuration sweep",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- command: `python bench/run_bench.py {' '.join(sys.argv[1:])}`".replace("`python bench/run_bench.py `", "`python bench/run_bench.py`"),
        (f"- each run: {args.warmup:g} s warm-up, then {args.duration:g} s measured; FHIR stub delay {args.fhir_delay_ms:g} ms"
         f" per query; total {time.monotonic() - started:.0f} s"),
        ("- server: `mtor-cds serve --production` (gunicorn, preload), CDS_REQUIRE_JWT=false, SQLite card store in a temp dir,"
         " one JSON log line per call (to a file)"),
        "- CPU: user + system time of the gunicorn master, its workers and exited workers (/proc), per request answered",
        (f"- load average (1 min) before / after: {load_before[0]:.2f} / {load_after:.2f}"
         f" (valid only at ≤ {QUIET_LOAD}: otherwise other processes shared the CPUs and every figure is pessimistic)"),
        "",
        *load_warning(load_before[0], load_after),
    ]
    for config, results, notes in all_results:
        lines += [f"## {config} (worker class : workers : threads)", ""]
        lines += [f"- {scenario}: {text}" for scenario, text in notes.items()]
        lines += [""] + table([r for r in results if not r.scenario.startswith("growth-")])
        lines += ["", "Growth (order-select, one critical card, by resources in the record):", ""] + growth_table(results)
        lines += ["", "Targets (issue 15):", ""] + verdicts(results, args.fhir_delay_ms) + [""]
    if len(all_results) > 1:
        lines += ["## All configurations side by side", ""]
        header, rule, *_ = table([])
        lines += ["| config " + header, "|---" + rule]
        for config, results, _ in all_results:
            lines += table(results, config)[2:]
        lines.append("")
    if args.notes and args.notes.is_file() and len(configs) == 1:
        lines += [args.notes.read_text().rstrip(), ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
