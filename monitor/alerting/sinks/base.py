"""What every sink shares: the :class:`Sink` protocol the outbox delivers through, the
error that means "retry later", and one JSON POST that never follows a redirect nor
leaks a URL or secret into an error."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import datetime
from http.client import HTTPException
from typing import Any, Protocol

from monitor import __version__


class DeliveryError(Exception):
    """A sink did not accept a notification (retried with backoff)."""


class Sink(Protocol):
    """Sends one notification; raises :class:`DeliveryError` unless accepted.

    ``idempotency_key`` is the same on every attempt to send one outbox row: an HTTP
    sink passes it on as the ``Idempotency-Key`` header so a receiver can drop a re-send.
    """

    @property
    def name(self) -> str: ...
    @property
    def timeout_s(self) -> float: ...

    def send(self, note: Mapping[str, Any], now: datetime, idempotency_key: str = "") -> None: ...


def idempotency_header(key: str) -> dict[str, str]:
    """The ``Idempotency-Key`` header, or none for an empty key."""
    return {"Idempotency-Key": key} if key else {}


def bearer(token: str) -> dict[str, str]:
    """The ``Authorization`` header, or none without a token."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def is_url(value: str) -> bool:
    """Whether ``value`` is an http(s) URL (evidence links, URLs from the environment)."""
    return value.startswith(("http://", "https://"))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # urllib would turn a redirected POST into a GET and report success.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def post_json(
    url: str, body: Any, timeout_s: float, headers: Mapping[str, str] | None = None
) -> int:
    """POST ``body`` as JSON; return the 2xx status or raise :class:`DeliveryError`.

    Errors never include the URL or headers (they may carry secrets).
    """
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": f"dqm-monitor/{__version__}",
            **(headers or {}),
        },
    )
    try:
        with _OPENER.open(req, timeout=timeout_s) as resp:
            resp.read(65536)
            status = int(resp.status)
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode("utf-8", "replace").strip()
        raise DeliveryError(f"HTTP {exc.code}: {detail}") from None
    except urllib.error.URLError as exc:
        raise DeliveryError(f"unreachable: {exc.reason}") from None
    except (OSError, HTTPException) as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from None
    if not 200 <= status < 300:
        raise DeliveryError(f"HTTP {status}")
    return status
