"""The narrow async Protocols the domain needs from storage and model providers."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

from server.sessions.model import (
    JSON,
    BuiltinTools,
    FinishReason,
    FunctionDeclaration,
    FunctionResponsePart,
    GenerationConfig,
    JSONObject,
    Message,
    Part,
    SafetySetting,
    Session,
    Usage,
)

# ----------------------------------------------------------------------------- storage


class SessionOrder(enum.Enum):
    CREATE_TIME = "create_time"
    UPDATE_TIME = "update_time"


@dataclass(frozen=True, slots=True)
class SessionCursor:
    """Position after the last session of a page: its sort time and id."""

    time: float
    session_id: str


@dataclass(frozen=True, slots=True)
class SessionQuery:
    """One page of a tenant's sessions, ordered by (order, session_id)."""

    limit: int
    order: SessionOrder = SessionOrder.CREATE_TIME
    descending: bool = True
    after: SessionCursor | None = None
    # Every label here must be present on the session with this value.
    labels: Mapping[str, str] = field(default_factory=dict)
    # Sessions whose expire_time is at or before this time are left out.
    alive_at: float | None = None


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """What an idempotent request produced, kept under (tenant, request_id).

    `fingerprint` identifies the request's content (method included), so a reused id
    with a different request can be refused; `result` is the encoded outcome.
    """

    tenant: str
    request_id: str
    fingerprint: str
    result: str
    create_time: float


class ReplyState(enum.Enum):
    """Where a reply (one run of a turn: one SendMessage or StreamReply) stands.

    RUNNING is the only state that changes; the others are final.
    """

    RUNNING = "running"
    # The turn paused for the caller's tool results; answering them starts a new reply.
    AWAITING_TOOL_RESULTS = "awaiting_tool_results"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class ReplyError:
    """Why a reply failed or was cancelled, as the gRPC status its stream ended with.

    `code` is the gRPC status code's name ("UNAVAILABLE", "CANCELLED", ...); `reason` is
    the google.rpc.ErrorInfo reason, when there was one.
    """

    code: str
    message: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ReplyRecord:
    """A reply as stored under (tenant, reply_id).

    `last_seq` is the sequence number of the last event stored with it (events are
    numbered 1, 2, 3, ...). While RUNNING, `owner` names the replica running it and
    `lease_expire_time` is when others may declare it failed if that replica has not
    renewed the lease (it died). Times are seconds since the epoch, kept to the
    microsecond.
    """

    tenant: str
    session_id: str
    reply_id: str
    turn_id: str
    request_id: str
    background: bool
    state: ReplyState
    create_time: float
    update_time: float
    last_seq: int = 0
    owner: str = ""
    lease_expire_time: float | None = None
    error: ReplyError | None = None


@dataclass(frozen=True, slots=True)
class ReplyEvents:
    """Consecutive events of one reply, sequence numbers first_seq..last_seq, encoded as
    one opaque payload (the rpc layer's wire form: the store never reads it)."""

    first_seq: int
    last_seq: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class ReplyWrite:
    """A reply's record as it is now, and the events stored since the last write."""

    record: ReplyRecord
    events: ReplyEvents | None = None


