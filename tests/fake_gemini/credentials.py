"""API keys and OAuth 2.0 tokens, checked as Google's services do."""

from __future__ import annotations

import base64
import functools
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fake_gemini.common import Json
from tests.fake_gemini.scripts import HttpError

# --------------------------------------------------------------------------- credentials
#
# How Google answers requests without valid credentials. Google's error model puts the
# machine-readable cause in a google.rpc.ErrorInfo detail (https://cloud.google.com/apis/
# design/errors#error_info); the reasons are those of google/api/error_reason.proto
# (https://github.com/googleapis/googleapis/blob/master/google/api/error_reason.proto).

# Service accounts sign their grant assertion for this audience, whatever their token_uri
# (https://developers.google.com/identity/protocols/oauth2/service-account#authorizingrequests).
TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# Google refuses assertions that live longer than an hour or are not current.
_MAX_ASSERTION_LIFETIME = 3600
_CLOCK_SKEW = 300
_DEVCONSOLE = "See https://developers.google.com/identity/sign-in/web/devconsole-project."


@dataclass(frozen=True)
class IssuedToken:
    """An access token the fake's token endpoint issued."""

    token: str
    client_email: str  # the service account it was issued to
    scope: str  # space-separated scopes of the grant
    expires_at: float  # time.monotonic() when the fake stops accepting it


class CredentialsRefused(Exception):
    """A request refused for its credentials: the HTTP status and Google's error body."""

    def __init__(self, code: int, message: str, reason: str | None, service: str) -> None:
        super().__init__(message)
        self.code = code
        details: list[Json] = []
        if reason is not None:
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": reason,
                    "domain": "googleapis.com",
                    "metadata": {"service": service},
                }
            )
        self.error = HttpError(code, message, details=details)


class _GrantRefused(Exception):
    """A token request refused as an OAuth 2.0 error (RFC 6749 section 5.2)."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.body: Json = {"error": error, "error_description": description}


def _check_api_key(key: str | None, expected: str | None, service: str) -> None:
    if not key:
        if service == "generativelanguage.googleapis.com":
            # What the Gemini API answers a request with no key (HTTP 403 PERMISSION_DENIED;
            # https://ai.google.dev/gemini-api/docs/troubleshooting#error-codes).
            raise CredentialsRefused(
                403,
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to "
                "call this API.",
                None,
                service,
            )
        raise CredentialsRefused(
            401,
            "Request is missing required authentication credential. Expected OAuth 2 access "
            f"token, login cookie or other valid authentication credential. {_DEVCONSOLE}",
            "CREDENTIALS_MISSING",
            service,
        )
    if expected is not None and key != expected:
        # Google answers a key it does not know with 400 INVALID_ARGUMENT, not 401/403.
        raise CredentialsRefused(
            400, "API key not valid. Please pass a valid API key.", "API_KEY_INVALID", service
        )


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@functools.cache
def _rsa_key(index: int) -> rsa.RSAPrivateKey:
    """An RSA key for test service accounts (index 1 is a second key, for a wrong signature)."""
    del index  # one cached key per index
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)
