"""Gemini's implicit context caching, as the fake bills it."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from typing import Any

from tests.fake_gemini.common import Json
from tests.fake_gemini.parts import get_field
from tests.fake_gemini.scripts import RecordedRequest

# --------------------------------------------------------------------------- implicit caching


def fake_tokens(value: Any) -> int:
    """The fake's token count of a JSON value: one token per 4 characters of its compact
    JSON with sorted keys (at least 1), so the same value always counts the same."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return max(-(-len(text) // 4), 1)


class ImplicitCache:
    """The fake's model of Gemini's implicit context caching.

    Gemini 2.5 and newer models cache request prefixes implicitly and bill a request's
    tokens that hit such a cache as ``usageMetadata.cachedContentTokenCount``; a request
    hits when it begins with the same content as an earlier one, and only requests of at
    least a model's minimum input token count are cached (the docs list 2,048 tokens for
    Gemini 2.5 Flash and Pro and 4,096 for newer models; older revisions of the page
    said 1,024 for Flash). Source: https://ai.google.dev/gemini-api/docs/caching
    ("Implicit caching").

    Here a request is the sequence (header, contents[0], contents[1], ...) where the
    header is the model, ``systemInstruction``, ``tools`` and ``toolConfig``: what comes
    before the contents in the prompt. Every prefix of every request is remembered (no
    expiry: the docs give none for implicit caches). A request's cached tokens are the
    ``fake_tokens`` of its longest remembered prefix, system instruction and tools
    included; 0 when that prefix is not even the header, or when it is shorter than
    ``min_tokens`` (a prefix below the minimum is never cached). Prompt tokens are the
    ``fake_tokens`` of the header's systemInstruction and tools plus every content.
    """

    def __init__(self, min_tokens: int = 2048) -> None:
        self.min_tokens = min_tokens
        self._lock = threading.Lock()
        self._seen: set[bytes] = set()

    def usage(self, request: RecordedRequest, answer: Sequence[Json]) -> Json:
        """usageMetadata for ``request`` answered with ``answer`` parts; remembers its
        prefixes for later requests."""
        body = request.generate_request
        header_fields = [
            get_field(body, name, default=None)
            for name in ("systemInstruction", "tools", "toolConfig")
        ]
        header = [request.model, *header_fields]
        sizes = [sum(fake_tokens(f) for f in header_fields if f is not None)]
        sizes += [fake_tokens(content) for content in request.contents]
        chain: list[bytes] = []
        digest = hashlib.sha256()
        for item in (header, *request.contents):
            digest.update(json.dumps(item, sort_keys=True, separators=(",", ":")).encode())
            chain.append(digest.copy().digest())
        with self._lock:
            hits = 0
            while hits < len(chain) and chain[hits] in self._seen:
                hits += 1
            self._seen.update(chain)
        cached = sum(sizes[:hits])
        if cached < self.min_tokens:
            cached = 0
        prompt = sum(sizes)
        candidates = sum(fake_tokens(part) for part in answer)
        meta: Json = {
            "promptTokenCount": prompt,
            "candidatesTokenCount": candidates,
            "totalTokenCount": prompt + candidates,
        }
        if cached:
            meta["cachedContentTokenCount"] = cached
        return meta

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()