class SessionStore(Protocol):
    """Durable sessions and their append-only history.

    Every method is safe to call concurrently. Writes are durable when they return.
    Sessions of one tenant are invisible to another: a wrong tenant is NotFound.
    Times are kept to the microsecond. A write whose awaiting task is cancelled may or
    may not have been applied. Every write that takes a `request` stores it in the same
    transaction and raises DuplicateRequest (writing nothing) if its id is already taken.
    """

    async def create_session(
        self,
        session: Session,
        messages: Sequence[Message] = (),
        request: RequestRecord | None = None,
        *,
        now: float | None = None,
        max_sessions: int = 0,
    ) -> None:
        """Stores a new session with an initial history (seqs below session.next_seq).

        With `now`, a session stored under the same id that expired at or before `now`
        is gone already (every read says NotFound), so it is deleted with its history
        and replaced. With max_sessions > 0 the tenant may hold at most that many
        sessions (alive at `now`, when given) including the new one, counted in the
        same transaction as the insert, so concurrent creates cannot overshoot it
        (ResourceExhausted, reason SESSION_QUOTA). Raises AlreadyExists if the id is
        taken in its tenant.
        """

    async def get_session(self, tenant: str, session_id: str) -> Session:
        """Raises NotFound."""

    async def count_sessions(self, tenant: str) -> int:
        """How many sessions the tenant has stored (expired ones not yet swept included)."""

    async def list_sessions(self, tenant: str, query: SessionQuery) -> list[Session]:
        """At most `query.limit` sessions after `query.after`, in the query's order."""

    async def delete_session(self, tenant: str, session_id: str, uid: str | None = None) -> None:
        """Removes the session, all its messages and its replies atomically. Raises
        NotFound, also when `uid` is given and the stored session is another life of it."""

    async def recent_messages(
        self, tenant: str, session_id: str, limit: int | None = None
    ) -> list[Message]:
        """The last `limit` messages (all when None), oldest first. Raises NotFound."""

    async def list_messages(
        self, tenant: str, session_id: str, after_seq: int, limit: int
    ) -> list[Message]:
        """At most `limit` messages with seq > after_seq, oldest first. Raises NotFound."""

    async def commit_turn(
        self,
        session: Session,
        messages: Sequence[Message],
        expected_version: int,
        request: RequestRecord | None = None,
        reply: ReplyWrite | None = None,
    ) -> None:
        """Atomically replaces the session row with `session` and appends `messages`.

        With `reply`, the reply's record and events are written in the same transaction
        (as put_reply does, but even over a record in a final state and whatever events
        are stored: the turn's stored outcome is the truth, and its events replace a chunk
        stored under the same first_seq). The reply must be of the session (ValueError).

        Requires session.version > expected_version and message seqs increasing from the
        stored next_seq up to below session.next_seq. Raises Conflict (and writes nothing)
        unless the stored version equals `expected_version`; NotFound if the session is
        gone or the stored session is another life of it (another uid). With no
        messages this is how settings are updated.
        """

    async def clear_history(self, session: Session, expected_version: int) -> None:
        """Atomically deletes every message and replaces the session row (Conflict and
        NotFound as in commit_turn)."""

    async def delete_expired(self, now: float, limit: int) -> int:
        """Deletes at most `limit` sessions (with their messages and replies) whose
        expire_time is at or before `now`; how many it deleted."""

    async def get_request(self, tenant: str, request_id: str) -> RequestRecord | None: ...

    async def put_request(self, request: RequestRecord) -> None:
        """Stores the record of a request that wrote nothing else (a turn the model
        answered with nothing); raises DuplicateRequest if its id is already taken."""

    async def delete_requests_before(self, time: float, limit: int) -> int:
        """Forgets at most `limit` request records created before `time`; how many."""

    async def put_reply(self, write: ReplyWrite) -> bool:
        """Creates or replaces the reply's record and appends its events, atomically.

        Returns False, writing nothing, if the stored record is already in a final state
        (the reply ended, or another replica declared it failed). A stored running
        record's events must be continued: first_seq == stored last_seq + 1, or without
        events the same last_seq; else ValueError, writing nothing. With events,
        record.last_seq must be events.last_seq (ValueError).
        """

    async def get_reply(self, tenant: str, reply_id: str) -> ReplyRecord | None: ...

    async def list_replies(
        self, tenant: str, session_id: str, limit: int, before: tuple[float, str] | None = None
    ) -> list[ReplyRecord]:
        """At most `limit` of the session's replies, newest first: ordered by (create_time,
        reply_id) descending, after the cursor `before` (a (create_time, reply_id) pair)."""

    async def reply_events(self, tenant: str, reply_id: str, after_seq: int) -> list[ReplyEvents]:
        """The reply's stored event payloads holding events after `after_seq`, in order
        (the first may begin at or before after_seq: the caller skips those)."""

    async def renew_replies(self, owner: str, lease_expire_time: float) -> int:
        """Extends the lease of every RUNNING reply of `owner`; how many."""

    async def fail_stale_replies(
        self, now: float, error: ReplyError, limit: int, *, expired_by: float | None = None
    ) -> int:
        """Marks at most `limit` RUNNING replies whose lease expired at or before
        `expired_by` (default: `now`) as FAILED with `error` (update_time = now, owner and
        lease cleared); how many. Times are seconds since the epoch."""

    async def delete_replies_before(self, time: float, limit: int) -> int:
        """Forgets at most `limit` replies in a final state last updated before `time`,
        with their events; how many."""

    async def close(self) -> None:
        """Flushes and releases resources; the store is unusable afterwards."""


class ReplyBus(Protocol):
    """Small messages to every replica sharing the store, this one included.

    With PostgreSQL it is LISTEN/NOTIFY on the shared database; with a store of one
    process it delivers in process. Delivery is at most once: a message sent while a
    replica is disconnected is lost to it, so receivers also poll the store.
    """

    async def start(self) -> None:
        """Begins delivering messages to the subscribers."""

    async def publish(self, message: JSONObject) -> None:
        """Sends `message` (a JSON object, at most 4000 bytes encoded) to every replica."""

    def subscribe(self, listener: Callable[[JSONObject], None]) -> None:
        """Calls `listener` on the event loop with each message, in publish order per sender."""

    async def close(self) -> None: ...


# ----------------------------------------------------------------------------- models


