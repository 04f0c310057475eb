"""mtor-cds: a CDS Hooks 2.0 service that keeps patients on mTOR inhibitors safe."""

from __future__ import annotations

import logging

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from cds_service.settings import Settings

__all__ = ["create_app"]


def create_app(settings: Settings | None = None, **overrides) -> Flask:
    """Wire the app: settings (CDS_* environment, read now), knowledge, services, auth, routes."""
    from cds_service import api, metrics
    from cds_service.app_state import AppState
    from cds_service.observability import configure_logging

    settings = settings or Settings.from_env(**overrides)
    configure_logging(settings.log_level)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    if isinstance(app.json, DefaultJSONProvider):
        app.json.sort_keys = False
    app.extensions["mtor_cds"] = AppState.build(settings)
    # Werkzeug answers a path with doubled slashes by a 308 redirect with an HTML page: a CDS Client re-sending its
    # POST there gets a 401 (its JWT's aud names the URL it called). Before any route is added: a 404 OperationOutcome.
    app.url_map.merge_slashes = False
    app.register_blueprint(api.bp)
    api.init_app(app)
    metrics.init_app(app)
    if not settings.require_jwt:
        logging.getLogger("mtor_cds").warning("CDS_REQUIRE_JWT=false: callers are NOT authenticated (local trials only)")
    return app
