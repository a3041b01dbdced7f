"""Explicit context caches (cachedContents): a session's stable prefix cached once, then named
by its later requests instead of being sent again.

What a turn sends begins with what its next turns send again unchanged: the model, the
system instruction, tools and tool config, and the contents before the current turn's user
message (the *prefix*; with the stepped window or compaction it holds for many turns:
server/sessions/context.py, compaction.py). Once a session's prefix reaches the trigger
(CacheSettings.trigger_tokens, never below the model's minimum, MIN_CACHE_TOKENS), the
provider creates a cache of it (cachedContents.create, with the operator's TTL) and the
request names the cache (`cachedContent`) and sends only the contents after it, without
the system instruction, tools and tool config, which the cache holds: Gemini refuses them
beside a cache (wire.CACHED_FIELDS). Gemini bills a cache's tokens at its cached rate on
every request naming it, plus storage for its TTL
(https://ai.google.dev/gemini-api/docs/caching).

- Later requests of the session name the cache while its contents are still a prefix of
  what they send (compared by a digest of the encoded bytes), with the same model and
  header. A request used within the last REFRESH_SHARE of the TTL extends it first
  (cachedContents.patch with a new ttl).
- When the prefix no longer matches (the window stepped, a new compaction summary, another
  instruction, tools or model) the cache is deleted in the background and a new one made
  if the new prefix reaches the trigger.
- A request that forbids function calls (chatd's last tool round: toolConfig NONE) goes
  without the cache, which stays for the next one.
- Nothing here fails a turn: a create Gemini refuses is logged and counted, the request
  goes whole, and the session makes no new create for RETRY_AFTER seconds; a cache Gemini
  says is gone (the provider sees HTTP 403/404 naming it) is forgotten and the request
  sent again whole, in the same turn.
- At most CacheSettings.max_sessions sessions are tracked (the least recently used one's
  cache is deleted); a deleted or expired session's cache is deleted (SessionResources);
  at shutdown every cache still held is deleted, waiting at most a short bound (what is
  not deleted then expires by its TTL).

A replica tracks the caches it made; another replica serving the same session makes its
own.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from server.providers.gemini.wire import GenerateParts, current_turn_start
from server.sessions.ports import ModelRequest, SessionRef
from server.sessions.tokens import estimate_tokens, message_tokens

log = structlog.get_logger("chatd.gemini")

# The minimum token count of a cached content per model, as the caching guide lists it
# (https://ai.google.dev/gemini-api/docs/caching, "Implicit caching": "The minimum input
# token count for context caching"); Gemini refuses a smaller cache with HTTP 400 "Cached
# content is too small. total_token_count=N, min_total_token_count=M". A model is its
# family's when its name is the family's, or it followed by a version (-001), -latest or a
# -preview suffix.
MIN_CACHE_TOKENS: Mapping[str, int] = {
    "gemini-2.5-flash": 2048,
    "gemini-2.5-pro": 2048,
    "gemini-3.1-pro-preview": 4096,
    "gemini-3.5-flash": 4096,
}
# What a model the table does not know needs: the largest minimum listed.
UNKNOWN_MODEL_MIN_TOKENS = max(MIN_CACHE_TOKENS.values())
_VERSION_SUFFIX = re.compile(r"(?:-\d{3}|-latest|-preview(?:-[\w.-]+)?)?")

DEFAULT_TTL = 3600.0
DEFAULT_MAX_SESSIONS = 1024
# A cache used with less than this share of its TTL left is extended first.
REFRESH_SHARE = 0.25
# Seconds a session waits for its next create after one failed.
RETRY_AFTER = 60.0
# Deletes running at once (a sweep may release many sessions together).
MAX_DELETES = 8
# Seconds close() waits for the deletes of the caches still held.
CLOSE_BOUND = 2.0
# What is counted (chatd_gemini_context_caches_total{outcome}): a cache created; a call
# naming an existing cache (reused), whose TTL was first extended (refreshed too); a cache
# deleted; one Gemini no longer had or whose TTL ran out (expired); a create, extension or
# delete Gemini refused or that did not answer (failed).
OUTCOMES = ("created", "reused", "refreshed", "deleted", "expired", "failed")


def min_cache_tokens(model: str) -> int:
    """The fewest tokens Gemini caches for `model` ("gemini-2.5-flash", "models/...",
    a Vertex AI publisher path): MIN_CACHE_TOKENS, UNKNOWN_MODEL_MIN_TOKENS for others."""
    name = model.rsplit("/", 1)[-1]
    for family, tokens in MIN_CACHE_TOKENS.items():
        if name.startswith(family) and _VERSION_SUFFIX.fullmatch(name, len(family)):
            return tokens
    return UNKNOWN_MODEL_MIN_TOKENS


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """`trigger_tokens`: a session's prefix of at least this many tokens (estimated, and
    never fewer than the model's minimum) is cached; 0 turns explicit caching off. `ttl`:
    seconds a cache lives after it is created or extended. `max_sessions`: sessions whose
    cache is tracked at once."""

    trigger_tokens: int = 0
    ttl: float = DEFAULT_TTL
    max_sessions: int = DEFAULT_MAX_SESSIONS

    def trigger(self, model: str) -> int:
        return max(self.trigger_tokens, min_cache_tokens(model))


def ttl_text(seconds: float) -> str:
    """`seconds` as a protobuf Duration in JSON ("3600s"), as cachedContents takes a ttl."""
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


class CacheGone(Exception):
    """Gemini no longer has the cache (HTTP 403 or 404 naming it)."""


class CacheApi(Protocol):
    """cachedContents calls, as the provider makes them; each raises CacheGone for a cache
    Gemini does not have, and whatever else went wrong as the provider's errors."""

    async def create_cache(
        self, request: ModelRequest, parts: GenerateParts, count: int, ttl: str, deadline: float
    ) -> str:
        """Creates a cache of the header and the first `count` contents; its name."""
        ...

    async def refresh_cache(
        self, request: ModelRequest, name: str, ttl: str, deadline: float
    ) -> None:
        """Sets the cache's ttl (counted from now)."""
        ...

    async def delete_cache(self, name: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Cache:
    """A cache chatd made: its resource name, what it holds (the request's model and
    header digest, the digest of its `count` contents) and when it expires by chatd's
    clock."""

    name: str
    model: str
    uid: str
    header: bytes
    count: int
    digest: bytes
    expire_time: float


@dataclass(slots=True)
class _Slot:
    """A session's cache (if any), when the session expires, and when its next create may
    be tried."""

    cache: Cache | None = None
    session_expire_time: float | None = None
    retry_time: float = 0.0


def _digest(contents: Sequence[bytes], count: int) -> bytes:
    digest = hashlib.sha256()
    for content in contents[:count]:
        digest.update(len(content).to_bytes(8, "little"))
        digest.update(content)
    return digest.digest()


def prefix_tokens(request: ModelRequest) -> int:
    """The tokens of a request's prefix: the model's counts for its model messages, chatd's
    estimate for the rest, the instruction and the declarations (server.sessions.tokens)."""
    turn = max(current_turn_start(request.contents) - 1, 0)
    fixed = estimate_tokens((), request.system_instruction, request.function_declarations)
    return fixed + sum(message_tokens(m) for m in request.contents[:turn])


class ContextCaches:
    """The explicit caches of the sessions a provider serves (see the module docstring).
    `clock` is seconds since the epoch (session expire times are)."""

    def __init__(self, api: CacheApi, settings: CacheSettings, clock: Callable[[], float]) -> None:
        self._api = api
        self._settings = settings
        self._clock = clock
        self._slots: OrderedDict[tuple[str, str], _Slot] = OrderedDict()
        self._counts = dict.fromkeys(OUTCOMES, 0)
        self._deleting: set[asyncio.Task[None]] = set()
        self._deletes = asyncio.Semaphore(MAX_DELETES)

    def counts(self) -> Mapping[str, int]:
        """How often each of OUTCOMES happened (a copy)."""
        return dict(self._counts)

    def held(self) -> int:
        """How many caches are held now."""
        return sum(1 for slot in self._slots.values() if slot.cache is not None)

    def applies(self, request: ModelRequest) -> bool:
        """Whether `request` may name a cache: caching is on, it is a session's turn, the
        caller named no cache of their own, and function calls are allowed."""
        return (
            self._settings.trigger_tokens > 0
            and request.session is not None
            and not request.summarising
            and request.generation_config.cached_content is None
            and request.allow_function_calls
        )

    async def use(
        self, request: ModelRequest, parts: GenerateParts, deadline: float
    ) -> Cache | None:
        """The cache `request` names, reused, extended or created as needed; None: the
        request goes whole. Never raises but for cancellation (a cache created by a
        cancelled call expires by its TTL)."""
        ref = request.session
        assert ref is not None
        slot = self._slot(ref)
        now = self._clock()
        header = hashlib.sha256(parts.header_bytes()).digest()
        cache = slot.cache
        if cache is not None:
            slot.cache = None
            if not self._matches(cache, request, ref, header, parts):
                self._delete_later(cache.name)
            elif now >= cache.expire_time:
                self._count("expired")
            elif (used := await self._reuse(slot, cache, request, now, deadline)) is not None:
                return used
        return await self._create(slot, request, ref, parts, header, deadline)

    def lost(self, request: ModelRequest, cache: Cache) -> None:
        """Gemini refused a request naming `cache` as gone: it is forgotten."""
        ref = request.session
        slot = self._slots.get((ref.tenant, ref.session_id)) if ref is not None else None
        if slot is not None and slot.cache == cache:
            slot.cache = None
        self._count("expired")
        log.info("gemini context cache gone, sent without it", name=cache.name)

    def release_session(self, tenant: str, session_id: str) -> None:
        """The session was deleted: its cache is deleted in the background."""
        slot = self._slots.pop((tenant, session_id), None)
        if slot is not None and slot.cache is not None:
            self._delete_later(slot.cache.name)

    def release_expired(self, now: float) -> None:
        """The caches of sessions that expired at or before `now` are deleted in the
        background."""
        gone = [
            key
            for key, slot in self._slots.items()
            if slot.session_expire_time is not None and slot.session_expire_time <= now
        ]
        for key in gone:
            self.release_session(*key)

    async def close(self, bound: float = CLOSE_BOUND) -> None:
        """Deletes every cache still held, waiting at most `bound` seconds for the deletes
        (those still running are cancelled: the caches expire by their TTL)."""
        for key in list(self._slots):
            self.release_session(*key)
        if self._deleting:
            _, pending = await asyncio.wait(set(self._deleting), timeout=bound)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # ------------------------------------------------------------------ internals

    def _count(self, outcome: str) -> None:
        self._counts[outcome] += 1

    def _slot(self, ref: SessionRef) -> _Slot:
        key = (ref.tenant, ref.session_id)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot()
            while len(self._slots) > max(self._settings.max_sessions, 1):
                _, oldest = self._slots.popitem(last=False)
                if oldest.cache is not None:
                    self._delete_later(oldest.cache.name)
        else:
            self._slots.move_to_end(key)
        slot.session_expire_time = ref.expire_time
        return slot

    @staticmethod
    def _matches(
        cache: Cache, request: ModelRequest, ref: SessionRef, header: bytes, parts: GenerateParts
    ) -> bool:
        return (
            cache.uid == ref.uid
            and cache.model == request.model
            and cache.header == header
            and cache.count <= parts.prefix
            and _digest(parts.contents, cache.count) == cache.digest
        )

    async def _reuse(
        self, slot: _Slot, cache: Cache, request: ModelRequest, now: float, deadline: float
    ) -> Cache | None:
        """`cache` (matching the request, not expired) as the slot's again, extended first
        when little of its TTL is left; None when Gemini says it is gone."""
        ttl = self._settings.ttl
        slot.cache = cache
        if cache.expire_time - now > ttl * REFRESH_SHARE:
            self._count("reused")
            return cache
        try:
            await self._api.refresh_cache(request, cache.name, ttl_text(ttl), deadline)
        except CacheGone:
            slot.cache = None
            self._count("expired")
            return None
        except Exception as exc:
            # Still alive until its expire time: used as it is.
            self._count("failed")
            log.warning("gemini context cache not extended", name=cache.name, error=str(exc))
            self._count("reused")
            return cache
        fresh = Cache(
            cache.name,
            cache.model,
            cache.uid,
            cache.header,
            cache.count,
            cache.digest,
            now + ttl,
        )
        slot.cache = fresh
        self._count("refreshed")
        self._count("reused")
        return fresh

    async def _create(
        self,
        slot: _Slot,
        request: ModelRequest,
        ref: SessionRef,
        parts: GenerateParts,
        header: bytes,
        deadline: float,
    ) -> Cache | None:
        now = self._clock()
        if parts.prefix == 0 or now < slot.retry_time:
            return None
        tokens = prefix_tokens(request)
        if tokens < self._settings.trigger(request.model):
            return None
        ttl = self._settings.ttl
        try:
            name = await self._api.create_cache(
                request, parts, parts.prefix, ttl_text(ttl), deadline
            )
        except Exception as exc:
            slot.retry_time = now + RETRY_AFTER
            self._count("failed")
            log.warning(
                "gemini context cache not created, the call goes without it",
                session_id=ref.session_id,
                estimated_tokens=tokens,
                error=str(exc),
            )
            return None
        cache = Cache(
            name,
            request.model,
            ref.uid,
            header,
            parts.prefix,
            _digest(parts.contents, parts.prefix),
            now + ttl,
        )
        slot.cache = cache
        self._count("created")
        log.info(
            "gemini context cache created",
            name=name,
            session_id=ref.session_id,
            contents=parts.prefix,
            estimated_tokens=tokens,
        )
        return cache

    def _delete_later(self, name: str) -> None:
        task = asyncio.get_running_loop().create_task(self._delete(name))
        self._deleting.add(task)
        task.add_done_callback(self._deleting.discard)

    async def _delete(self, name: str) -> None:
        async with self._deletes:
            try:
                await self._api.delete_cache(name)
            except CacheGone:
                return
            except Exception as exc:
                self._count("failed")
                log.warning("gemini context cache not deleted", name=name, error=str(exc))
                return
        self._count("deleted")
