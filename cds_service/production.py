"""Production serving with gunicorn: the one place its settings are chosen.

    mtor-cds serve --production [--host H] [--port P]        -> run_gunicorn(H, P)
    gunicorn -c deploy/gunicorn.conf.py 'cds_service:create_app()'   (the container's command)

Both read serving_settings() (gunicorn_settings() plus the private metrics directory it creates):
deploy/gunicorn.conf.py only copies its result into the config file's namespace, so a tuning value
lives here and nowhere else. Every value can be changed with an
environment variable, so the same settings serve a laptop, the container image and Kubernetes (set
in the ConfigMap):

    MTOR_CDS_BIND             full bind address; wins over PORT (e.g. "0.0.0.0:9000", "unix:/tmp/s")
    PORT                      port to listen on, on all interfaces (the image sets PORT=8080)
    WEB_CONCURRENCY           worker processes (default: 4 x the CPUs this process may use)
    GUNICORN_WORKER_CLASS     worker class (default: sync; sync and gthread answer their own errors in JSON, below)
    GUNICORN_THREADS          threads per worker (default: 1; more than 1 makes a sync worker gthread, as gunicorn does)
    GUNICORN_TIMEOUT          seconds a worker may stay silent before it is killed (default: 30)
    GUNICORN_GRACEFUL_TIMEOUT seconds in-flight requests get to finish on shutdown (default: 25)
    GUNICORN_KEEPALIVE        seconds an idle keep-alive connection is kept open (default: 75)
    GUNICORN_MAX_REQUESTS     requests before a worker is recycled, 0 = never (default: 2000)
    GUNICORN_REQUEST_ARRIVAL_TIMEOUT  seconds a sync worker waits for a whole request (head and body) to
                              arrive before it stops reading that connection (default: 10; 0: no limit)
    GUNICORN_LOG_LEVEL        gunicorn's own log level (default: CDS_LOG_LEVEL, else info)
    PROMETHEUS_MULTIPROC_DIR  where worker processes keep their metrics (default with more than one
                              worker: a new private directory, mkdtemp under /dev/shm, mode 0700,
                              removed on exit; a predictable path is never reused)

Nothing here imports prometheus_client or the app: prometheus_client decides at import whether it
runs in multiprocess mode, so PROMETHEUS_MULTIPROC_DIR must be set (gunicorn's raw_env does it in
the master, before the app is loaded) before anything imports it.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

from gunicorn import util as gunicorn_util
from gunicorn.workers.gthread import ThreadWorker
from gunicorn.workers.sync import SyncWorker

from cds_service.errors import operation_outcome_body  # plain data: imports neither prometheus_client nor the app

__all__ = ["JsonErrorSyncWorker", "JsonErrorThreadWorker", "cpu_count", "gunicorn_settings", "run_gunicorn", "serving_settings"]

DEFAULT_BIND = "127.0.0.1:8080"
_OWN_METRICS_DIR_PREFIX = "mtor-cds-prometheus-"
_own_metrics_dir: str | None = None  # the directory serving_settings() created in this (master) process

# --- Concurrency, chosen by bench/run_bench.py (bench/results/sweep.md, latest.md, notes.md) --------
# Measured on a 2-CPU machine, 3-5 s runs (sync:4:1, sync:8:1, sync:12:1, gthread:4:2, gthread:4:8):
# - The prefetched path is CPU-bound Python. Threads in one process queue behind the GIL and stretch
#   the tail: order-select p99 at 8 connections was 135-168 ms with gthread:4:8 and 163 ms with
#   gthread:4:2, against 28-33 ms with sync workers (the OS shares CPUs between processes fairly).
# - The fallback path waits on the EHR's FHIR server (~50 ms in the bench). Sync workers hold a process
#   for that wait, so they need more processes than CPUs: patient-view p99 at 8 connections was
#   206 ms with sync:4:1, 130 ms with sync:8:1, 97 ms with sync:12:1, 155-184 ms with gthread:4:8.
# - Hence sync, 4 x usable CPUs processes (8 on 2 CPUs): tight tails on the common prefetched path,
#   enough processes for calls waiting on FHIR, ~100 MB each. sync:12:1 bought little more.
# - Re-measured 2026-12-01 after the master's objects were frozen before fork (pre_fork below; no more
#   40 ms collections), idle machine (bench/results/sweep.md): gthread:4:8 and gthread:4:4 spent about
#   a quarter less CPU per order-select (1.8 against 2.3 ms) but their p99 at 8 connections was 32-34 ms
#   against 22 ms with sync, and patient-view's 113-116 ms against 108 ms: a keep-alive connection
#   stays with the process that accepted it, so calls do not spread evenly over the processes.
# - Sync workers, 4 × usable CPUs, behind the nginx sidecar: a sync worker is held by one connection
#   until its request has arrived, so slow clients need a buffering proxy in front (deploy/k8s ships
#   nginx; tests/test_deploy.py checks that slow-header connections do not starve /healthz).
# Change these only with new numbers, and keep WEB_CONCURRENCY in deploy/k8s (base configmap and
# overlays) in step.
DEFAULT_WORKER_CLASS = "sync"
DEFAULT_THREADS = 1
WORKERS_PER_CPU = 4

# The worker classes the service runs with, as gunicorn is given them: its own sync and gthread workers, answering the
# requests gunicorn refuses itself in JSON (_answer_in_json below). Any other GUNICORN_WORKER_CLASS is used as given.
JSON_ERROR_WORKERS = {"sync": "cds_service.production.JsonErrorSyncWorker", "gthread": "cds_service.production.JsonErrorThreadWorker"}


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    value = environ.get(name, "").strip()
    return int(value) if value else default


def cpu_count() -> int:
    """CPUs this process may really use: the cgroup v2 CPU limit if one is set, else the CPU affinity.

    os.cpu_count() reports every core of the node, so a pod limited to 1 CPU on a 64-core node
    would otherwise start 128 workers and run out of memory.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as handle:
            quota, period = handle.read().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, -(-int(quota) // int(period))))  # round up
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def gunicorn_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every gunicorn setting of the service, from the environment (os.environ by default)."""
    env = os.environ if environ is None else environ
    settings: dict[str, Any] = {}

    # --- Where to listen -------------------------------------------------------------------------
    # Locally the default is loopback only: a developer running gunicorn by hand does not expose an
    # unauthenticated trial (CDS_REQUIRE_JWT=false) to the network. PORT set (the image sets 8080)
    # means "listen on every interface", which is what a container needs.
    if env.get("MTOR_CDS_BIND"):
        settings["bind"] = [env["MTOR_CDS_BIND"]]
    elif env.get("PORT"):
        settings["bind"] = [f"0.0.0.0:{_env_int(env, 'PORT', 8080)}"]
    else:
        settings["bind"] = [DEFAULT_BIND]

    # --- Concurrency (see the comment on DEFAULT_WORKER_CLASS above) ------------------------------
    settings["workers"] = _env_int(env, "WEB_CONCURRENCY", WORKERS_PER_CPU * cpu_count())
    settings["threads"] = _env_int(env, "GUNICORN_THREADS", DEFAULT_THREADS)
    worker_class = env.get("GUNICORN_WORKER_CLASS", DEFAULT_WORKER_CLASS)
    if worker_class == "sync" and settings["threads"] > 1:
        worker_class = "gthread"  # as gunicorn itself does with sync and threads
    settings["worker_class"] = JSON_ERROR_WORKERS.get(worker_class, worker_class)

    # --- Timeouts --------------------------------------------------------------------------------
    # A hook call is bounded by CDS_FHIR_DEADLINE_S (3 s by default) plus rule time, so 30 s only
    # catches a worker that is truly stuck. graceful_timeout stays below Kubernetes'
    # terminationGracePeriodSeconds (40 s in deploy/k8s) so workers finish before SIGKILL.
    settings["timeout"] = _env_int(env, "GUNICORN_TIMEOUT", 30)
    settings["graceful_timeout"] = _env_int(env, "GUNICORN_GRACEFUL_TIMEOUT", 25)
    # Longer than the idle timeout of the proxy in front (ingress-nginx and most load balancers use
    # 60 s): if gunicorn closed an idle connection first, the proxy could reuse it and answer 502.
    settings["keepalive"] = _env_int(env, "GUNICORN_KEEPALIVE", 75)

    # --- Worker recycling ------------------------------------------------------------------------
    # Restart each worker after about this many requests so slow leaks cannot grow forever; the
    # jitter keeps all workers from restarting at the same moment.
    settings["max_requests"] = _env_int(env, "GUNICORN_MAX_REQUESTS", 2000)
    settings["max_requests_jitter"] = max(0, settings["max_requests"] // 10)
    request_arrival_timeout_s(env)  # read by each sync worker (_ArrivalWatch); a bad value stops the start here, once

    # Import the app once in the master, then fork: workers share its memory (copy-on-write) and a
    # broken app fails at start rather than in every worker. The app must therefore open database
    # connections and thread pools lazily (after the fork), never at import or in create_app().
    settings["preload_app"] = True

    # --- Logging ---------------------------------------------------------------------------------
    # No access log: the app itself writes one JSON line per request (with status and timing), a
    # second plain-text line per request would only double the log volume.
    settings["accesslog"] = None
    settings["errorlog"] = "-"
    settings["loglevel"] = env.get("GUNICORN_LOG_LEVEL", env.get("CDS_LOG_LEVEL", "info")).lower()

    # --- Files -----------------------------------------------------------------------------------
    # Workers signal liveness by touching a file every few seconds; on a disk-backed /tmp (or a
    # container overlay filesystem) that can block, and gunicorn then kills healthy workers.
    # /dev/shm is memory-backed.
    if os.path.isdir("/dev/shm"):
        settings["worker_tmp_dir"] = "/dev/shm"

    # Gunicorn >= 25.1 opens a control socket under $HOME by default; the container has no writable
    # home (read-only root filesystem) and nothing uses the socket. Ignored by older gunicorn.
    settings["control_socket_disable"] = True

    settings["on_starting"] = on_starting
    settings["pre_fork"] = pre_fork
    settings["child_exit"] = child_exit
    settings["on_exit"] = on_exit
    return settings


def serving_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """gunicorn_settings() for a server about to start: with several workers, a private metrics directory.

    Each worker is its own process, so /metrics would only show the worker that answered the scrape.
    In multiprocess mode every worker writes its values to files in one directory and /metrics adds
    them up (cds_service/metrics.py). With more than one worker and no directory given, the master
    gets a new one from mkdtemp (mode 0700, unpredictable name: another local user cannot plant files
    or a symlink there first); raw_env sets it in the master before the app is loaded, without
    touching the environment of whoever calls this.
    """
    global _own_metrics_dir
    env = os.environ if environ is None else environ
    settings = gunicorn_settings(env)
    if not env.get("PROMETHEUS_MULTIPROC_DIR") and settings["workers"] > 1:
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        _own_metrics_dir = tempfile.mkdtemp(prefix=_OWN_METRICS_DIR_PREFIX, dir=base)
        settings["raw_env"] = [f"PROMETHEUS_MULTIPROC_DIR={_own_metrics_dir}"]
    return settings


# --- gunicorn's own error answers, in JSON --------------------------------------------------------

# What a caller is told, by status; never anything of its request (gunicorn's page quotes the request line or header).
_GUNICORN_ERRORS = {
    400: ("invalid", "the request is not valid HTTP/1.1 (request line, headers or chunked body)"),
    414: ("too-costly", "the request line is longer than the server accepts"),
    431: ("too-costly", "the request headers are more or larger than the server accepts"),
}


class _CapturedAnswer:
    """Stands for the connection while gunicorn's handle_error runs: keeps what it would send (gettimeout and sendall
    are all util.write_error uses)."""

    def __init__(self) -> None:
        self.data = b""

    def gettimeout(self) -> float:
        return 0.0

    def sendall(self, data: bytes) -> None:
        self.data += data


class _WithoutRequestText:
    """gunicorn's log while it handles a request it refuses: its warning quotes the offending request line or header,
    which may hold an access token ("Authorization Bearer ..." without its colon) or a patient id. The warning keeps
    the caller's address and the kind of error, never the text."""

    def __init__(self, log: Any, exc: BaseException) -> None:
        self._log, self._kind = log, type(exc).__name__

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        ip = msg.partition("Invalid request from ip=")[2].partition(":")[0] if isinstance(msg, str) else ""
        self._log.warning("Invalid request from ip=%s: %s (its text is not logged)", ip or "?", self._kind)

    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None:
        # "Error handling request <method> <uri>" with a traceback, for an exception that left the app (a worker
        # timed out while the request was read or answered): the uri's query may carry anything, and the traceback the
        # exception's text. Kept: the method, the path (cut, as the request log has it) and the kind of error.
        method = args[0] if len(args) == 2 and isinstance(args[0], str) else ""
        uri = args[-1] if args and isinstance(args[-1], str) else ""
        path = uri.partition("?")[0].partition("#")[0][:120]
        where = " ".join(part for part in (method[:16], repr(path) if path else "") if part) or "(no request line read)"
        self._log.error("Error handling request %s: %s (its text is not logged)", where, self._kind)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


