"""Session use cases: create, read, list and delete sessions, page through history, run turns."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from server.sessions import paging
from server.sessions.context import history_needed, select_window
from server.sessions.engine import TurnEngine, TurnInput
from server.sessions.errors import AlreadyExists, InvalidArgument
from server.sessions.events import TurnEvent
from server.sessions.filters import parse_label_filter
from server.sessions.ids import check_id, new_session_id
from server.sessions.model import FunctionDeclaration, Message, Part, Role, Session, SessionSettings
from server.sessions.ports import (
    ModelProvider,
    ModelRequest,
    SessionOrder,
    SessionQuery,
    SessionStore,
    TokenCount,
    ToolRunner,
)
from server.sessions.stateless import GenerateInput, GenerationEvent, generate
from server.sessions.validation import check_generation_config, check_settings, check_user_parts

DEFAULT_SESSIONS_PAGE = 50
DEFAULT_MESSAGES_PAGE = 100
DEFAULT_TOOLS_PAGE = 100

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
    """The application's entry point for everything a caller does with sessions."""

    def __init__(
        self,
        store: SessionStore,
        provider: ModelProvider,
        tools: ToolRunner,
        *,
        max_tool_rounds: int = 8,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._provider = provider
        self._tools = tools
        self._clock = clock
        self._engine = TurnEngine(
            store, provider, tools, max_tool_rounds=max_tool_rounds, clock=clock
        )

    async def create(self, tenant: str, settings: SessionSettings, session_id: str) -> Session:
        if session_id:
            check_id("session_id", session_id)
        check_settings(settings, self._tools.names(), "session")
        now = self._clock()
        session = Session(
            tenant=tenant,
            session_id=session_id or new_session_id(),
            settings=settings,
            create_time=now,
            update_time=now,
        )
        try:
            await self._store.create_session(session)
        except AlreadyExists as exc:
            raise AlreadyExists(
                f"session {session.session_id!r} already exists", reason="SESSION_EXISTS"
            ) from exc
        return session

    async def get(self, tenant: str, session_id: str) -> Session:
        return await self._store.get_session(tenant, check_id("session_id", session_id))

    async def list(
        self, tenant: str, *, page_size: int, page_token: str, filter: str, order_by: str
    ) -> Page[Session]:
        size = paging.page_size(page_size, DEFAULT_SESSIONS_PAGE)
        normalized = " ".join(order_by.lower().split())
        if normalized not in _ORDERS:
            raise InvalidArgument(
                "order_by", f"{order_by[:64]!r} is not one of: {', '.join(sorted(_ORDERS)[1:])}"
            )
        order, descending = _ORDERS[normalized]
        labels = parse_label_filter(filter)
        query_key = f"sessions|{order.value}|{descending}|{sorted(labels.items())}"
        after = None
        if page_token:
            after = paging.session_cursor(paging.decode_token(page_token, query_key))
        query = SessionQuery(
            limit=size + 1, order=order, descending=descending, after=after, labels=labels
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
        await self._store.delete_session(tenant, check_id("session_id", session_id))

    async def list_messages(
        self, tenant: str, session_id: str, *, page_size: int, page_token: str
    ) -> Page[Message]:
        check_id("session_id", session_id)
        size = paging.page_size(page_size, DEFAULT_MESSAGES_PAGE)
        query_key = f"messages|{session_id}"
        after = -1
        if page_token:
            after = paging.seq_cursor(paging.decode_token(page_token, query_key))
        messages = await self._store.list_messages(tenant, session_id, after, size + 1)
        token = ""
        if len(messages) > size:
            messages = messages[:size]
            token = paging.encode_token(query_key, [messages[-1].seq])
        return Page(messages, token)

    def run_turn(
        self, tenant: str, session_id: str, turn: TurnInput
    ) -> AsyncGenerator[TurnEvent, None]:
        """Validates the input, then returns the turn's event stream (see TurnEngine.run)."""
        check_id("session_id", session_id)
        if turn.tool_results and turn.parts:
            raise InvalidArgument("tool_results", "send either a message or tool_results, not both")
        if not turn.tool_results:
            check_user_parts(turn.parts, "parts")
        if turn.config_override is not None:
            check_generation_config(turn.config_override, "generation_config")
        return self._engine.run(tenant, session_id, turn)

    async def count_tokens(
        self,
        tenant: str,
        session_id: str,
        *,
        candidate: tuple[Part, ...],
        contents: tuple[Message, ...],
        model: str,
    ) -> TokenCount:
        """Tokens of what the next turn would send: the session's context window plus
        `candidate`; without a session, of `contents` alone."""
        if not session_id:
            if not contents:
                raise InvalidArgument("contents", "set session_id, or contents to count")
            request_model = model or self._provider.default_model
            return await self._provider.count_tokens(ModelRequest(request_model, contents))
        if contents:
            raise InvalidArgument(
                "contents", "with session_id, send the candidate as text or parts"
            )
        check_id("session_id", session_id)
        session = await self._store.get_session(tenant, session_id)
        policy = session.settings.context_policy
        history = await self._store.recent_messages(tenant, session_id, history_needed(policy))
        if candidate:
            check_user_parts(candidate, "parts")
            history.append(Message(Role.USER, candidate))
        window = select_window(history, policy)
        request_model = model or session.settings.model or self._provider.default_model
        return await self._provider.count_tokens(ModelRequest(request_model, window))

    def generate(self, given: GenerateInput) -> AsyncGenerator[GenerationEvent, None]:
        """Stateless generation (see sessions.stateless)."""
        return generate(self._provider, given)

    def list_tools(self, *, page_size: int, page_token: str) -> Page[FunctionDeclaration]:
        """The server-registered tools sessions may enable, by name."""
        size = paging.page_size(page_size, DEFAULT_TOOLS_PAGE)
        start = 0
        if page_token:
            start = paging.seq_cursor(paging.decode_token(page_token, "tools"))
        tools = list(self._tools.declarations())
        page = tools[start : start + size]
        more = start + size < len(tools)
        return Page(page, paging.encode_token("tools", [start + size]) if more else "")