@dataclass(frozen=True, slots=True)
class SessionRef:
    """The life of a session a model call is made for. A provider may keep something for
    a session beside its calls (the gemini provider's context cache), keyed by tenant and
    session id; `uid` tells one life of the session from the next.

    `expire_time` is when the session expires once the turn making the call is stored
    (seconds since the epoch; None: never), as SessionResources.release_expired reads it.
    """

    tenant: str
    session_id: str
    uid: str
    expire_time: float | None = None

    @classmethod
    def of(cls, session: Session, now: float) -> SessionRef:
        """`session`'s reference for a turn running at `now`: a session with a ttl
        expires ttl seconds after the turn is stored (about `now`)."""
        ttl = session.settings.ttl_seconds
        expire = now + ttl if ttl is not None else session.settings.expire_time
        return cls(session.tenant, session.session_id, session.uid, expire)


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """Everything one model call needs; `contents` is already context-limited."""

    model: str
    contents: Sequence[Message]
    system_instruction: str = ""
    generation_config: GenerationConfig = GenerationConfig()
    function_declarations: Sequence[FunctionDeclaration] = ()
    safety_settings: Sequence[SafetySetting] = ()
    # Seconds left before the caller's deadline, if it set one.
    timeout: float | None = None
    # False: the model must answer in words, not with function calls.
    allow_function_calls: bool = True
    builtin_tools: BuiltinTools = BuiltinTools()
    # The session's (or stateless request's) labels; a provider decides whether to send them.
    labels: Mapping[str, str] = field(default_factory=dict)
    # A context compaction's request for a summary (server.sessions.compaction): its one
    # user message holds the instructions and a transcript of what to summarise.
    summarising: bool = False
    # The session a turn's call is for; None for calls of no session (GenerateContent,
    # CountTokens, summarising).
    session: SessionRef | None = None


class ModelChunk(NamedTuple):
    """A piece of a streamed model response; the last chunk carries usage and finish.

    A NamedTuple rather than a frozen dataclass: a reply streams many of them, and a
    frozen dataclass sets each field through object.__setattr__ (about 3x the cost).
    """

    parts: tuple[Part, ...] = ()
    usage: Usage | None = None
    finish_reason: FinishReason | None = None
    block_reason: str = ""
    model_version: str = ""
    # The candidate's fields besides content, finish reason and index (camelCase JSON).
    candidate_metadata: JSONObject | None = None
    # The response's promptFeedback as the SDK read it (camelCase JSON).
    prompt_feedback: JSONObject | None = None


@dataclass(frozen=True, slots=True)
class TokenCount:
    total_tokens: int
    estimated: bool


class ModelProvider(Protocol):
    """A model backend. Errors are raised as server.sessions.errors classes."""

    @property
    def name(self) -> str: ...

    @property
    def default_model(self) -> str: ...

    def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        """Streams the response. Cancelling the consuming task aborts the upstream call."""
        ...

    async def count_tokens(self, request: ModelRequest) -> TokenCount: ...

    async def close(self) -> None: ...


@runtime_checkable
class SessionResources(Protocol):
    """What a model provider keeps for sessions beyond single calls (the gemini provider's
    context caches), for the sessions layer to let go of. Optional: a provider that keeps
    nothing (echo) does not implement it, and callers check with isinstance.

    Both methods return at once; the provider does any upstream work in the background."""

    def release_session(self, tenant: str, session_id: str) -> None:
        """The session was deleted, here or on another replica that told this one (a
        notice on the ReplyBus): what is kept for it goes. Called again for a session
        already let go of, it does nothing."""

    def release_expired(self, now: float) -> None:
        """What is kept for sessions whose SessionRef.expire_time is at or before `now`
        (seconds since the epoch) goes: those sessions expired. The provider may also
        forget then what outlived its own lifetime by `now`."""


def release_session(provider: ModelProvider, tenant: str, session_id: str) -> None:
    """Tells `provider`, if it keeps anything per session, that the session was deleted."""
    if isinstance(provider, SessionResources):
        provider.release_session(tenant, session_id)


# ----------------------------------------------------------------------------- tools


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """A tool's answer: `response` goes to the model as a FunctionResponse's response,
    {"result": ...} on success or {"error": "..."} when the call failed; `parts` are
    media returned with it (the FunctionResponse's parts)."""

    response: Mapping[str, JSON]
    is_error: bool
    parts: tuple[FunctionResponsePart, ...] = ()


class ToolRunner(Protocol):
    """The server-registered tools a session may enable."""

    def declarations(self) -> Sequence[FunctionDeclaration]:
        """Every registered tool, sorted by name."""
        ...

    def names(self) -> frozenset[str]: ...

    async def run(self, name: str, args: Mapping[str, object]) -> ToolOutcome:
        """Runs one call. Never raises for a tool's own failure (unknown name, arguments
        that break the schema, an exception, a timeout): those become error outcomes."""
        ...
