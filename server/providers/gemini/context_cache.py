"""Explicit context caches (cachedContents): a session's stable prefix cached once, then named
by its later requests instead of being sent again.

What a turn sends begins with what its next turns send again unchanged: the model, the
system instruction, tools and tool config, and the contents before the current turn's user
message (the *prefix*; with the stepped window or compaction it holds for many turns:
server/sessions/context.py, compaction.py). Once a session's prefix reaches the trigger
(CacheSettings.trigger_tokens, never below the model's minimum, MIN_CACHE_TOKENS), the
provider creates a cache of it (cachedContents.create, with the operator's TTL, and a
displayName of DISPLAY_NAME_PREFIX and a digest of the session) and the request names the
cache (`cachedContent`) and sends only the contents after it, without the system
instruction, tools and tool config, which the cache holds: Gemini refuses them beside a
cache (wire.CACHED_FIELDS). Gemini bills a cache's tokens at its cached rate on every
request naming it, plus storage for its TTL (https://ai.google.dev/gemini-api/docs/caching).

- Later requests of the session name the cache while its contents are still a prefix of
  what they send (compared by a digest of the encoded bytes), with the same model and
  header. A request extends the cache first (cachedContents.patch with a new ttl) when
  what is left of its TTL is within the last REFRESH_SHARE of it, or shorter than the
  request's own time left; a TTL is never set shorter than that time left.
- When the prefix no longer matches (the window stepped, a new compaction summary, another
  instruction, tools or model) the cache is deleted in the background and a new one made
  if the new prefix reaches the trigger.
- A call names a cache from its first request to its last continuation request (use()
  to done()): a cache replaced, evicted or released meanwhile is deleted once the last
  call using it is done, never under a running call.
- A request that forbids function calls (chatd's last tool round: toolConfig NONE) goes
  without the cache, which stays for the next one.
- Nothing here fails a turn (one case aside, below) or takes much of its time: a create
  or extension gets at most CacheSettings.call_bound seconds (CALL_BOUND), or CALL_SHARE
  of the turn's time left when that is shorter; one Gemini refuses or that does not
  answer in time is logged and counted, the request goes whole with the rest of the
  turn's time, and the session makes no new create (or extension) for RETRY_AFTER
  seconds. A create still running when its call gave up on it goes on in the background
  until the turn's deadline, and the cache it makes, if any, is deleted at once. A cache
  Gemini says is gone (HTTP 403/404 naming it) on a call's first request is forgotten
  (and deleted, in case the 403 meant something else) and the request sent again whole,
  in the same turn; on a continuation request, with part of the answer read from it, the
  provider fails the call UNAVAILABLE (CONTEXT_CACHE_GONE, retryable), which only a
  cache gone by other means than chatd's own deletes (those wait for the call) can
  cause.
- A cache created for a session whose slot was evicted or released while the create ran
  (the session deleted or expired meanwhile) is deleted at once and the request goes
  whole.
- At most CacheSettings.max_sessions sessions are tracked (the least recently used one's
  cache is deleted); a deleted or expired session's cache is deleted (SessionResources);
  a session whose cache outlived its TTL is dropped by release_expired; at shutdown every
  cache still held is deleted, waiting at most a short bound (what is not deleted then
  expires by its TTL).

A replica tracks the caches it made; another replica serving the same session makes its
own. chatd refuses a caller's cached_content naming a cache this replica made (owns());
a cache another replica made is unknown here (see docs/gemini-context-caching.md, "Tenant
isolation"). Cache names are logged as a short digest (short_name), never whole.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
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
# Seconds a session waits for its next create (or extension) after one failed.
RETRY_AFTER = 60.0
# Seconds a create or extension may take out of a turn at most, and the share of the
# turn's time left when that is shorter; the request then goes whole.
CALL_BOUND = 5.0
CALL_SHARE = 0.25
# Deletes running at once (a sweep may release many sessions together).
MAX_DELETES = 8
# Seconds close() waits for the deletes of the caches still held.
CLOSE_BOUND = 2.0
# How the displayName of every cache chatd creates begins (then a digest of the session).
DISPLAY_NAME_PREFIX = "chatd-"
# What is counted (chatd_gemini_context_caches_total{outcome}): a cache created; a call
# naming an existing cache (reused), whose TTL was first extended (refreshed too); a cache
# deleted; one Gemini no longer had or whose TTL ran out (expired); a create, extension or
# delete Gemini refused or that did not answer in time (failed).
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
    cache is tracked at once. `call_bound`: seconds a create or extension may take out of
    a turn at most (CALL_BOUND; not an operator setting)."""

    trigger_tokens: int = 0
    ttl: float = DEFAULT_TTL
    max_sessions: int = DEFAULT_MAX_SESSIONS
    call_bound: float = CALL_BOUND

    def trigger(self, model: str) -> int:
        return max(self.trigger_tokens, min_cache_tokens(model))


