"""Upstream failures (google-genai APIError, google-auth errors, httpx2 transport errors)
as domain errors."""

from __future__ import annotations

import re
from typing import Any

import httpx2
from google.auth import exceptions as auth_errors
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


def _error_reasons(details: Any) -> set[str]:
    """The ErrorInfo reasons in a Google error body
    (https://cloud.google.com/apis/design/errors#error_info)."""
    error = details.get("error", details) if isinstance(details, dict) else {}
    return {
        str(detail.get("reason"))
        for detail in error.get("details") or ()
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("ErrorInfo")
    }


def map_api_error(exc: genai_errors.APIError, model: str) -> errors.ChatdError:
    """The domain error for an upstream HTTP error (see the README's error table)."""
    upstream = f"Gemini API: HTTP {exc.code} {exc.status or ''}: {exc.message or ''}".strip()
    # Google answers a key it does not know with HTTP 400 INVALID_ARGUMENT, "API key not
    # valid", and ErrorInfo reason API_KEY_INVALID (google/api/error_reason.proto:
    # https://github.com/googleapis/googleapis/blob/master/google/api/error_reason.proto),
    # not with 401/403: it is still the operator's key that is wrong.
    bad_key = exc.code == 400 and "API_KEY_INVALID" in _error_reasons(exc.details)
    if exc.code in (401, 403) or bad_key:
        cause = f"HTTP {exc.code} API_KEY_INVALID" if bad_key else f"HTTP {exc.code}"
        return errors.FailedPrecondition(
            f"the Gemini API rejected chatd's credentials ({cause}); the operator "
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


def map_auth_error(exc: auth_errors.GoogleAuthError) -> errors.ChatdError:
    """The domain error for a failure of Vertex AI's Application Default Credentials, which
    google-auth raises while the SDK gets an access token
    (https://google-auth.readthedocs.io/en/latest/reference/google.auth.exceptions.html):
    no usable credentials, or a token endpoint that refused them, is the operator's to fix
    (FailedPrecondition UPSTREAM_CREDENTIALS_REJECTED); a token endpoint that could not be
    reached, after the SDK's retries, is Unavailable."""
    if isinstance(exc, auth_errors.TransportError):
        return errors.Unavailable(
            f"the connection to Google's OAuth 2.0 token endpoint failed ({exc})",
            reason="UPSTREAM_UNAVAILABLE",
        )
    fix = (
        "the operator must fix the Application Default Credentials: "
        "GOOGLE_APPLICATION_CREDENTIALS (a service-account key file) or "
        "`gcloud auth application-default login`"
    )
    if isinstance(exc, auth_errors.DefaultCredentialsError):
        return errors.FailedPrecondition(
            f"chatd found no usable credentials for Vertex AI ({exc}); {fix}",
            reason="UPSTREAM_CREDENTIALS_REJECTED",
        )
    # RefreshError's first argument is the token endpoint's "error: error_description".
    cause = exc.args[0] if exc.args else type(exc).__name__
    return errors.FailedPrecondition(
        f"Google refused to issue an access token for Vertex AI ({cause}); {fix}",
        reason="UPSTREAM_CREDENTIALS_REJECTED",
    )