def _answer_in_json(worker: Any, gunicorn_handle_error: Callable[..., None], req, client, addr, exc) -> None:
    """A request gunicorn refuses before the app sees it (a malformed request line, 414, 431) is answered
    by gunicorn with an HTML page; CDS Hooks asks for an OperationOutcome with every non-2xx. gunicorn still decides the
    status and logs as it does; only the page it would write is replaced by an OperationOutcome with that status."""
    captured = _CapturedAnswer()
    log = worker.log
    worker.log = _WithoutRequestText(log, exc)
    try:
        gunicorn_handle_error(req, captured, addr, exc)
    finally:
        worker.log = log
    try:
        status = int(captured.data.split(b" ", 2)[1])
        HTTPStatus(status)
    except (IndexError, ValueError):
        status = 400 if captured.data else 500  # not gunicorn's status line: still an answer, never a page
    code, message = _GUNICORN_ERRORS.get(status, ("exception" if status >= 500 else "invalid", HTTPStatus(status).phrase))
    body = json.dumps(operation_outcome_body(status, code, message)).encode()
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nConnection: close\r\n"
            f"Content-Type: application/fhir+json\r\nContent-Length: {len(body)}\r\n\r\n")
    try:
        gunicorn_util.write_nonblock(client, head.encode("ascii") + body)
    except Exception:  # the client is gone; gunicorn does the same
        worker.log.debug("Failed to send error message.")


