"""Secrets out of URLs before chatd prints them (logs, error messages, settings dumps)."""

from __future__ import annotations

import re

MASK = "***"

# A query or keyword parameter whose name says it holds a secret: password=, sslpassword=,
# api_key=, access_token=, client_secret=, ...
_SECRET_PARAM = re.compile(
    r"(?P<name>(?:^|[?&;\s])[\w.\-]*(?:pass|pwd|secret|token|key|auth)[\w.\-]*\s*=\s*)"
    r"(?P<value>[^&#;\s]*)",
    re.IGNORECASE,
)


def redact_url(url: str) -> str:
    """`url` with the password of its user info (`user:secret@host`) and the values of
    secret-named parameters (`?password=...`) replaced by ***; the rest stays readable."""
    scheme, sep, rest = url.partition("://")
    if sep:
        # The user info ends at the last '@' before the query: a password may hold '/'.
        head = re.split(r"[?#]", rest, maxsplit=1)[0]
        at = head.rfind("@")
        if at >= 0 and ":" in head[:at]:
            user = head[:at].split(":", 1)[0]
            rest = f"{user}:{MASK}{rest[at:]}"
        url = f"{scheme}{sep}{rest}"
    return _SECRET_PARAM.sub(lambda m: f"{m['name']}{MASK}" if m["value"] else m[0], url)
