"""Explicit context caches for the fake Gemini (tests/fake_gemini/): the Gemini API's
cachedContents create, get, patch and delete, and what a generateContent naming a cache is
checked for and billed.

Served on the Gemini API's paths only (``/{v1,v1beta,v1alpha}/cachedContents[/ID]``).
Strict as the API is, each rule with its source:

- create (https://ai.google.dev/api/caching#method:-cachedcontents.create): a
  CachedContent with ``model`` ("models/NAME") and ``contents``, ``systemInstruction``,
  ``tools``, ``toolConfig``, ``displayName`` and one of ``ttl`` / ``expireTime`` (a oneof;
  https://ai.google.dev/api/caching#CachedContent), any other field refused as the JSON
  parser refuses it. ``ttl`` is a protobuf Duration in JSON ("3600s", up to nine
  fractional digits: https://protobuf.dev/programming-guides/json/); without one a cache
  lives an hour (https://ai.google.dev/gemini-api/docs/caching). A cache smaller than the
  model's minimum is refused, HTTP 400 "Cached content is too small.
  total_token_count=N, min_total_token_count=M" (the message users report, e.g.
  https://github.com/zyddnys/manga-image-translator/issues/929); the minimums are those
  of the caching guide (MIN_TOKENS: a model is its family's when its name is the
  family's, or it followed by a version (-001), -latest or a -preview suffix) unless
  ``min_tokens`` says otherwise. Tokens are the fake's (``fake_tokens``) of the
  instruction, tools, tool config and contents.
- patch updates only the expiration (https://ai.google.dev/api/caching#method:-cachedcontents.patch);
  get returns the cache without its contents; delete answers ``{}``.
- A cache that expired (``clock``) or was deleted is gone: every call naming it, a
  generateContent included, is HTTP 403 PERMISSION_DENIED "CachedContent not found (or
  permission denied)", as Gemini answers (the status and text client code handles for an
  expired cache).
- A generateContent naming a cache must be for the cache's model ("Cached content can be
  only used with model it was created for": https://ai.google.dev/api/caching#CachedContent;
  HTTP 400 "Model used by GenerateContent request (models/X) and CachedContent (models/Y)
  has to be the same.") and must not set systemInstruction, tools or toolConfig
  (tests/fake_gemini/'s ``_check_cached_content``).
- Its usage counts the cache as part of the prompt: ``promptTokenCount`` is the cache's
  tokens plus the request's contents, ``cachedContentTokenCount`` at least the cache's
  tokens, more when the fake's implicit cache has seen a longer prefix of the whole prompt
  (the cache's header and contents, then the request's).

A cache name the fake never issued passes a generateContent unchecked (tests name callers'
own caches) unless ``refuse_unknown`` is set. ``refuse_creates`` makes every create fail
with that error (a quota of none, an outage). A call whose verb is in ``holds`` waits
before it is handled until that Hold opens (a slow or hung Gemini); a client that hangs
up meanwhile leaves nothing done.
"""

from __future__ import annotations

import datetime
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from tests.fake_gemini.common import Json
from tests.fake_gemini.implicit_cache import ImplicitCache, fake_tokens
from tests.fake_gemini.parts import get_field
from tests.fake_gemini.rules import InvalidRequest, _check_fields
from tests.fake_gemini.scripts import Hold, HttpError, RecordedRequest

PATH = re.compile(r"^/(?:v1|v1beta|v1alpha)/cachedContents(?:/(?P<id>[^/:]+))?$")
# The caching guide's minimums (https://ai.google.dev/gemini-api/docs/caching); other
# models need DEFAULT_MIN_TOKENS, the largest it lists.
MIN_TOKENS = {"gemini-2.5-flash": 2048, "gemini-2.5-pro": 2048}
DEFAULT_MIN_TOKENS = 4096
_VERSION_SUFFIX = re.compile(r"(?:-\d{3}|-latest|-preview(?:-[\w.-]+)?)?")
DEFAULT_TTL = 3600.0
_DURATION = re.compile(r"^(\d+)(?:\.(\d{1,9}))?s$")
_CREATE_FIELDS = {
    "model",
    "contents",
    "systemInstruction",
    "tools",
    "toolConfig",
    "ttl",
    "expireTime",
    "displayName",
}
_HEADER = ("systemInstruction", "tools", "toolConfig")
GONE = "CachedContent not found (or permission denied)"


