"""Operations on a session as a whole: update, fork, clear, append, export and import."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from server.sessions.context import is_turn_start
from server.sessions.errors import Conflict, FailedPrecondition, InvalidArgument
from server.sessions.expiry import live_session
from server.sessions.ids import (
    check_id,
    message_id,
    new_session_id,
    new_session_uid,
    new_turn_id,
)
from server.sessions.locks import SessionLocks
from server.sessions.model import Message, PendingTurn, Role, Session, SessionSettings, Usage
from server.sessions.pacing import CHECK_SLICE, GIL_BREAK_SECONDS, Pacer, shifted
from server.sessions.ports import RequestRecord, SessionStore
from server.sessions.tool_calls import calls_of
from server.sessions.wellformed import check_history, check_pending_ids
from server.sessions.writes import complete

PAGE = 1000


@dataclass(frozen=True, slots=True)
class SessionDocument:
    """A whole session: what ExportSession produces and ImportSession consumes."""

    session: Session
    messages: tuple[Message, ...]


_FIELD = "document.messages"


async def _check_document(messages: Sequence[Message], open_calls_allowed: bool) -> None:
    """check_history over a whole document, a slice at a time, yielding between slices: a
    slice may end on unanswered calls, which the next slice's first message must answer."""
    pacer = Pacer()
    for i in range(1, len(messages)):
        if messages[i].seq <= messages[i - 1].seq:
            raise InvalidArgument(
                f"{_FIELD}[{i}].message_id",
                "message ids must increase",
                reason="MESSAGE_IDS_UNORDERED",
            )
        await pacer.tick()
    previous = None
    carried = None
    for start in range(0, len(messages), CHECK_SLICE):
        chunk = messages[start : start + CHECK_SLICE]
        last = start + CHECK_SLICE >= len(messages)
        try:
            carried = check_history(
                chunk,
                _FIELD,
                previous,
                open_calls_allowed=open_calls_allowed or not last,
                carried=carried,
            )
        except InvalidArgument as exc:
            raise shifted(exc, _FIELD, start) from None
        previous = chunk[-1]
        await asyncio.sleep(GIL_BREAK_SECONDS)
    check_pending_ids(carried or (), _FIELD)


@dataclass(frozen=True, slots=True)
class Etag:
    """A version of one life of a session, as a caller read it."""

    version: int
    uid: str


