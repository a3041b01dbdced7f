"""Who may call and how much: API keys to tenants, per-tenant rate limits, stream slots."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from server.sessions.errors import ResourceExhausted, Unauthenticated


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    """Maps bearer tokens to tenants. Keys are kept only as SHA-256 digests."""

    def __init__(self, keys: Mapping[str, str]) -> None:
        self._tenants = {_digest(key): tenant for key, tenant in keys.items()}

    def __bool__(self) -> bool:
        return bool(self._tenants)

    def tenant(self, authorization: str | None) -> str:
        """The tenant whose key `authorization` ("Bearer <key>") carries."""
        if not authorization:
            raise Unauthenticated(
                "missing API key: send metadata 'authorization: Bearer <key>'",
                reason="API_KEY_MISSING",
            )
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated(
                "malformed authorization metadata: expected 'Bearer <key>'",
                reason="API_KEY_MALFORMED",
            )
        digest = _digest(key.strip())
        for known, tenant in self._tenants.items():
            if hmac.compare_digest(known, digest):
                return tenant
        raise Unauthenticated("the API key is not valid", reason="API_KEY_INVALID")


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


@dataclass
class RateLimiter:
    """A token bucket per tenant: `rate` requests a second, bursts up to `burst`."""

    rate: float
    burst: float
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def take(self, tenant: str) -> None:
        """Spends one token, or raises ResourceExhausted saying when one will be there."""
        if self.rate <= 0:
            return
        now = self.clock()
        bucket = self._buckets.get(tenant)
        if bucket is None:
            bucket = self._buckets[tenant] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens < 1:
            wait = (1 - bucket.tokens) / self.rate
            raise ResourceExhausted(
                f"tenant {tenant!r} is over its request rate ({self.rate:g}/s)",
                retry_after=wait,
                reason="RATE_LIMITED",
            )
        bucket.tokens -= 1


@dataclass
class StreamSlots:
    """Caps concurrent streaming RPCs across the server and per tenant (0 = no cap), so one
    tenant holding many slow streams cannot take every slot from the others."""

    limit: int
    per_tenant: int = 0
    active: int = 0
    _by_tenant: dict[str, int] = field(default_factory=dict)

    def acquire(self, tenant: str) -> None:
        held = self._by_tenant.get(tenant, 0)
        if self.per_tenant and held >= self.per_tenant:
            raise ResourceExhausted(
                f"tenant {tenant!r} has its maximum of {self.per_tenant} concurrent streams "
                "open (CHATD_MAX_STREAMS_PER_TENANT)",
                retry_after=1.0,
                reason="TOO_MANY_TENANT_STREAMS",
                limit=("CHATD_MAX_STREAMS_PER_TENANT", self.per_tenant),
            )
        if self.limit and self.active >= self.limit:
            raise ResourceExhausted(
                f"the server is serving its maximum of {self.limit} concurrent streams "
                "(CHATD_MAX_STREAMS)",
                retry_after=1.0,
                reason="TOO_MANY_STREAMS",
                limit=("CHATD_MAX_STREAMS", self.limit),
            )
        self.active += 1
        self._by_tenant[tenant] = held + 1

    def release(self, tenant: str) -> None:
        self.active -= 1
        held = self._by_tenant[tenant] - 1
        if held:
            self._by_tenant[tenant] = held
        else:
            del self._by_tenant[tenant]

    def held(self, tenant: str) -> int:
        return self._by_tenant.get(tenant, 0)


@dataclass
class ByteBudget:
    """Bounds the bytes of large requests being decoded and handled at once.

    A request of at least `threshold` bytes takes its size from `budget` before it is
    parsed and gives it back when its call ends; one that does not fit is refused at once
    (RESOURCE_EXHAUSTED with RetryInfo), so concurrent large requests cannot all decode at
    the same time. One request is always let in when none is in flight, whatever its size.
    `on_drained` runs when the last large request ends (to hand freed memory back).
    """

    threshold: int
    budget: int
    on_drained: Callable[[], None] | None = None
    in_flight: int = 0

    def admits(self, size: int) -> bool:
        """Takes `size` bytes if the request is large and they fit; False when refused."""
        if not self.budget or size < self.threshold:
            return True
        if self.in_flight and self.in_flight + size > self.budget:
            return False
        self.in_flight += size
        return True

    def release(self, size: int) -> None:
        if not self.budget or size < self.threshold:
            return
        self.in_flight -= size
        if not self.in_flight and self.on_drained is not None:
            self.on_drained()

    def refusal(self, size: int) -> ResourceExhausted:
        return ResourceExhausted(
            f"the server is already decoding {self.in_flight} bytes of large requests and this "
            f"one ({size} bytes) does not fit its budget (CHATD_LARGE_REQUEST_BUDGET); "
            "retry later, or use the streaming RPCs for large documents",
            retry_after=1.0,
            reason="REQUEST_MEMORY_BUDGET",
            limit=("CHATD_LARGE_REQUEST_BUDGET", self.budget),
        )


def parse_keys(entries: Iterable[str], source: str) -> dict[str, str]:
    """Key -> tenant from "tenant key" (or "tenant:key") entries; '#' starts a comment."""
    keys: dict[str, str] = {}
    for number, raw in enumerate(entries, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        tenant, _, key = line.replace(":", " ", 1).partition(" ")
        tenant, key = tenant.strip(), key.strip()
        if not tenant or not key or " " in key:
            raise ValueError(f"{source} entry {number}: expected 'tenant key'")
        if key in keys:
            raise ValueError(f"{source} entry {number}: a key is listed twice")
        keys[key] = tenant
    return keys
