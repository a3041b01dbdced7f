"""Shared names of the fake Gemini: JSON aliases, paths, status names."""

from __future__ import annotations

import logging
import re
from typing import Any, Literal, TypeAlias, TypeVar

Json: TypeAlias = dict[str, Any]
Method: TypeAlias = Literal["generateContent", "streamGenerateContent", "countTokens"]
_T = TypeVar("_T")

_log = logging.getLogger(__name__)

# The versions each API serves (https://ai.google.dev/gemini-api/docs/api-versions; Vertex AI:
# https://cloud.google.com/vertex-ai/docs/reference/rest); anything else is a 404 there too.
_PATH = re.compile(r"^/(?:v1|v1beta|v1alpha)/models/(?P<model>[^/:]+):(?P<method>[A-Za-z]+)$")
_VERTEX_PATH = re.compile(
    r"^/(?:v1|v1beta1)/(?:projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/)?"
    r"publishers/google/models/(?P<model>[^/:]+):(?P<method>[A-Za-z]+)$"
)
TOKEN_PATH = "/token"
_METHODS: tuple[Method, ...] = ("generateContent", "streamGenerateContent", "countTokens")
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
