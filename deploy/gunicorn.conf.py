"""Gunicorn settings for mtor-cds.

    gunicorn -c deploy/gunicorn.conf.py 'cds_service:create_app()'

The settings themselves live in the package, in cds_service/production.py (serving_settings), so
that this file, the container image (which copies it to /app/gunicorn.conf.py and installs the
package) and `mtor-cds serve --production` all run with the same values. Read that module for what
each value is, why it was chosen (bench/results/latest.md) and the environment variables that
change it: MTOR_CDS_BIND, PORT, WEB_CONCURRENCY, GUNICORN_WORKER_CLASS, GUNICORN_THREADS,
GUNICORN_TIMEOUT, GUNICORN_GRACEFUL_TIMEOUT, GUNICORN_KEEPALIVE, GUNICORN_MAX_REQUESTS,
GUNICORN_LOG_LEVEL, PROMETHEUS_MULTIPROC_DIR.
"""

from cds_service.production import cpu_count as _cpu_count  # noqa: F401 (read by tests/test_deploy.py)
from cds_service.production import serving_settings as _serving_settings

# Each setting becomes a module-level name, which is how gunicorn reads a config file.
globals().update(_serving_settings())