class CacheRefusal(Exception):
    """What the API answers instead: an HTTP error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.error = HttpError(code, message)


@dataclass(frozen=True)
class StoredCache:
    """A cache the fake holds: the create request's header and contents, its token count
    and when it expires (``clock`` seconds)."""

    name: str
    model: str
    header: dict[str, Any]
    contents: list[Any]
    tokens: int
    create_time: float
    expire_time: float
    display_name: str | None = None

    def resource(self) -> Json:
        """The CachedContent as get, create and patch return it (no contents)."""
        out: Json = {
            "name": self.name,
            "model": self.model,
            "createTime": _rfc3339(self.create_time),
            "updateTime": _rfc3339(self.create_time),
            "expireTime": _rfc3339(self.expire_time),
            "usageMetadata": {"totalTokenCount": self.tokens},
        }
        if self.display_name is not None:
            out["displayName"] = self.display_name
        return out


@dataclass(frozen=True)
class CacheCall:
    """One cachedContents call: its verb (POST, GET, PATCH, DELETE), the cache's name
    (the created one for a create that succeeded; "" otherwise), the parsed body and the
    HTTP status answered."""

    verb: str
    name: str
    body: Any
    status: int


def min_tokens_of(model: str) -> int:
    """The caching guide's minimum for ``model`` ("models/NAME" or "NAME"): its family's
    in MIN_TOKENS when the name is the family's, or it followed by a version suffix
    ("gemini-2.5-flash-001", "-latest", "-preview-05-20"); DEFAULT_MIN_TOKENS otherwise."""
    name = model.rsplit("/", 1)[-1]
    for family, tokens in MIN_TOKENS.items():
        if name.startswith(family) and _VERSION_SUFFIX.fullmatch(name, len(family)):
            return tokens
    return DEFAULT_MIN_TOKENS


def _rfc3339(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _ttl(value: Any, where: str) -> float:
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidRequest(
            f"Invalid value at '{where}' (type.googleapis.com/google.protobuf.Duration), "
            f'"{value}"'
        )
    return float(f"{match[1]}.{match[2] or 0}")


def _expire_time(value: Any, where: str) -> float:
    try:
        text = str(value).replace("Z", "+00:00")
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise InvalidRequest(
            f"Invalid value at '{where}' (type.googleapis.com/google.protobuf.Timestamp), "
            f'"{value}"'
        ) from None


class FakeCaches:
    """The fake's cachedContents (see the module docstring); thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        # Seconds since the epoch: when caches expire.
        self.clock = clock
        # None: MIN_TOKENS by model; else the minimum for every model.
        self.min_tokens: int | None = None
        # Every create fails with this error when set.
        self.refuse_creates: HttpError | None = None
        # Refuse generateContent naming a cache the fake never issued (403).
        self.refuse_unknown = False
        # Calls of these verbs ("POST", "PATCH", ...) wait for their Hold to open.
        self.holds: dict[str, Hold] = {}
        self._lock = threading.Condition()
        self._caches: dict[str, StoredCache] = {}
        self._issued: set[str] = set()
        self._calls: list[CacheCall] = []

    # ------------------------------------------------------------------ observation

    @property
    def calls(self) -> list[CacheCall]:
        """Every cachedContents call so far, oldest first."""
        with self._lock:
            return list(self._calls)

    def calls_of(self, verb: str) -> list[CacheCall]:
        return [c for c in self.calls if c.verb == verb]

    def live(self) -> list[StoredCache]:
        """The caches that exist now (not deleted, not expired)."""
        now = self.clock()
        with self._lock:
            return [c for c in self._caches.values() if c.expire_time > now]

    def get(self, name: str) -> StoredCache | None:
        with self._lock:
            return self._caches.get(name)

    def wait_for(self, verb: str, count: int, timeout: float = 5.0) -> CacheCall:
        """Blocks until ``count`` calls of ``verb`` were answered; the ``count``-th."""

        def seen() -> list[CacheCall]:
            return [c for c in self._calls if c.verb == verb]

        with self._lock:
            if not self._lock.wait_for(lambda: len(seen()) >= count, timeout):
                raise TimeoutError(f"saw {len(seen())} {verb} calls in {timeout}s, wanted {count}")
            return seen()[count - 1]

    def expire(self, name: str | None = None) -> None:
        """Makes the cache ``name`` (every cache: None) expired now."""
        now = self.clock()
        with self._lock:
            for key, cache in list(self._caches.items()):
                if name is None or key == name:
                    self._caches[key] = replace(cache, expire_time=now)

    def prompt(self, request: RecordedRequest) -> tuple[dict[str, Any], list[Any]]:
        """What the model is given for ``request``: the header (systemInstruction, tools,
        toolConfig) and contents, its cache's first when it names one the fake holds."""
        body = request.generate_request
        cache = self.get(str(get_field(body, "cachedContent", default="")))
        if cache is not None:
            return dict(cache.header), [*cache.contents, *request.contents]
        header = {k: v for k in _HEADER if (v := get_field(body, k)) is not None}
        return header, list(request.contents)

    # ------------------------------------------------------------------ serving

    @staticmethod
    def serves(path: str) -> bool:
        """Whether ``path`` (without the query) is a cachedContents path."""
        return PATH.match(path) is not None

    def answer(self, verb: str, path: str, raw: bytes) -> tuple[int, Json]:
        """The HTTP status and JSON body for a cachedContents request."""
        match = PATH.match(path)
        assert match is not None
        body: Any = None
        try:
            body = json.loads(raw) if raw else None
            if match["id"] is None:
                if verb != "POST":
                    raise CacheRefusal(404, f"fake: no route {verb} {path}")
                status, answer = 200, self._create(body)
            else:
                status, answer = 200, self._one(verb, f"cachedContents/{match['id']}", body)
        except InvalidRequest as exc:
            status, answer = 400, HttpError(400, str(exc)).body()
        except CacheRefusal as exc:
            status, answer = exc.error.code, exc.error.body()
        except ValueError:
            status, answer = 400, HttpError(400, "Invalid JSON payload received.").body()
        name = answer.get("name", "") if verb == "POST" else f"cachedContents/{match['id']}"
        with self._lock:
            self._calls.append(CacheCall(verb, str(name), body, status))
            self._lock.notify_all()
        return status, answer

    def _create(self, body: Any) -> Json:
        if self.refuse_creates is not None:
            refusal = self.refuse_creates
            raise CacheRefusal(refusal.code, refusal.message)
        if not isinstance(body, dict):
            raise InvalidRequest("Invalid JSON payload received. Expected an object.")
        for key in body:
            if key not in _CREATE_FIELDS:
                raise InvalidRequest(
                    f'Invalid JSON payload received. Unknown name "{key}" at '
                    "'cached_content': Cannot find field."
                )
        model = body.get("model")
        if not isinstance(model, str) or not model.startswith("models/"):
            raise InvalidRequest("* CachedContent.model: model is not specified")
        contents = body.get("contents", [])
        for index, content in enumerate(contents):
            _check_fields(content, "Content", f"cached_content.contents[{index}]", False)
        for index, tool in enumerate(body.get("tools", [])):
            _check_fields(tool, "Tool", f"cached_content.tools[{index}]", False)
        if "ttl" in body and "expireTime" in body:
            raise InvalidRequest(
                "Invalid JSON payload received. Oneof field 'expiration' is already set. "
                "Cannot set 'expireTime'"
            )
        now = self.clock()
        if "expireTime" in body:
            expire = _expire_time(body["expireTime"], "cached_content.expire_time")
        else:
            expire = now + _ttl(body.get("ttl", f"{DEFAULT_TTL:.0f}s"), "cached_content.ttl")
        header = {k: body[k] for k in _HEADER if k in body}
        tokens = sum(fake_tokens(v) for v in header.values())
        tokens += sum(fake_tokens(c) for c in contents)
        least = self.min_tokens
        if least is None:
            least = min_tokens_of(model)
        if tokens < least:
            raise InvalidRequest(
                f"Cached content is too small. total_token_count={tokens}, "
                f"min_total_token_count={least}"
            )
        name = f"cachedContents/fake-{secrets.token_hex(6)}"
        cache = StoredCache(
            name, model, header, list(contents), tokens, now, expire, body.get("displayName")
        )
        with self._lock:
            self._caches[name] = cache
            self._issued.add(name)
        return cache.resource()

    def _live(self, name: str) -> StoredCache:
        with self._lock:
            cache = self._caches.get(name)
            if cache is not None and cache.expire_time <= self.clock():
                del self._caches[name]
                cache = None
        if cache is None:
            raise CacheRefusal(403, GONE)
        return cache

    def _one(self, verb: str, name: str, body: Any) -> Json:
        cache = self._live(name)
        if verb == "GET":
            return cache.resource()
        if verb == "DELETE":
            with self._lock:
                self._caches.pop(name, None)
            return {}
        if verb != "PATCH":
            raise CacheRefusal(404, f"fake: no route {verb} {name}")
        if not isinstance(body, dict) or not body:
            raise InvalidRequest("Invalid JSON payload received. Expected an object.")
        for key in body:
            if key not in ("ttl", "expireTime"):
                # Only the expiration can be updated.
                raise InvalidRequest(
                    f'Invalid JSON payload received. Unknown name "{key}" at '
                    "'cached_content': Cannot find field."
                )
        if "ttl" in body:
            expire = self.clock() + _ttl(body["ttl"], "cached_content.ttl")
        else:
            expire = _expire_time(body["expireTime"], "cached_content.expire_time")
        updated = replace(cache, expire_time=expire)
        with self._lock:
            self._caches[name] = updated
        return updated.resource()

    # ------------------------------------------------------------------ generateContent

    def refusal(self, model: str, method: str, body: Any) -> HttpError | None:
        """The error the API answers a ``method`` request with for the cache its body
        names (see check_generate); None when it has none."""
        if method == "countTokens":
            body = get_field(body, "generateContentRequest", default=body)
        try:
            self.check_generate(model, body)
        except CacheRefusal as exc:
            return exc.error
        return None

    def check_generate(self, model: str, request: Any) -> None:
        """Raises CacheRefusal where the API refuses a generateContent (or countTokens)
        body naming a cache: gone (403), or another model's (400)."""
        name = get_field(request, "cachedContent")
        if name is None:
            return
        with self._lock:
            known = name in self._issued
        if not known and not self.refuse_unknown:
            return
        cache = self._live(str(name))
        if cache.model != f"models/{model}":
            raise CacheRefusal(
                400,
                f"Model used by GenerateContent request (models/{model}) and CachedContent "
                f"({cache.model}) has to be the same.",
            )

    def usage(
        self, request: RecordedRequest, answer: Sequence[Json], implicit: ImplicitCache | None
    ) -> Json | None:
        """usageMetadata for a request naming a cache the fake holds (None otherwise):
        the cache is part of the prompt and billed as cached (see the module docstring)."""
        body = request.generate_request
        cache = self.get(str(get_field(body, "cachedContent", default="")))
        if cache is None:
            return None
        if implicit is not None:
            whole = {**cache.header, "contents": [*cache.contents, *request.contents]}
            meta = implicit.usage(replace(request, body=whole), answer)
        else:
            prompt = cache.tokens + sum(fake_tokens(c) for c in request.contents)
            candidates = sum(fake_tokens(part) for part in answer)
            meta = {
                "promptTokenCount": prompt,
                "candidatesTokenCount": candidates,
                "totalTokenCount": prompt + candidates,
            }
        meta["cachedContentTokenCount"] = max(meta.get("cachedContentTokenCount", 0), cache.tokens)
        return meta
