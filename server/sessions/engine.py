"""The turn engine: one user message in, the model's reply out, stored atomically."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from server.sessions.context import history_needed, select_window
from server.sessions.errors import FailedPrecondition
from server.sessions.events import (
    MessageCompleted,
    TurnCompleted,
    TurnEvent,
    TurnReply,
)
from server.sessions.ids import new_turn_id
from server.sessions.locks import KeyedLocks
from server.sessions.model import (
    GenerationConfig,
    Message,
    Part,
    Role,
    Session,
    SessionState,
)
from server.sessions.ports import ModelProvider, ModelRequest, SessionStore
from server.sessions.reply import ReplyBuilder, stream_model


@dataclass(frozen=True, slots=True)
class TurnInput:
    """What the caller sends for one turn."""

    parts: tuple[Part, ...]
    config_override: GenerationConfig | None = None
    # Seconds left before the caller's deadline, if it set one.
    timeout: float | None = None


class TurnEngine:
    """Runs turns, one at a time per session.

    A turn's messages are committed in one store transaction after the model has
    finished, so a failed or cancelled turn leaves history exactly as it was.
    """

    def __init__(
        self,
        store: SessionStore,
        provider: ModelProvider,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._provider = provider
        self._clock = clock
        self._locks = KeyedLocks()

    async def run(
        self, tenant: str, session_id: str, turn: TurnInput
    ) -> AsyncGenerator[TurnEvent, None]:
        """Yields the turn's events; the last one is TurnCompleted, sent after the commit."""
        async with self._locks.hold((tenant, session_id)):
            session = await self._store.get_session(tenant, session_id)
            if session.state is SessionState.AWAITING_TOOL_RESULTS:
                raise FailedPrecondition(
                    "the session is waiting for tool_results answering its pending tool calls",
                    reason="TOOL_RESULTS_PENDING",
                )
            policy = session.settings.context_policy
            history = await self._store.recent_messages(tenant, session_id, history_needed(policy))
            turn_id = new_turn_id()
            user = Message(
                role=Role.USER,
                parts=turn.parts,
                seq=session.next_seq,
                create_time=self._clock(),
                turn_id=turn_id,
            )
            yield MessageCompleted(user)

            request = self._request(session, [*history, user], turn)
            builder = ReplyBuilder()
            async for delta in stream_model(self._provider, request, builder):
                yield delta

            added: tuple[Message, ...] = ()
            if builder.parts:
                answer = builder.message(
                    seq=user.seq + 1,
                    create_time=self._clock(),
                    turn_id=turn_id,
                    model=request.model,
                )
                yield MessageCompleted(answer)
                added = (user, answer)
                await self._commit(session, added)
            # A reply with no content (a blocked prompt, a safety stop before any
            # output) is not stored: history keeps alternating user/model turns.
            yield TurnCompleted(
                TurnReply(
                    turn_id=turn_id,
                    text=added[-1].text if added else "",
                    messages=added,
                    finish_reason=builder.resolved_finish_reason(),
                    usage=builder.usage,
                    model=builder.model_version or request.model,
                    block_reason=builder.block_reason,
                )
            )

    def _request(self, session: Session, messages: list[Message], turn: TurnInput) -> ModelRequest:
        settings = session.settings
        config = settings.generation_config
        if turn.config_override is not None:
            config = turn.config_override.merged_over(config)
        return ModelRequest(
            model=settings.model or self._provider.default_model,
            contents=select_window(messages, settings.context_policy),
            system_instruction=settings.system_instruction,
            generation_config=config,
            function_declarations=settings.function_declarations,
            safety_settings=settings.safety_settings,
            timeout=turn.timeout,
        )

    async def _commit(self, session: Session, added: tuple[Message, ...]) -> None:
        usage = session.usage
        for message in added:
            if message.usage is not None:
                usage = usage + message.usage
        updated = session.evolve(
            message_count=session.message_count + len(added),
            next_seq=session.next_seq + len(added),
            usage=usage,
            update_time=self._clock(),
            version=session.version + 1,
        )
        # Once the commit has started it finishes even if the caller goes away, so
        # the turn is either wholly stored or not at all.
        await asyncio.shield(self._store.commit_turn(updated, added, session.version))