DEFAULT_REQUEST_ARRIVAL_TIMEOUT_S = 10


def request_arrival_timeout_s(environ: Mapping[str, str]) -> int:
    """GUNICORN_REQUEST_ARRIVAL_TIMEOUT: seconds, 0 for no limit (a proxy in front reads requests instead)."""
    seconds = _env_int(environ, "GUNICORN_REQUEST_ARRIVAL_TIMEOUT", DEFAULT_REQUEST_ARRIVAL_TIMEOUT_S)
    if seconds < 0:
        raise ValueError("GUNICORN_REQUEST_ARRIVAL_TIMEOUT must be 0 (no limit) or a number of seconds")
    return seconds
_ARRIVAL_CHECK_S = 0.5  # how often the watch looks: a connection is cut at most this late


class _ArrivalWatch:
    """Stops reading a connection whose request has not fully arrived in time (nginx's client_header_timeout and
    client_body_timeout, for a sync worker with no proxy in front): a client that sends its head or body byte by byte
    would otherwise hold the worker, which serves no one else meanwhile, until gunicorn kills it after
    GUNICORN_TIMEOUT. Shutting the reading side ends the wait at once: gunicorn drops a head cut short, and the app
    answers a body cut short with 400. The answer is still written, so a request that arrived in time and is being
    answered loses nothing. One thread per worker process, started after the fork; it looks twice a second."""

    def __init__(self, seconds: float, log: Any) -> None:
        self._seconds, self._log = seconds, log
        self._current: tuple[socket.socket, float] | None = None  # (connection, monotonic deadline); replaced whole
        threading.Thread(target=self._run, name="arrival-watch", daemon=True).start()

    def watch(self, connection: socket.socket) -> None:
        self._current = (connection, time.monotonic() + self._seconds)

    def clear(self) -> None:
        self._current = None

    def _run(self) -> None:
        while True:
            time.sleep(_ARRIVAL_CHECK_S)
            current = self._current
            if current is None or time.monotonic() < current[1]:
                continue
            self._current = None
            try:
                # A connection closed meanwhile has no descriptor any more (fileno -1): never another connection's.
                current[0].shutdown(socket.SHUT_RD)
            except OSError:
                continue
            self._log.warning("A request did not arrive within %s s: stopped reading its connection", self._seconds)


