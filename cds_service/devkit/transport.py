"""Send a hook request to a running service over HTTP, or to an in-process app (Flask test client)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import requests

IN_PROCESS_BASE_URL = "http://localhost"  # what the Flask test client calls, and so the JWT aud it needs
_TIMEOUT_S = 30.0


class ServiceUnreachable(RuntimeError):
    """No answer from the service at --url."""


@dataclasses.dataclass(frozen=True)
class ServiceAnswer:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def service_url(base_url: str | None, service_id: str) -> str:
    return f"{(base_url or IN_PROCESS_BASE_URL).rstrip('/')}/cds-services/{service_id}"


def post_hook(
    body: dict[str, Any],
    service_id: str,
    base_url: str | None = None,
    token_for: Callable[[str], str] | None = None,
    app: Any = None,
) -> ServiceAnswer:
    """POST the request; token_for(url) gives the bearer JWT for that exact URL. Without base_url the call
    goes to `app` (or a fresh create_app() on the CDS_* environment) in this process."""
    url = service_url(base_url, service_id)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token_for:
        headers["Authorization"] = f"Bearer {token_for(url)}"
    if base_url:
        try:
            response = requests.post(url, data=json.dumps(body), headers=headers, timeout=_TIMEOUT_S)
        except requests.RequestException as exc:
            raise ServiceUnreachable(f"cannot reach {url}: {type(exc).__name__}") from exc
        return ServiceAnswer(response.status_code, response.content)
    if app is None:
        from cds_service import create_app

        app = create_app()
    response = app.test_client().post(url, data=json.dumps(body), headers=headers)
    return ServiceAnswer(response.status_code, response.get_data())