class HistoryOps:
    def __init__(
        self,
        store: SessionStore,
        locks: SessionLocks,
        check_settings: Callable[[SessionSettings, str], None],
        clock: Callable[[], float],
        max_sessions: int = 0,
    ) -> None:
        self._store = store
        self._locks = locks
        self._check_settings = check_settings
        self._clock = clock
        self._max_sessions = max_sessions

    async def _all_messages(
        self, tenant: str, session_id: str, upto: int | None = None
    ) -> list[Message]:
        messages: list[Message] = []
        after = -1
        while True:
            page = await self._store.list_messages(tenant, session_id, after, PAGE)
            messages.extend(m for m in page if upto is None or m.seq <= upto)
            if len(page) < PAGE or (upto is not None and page[-1].seq >= upto):
                return messages
            after = page[-1].seq

    async def update(
        self,
        tenant: str,
        session_id: str,
        change: Callable[[Session], SessionSettings],
        etag: Etag | None,
    ) -> Session:
        """Writes the settings `change` makes of the session as it is under the session
        lock, so concurrent updates of different fields both land.

        Raises NotFound, Conflict (ETAG_MISMATCH) when `etag` is set and the session
        moved on or is another life of it, and InvalidArgument from `change` or the
        settings' checks.
        """
        async with self._locks.hold(tenant, session_id):
            session = await live_session(self._store, tenant, session_id, self._clock())
            if etag is not None and (etag.version, etag.uid) != (session.version, session.uid):
                raise Conflict(
                    "etag: the session changed since it was read; read it again",
                    reason="ETAG_MISMATCH",
                )
            settings = change(session)
            self._check_settings(settings, "session")
            if session.pending is not None and settings.model != session.settings.model:
                raise FailedPrecondition(
                    "session.model: the session is waiting for tool results, and the paused "
                    "turn's thought signatures belong to the model that made them; answer the "
                    "pending tool calls (or clear the history) before changing the model",
                    reason="MODEL_CHANGE_WHILE_PAUSED",
                )
            updated = session.evolve(
                settings=settings, update_time=self._clock(), version=session.version + 1
            )
            await complete(self._store.commit_turn(updated, (), session.version))
            return updated

    async def clear(self, tenant: str, session_id: str) -> Session:
        """Empties history, keeps settings; a paused turn is dropped with it."""
        async with self._locks.hold(tenant, session_id):
            session = await live_session(self._store, tenant, session_id, self._clock())
            cleared = session.evolve(
                message_count=0,
                pending=None,
                update_time=self._clock(),
                version=session.version + 1,
            )
            await complete(self._store.clear_history(cleared, session.version))
            return cleared

    async def append(
        self,
        tenant: str,
        session_id: str,
        messages: Sequence[Message],
        record: Callable[[Session, Sequence[Message]], RequestRecord] | None,
    ) -> tuple[tuple[Message, ...], Session]:
        if not messages:
            raise InvalidArgument(
                "messages", "is required: the messages to append", reason="FIELD_REQUIRED"
            )
        async with self._locks.hold(tenant, session_id):
            session = await live_session(self._store, tenant, session_id, self._clock())
            if session.pending is not None:
                raise FailedPrecondition(
                    "the session is waiting for tool_results answering its pending tool calls",
                    reason="TOOL_RESULTS_PENDING",
                )
            last = await self._store.recent_messages(tenant, session_id, 1)
            check_history(messages, "messages", last[-1] if last else None)
            now = self._clock()
            stored: list[Message] = []
            turn_id = last[-1].turn_id if last else new_turn_id()
            for i, message in enumerate(messages):
                if is_turn_start(message):
                    turn_id = new_turn_id()
                stored.append(
                    replace(message, seq=session.next_seq + i, create_time=now, turn_id=turn_id)
                )
            usage = session.usage
            for message in stored:
                if message.usage is not None:
                    usage = usage + message.usage
            updated = session.evolve(
                message_count=session.message_count + len(stored),
                next_seq=session.next_seq + len(stored),
                usage=usage,
                update_time=now,
                version=session.version + 1,
            )
            request = record(updated, stored) if record is not None else None
            await complete(self._store.commit_turn(updated, stored, session.version, request))
            return tuple(stored), updated

    async def fork(
        self,
        tenant: str,
        session_id: str,
        upto: int | None,
        new_id: str,
        request: Callable[[Session], RequestRecord | None],
    ) -> Session:
        """A new session whose history is the source's up to message `upto` (inclusive)."""
        if new_id:
            check_id("new_session_id", new_id)
        # Under the source's lock, so no turn of it commits (or pauses) between reading
        # the session and reading its history; `_snapshot` checks other replicas.
        async with self._locks.hold(tenant, session_id):
            source, messages = await self._snapshot(tenant, session_id, upto)
            rest = []
            if upto is not None and messages and messages[-1].seq == upto:
                rest = await self._store.list_messages(tenant, session_id, upto, 1)
        if upto is not None and (not messages or messages[-1].seq != upto):
            raise InvalidArgument(
                "message_id",
                f"{message_id(upto)!r} is not a message of this session",
                reason="MESSAGE_NOT_IN_SESSION",
            )
        if source.pending is not None:
            if upto is not None and upto >= source.pending.first_seq:
                raise InvalidArgument(
                    "message_id",
                    f"{message_id(upto)!r} is in the turn waiting for tool results:"
                    " fork at the last message of a complete turn",
                    reason="FORK_POINT_INVALID",
                )
            # The paused turn is not complete: the fork stops before it.
            messages = [m for m in messages if m.seq < source.pending.first_seq]
        if (
            upto is not None
            and messages
            and rest
            and rest[0].turn_id == messages[-1].turn_id
            and not is_turn_start(rest[0])
        ):
            raise InvalidArgument(
                "message_id",
                f"{message_id(upto)!r} is inside a turn: fork at the last message of a turn",
                reason="FORK_POINT_INVALID",
            )
        return await self._create_copy(
            tenant, source.settings, messages, new_id or new_session_id(), None, request
        )

    async def _snapshot(
        self, tenant: str, session_id: str, upto: int | None = None
    ) -> tuple[Session, list[Message]]:
        """The session and its history (up to `upto`) as of one version of one life.

        History is read after the session row; if the row moved on meanwhile (another
        replica wrote it, or deleted and created it again), the two would not match, so
        that is a Conflict to retry.
        """
        session = await live_session(self._store, tenant, session_id, self._clock())
        messages = await self._all_messages(tenant, session_id, upto)
        now = await live_session(self._store, tenant, session_id, self._clock())
        if (now.uid, now.version) != (session.uid, session.version):
            raise Conflict(
                f"session {session_id!r} changed while it was read; retry",
                reason="SESSION_CHANGED",
            )
        return session, messages

    async def export(self, tenant: str, session_id: str) -> SessionDocument:
        async with self._locks.hold(tenant, session_id):
            session, messages = await self._snapshot(tenant, session_id)
        return SessionDocument(session, tuple(messages))

    async def import_(
        self,
        tenant: str,
        document: SessionDocument,
        session_id: str,
        request: Callable[[Session], RequestRecord | None],
    ) -> Session:
        source = document.session
        self._check_settings(source.settings, "document.session")
        messages = document.messages
        await _check_document(messages, source.pending is not None)
        if source.pending is not None:
            _check_pending(source.pending, messages)
        new_id = session_id or source.session_id or new_session_id()
        check_id("session_id", new_id)
        return await self._create_copy(
            tenant, source.settings, list(messages), new_id, source.pending, request
        )

    async def _create_copy(
        self,
        tenant: str,
        settings: SessionSettings,
        messages: list[Message],
        new_id: str,
        pending: PendingTurn | None,
        request: Callable[[Session], RequestRecord | None],
    ) -> Session:
        now = self._clock()
        usage = Usage()
        for message in messages:
            if message.usage is not None:
                usage = usage + message.usage
        session = Session(
            tenant=tenant,
            session_id=new_id,
            settings=settings,
            create_time=now,
            update_time=now,
            message_count=len(messages),
            next_seq=messages[-1].seq + 1 if messages else 0,
            usage=usage,
            pending=pending,
            uid=new_session_uid(),
        )
        await self._store.create_session(
            session, messages, request(session), now=now, max_sessions=self._max_sessions
        )
        return session


def _check_pending(pending: PendingTurn, messages: Sequence[Message]) -> None:
    """A paused turn must be the one the history ends with, as chatd pauses turns: its
    first message a user message of the history, its calls exactly those of the last
    (model) message, its answers to some of those calls. Otherwise tool results would
    answer calls the history does not hold, and leave its own calls unanswered."""
    field = "document.pending_turn"
    first = next((m for m in messages if m.seq == pending.first_seq), None)
    if first is None or not is_turn_start(first):
        raise InvalidArgument(
            f"{field}.first_message_id",
            "must be a user message of document.messages",
            reason="PENDING_TURN_INVALID",
        )
    last = messages[-1]
    if last.role is not Role.MODEL or calls_of(last) != pending.calls:
        raise InvalidArgument(
            f"{field}.calls",
            "must be exactly the function calls of the last message",
            reason="PENDING_TURN_INVALID",
        )
    ids = {call.id for call in pending.calls}
    for i, answer in enumerate(pending.answered):
        if answer.id not in ids:
            raise InvalidArgument(
                f"{field}.answered[{i}].id",
                "answers none of the calls",
                reason="PENDING_TURN_INVALID",
            )