class JsonErrorSyncWorker(SyncWorker):
    """gunicorn's sync worker, answering the requests it refuses itself with an OperationOutcome, and reading no
    request for longer than GUNICORN_REQUEST_ARRIVAL_TIMEOUT (_ArrivalWatch)."""

    def init_process(self) -> None:
        seconds = request_arrival_timeout_s(os.environ)
        # in the worker, after the fork: threads do not survive one
        self._arrival = _ArrivalWatch(seconds, self.log) if seconds else None
        super().init_process()

    def handle(self, listener, client, addr) -> None:
        if self._arrival is None:
            return super().handle(listener, client, addr)
        self._arrival.watch(client)
        try:
            super().handle(listener, client, addr)
        finally:
            self._arrival.clear()

    def handle_error(self, req, client, addr, exc) -> None:
        _answer_in_json(self, super().handle_error, req, client, addr, exc)


class JsonErrorThreadWorker(ThreadWorker):
    """gunicorn's gthread worker, answering the requests it refuses itself with an OperationOutcome."""

    def handle_error(self, req, client, addr, exc) -> None:
        _answer_in_json(self, super().handle_error, req, client, addr, exc)


# --- gunicorn server hooks (run in the master) ----------------------------------------------------


def on_starting(server) -> None:
    """Warn about a missing public URL; start with an empty metrics directory (old values would count again)."""
    if os.environ.get("CDS_REQUIRE_JWT", "true").strip().lower() not in {"0", "false", "no", "off"} and not os.environ.get(
        "CDS_PUBLIC_BASE_URL", ""
    ).strip():
        server.log.warning(
            "CDS_PUBLIC_BASE_URL is not set: the JWT aud is checked against the Host header, and calls through a "
            "proxy (Forwarded/X-Forwarded-* headers) are refused; set it to the URL the EHR calls"
        )
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            if name.endswith(".db"):
                os.remove(os.path.join(directory, name))


