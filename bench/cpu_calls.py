"""CPU cost of one hook call, in one process, without HTTP: a load-independent companion to run_bench.py.

    python bench/cpu_calls.py                          # process CPU ms per call (time.process_time)
    python bench/cpu_calls.py --profile order-select   # where the time goes (cProfile, top 25)
    python bench/cpu_calls.py --instructions --calls 30   # instructions per call under valgrind (callgrind):
                                                          # independent of the machine's load; slow (~50x)

The app is called as a WSGI application (the same Flask app, hooks, metrics, log line and card store
that gunicorn serves), with the FHIR stub started in-process on loopback for the no-prefetch scenarios.
Each scenario is reported relative to the constant-JSON baseline (`GET /healthz`) measured the same
way, so a busy machine changes the absolute figures but much less the ratio.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import os
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))
from payloads import PATIENT_ID, floor_request, order_select_request, patient_view_request, sized_order_select_request  # noqa: E402

GROWTH_SIZES = (10, 60, 300, 1000)  # resources in the record (the growth table)


def make_app(fhir_base: str) -> Callable:
    os.environ.setdefault("CDS_PATIENT_HASH_SALT", "bench")
    from cds_service import create_app

    workdir = tempfile.mkdtemp(prefix="mtor-cds-cpu-")
    app = create_app(
        require_jwt=False, database_url=f"sqlite:///{workdir}/cards.sqlite3", allowed_fhir_servers=(fhir_base,),
    )
    # The request log goes to a file in production (gunicorn's stderr); here to a null stream, same formatting.
    for name in ("mtor_cds", "cds_service"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(open(os.devnull, "w"))  # noqa: SIM115 -- lives as long as the process
    return app


ABLATIONS = ("store", "log", "metrics")  # parts of the request path --without can leave out, to measure their share


def without(app, parts: list[str]) -> None:
    """Leave parts of the request path out (a measurement only: the answers stay the same)."""
    from cds_service import metrics

    if "store" in parts:
        app.extensions["mtor_cds"].store.record_cards = lambda records: None
    if "log" in parts:
        logging.getLogger("mtor_cds.request").disabled = True
    if "metrics" in parts:
        app.before_request_funcs[None].remove(metrics._start_timer)
        app.after_request_funcs[None].remove(metrics._count_request)


def wsgi_caller(app: Callable, method: str, path: str, body: bytes | None) -> Callable[[], int]:
    """A function that makes one request through app's WSGI interface and returns the status."""
    from werkzeug.test import EnvironBuilder

    template = EnvironBuilder(path=path, method=method, data=body,
                              content_type="application/json" if body else None).get_environ()
    status: list[int] = []

    def start_response(line: str, headers: list, exc_info=None) -> None:
        status.append(int(line[:3]))

    def call() -> int:
        environ = dict(template)
        environ["wsgi.input"] = io.BytesIO(body or b"")
        status.clear()
        chunks = app(environ, start_response)
        b"".join(chunks)
        if hasattr(chunks, "close"):
            chunks.close()
        return status[0]

    return call


def scenarios(fhir_base: str) -> dict[str, tuple[str, str, bytes | None]]:
    dumps = lambda body: json.dumps(body, separators=(",", ":")).encode()  # noqa: E731
    found = {
        "healthz": ("GET", "/healthz", None),
        "order-select": ("POST", "/cds-services/mtor-safety-order-select", dumps(order_select_request())),
        "floor": ("POST", "/cds-services/mtor-safety-order-select", dumps(floor_request())),
        "patient-view": ("POST", "/cds-services/mtor-safety-patient-view", dumps(patient_view_request(fhir_base))),
    }
    for size in GROWTH_SIZES:
        found[f"growth-{size}"] = ("POST", "/cds-services/mtor-safety-order-select", dumps(sized_order_select_request(size)))
    return found


def start_stub(delay_ms: float, batch: bool) -> tuple[str, Callable[[], None]]:
    """fhir_stub.py in its own process: its CPU must not count as the service's."""
    command = [sys.executable, str(BENCH / "fhir_stub.py"), "--port", "0", "--delay-ms", str(delay_ms)]
    stub = subprocess.Popen([*command, *(["--batch"] if batch else [])], stdout=subprocess.PIPE, text=True)
    port = stub.stdout.readline().split()[-1]

    def stop() -> None:
        stub.terminate()
        stub.wait()
        stub.stdout.close()

    return f"http://127.0.0.1:{port}/fhir", stop


