"""Session use cases: create, read, list and delete sessions, page through history, run turns."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from server.sessions import paging
from server.sessions.compaction import contents_to_send, load_history
from server.sessions.engine import TurnEngine, TurnInput
from server.sessions.errors import (
    AlreadyExists,
    ChatdError,
    Conflict,
    DuplicateRequest,
    InvalidArgument,
    session_not_found,
)
from server.sessions.events import ReplyStarted, TurnEvent, TurnReply
from server.sessions.expiry import live_session
from server.sessions.filters import parse_label_filter
from server.sessions.history_ops import HistoryOps, SessionDocument
from server.sessions.idempotency import (
    RequestKey,
    Requests,
    check_turn_result,
    encode_messages_result,
    encode_session_result,
    encode_turn_result,
    recorded_reply_id,
    replay_messages,
    replay_session_result,
    replay_turn,
)
from server.sessions.ids import check_id, new_session_id, new_session_uid
from server.sessions.locks import SessionLocks
from server.sessions.model import FunctionDeclaration, Message, Part, Role, Session, SessionSettings
from server.sessions.pacing import check_in_slices
from server.sessions.ports import (
    ModelProvider,
    ModelRequest,
    ReplyBus,
    ReplyEvents,
    ReplyRecord,
    ReplyState,
    RequestRecord,
    SessionOrder,
    SessionQuery,
    SessionStore,
    TokenCount,
    ToolRunner,
    release_session,
)
from server.sessions.replies import EventEncoder, LiveReply, Replies, follow_live
from server.sessions.stateless import GenerateInput, GenerationEvent, generate
from server.sessions.validation import (
    MessageLimits,
    check_generation_config,
    check_messages,
    check_response_parts,
    check_settings,
    check_user_parts,
)
from server.sessions.values import check_json_depth
from server.sessions.writes import complete

DEFAULT_SESSIONS_PAGE = 50
DEFAULT_MESSAGES_PAGE = 100
DEFAULT_TOOLS_PAGE = 100
DEFAULT_REPLIES_PAGE = 20
MAX_REPLIES_PAGE = 100

_ORDERS = {
    "": (SessionOrder.CREATE_TIME, True),
    "create_time desc": (SessionOrder.CREATE_TIME, True),
    "create_time": (SessionOrder.CREATE_TIME, False),
    "create_time asc": (SessionOrder.CREATE_TIME, False),
    "update_time desc": (SessionOrder.UPDATE_TIME, True),
    "update_time": (SessionOrder.UPDATE_TIME, False),
    "update_time asc": (SessionOrder.UPDATE_TIME, False),
}


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str


class ChatSessions:
    """The application's entry point for everything a caller does with sessions.

    `event_encoder` is how replies' events are stored (see sessions.replies); `bus`
    reaches the other replicas sharing the store (None: this process is the only one).
    Call `start()` before serving and `drain()` at shutdown. `tenant` is the caller's
    tenant (from its API key): another tenant's session is NotFound. Times are Unix
    seconds (`clock`); `reply_lease`, `reply_flush_interval` and `reply_poll_interval`
    are seconds; 0 for `max_background`, `max_background_per_tenant` and
    `max_sessions_per_tenant` means no cap.

    Errors are the classes of server.sessions.errors, each with a `reason`
    (docs/errors.md lists them per RPC). Each method below names its own; besides
    those, any method that reads or writes the store may raise Unavailable
    (STORE_UNAVAILABLE, or SESSION_CREATE_PENDING on SQLite) when the store fails, and
    a write may raise Conflict (CONFLICT) when a concurrent write to the session on
    another replica won; neither leaves anything half written. Shorthands used below:

    - a bad id: InvalidArgument FIELD_REQUIRED (empty) or ID_MALFORMED, naming the field;
    - settings checks: InvalidArgument MODEL_NAME_INVALID, TOOL_UNKNOWN,
      FUNCTION_DECLARATION_INVALID, LABEL_INVALID, DISPLAY_NAME_TOO_LONG,
      CONTEXT_POLICY_INVALID, COMPACTION_INVALID, SAFETY_SETTING_INVALID, TTL_INVALID,
      EXPIRE_TIME_INVALID, GENERATION_CONFIG_INVALID, VALUE_OUT_OF_RANGE,
      VALUE_NOT_ALLOWED, JSON_INVALID or JSON_TOO_DEEP (sessions.validation);
    - message checks: InvalidArgument TEXT_TOO_LONG, TOO_MANY_PARTS, PART_EMPTY,
      PART_INVALID, TEXT_EMPTY, MEDIA_MISSING, INVALID_GEMINI_PART, USAGE_INVALID,
      TURN_ID_INVALID, JSON_INVALID or JSON_TOO_DEEP, naming the part;
    - request-id errors (with a RequestKey): InvalidArgument REQUEST_ID_INVALID (too
      long) or REQUEST_ID_REUSED (the id came with another request), FailedPrecondition
      REQUEST_RESULT_GONE (the recorded result's session life is gone), AlreadyExists
      DUPLICATE_REQUEST (another replica recorded the id meanwhile and its record is
      not readable yet);
    - model-call errors: what the provider raises (docs/errors.md, "Model calls"):
      UpstreamRejected, InvalidArgument INVALID_GEMINI_PART, NotFound MODEL_NOT_FOUND,
      FailedPrecondition UPSTREAM_CREDENTIALS_REJECTED or UPSTREAM_FAILED_PRECONDITION,
      ResourceExhausted UPSTREAM_RATE_LIMITED, DeadlineExceeded UPSTREAM_TIMEOUT,
      Unavailable UPSTREAM_UNAVAILABLE.
    """

    def __init__(
        self,
        store: SessionStore,
        provider: ModelProvider,
        tools: ToolRunner,
        *,
        event_encoder: EventEncoder,
        bus: ReplyBus | None = None,
        single_process: bool = True,
        reply_lease: float = 10.0,
        reply_flush_interval: float = 0.2,
        reply_poll_interval: float = 1.0,
        max_background: int = 0,
        max_background_per_tenant: int = 0,
        max_tool_rounds: int = 8,
        limits: MessageLimits | None = None,
        max_sessions_per_tenant: int = 0,
        clock: Callable[[], float] = time.time,
        on_compaction: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._limits = limits or MessageLimits()
        self._max_sessions = max_sessions_per_tenant
        self._provider = provider
        self._tools = tools
        self._clock = clock
        self._locks = SessionLocks()
        self._engine = TurnEngine(
            store,
            provider,
            tools,
            max_tool_rounds=max_tool_rounds,
            clock=clock,
            on_compaction=on_compaction,
            locks=self._locks,
        )
        self._requests = Requests(store, clock)
        self.replies = Replies(
            store,
            event_encoder,
            bus=bus,
            clock=clock,
            lease=reply_lease,
            flush_interval=reply_flush_interval,
            poll_interval=reply_poll_interval,
            single_process=single_process,
            max_background=max_background,
            max_background_per_tenant=max_background_per_tenant,
        )
        self.replies.cancel_local = self._engine.cancel
        self.replies.release_local = lambda tenant, session_id: release_session(
            provider, tenant, session_id
        )
        self.history = HistoryOps(
            store, self._locks, self._check_settings, clock, max_sessions_per_tenant
        )

    def _check_settings(self, settings: SessionSettings, prefix: str) -> None:
        check_settings(settings, self._tools.names(), prefix)
        if settings.expire_time is not None and settings.expire_time <= self._clock():
            # It would be gone (NOT_FOUND) the moment it was written.
            raise InvalidArgument(
                f"{prefix}.expire_time", "is not in the future", reason="EXPIRE_TIME_INVALID"
            )

    async def _same_life(self, tenant: str, session: Session) -> None:
        """After reading history: NotFound if the session was deleted and created again
        meanwhile, so the history read belongs to another life."""
        if (await self.get(tenant, session.session_id)).uid != session.uid:
            raise session_not_found(session.session_id)

    async def _once(
        self,
        tenant: str,
        key: RequestKey | None,
        create: Callable[[Callable[[Session], RequestRecord | None]], Awaitable[Session]],
    ) -> Session:
        """Runs `create` once per request id: a retry gets the session the first run made,
        as it is now, or FailedPrecondition (REQUEST_RESULT_GONE) if that session is gone."""
        if key is None:
            return await create(lambda session: None)
        async with self._requests.claim(tenant, key) as done:
            if done is None:

                def record(session: Session) -> RequestRecord:
                    return self._requests.record(tenant, key, encode_session_result(session))

                try:
                    return await create(record)
                except DuplicateRequest as exc:
                    done = await self._requests.raced(tenant, key, exc)
        return await replay_session_result(self._store, done, self._clock())

    async def create(
        self,
        tenant: str,
        settings: SessionSettings,
        session_id: str,
        key: RequestKey | None = None,
    ) -> Session:
        """Creates a session with `settings`, empty history, and `session_id` (a new
        random id when empty); returns it as stored. With `key`, a retry returns the
        session the first run created, as it is now.

        Raises a bad id (`session_id`), settings checks (fields under `session.`),
        AlreadyExists (SESSION_EXISTS), ResourceExhausted (SESSION_QUOTA: the tenant
        holds `max_sessions_per_tenant` sessions) and request-id errors.
        """
        if session_id:
            check_id("session_id", session_id)
        self._check_settings(settings, "session")

        async def create(record: Callable[[Session], RequestRecord | None]) -> Session:
            now = self._clock()
            session = Session(
                tenant=tenant,
                session_id=session_id or new_session_id(),
                settings=settings,
                create_time=now,
                update_time=now,
                uid=new_session_uid(),
            )
            try:
                await self._store.create_session(
                    session, (), record(session), now=now, max_sessions=self._max_sessions
                )
            except AlreadyExists as exc:
                raise AlreadyExists(
                    f"session {session.session_id!r} already exists", reason="SESSION_EXISTS"
                ) from exc
            return session

        return await self._once(tenant, key, create)

    async def fork(
        self,
        tenant: str,
        session_id: str,
        upto: int | None,
        new_id: str,
        key: RequestKey | None = None,
    ) -> Session:
        """A new session (`new_id`, or a new random id when empty) with the settings of
        `session_id` and its history up to the message of seq `upto` (inclusive; None:
        all of it, without a turn still waiting for tool results). With `key`, a retry
        returns the fork the first run made.

        Raises NotFound (SESSION_NOT_FOUND), a bad id (`session_id`, `new_session_id`),
        InvalidArgument MESSAGE_NOT_IN_SESSION (`upto` is no message of the session) or
        FORK_POINT_INVALID (`upto` is inside a turn, or in the paused one), Conflict
        (SESSION_CHANGED: another replica wrote the session while it was read),
        AlreadyExists (SESSION_EXISTS), ResourceExhausted (SESSION_QUOTA) and
        request-id errors.
        """
        check_id("session_id", session_id)
        return await self._once(
            tenant, key, lambda record: self.history.fork(tenant, session_id, upto, new_id, record)
        )

    async def import_session(
        self,
        tenant: str,
        document: SessionDocument,
        session_id: str,
        key: RequestKey | None = None,
    ) -> Session:
        """Stores `document` (settings, every message, a paused turn) as a new session:
        `session_id`, else the document's own id, else a new random one. Message seqs,
        turn ids and usage are kept; the session's usage is the sum of its messages'.
        Long documents are checked in slices, so other calls keep being served. With
        `key`, a retry returns the session the first run made.

        Raises message checks (under `document.messages`), InvalidArgument
        MESSAGE_IDS_UNORDERED, HISTORY_MALFORMED (a history Gemini would refuse) or
        PENDING_TURN_INVALID (the paused turn is not the one the history ends with, or
        its rounds are negative), settings checks (under `document.session.`), a bad id,
        AlreadyExists (SESSION_EXISTS), ResourceExhausted (SESSION_QUOTA) and request-id
        errors.
        """
        await check_in_slices(
            lambda chunk, field: check_messages(chunk, field, self._limits),
            document.messages,
            "document.messages",
        )
        pending = document.session.pending
        if pending is not None:
            if pending.rounds < 0:
                raise InvalidArgument(
                    "document.pending_turn.rounds",
                    "must not be negative",
                    reason="PENDING_TURN_INVALID",
                )
            for i, call in enumerate(pending.calls):
                check_json_depth(call.args, f"document.pending_turn.calls[{i}].args")
            for i, answer in enumerate(pending.answered):
                check_json_depth(answer.response, f"document.pending_turn.answered[{i}].response")
        return await self._once(
            tenant, key, lambda record: self.history.import_(tenant, document, session_id, record)
        )

    async def get(self, tenant: str, session_id: str) -> Session:
        """The session as stored. Raises a bad id, NotFound (SESSION_NOT_FOUND: none of
        this tenant, or it has expired)."""
        check_id("session_id", session_id)
        return await live_session(self._store, tenant, session_id, self._clock())

    async def list(
        self, tenant: str, *, page_size: int, page_token: str, filter: str, order_by: str
    ) -> Page[Session]:
        """A page of the tenant's live (unexpired) sessions, and the token of the next
        page ("" after the last). `page_size` 0 means 50, at most 1000 are returned;
        `filter` is label equality terms joined by AND (`labels.team = "a" AND
        labels.env = "prod"`, see sessions.filters), "" for every session; `order_by`
        is "create_time" or "update_time", optionally followed by "desc" or "asc" (""
        is "create_time desc"). `page_token` must come with the same filter and order.

        Raises InvalidArgument PAGE_SIZE_NEGATIVE, ORDER_BY_INVALID, FILTER_INVALID,
        PAGE_TOKEN_INVALID (not a token of this server) or PAGE_TOKEN_MISMATCH (a token
        of another query).
        """
        size = paging.page_size(page_size, DEFAULT_SESSIONS_PAGE)
        normalized = " ".join(order_by.lower().split())
        if normalized not in _ORDERS:
            raise InvalidArgument(
                "order_by",
                f"{order_by[:64]!r} is not one of: {', '.join(sorted(_ORDERS)[1:])}",
                reason="ORDER_BY_INVALID",
            )
        order, descending = _ORDERS[normalized]
        labels = parse_label_filter(filter)
        query_key = f"sessions|{order.value}|{descending}|{sorted(labels.items())}"
        after = None
        if page_token:
            after = paging.session_cursor(paging.decode_token(page_token, query_key))
        query = SessionQuery(
            limit=size + 1,
            order=order,
            descending=descending,
            after=after,
            labels=labels,
            alive_at=self._clock(),
        )
        sessions = await self._store.list_sessions(tenant, query)
        token = ""
        if len(sessions) > size:
            sessions = sessions[:size]
            last = sessions[-1]
            time_ = last.create_time if order is SessionOrder.CREATE_TIME else last.update_time
            token = paging.encode_token(query_key, [time_, last.session_id])
        return Page(sessions, token)

    async def delete(self, tenant: str, session_id: str) -> None:
        """Deletes the session and its history, after any running turn of it ended, and
        cancels its background summary, if any. The model provider lets go of what it
        keeps for the session (SessionResources), here and, told through the bus, on the
        other replicas.

        Raises a bad id, NotFound (SESSION_NOT_FOUND: an expired session is already
        gone, and so is one deleted, or expired, while the delete waited, even if it was
        created again since)."""
        session = await self.get(tenant, session_id)
        async with self._locks.hold(tenant, session_id):
            now = await self.get(tenant, session_id)
            if now.uid != session.uid:
                raise session_not_found(session_id)
            await complete(self._store.delete_session(tenant, session_id, session.uid))
            self._engine.forget(tenant, session_id)
            release_session(self._provider, tenant, session_id)
        # What other replicas' providers keep for the session (their context caches).
        await self.replies.session_deleted(tenant, session_id)

    async def append(
        self,
        tenant: str,
        session_id: str,
        messages: tuple[Message, ...],
        key: RequestKey | None = None,
    ) -> tuple[tuple[Message, ...], Session]:
        """Adds `messages` (user and model messages, as a caller's own history) to the
        end of the session's history without calling the model, in one transaction; a
        user message that is not tool results starts a new turn. Returns the messages
        as stored (their seqs and create times set) and the session after them. With
        `key`, a retry returns the messages the first run stored.

        Raises a bad id, message checks (under `messages`), InvalidArgument
        FIELD_REQUIRED (no messages) or HISTORY_MALFORMED (the history would be one
        Gemini refuses, e.g. unanswered function calls), NotFound (SESSION_NOT_FOUND),
        FailedPrecondition (TOOL_RESULTS_PENDING: a turn waits for tool results) and
        request-id errors.
        """
        check_id("session_id", session_id)
        check_messages(messages, "messages", self._limits)
        if key is None:
            return await self.history.append(tenant, session_id, messages, None)
        async with self._requests.claim(tenant, key) as done:
            if done is None:

                def record(session: Session, stored: Sequence[Message]) -> RequestRecord:
                    result = encode_messages_result(session, stored)
                    return self._requests.record(tenant, key, result)

                try:
                    return await self.history.append(tenant, session_id, messages, record)
                except DuplicateRequest as exc:
                    done = await self._requests.raced(tenant, key, exc)
        stored, session = await replay_messages(self._store, done, session_id, self._clock())
        return tuple(stored), session

    async def start(self) -> None:
        """Fails replies a stopped process left running (see Replies.start), then keeps
        this replica's replies' leases. Raises Unavailable (STORE_UNAVAILABLE) when
        the store fails."""
        await self.replies.start()

    async def drain(self, grace: float) -> None:
        """At shutdown: no new background reply starts (Unavailable, REPLICA_STOPPING),
        and those running get `grace` seconds to end; one still running then fails
        UNAVAILABLE (REPLICA_STOPPING, retryable), unless its commit had begun (see
        Replies.drain). Background summaries are cancelled. Raises nothing."""
        await self.replies.drain(grace)
        self._engine.cancel_background()

    async def cancel(self, tenant: str, session_id: str, reply_id: str = "") -> bool:
        """Stops the session's running reply, or the reply `reply_id`, wherever it runs.
        A stopped turn stores nothing; its caller gets Cancelled (REPLY_CANCELLED).

        True if one was found running and told to stop (on another replica it stops
        moments later, unless its commit began); False if none runs, or its commit has
        begun (the turn is then stored). `session_id` may be "" when `reply_id` is set.
        Raises a bad id, NotFound (SESSION_NOT_FOUND without `reply_id`;
        REPLY_NOT_FOUND for a reply unknown, or of another session), Unavailable
        (BUS_RECONNECTING: the cancel must reach other replicas and their bus is
        reconnecting).
        """
        if reply_id:
            check_id("reply_id", reply_id)
            if session_id:
                check_id("session_id", session_id)
            return await self.replies.cancel(tenant, session_id, reply_id)
        await self.get(tenant, session_id)
        return await self.replies.cancel(tenant, session_id, "")

    async def get_reply(
        self, tenant: str, session_id: str, reply_id: str, *, after: int, events: bool
    ) -> tuple[ReplyRecord, Sequence[tuple[int, TurnEvent]], Sequence[ReplyEvents]]:
        """The reply's record and, with `events`, its events after `after`: numbered
        events when it runs here, else stored payloads (the first may start at or
        before `after`: the caller skips those). The last payload of an ended reply is
        always returned (its last event is the outcome), even when it holds no event
        after `after`. `session_id` may be "" (any session of the tenant).

        Raises a bad id (`reply_id`, `session_id`), NotFound (REPLY_NOT_FOUND: unknown,
        forgotten after the reply window, or of another session), InvalidArgument
        (STARTING_AFTER_INVALID: `after` negative or past the reply's last event)."""
        check_id("reply_id", reply_id)
        if session_id:
            check_id("session_id", session_id)
        if after < 0:
            raise InvalidArgument(
                "starting_after", "must not be negative", reason="STARTING_AFTER_INVALID"
            )
        live = self.replies.live(tenant, reply_id)
        if live is not None and (not session_id or live.record.session_id == session_id):
            record = replace(live.record, last_seq=len(live.events))
            self.replies.check_after(record, after)
            numbered = list(enumerate(live.events, 1))[after:] if events else []
            return record, numbered, ()
        record = await self.replies.record(tenant, session_id, reply_id)
        self.replies.check_after(record, after)
        stored: list[ReplyEvents] = []
        if events and record.last_seq > after:
            stored = await self._store.reply_events(tenant, reply_id, after)
        ended = record.last_seq > 0 and record.state is not ReplyState.RUNNING
        if ended and (not stored or stored[-1].last_seq < record.last_seq):
            last = await self._store.reply_events(tenant, reply_id, record.last_seq - 1)
            stored += last[-1:]
        return record, [], stored

    async def list_replies(
        self, tenant: str, session_id: str, *, page_size: int, page_token: str
    ) -> Page[ReplyRecord]:
        """A page of the session's replies (of its current life), newest first, and the
        next page's token ("" after the last). `page_size` 0 means 20, at most 100.

        Raises a bad id, NotFound (SESSION_NOT_FOUND), InvalidArgument
        PAGE_SIZE_NEGATIVE, PAGE_TOKEN_INVALID or PAGE_TOKEN_MISMATCH."""
        session = await self.get(tenant, session_id)
        size = min(paging.page_size(page_size, DEFAULT_REPLIES_PAGE), MAX_REPLIES_PAGE)
        query_key = f"replies|{session_id}|{session.uid}"
        before = None
        if page_token:
            # A (time, id) position, checked as a session listing's is.
            cursor = paging.session_cursor(paging.decode_token(page_token, query_key))
            before = (cursor.time, cursor.session_id)
        records = await self._store.list_replies(tenant, session_id, size + 1, before)
        # Replies of an earlier life of the session (deleted, created again) are not its.
        records = [r for r in records if r.create_time >= session.create_time]
        token = ""
        if len(records) > size:
            records = records[:size]
            last = records[-1]
            token = paging.encode_token(query_key, [last.create_time, last.reply_id])
        return Page(records, token)

    async def follow_reply(
        self, tenant: str, session_id: str, reply_id: str, after: int
    ) -> AsyncGenerator[ReplyStarted | tuple[int, TurnEvent] | ReplyEvents, None]:
        """A reply's events after `after` (StreamReply with reply_id): ReplyStarted, then
        numbered events when it runs here, or stored payloads (the first may start at
        or before `after`), live until it ends. A failed or cancelled reply ends with
        ReplyFailed carrying its status (its code and reason, e.g. Cancelled
        REPLY_CANCELLED, Unavailable REPLICA_LOST). `session_id` may be "".

        Raises, before ReplyStarted, a bad id (`reply_id`, `session_id`), NotFound
        (REPLY_NOT_FOUND), InvalidArgument (STARTING_AFTER_INVALID: `after` negative or
        past the reply's last event)."""
        check_id("reply_id", reply_id)
        if session_id:
            check_id("session_id", session_id)
        if after < 0:
            raise InvalidArgument(
                "starting_after", "must not be negative", reason="STARTING_AFTER_INVALID"
            )
        record = await self.replies.record(tenant, session_id, reply_id)
        self.replies.check_after(record, after)
        yield ReplyStarted(reply_id)
        live = self.replies.live(tenant, reply_id)
        if live is not None:
            async for numbered in follow_live(live, after):
                yield numbered
            return
        async for chunk in self.replies.follow_stored(tenant, reply_id, after):
            yield chunk

    async def list_messages(
        self, tenant: str, session_id: str, *, page_size: int, page_token: str
    ) -> Page[Message]:
        """A page of history, oldest first, and the next page's token ("" after the
        last). `page_size` 0 means 100, at most 1000 are returned.

        Raises a bad id, NotFound (SESSION_NOT_FOUND; deleted or expired sessions
        included, and one deleted and created again while the page was read),
        InvalidArgument PAGE_SIZE_NEGATIVE, PAGE_TOKEN_INVALID, or PAGE_TOKEN_MISMATCH
        for a page token of another session or another life of it (deleted and created
        again)."""
        session = await self.get(tenant, session_id)
        size = paging.page_size(page_size, DEFAULT_MESSAGES_PAGE)
        query_key = f"messages|{session_id}|{session.uid}"
        after = -1
        if page_token:
            after = paging.seq_cursor(paging.decode_token(page_token, query_key))
        messages = await self._store.list_messages(tenant, session_id, after, size + 1)
        if messages:
            await self._same_life(tenant, session)
        token = ""
        if len(messages) > size:
            messages = messages[:size]
            token = paging.encode_token(query_key, [messages[-1].seq])
        return Page(messages, token)

    async def run_turn(
        self,
        tenant: str,
        session_id: str,
        turn: TurnInput,
        key: RequestKey | None = None,
        *,
        background: bool = False,
    ) -> AsyncGenerator[ReplyStarted | TurnEvent | ReplyEvents, None]:
        """Validates the input, then yields ReplyStarted and the turn's events (see
        TurnEngine.run); with a request key, a retry replays the first run's stored
        result instead of calling the model (its stored events, as ReplyEvents payloads
        numbered from 1, while the reply is kept), and a retry while a background run
        of it is still going on this replica follows it.

        With `background`, the turn runs in a task of its own: it continues to its end,
        and is stored, when the caller leaves (a caller that leaves otherwise cancels
        it). Its events are streamed to the caller as they come, without a deadline.
        A turn that streams no text (`turn.stream_text` off: a unary SendMessage) in the
        foreground is a reply of one event, its outcome.

        `turn` holds a user message (`parts`) or the caller's `tool_results` for the
        calls a paused turn waits for, an optional `config_override` merged over the
        session's generation config, and `timeout` (seconds left before the caller's
        deadline; None: none). The turn is stored in one transaction when it ends or
        pauses for tool results; a turn that fails, or is cancelled before its commit
        began, stores nothing.

        Raises, before ReplyStarted: a bad id, InvalidArgument FIELDS_CONFLICT (a
        message and tool_results both), MESSAGE_EMPTY, USER_MESSAGE_INVALID, message
        checks (under `parts`, `tool_results[i]`), settings checks (under
        `generation_config`), request-id errors, NotFound (SESSION_NOT_FOUND, with
        `background`), ResourceExhausted TOO_MANY_BACKGROUND_REPLIES or
        TOO_MANY_TENANT_BACKGROUND_REPLIES and Unavailable REPLICA_STOPPING (with
        `background`). Then, from the turn: NotFound (SESSION_NOT_FOUND, also when the
        session expired while the turn ran), FailedPrecondition TOOL_RESULTS_PENDING (a
        message while a turn waits for tool results) or NO_PENDING_TOOL_CALLS
        (tool_results while none waits), InvalidArgument TOOL_CALL_UNKNOWN,
        TOOL_CALL_ANSWERED, TOOL_RESULTS_MISSING or GENERATION_CONFIG_INVALID (an
        override at odds with the session's cached content), model-call errors,
        Cancelled (REPLY_CANCELLED: CancelReply stopped it; CALLER_DISCONNECTED is how
        the reply's record ends when its caller left), Conflict (REQUEST_RACED: another
        replica completed the same request id first), Unavailable REPLY_LEASE_LOST
        (another replica declared this background reply lost), FailedPrecondition
        REQUEST_RESULT_GONE (a retry's recorded turn is no longer the session's), and
        ReplyFailed when a retry follows a background run that failed, with that run's
        status (a run that failed on an unexpected exception is UNAVAILABLE
        INTERNAL_FAILURE to its followers; its own caller gets the exception).
        """
        check_id("session_id", session_id)
        if turn.tool_results and turn.parts:
            raise InvalidArgument(
                "tool_results",
                "send either a message or tool_results, not both",
                reason="FIELDS_CONFLICT",
            )
        if not turn.tool_results:
            check_user_parts(turn.parts, "parts", self._limits)
        for i, result in enumerate(turn.tool_results):
            # Stored as the function response {"result": value} or {"error": message}.
            check_json_depth(result.response, f"tool_results[{i}].result")
            check_response_parts(result.parts, f"tool_results[{i}].parts")
        if turn.config_override is not None:
            check_generation_config(turn.config_override, "generation_config")
        if key is not None:
            Requests.check_key(key)
            running = self.replies.running_request(tenant, key.request_id)
            if running is not None:
                if running.fingerprint != key.fingerprint:
                    Requests.same_request(key, _fingerprinted(running, key))
                if running.record.background:
                    # Followed, not run again.
                    yield ReplyStarted(running.reply_id)
                    async for _, event in follow_live(running, 0):
                        yield event
                    return
                # A foreground run belongs to its caller, who may leave and so cancel
                # it: the retry waits for its end, then replays it or, if it stored
                # nothing, runs.
                with contextlib.suppress(ChatdError):
                    async for _ in follow_live(running, 0):
                        pass
            done = await self._store.get_request(tenant, key.request_id)
            if done is not None:
                # It ran: the retry gets that reply again, id included, as it was.
                self._requests.same_request(key, done)
                reply_id = recorded_reply_id(done)
                stored = await self._stored_events(tenant, reply_id)
                if stored:
                    await check_turn_result(self._store, session_id, done, self._clock())
                yield ReplyStarted(reply_id)
                if stored:
                    # Its events as stored, numbered as first sent.
                    for chunk in stored:
                        yield chunk
                    return
                async for event in replay_turn(
                    self._store, session_id, done, self._clock(), turn.parts
                ):
                    yield event
                return
        request_id = key.request_id if key is not None else ""
        fingerprint = key.fingerprint if key is not None else ""
        if background:
            await self.get(tenant, session_id)  # NotFound now, not in the background
            turn = replace(turn, timeout=None, stream_text=True)
            live = self.replies.begin(
                tenant, session_id, request_id=request_id, fingerprint=fingerprint, background=True
            )

            def events() -> AsyncIterator[TurnEvent]:
                return self._turn_events(tenant, session_id, turn, key, live)

            await self.replies.start_background(live, events)
            yield ReplyStarted(live.reply_id)
            async for _, event in follow_live(live, 0):
                yield event
            return
        live = self.replies.begin(
            tenant,
            session_id,
            request_id=request_id,
            fingerprint=fingerprint,
            outcome_only=not turn.stream_text,
        )
        yield ReplyStarted(live.reply_id)
        async for event in self.replies.track(
            live, self._turn_events(tenant, session_id, turn, key, live)
        ):
            yield event

    async def _stored_events(self, tenant: str, reply_id: str) -> Sequence[ReplyEvents]:
        """An ended reply's stored events, [] if it is gone (or never had a record)."""
        if not reply_id:
            return ()
        record = await self._store.get_reply(tenant, reply_id)
        if record is None or record.state is ReplyState.RUNNING or not record.last_seq:
            return ()
        return await self._store.reply_events(tenant, reply_id, 0)

    async def _turn_events(
        self,
        tenant: str,
        session_id: str,
        turn: TurnInput,
        key: RequestKey | None,
        live: LiveReply,
    ) -> AsyncGenerator[TurnEvent, None]:
        """The turn's events, once per request key (see run_turn)."""
        if key is None:
            async for event in self._engine.run(tenant, session_id, turn, log=live):
                yield event
            return
        async with self._requests.claim(tenant, key) as done:
            if done is None:

                def record(session: Session, reply: TurnReply) -> RequestRecord:
                    return self._requests.record(tenant, key, encode_turn_result(session, reply))

                try:
                    async for event in self._engine.run(tenant, session_id, turn, record, live):
                        yield event
                    return
                except DuplicateRequest as exc:
                    raise Conflict(
                        "another replica completed this request_id first: retry to get its result",
                        reason="REQUEST_RACED",
                    ) from exc
        async for event in replay_turn(self._store, session_id, done, self._clock(), turn.parts):
            yield event

    async def count_tokens(
        self,
        tenant: str,
        session_id: str,
        *,
        candidate: tuple[Part, ...],
        contents: tuple[Message, ...],
        model: str,
        system_instruction: str = "",
        function_declarations: tuple[FunctionDeclaration, ...] = (),
    ) -> TokenCount:
        """Tokens of what the next turn would send: the session's context window plus
        `candidate` (user parts; may be empty), its system instruction and its tools'
        declarations, counted by `model` (else the session's, else the provider's
        default); without a session, of `contents` with the given instruction and
        declarations. `estimated` is set when the provider estimated instead of asking
        the model (the echo provider does).

        Raises InvalidArgument FIELD_REQUIRED (neither `session_id` nor `contents`),
        FIELDS_CONFLICT (`contents`, `system_instruction` or `function_declarations`
        beside `session_id`), message checks (under `contents` or `parts`),
        MESSAGE_EMPTY or USER_MESSAGE_INVALID (the candidate), settings checks, a bad
        id, NotFound (SESSION_NOT_FOUND) and model-call errors.
        """
        if not session_id:
            if not contents:
                raise InvalidArgument(
                    "contents", "set session_id, or contents to count", reason="FIELD_REQUIRED"
                )
            check_messages(contents, "contents", self._limits)
            settings = SessionSettings(
                model=model,
                system_instruction=system_instruction,
                function_declarations=function_declarations,
            )
            check_settings(settings, known_tools=(), prefix="")
            request_model = model or self._provider.default_model
            return await self._provider.count_tokens(
                ModelRequest(
                    request_model,
                    contents,
                    system_instruction=system_instruction,
                    function_declarations=function_declarations,
                )
            )
        if contents or system_instruction or function_declarations:
            field = (
                "contents"
                if contents
                else ("system_instruction" if system_instruction else "function_declarations")
            )
            raise InvalidArgument(
                field,
                "with session_id, the session's own are counted: send only the candidate",
                reason="FIELDS_CONFLICT",
            )
        session = await self.get(tenant, session_id)
        settings = session.settings
        policy = settings.context_policy
        history = await load_history(self._store, tenant, session_id, policy)
        await self._same_life(tenant, session)
        if candidate:
            check_user_parts(candidate, "parts", self._limits)
            # At the seq it would get, so a stepped window places it as a turn would.
            history.append(Message(Role.USER, candidate, session.next_seq))
        window = contents_to_send(history, policy)
        enabled = set(settings.tools)
        declarations = [d for d in self._tools.declarations() if d.name in enabled]
        request = ModelRequest(
            model or settings.model or self._provider.default_model,
            window,
            system_instruction=settings.system_instruction,
            generation_config=settings.generation_config,
            function_declarations=[*declarations, *settings.function_declarations],
            safety_settings=settings.safety_settings,
            labels=settings.labels,
        )
        return await self._provider.count_tokens(request)

    def generate(self, given: GenerateInput) -> AsyncGenerator[GenerationEvent, None]:
        """Stateless generation (see sessions.stateless): one model call on the
        caller's whole `given.contents`; nothing is stored. Yields text deltas and
        function calls as they come, then GenerationDone with the whole answer.

        Raises message checks (under `contents`) at once; then, as the generator runs,
        InvalidArgument FIELD_REQUIRED (no contents), settings checks (the request's own
        fields: `model`, `system_instruction`, `generation_config`,
        `function_declarations`, ...) and model-call errors.
        """
        check_messages(given.contents, "contents", self._limits)
        return generate(self._provider, given)

    def list_tools(self, *, page_size: int, page_token: str) -> Page[FunctionDeclaration]:
        """A page of the server-registered tools sessions may enable, by name (built-in,
        plugin and MCP tools, in registration order), and the next page's token ("" after
        the last). `page_size` 0 means 100, at most 1000.

        Raises InvalidArgument PAGE_SIZE_NEGATIVE, PAGE_TOKEN_INVALID or
        PAGE_TOKEN_MISMATCH."""
        size = paging.page_size(page_size, DEFAULT_TOOLS_PAGE)
        start = 0
        if page_token:
            start = paging.seq_cursor(paging.decode_token(page_token, "tools"))
        tools = list(self._tools.declarations())
        page = tools[start : start + size]
        more = start + size < len(tools)
        return Page(page, paging.encode_token("tools", [start + size]) if more else "")


def _fingerprinted(running: LiveReply, key: RequestKey) -> RequestRecord:
    """The running reply's request, as a record Requests.same_request can compare."""
    record = running.record
    return RequestRecord(record.tenant, key.request_id, running.fingerprint, "", record.create_time)
