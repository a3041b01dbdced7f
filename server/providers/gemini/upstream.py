"""Upstream failures (google-genai APIError, httpx2 transport errors) as domain errors."""

from __future__ import annotations

import re
from typing import Any

import httpx2
from google.genai import errors as genai_errors

from server.sessions import errors

_DELAY = re.compile(r"^(\d+(?:\.\d+)?)s$")


def _retry_delay(details: Any) -> float | None:
    """The RetryInfo delay in a Google error body, in seconds."""
    error = details.get("error", details) if isinstance(details, dict) else {}
    for detail in error.get("details") or ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            match = _DELAY.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match[1])
    return None


def map_api_error(exc: genai_errors.APIError, model: str) -> errors.ChatdError:
    """The domain error for an upstream HTTP error (see the README's error table)."""
    upstream = f"Gemini API: HTTP {exc.code} {exc.status or ''}: {exc.message or ''}".strip()
    if exc.code in (401, 403):
        return errors.FailedPrecondition(
            f"the Gemini API rejected chatd's credentials (HTTP {exc.code}); the operator "
            "must fix GEMINI_API_KEY / GOOGLE_API_KEY or the Vertex AI setup",
            reason="UPSTREAM_CREDENTIALS_REJECTED",
        )
    if exc.code == 404:
        return errors.NotFound(
            f"model {model!r} was not found: {upstream}", reason="MODEL_NOT_FOUND"
        )
    if exc.code == 429:
        return errors.ResourceExhausted(
            upstream, retry_after=_retry_delay(exc.details), reason="UPSTREAM_RATE_LIMITED"
        )
    if exc.code == 408 or exc.code == 504:
        return errors.DeadlineExceeded(upstream, reason="UPSTREAM_TIMEOUT")
    if exc.code >= 500:
        return errors.Unavailable(upstream, reason="UPSTREAM_UNAVAILABLE")
    if exc.status == "FAILED_PRECONDITION":
        return errors.FailedPrecondition(upstream, reason="UPSTREAM_FAILED_PRECONDITION")
    return errors.UpstreamRejected(upstream, reason="UPSTREAM_INVALID_ARGUMENT")


def map_transport_error(exc: Exception) -> errors.ChatdError:
    if isinstance(exc, httpx2.TimeoutException):
        return errors.DeadlineExceeded(
            f"the Gemini API did not answer in time ({type(exc).__name__})",
            reason="UPSTREAM_TIMEOUT",
        )
    return errors.Unavailable(
        f"the connection to the Gemini API failed ({type(exc).__name__}: {exc})",
        reason="UPSTREAM_UNAVAILABLE",
    )