def cpu_ms_per_call(call: Callable[[], int], calls: int, warmup: int) -> float:
    for _ in range(warmup):
        call()
    started = time.process_time()
    for _ in range(calls):
        call()
    return (time.process_time() - started) * 1000 / max(calls, 1)


def instructions_per_call(args: argparse.Namespace) -> int:
    """Re-run this script under callgrind; os.getppid() (libc getppid) marks the start and end of each measured run,
    and callgrind writes the instructions counted between two marks to a file of its own (--dump-before)."""
    with tempfile.TemporaryDirectory(prefix="mtor-cds-callgrind-") as tmp:
        command = ["valgrind", "--tool=callgrind", "--dump-before=getppid", f"--callgrind-out-file={tmp}/cg.out",
                   sys.executable, __file__, "--mark", "--calls", str(args.calls), "--warmup", str(args.warmup)]
        command += [*(["--only", args.only] if args.only else []), *(["--batch"] if args.batch else [])]
        command += ["--without", args.without] if args.without else []
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        names = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("MARK ")]
        if done.returncode != 0 or not names:
            raise SystemExit(f"valgrind run failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        totals = {}
        for i, name in enumerate(names):
            text = Path(f"{tmp}/cg.out.{2 * i + 2}").read_text(errors="replace")
            totals[name] = int(next(line.split()[1] for line in text.splitlines() if line.startswith("totals:"))) / args.calls
    base = totals.get("healthz")
    for name, count in totals.items():
        ratio = f"  {count / base:5.1f}× healthz" if base else ""
        print(f"{name:14s} {count / 1e6:8.2f} M instructions/call{ratio}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="measured calls per scenario (default 300)")
    parser.add_argument("--warmup", type=int, default=30, help="calls before measuring (default 30)")
    parser.add_argument("--only", default="", help="comma-separated scenarios (default: all)")
    parser.add_argument("--batch", action="store_true", help="the FHIR stub supports batch (its CapabilityStatement says so)")
    parser.add_argument("--fhir-delay-ms", type=float, default=0.0, help="FHIR stub delay (default 0: CPU only)")
    parser.add_argument("--profile", default="", help="profile one scenario with cProfile instead")
    parser.add_argument("--without", default="", help=f"leave out parts of the request path: {', '.join(ABLATIONS)}")
    parser.add_argument("--instructions", action="store_true", help="count instructions per call with valgrind instead")
    parser.add_argument("--mark", action="store_true", help=argparse.SUPPRESS)  # the run under valgrind
    return parser


def main() -> int:
    args = build_parser().parse_args()
    if args.instructions:
        return instructions_per_call(args)
    base, stop = start_stub(args.fhir_delay_ms, batch=args.batch)
    try:
        app = make_app(base)
        without(app, [part for part in args.without.split(",") if part])
        found = scenarios(base)
        if args.profile:
            call = wsgi_caller(app, *found[args.profile])
            for _ in range(args.warmup):
                call()
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(args.calls):
                call()
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
            return 0
        names = [n for n in args.only.split(",") if n] or list(found)
        results = {}
        for name in names:
            call = wsgi_caller(app, *found[name])
            status = call()
            if status != (400 if name == "floor" else 200):  # the floor is refused once parsed: that is what it measures
                raise SystemExit(f"{name} answered {status}")
            if args.mark:
                for _ in range(args.warmup):
                    call()
                os.getppid()
                for _ in range(args.calls):
                    call()
                os.getppid()
                print(f"MARK {name}", flush=True)
                continue
            results[name] = cpu_ms_per_call(call, args.calls, args.warmup)
        base_ms = results.get("healthz")
        for name, ms in results.items():
            ratio = f"  {ms / base_ms:5.1f}× healthz" if base_ms else ""
            print(f"{name:14s} {ms:7.3f} ms CPU/call{ratio}")
        print(f"load average (1 min): {os.getloadavg()[0]:.2f}; patient id {PATIENT_ID}", file=sys.stderr)
    finally:
        stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
