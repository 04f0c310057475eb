"""Gunicorn settings for mtor-cds.

    gunicorn -c deploy/gunicorn.conf.py 'cds_service:create_app()'

Every value can be changed with an environment variable, so the same file serves a laptop, the
container image (copied to /app/gunicorn.conf.py) and Kubernetes (set in the ConfigMap).

    MTOR_CDS_BIND            full bind address; wins over PORT (e.g. "0.0.0.0:9000", "unix:/tmp/s")
    PORT                     port to listen on, on all interfaces (the image sets PORT=8080)
    WEB_CONCURRENCY          worker processes (default: 2 x the CPUs this process may use)
    GUNICORN_WORKER_CLASS    worker class (default: gthread)
    GUNICORN_THREADS         threads per gthread worker (default: 4)
    GUNICORN_TIMEOUT         seconds a worker may stay silent before it is killed (default: 30)
    GUNICORN_GRACEFUL_TIMEOUT seconds in-flight requests get to finish on shutdown (default: 25)
    GUNICORN_KEEPALIVE       seconds an idle keep-alive connection is kept open (default: 75)
    GUNICORN_MAX_REQUESTS    requests before a worker is recycled, 0 = never (default: 2000)
    GUNICORN_LOG_LEVEL       gunicorn's own log level (default: CDS_LOG_LEVEL, else info)
"""

import os


def _env_int(name, default):
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def _cpu_count():
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


# --- Where to listen ---------------------------------------------------------------------------
# Locally the default is loopback only: a developer running gunicorn by hand does not expose an
# unauthenticated trial (CDS_REQUIRE_JWT=false) to the network. PORT set (the image sets 8080)
# means "listen on every interface", which is what a container needs.
if os.environ.get("MTOR_CDS_BIND"):
    bind = [os.environ["MTOR_CDS_BIND"]]
elif os.environ.get("PORT"):
    bind = [f"0.0.0.0:{_env_int('PORT', 8080)}"]
else:
    bind = ["127.0.0.1:8080"]

# --- Concurrency -------------------------------------------------------------------------------
# TUNING: these defaults (2 x CPUs processes, gthread with 4 threads) are a starting point until
# bench/ has measured them. The rule evaluation is CPU-bound (threads do not help it, processes
# do), but a call without prefetch waits on the EHR's FHIR server (I/O-bound: threads help).
# When bench/ settles the numbers, change the defaults here AND the WEB_CONCURRENCY /
# GUNICORN_THREADS values in deploy/k8s/base/configmap.yaml (and the production overlay), and
# note the bench/ result they came from.
workers = _env_int("WEB_CONCURRENCY", 2 * _cpu_count())
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
threads = _env_int("GUNICORN_THREADS", 4)

# --- Timeouts ----------------------------------------------------------------------------------
# A hook call is bounded by CDS_FHIR_DEADLINE_S (3 s by default) plus rule time, so 30 s only
# catches a worker that is truly stuck. graceful_timeout stays below Kubernetes'
# terminationGracePeriodSeconds (40 s in deploy/k8s) so workers finish before SIGKILL.
timeout = _env_int("GUNICORN_TIMEOUT", 30)
graceful_timeout = _env_int("GUNICORN_GRACEFUL_TIMEOUT", 25)
# Longer than the idle timeout of the proxy in front (ingress-nginx and most load balancers use
# 60 s): if gunicorn closed an idle connection first, the proxy could reuse it and answer 502.
keepalive = _env_int("GUNICORN_KEEPALIVE", 75)

# --- Worker recycling ---------------------------------------------------------------------------
# Restart each worker after about this many requests so slow leaks cannot grow forever; the
# jitter keeps all workers from restarting at the same moment.
max_requests = _env_int("GUNICORN_MAX_REQUESTS", 2000)
max_requests_jitter = max(0, max_requests // 10)

# Import the app once in the master, then fork: workers share its memory (copy-on-write) and a
# broken app fails at start rather than in every worker. The app must therefore open database
# connections and thread pools lazily (after the fork), never at import or in create_app().
preload_app = True

# --- Logging -----------------------------------------------------------------------------------
# No access log: the app itself writes one JSON line per request (with status and timing), a
# second plain-text line per request would only double the log volume.
accesslog = None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", os.environ.get("CDS_LOG_LEVEL", "info")).lower()

# --- Files -------------------------------------------------------------------------------------
# Workers signal liveness by touching a file every few seconds; on a disk-backed /tmp (or a
# container overlay filesystem) that can block, and gunicorn then kills healthy workers.
# /dev/shm is memory-backed.
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"

# Gunicorn >= 25.1 opens a control socket under $HOME by default; the container has no writable
# home (read-only root filesystem) and nothing uses the socket. Ignored by older gunicorn.
control_socket_disable = True


# --- Prometheus with several worker processes ---------------------------------------------------
# Each worker is its own process, so /metrics only shows the worker that answered the scrape
# unless prometheus_client runs in multiprocess mode (PROMETHEUS_MULTIPROC_DIR set, and the app's
# /metrics uses a MultiProcessCollector). These hooks do nothing when the variable is unset.
def on_starting(server):
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):  # values of a previous run would be counted again
            if name.endswith(".db"):
                os.remove(os.path.join(directory, name))


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        try:
            from prometheus_client import multiprocess
        except ImportError:
            return
        multiprocess.mark_process_dead(worker.pid)