def pre_fork(server, worker) -> None:
    """Move everything the master loaded (the app, the knowledge) out of the garbage collector's sight.

    A worker's full (generation 2) collection otherwise walks every object the master loaded, about
    120,000 of them: a 40 ms stall on the call that triggers it, and copy-on-write pages made private
    in every worker. Frozen objects are never collected, which is right for what lives as long as the
    process; what a worker creates afterwards is collected as usual.
    """
    gc.freeze()


def child_exit(server, worker) -> None:
    """Let prometheus_client forget a dead worker's live gauges (its counters keep counting)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        try:
            from prometheus_client import multiprocess
        except ImportError:
            return
        multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    """Remove the private metrics directory this master made (one given from outside is kept)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if directory and directory == _own_metrics_dir:
        shutil.rmtree(directory, ignore_errors=True)


# --- mtor-cds serve --production -----------------------------------------------------------------


def run_gunicorn(host: str | None = None, port: int | None = None) -> int:
    """Serve the app with gunicorn on host:port (the settings above; an address given wins over MTOR_CDS_BIND/PORT).

    Returns gunicorn's exit status. Invalid CDS_* settings raise SettingsError from here (the app
    is loaded in this process before any worker starts), which the CLI reports.
    """
    from gunicorn.app.base import BaseApplication

    settings = serving_settings()
    if host is not None and port is not None:
        settings["bind"] = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]

    class MtorCdsServer(BaseApplication):
        def load_config(self) -> None:
            for name, value in settings.items():
                if name in self.cfg.settings:  # control_socket_disable is unknown to older gunicorn
                    self.cfg.set(name, value)

        def load(self):
            from cds_service import create_app

            return create_app()

    print(f"mtor-cds (gunicorn) listening on http://{settings['bind'][0]}/cds-services", file=sys.stderr)
    try:
        MtorCdsServer(prog="mtor-cds serve --production").run()
    except SystemExit as exc:  # the arbiter exits the process when it stops
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0