def ttl_text(seconds: float) -> str:
    """`seconds` as a protobuf Duration in JSON ("3600s"), as cachedContents takes a ttl."""
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


def short_name(name: str) -> str:
    """What logs show of a cache's resource name: 12 hex digits of its SHA-256. A cache's
    name is all a caller needs to read it through chatd's API key, so it is never logged
    whole."""
    return hashlib.sha256(name.encode()).hexdigest()[:12]


def cache_id(name: str) -> str:
    """The ID of a cache name, however it is written ("cachedContents/ID", "ID", or on
    Vertex AI "projects/P/locations/L/cachedContents/ID")."""
    return name.rsplit("/", 1)[-1]


def display_name(ref: SessionRef) -> str:
    """The displayName of the caches of the session `ref`: DISPLAY_NAME_PREFIX and 16 hex
    digits of a digest of its tenant, id and life (no id in the clear)."""
    key = "\0".join((ref.tenant, ref.session_id, ref.uid)).encode()
    return DISPLAY_NAME_PREFIX + hashlib.sha256(key).hexdigest()[:16]


class CacheGone(Exception):
    """Gemini no longer has the cache (HTTP 403 or 404 naming it)."""


class CacheApi(Protocol):
    """cachedContents calls, as the provider makes them; each raises CacheGone for a cache
    Gemini does not have, and whatever else went wrong as the provider's errors.
    `deadline` is the event loop's time by which the call must be over."""

    async def create_cache(
        self,
        request: ModelRequest,
        parts: GenerateParts,
        count: int,
        ttl: str,
        display_name: str,
        deadline: float,
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
    """A session's cache (if any), when the session expires, when its next create (or
    extension) may be tried, and how many creates for it run."""

    cache: Cache | None = None
    session_expire_time: float | None = None
    retry_time: float = 0.0
    creating: int = 0


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
    `clock` is seconds since the epoch (session expire times are); deadlines are the event
    loop's time."""

    def __init__(self, api: CacheApi, settings: CacheSettings, clock: Callable[[], float]) -> None:
        self._api = api
        self._settings = settings
        self._clock = clock
        self._slots: OrderedDict[tuple[str, str], _Slot] = OrderedDict()
        self._counts = dict.fromkeys(OUTCOMES, 0)
        # Calls using each cache (by name), and the caches to delete once none does.
        self._uses: dict[str, int] = {}
        self._doomed: set[str] = set()
        # The IDs of the caches this replica made, with when each expires (chatd's clock).
        self._made: dict[str, float] = {}
        self._creating: set[asyncio.Task[str]] = set()
        self._deleting: set[asyncio.Task[None]] = set()
        self._deletes = asyncio.Semaphore(MAX_DELETES)
        self._closed = False

    def counts(self) -> Mapping[str, int]:
        """How often each of OUTCOMES happened (a copy)."""
        return dict(self._counts)

    def held(self) -> int:
        """How many caches are held now."""
        return sum(1 for slot in self._slots.values() if slot.cache is not None)

    def in_use(self) -> int:
        """How many caches calls name now (between use() and done())."""
        return len(self._uses)

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

    def owns(self, name: str) -> bool:
        """Whether `name` (a cachedContent as a caller writes it) is a cache this replica
        made for a session and that may still live: no caller may name it."""
        return cache_id(name) in self._made

    async def use(
        self, request: ModelRequest, parts: GenerateParts, deadline: float
    ) -> Cache | None:
        """The cache `request` names, reused, extended or created as needed, held for the
        call until done(); None: the request goes whole. Never raises but for
        cancellation."""
        ref = request.session
        assert ref is not None
        slot = self._slot(ref)
        now = self._clock()
        header = hashlib.sha256(parts.header_bytes()).digest()
        cache = slot.cache
        if cache is not None:
            if not self._matches(cache, request, ref, header, parts):
                slot.cache = None
                self._delete_later(cache.name)
            elif now >= cache.expire_time:
                slot.cache = None
                self._count("expired")
            else:
                used = await self._reuse(slot, cache, request, now, deadline)
                if used is not None or slot.cache is not None:
                    return used
        return await self._create(slot, request, ref, parts, header, deadline)

    def done(self, cache: Cache) -> None:
        """A call that use() gave `cache` no longer names it (its last request ended): a
        cache replaced or released meanwhile is deleted now."""
        name = cache.name
        left = self._uses.get(name, 0) - 1
        if left > 0:
            self._uses[name] = left
            return
        self._uses.pop(name, None)
        if name in self._doomed:
            self._doomed.discard(name)
            self._start_delete(name)

    def lost(self, request: ModelRequest, cache: Cache) -> None:
        """Gemini refused a request naming `cache` (HTTP 403/404): it is forgotten, and
        deleted once the call is done (a 403 may also mean credentials Gemini refused,
        and the cache is then still there)."""
        ref = request.session
        slot = self._slots.get((ref.tenant, ref.session_id)) if ref is not None else None
        if slot is not None and slot.cache is not None and slot.cache.name == cache.name:
            slot.cache = None
        self._count("expired")
        self._delete_later(cache.name)
        log.info("gemini context cache gone, sent without it", cache=short_name(cache.name))

    def release_session(self, tenant: str, session_id: str) -> None:
        """The session was deleted: its cache is deleted in the background (once no call
        names it), and a create running for it deletes what it makes."""
        slot = self._slots.pop((tenant, session_id), None)
        if slot is not None and slot.cache is not None:
            self._delete_later(slot.cache.name)

    def release_expired(self, now: float) -> None:
        """The caches of sessions that expired at or before `now` are deleted in the
        background; sessions whose cache's TTL ran out by `now` (Gemini dropped it), or
        that hold nothing, are forgotten."""
        gone = [
            key
            for key, slot in self._slots.items()
            if slot.session_expire_time is not None and slot.session_expire_time <= now
        ]
        for key in gone:
            self.release_session(*key)
        for key, slot in list(self._slots.items()):
            if slot.creating:
                continue
            if slot.cache is not None and slot.cache.expire_time <= now:
                del self._slots[key]
                self._count("expired")
            elif slot.cache is None and slot.retry_time <= now:
                del self._slots[key]
        for made, expire_time in list(self._made.items()):
            if expire_time <= now:
                del self._made[made]

    async def close(self, bound: float = CLOSE_BOUND) -> None:
        """Deletes every cache still held, calls or not, waiting at most `bound` seconds
        for the deletes and for creates still running (those running then are cancelled:
        their caches expire by their TTL)."""
        self._closed = True
        for key in list(self._slots):
            self.release_session(*key)
        for name in list(self._doomed):
            self._doomed.discard(name)
            self._start_delete(name)
        loop = asyncio.get_running_loop()
        end = loop.time() + bound
        while (pending := self._creating | self._deleting) and (left := end - loop.time()) > 0:
            await asyncio.wait(pending, timeout=left)
        pending = self._creating | self._deleting
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

    def _acquire(self, cache: Cache) -> Cache:
        self._uses[cache.name] = self._uses.get(cache.name, 0) + 1
        return cache

    def _call_bound(self, deadline: float) -> float:
        """Seconds a create or extension may take of a call ending at `deadline`."""
        left = deadline - asyncio.get_running_loop().time()
        return max(0.0, min(self._settings.call_bound, left * CALL_SHARE))

    def _ttl(self, deadline: float) -> float:
        """The TTL a cache is given for a call ending at `deadline`: the operator's, or the
        call's time left when that is longer (the cache must outlive the call)."""
        return max(self._settings.ttl, deadline - asyncio.get_running_loop().time())

    async def _reuse(
        self, slot: _Slot, cache: Cache, request: ModelRequest, now: float, deadline: float
    ) -> Cache | None:
        """`cache` (the slot's, matching the request, not expired) held for the call,
        extended first when little of its TTL is left. None: the request goes whole,
        the cache forgotten (Gemini says it is gone) or kept for later calls (it could
        not be extended and might expire before the call ends)."""
        self._acquire(cache)
        left = deadline - asyncio.get_running_loop().time()
        remaining = cache.expire_time - now
        if remaining > max(self._settings.ttl * REFRESH_SHARE, left):
            self._count("reused")
            return cache
        if now >= slot.retry_time:
            ttl = self._ttl(deadline)
            bound = self._call_bound(deadline)
            try:
                async with asyncio.timeout(bound):
                    await self._api.refresh_cache(
                        request, cache.name, ttl_text(ttl), min(deadline, _now() + bound)
                    )
            except CacheGone:
                if slot.cache is cache:
                    slot.cache = None
                self._count("expired")
                self.done(cache)
                return None
            except Exception as exc:
                slot.retry_time = now + RETRY_AFTER
                self._count("failed")
                log.warning(
                    "gemini context cache not extended",
                    cache=short_name(cache.name),
                    error=_describe(exc, bound),
                )
            else:
                fresh = replace(cache, expire_time=now + ttl)
                if slot.cache is cache:
                    slot.cache = fresh
                self._made[cache_id(cache.name)] = fresh.expire_time
                self._count("refreshed")
                self._count("reused")
                return fresh
        if remaining > left:
            # Not extended, but alive until after the call's deadline: used as it is.
            self._count("reused")
            return cache
        self.done(cache)
        return None

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
        ttl = self._ttl(deadline)
        bound = self._call_bound(deadline)
        # The create runs on its own: a call that stops waiting for it (the bound, or the
        # call cancelled) leaves it to end by the call's deadline, and deletes what it makes.
        task = asyncio.get_running_loop().create_task(
            self._api.create_cache(
                request, parts, parts.prefix, ttl_text(ttl), display_name(ref), deadline
            )
        )
        self._creating.add(task)
        task.add_done_callback(self._creating.discard)
        slot.creating += 1
        try:
            await asyncio.wait({task}, timeout=bound)
        except asyncio.CancelledError:
            task.add_done_callback(self._abandoned)
            raise
        finally:
            slot.creating -= 1
        if not task.done():
            task.add_done_callback(self._abandoned)
            error: BaseException | None = TimeoutError()
        else:
            error = asyncio.CancelledError() if task.cancelled() else task.exception()
        if error is not None:
            slot.retry_time = now + RETRY_AFTER
            self._count("failed")
            log.warning(
                "gemini context cache not created, the call goes without it",
                session_id=ref.session_id,
                estimated_tokens=tokens,
                error=_describe(error, bound),
            )
            return None
        name = task.result()
        self._made[cache_id(name)] = now + ttl
        self._count("created")
        if self._slots.get((ref.tenant, ref.session_id)) is not slot:
            # The session was evicted, deleted or expired while the create ran.
            self._delete_later(name)
            log.info(
                "gemini context cache made for a session no longer tracked, deleted",
                cache=short_name(name),
                session_id=ref.session_id,
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
        if slot.cache is not None:
            # Another call of the session made one meanwhile: the newer one stays.
            self._delete_later(slot.cache.name)
        slot.cache = cache
        log.info(
            "gemini context cache created",
            cache=short_name(name),
            session_id=ref.session_id,
            contents=parts.prefix,
            estimated_tokens=tokens,
        )
        return self._acquire(cache)

    def _abandoned(self, task: asyncio.Task[str]) -> None:
        """A create its call no longer waits for ended: what it made is deleted."""
        if task.cancelled() or task.exception() is not None:
            return
        name = task.result()
        self._made[cache_id(name)] = self._clock() + self._settings.ttl
        self._count("created")
        log.info(
            "gemini context cache made after its call went on without it, deleted",
            cache=short_name(name),
        )
        self._delete_later(name)

    def _delete_later(self, name: str) -> None:
        """Deletes the cache `name` in the background once no call uses it."""
        if self._uses.get(name) and not self._closed:
            self._doomed.add(name)
        else:
            self._start_delete(name)

    def _start_delete(self, name: str) -> None:
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
                log.warning(
                    "gemini context cache not deleted", cache=short_name(name), error=str(exc)
                )
                return
        self._count("deleted")


def _now() -> float:
    return asyncio.get_running_loop().time()


def _describe(error: BaseException, bound: float) -> str:
    if isinstance(error, TimeoutError):
        return f"no answer within {bound:.3g}s"
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    return str(error)
