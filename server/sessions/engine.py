"""The turn engine: a message (or tool results) in, the model's reply out, stored atomically."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import structlog

from server.sessions import compaction
from server.sessions.errors import Cancelled, FailedPrecondition, NotFound
from server.sessions.events import (
    MessageCompleted,
    ToolCallAnswered,
    ToolCallRequested,
    TurnCompleted,
    TurnEvent,
    TurnReply,
)
from server.sessions.expiry import live_session
from server.sessions.ids import new_turn_id
from server.sessions.locks import SessionLocks
from server.sessions.model import (
    Compaction,
    FinishReason,
    FunctionCall,
    FunctionResponse,
    GenerationConfig,
    Message,
    Part,
    PendingTurn,
    Role,
    Session,
    Summary,
    Usage,
)
from server.sessions.ports import (
    ModelProvider,
    ModelRequest,
    ReplyWrite,
    RequestRecord,
    SessionRef,
    SessionStore,
    ToolRunner,
)
from server.sessions.reply import ReplyBuilder, stream_model
from server.sessions.tool_calls import (
    ToolResultInput,
    calls_of,
    check_tool_results,
    responses_message,
    run_server_calls,
    with_call_ids,
    without_calls,
)
from server.sessions.validation import check_cache_use
from server.sessions.writes import complete

# Builds the request record stored with a turn, from the session and the turn's reply.
Recorder = Callable[[Session, TurnReply], RequestRecord]
log = structlog.get_logger("chatd.compaction")
ROUND_LIMIT_ERROR = "chatd stopped the tool loop: this turn used its {} tool rounds"


class ReplyLog(Protocol):
    """The reply a run of a turn is (see sessions.replies.LiveReply)."""

    @property
    def reply_id(self) -> str: ...

    @property
    def cancel_requested(self) -> bool:
        """CancelReply named this reply before its turn began (it waited for the session)."""
        ...

    async def final_write(self, reply: TurnReply) -> ReplyWrite:
        """The reply's record and events to store with the turn's commit."""
        ...


@dataclass(frozen=True, slots=True)
class TurnInput:
    """What the caller sends for one turn: a user message, or results for pending calls."""

    parts: tuple[Part, ...] = ()
    tool_results: tuple[ToolResultInput, ...] = ()
    config_override: GenerationConfig | None = None
    # Seconds left before the caller's deadline, if it set one.
    timeout: float | None = None
    # Text deltas as the model produces them; off when only the whole reply is wanted.
    stream_text: bool = True


@dataclass(slots=True)
class _Running:
    """A running turn as CancelReply sees it: its task, whether the turn is inside the
    engine (cancellable) or suspended at a yield while its RPC writes an event, and
    whether its commit has begun (from then on the turn completes and cancel loses)."""

    task: asyncio.Task[object]
    reply_id: str = ""
    inside: bool = True
    requested: bool = False
    committing: bool = False
    finished: bool = False


@dataclass(slots=True)
class _Turn:
    """A turn in progress: the messages it has added and what its model calls cost."""

    session: Session
    turn_id: str
    first_seq: int
    history: list[Message]
    rounds: int = 0
    added: list[Message] = field(default_factory=list)
    usage: Usage = Usage()

    @property
    def next_seq(self) -> int:
        return self.session.next_seq + len(self.added)

    def contents(self) -> list[Message]:
        return [*self.history, *self.added]


# Background summaries kept at most (one per session); the oldest is cancelled first.
MAX_PREPARED = 1024


@dataclass(slots=True)
class _Prepared:
    """A summary begun after a turn, for the next turn of the session life `uid`."""

    uid: str
    covered: Summary
    task: asyncio.Task[tuple[str, ReplyBuilder, str] | None]


class TurnEngine:
    """Runs turns, one at a time per session, including chatd's own tool loop.

    Messages are committed in one store transaction when the turn ends, or pauses for
    the caller's tool results, so a failed or cancelled turn leaves history as it was.
    Once the commit has begun the turn is no longer cancelled: CancelReply answers False,
    and when its caller leaves (or its deadline passes) the write still ends, and the turn
    is stored.
    """

    def __init__(
        self,
        store: SessionStore,
        provider: ModelProvider,
        tools: ToolRunner,
        *,
        max_tool_rounds: int = 8,
        clock: Callable[[], float] = time.time,
        on_compaction: Callable[[str], None] | None = None,
        max_prepared: int = MAX_PREPARED,
        locks: SessionLocks | None = None,
    ) -> None:
        self._on_compaction = on_compaction
        # Summaries begun after a turn for the session's next one (see _compact).
        self._prepared: dict[tuple[str, str], _Prepared] = {}
        self._max_prepared = max_prepared
        self._store = store
        self._provider = provider
        self._tools = tools
        self._max_tool_rounds = max_tool_rounds
        self._clock = clock
        # Held for the whole turn (see SessionLocks).
        self._locks = locks if locks is not None else SessionLocks()
        # Each session's running turn, for CancelReply.
        self._running: dict[tuple[str, str], _Running] = {}

    def cancel(self, tenant: str, session_id: str, reply_id: str = "") -> bool:
        """Stops the session's running turn (nothing of it is stored), or only the reply
        `reply_id` if that is the running one; False if none runs or its commit has
        begun, in which case the turn completes and is stored."""
        running = self._running.get((tenant, session_id))
        if running is None or running.task.done() or running.finished or running.committing:
            return False
        if reply_id and running.reply_id != reply_id:
            return False
        running.requested = True
        if running.inside:
            running.task.cancel()
        # Otherwise the turn is suspended at a yield, while the RPC writes an event;
        # cancelling the task there would look like the caller leaving and send no
        # status, so the turn stops itself when it resumes.
        return True

    async def run(
        self,
        tenant: str,
        session_id: str,
        turn: TurnInput,
        record: Recorder | None = None,
        log: ReplyLog | None = None,
    ) -> AsyncGenerator[TurnEvent, None]:
        """Yields the turn's events; the last one is TurnCompleted, sent after the commit.

        `record` makes the request record stored in the same transaction as the turn;
        `log` is the reply this run is: its id goes in the TurnReply, and its record and
        events are stored in the same transaction too.
        """
        key = (tenant, session_id)
        async with self._locks.hold(tenant, session_id):
            if log is not None and log.cancel_requested:
                raise _cancelled()
            task = asyncio.current_task()
            assert task is not None
            reply_id = log.reply_id if log is not None else ""
            running = self._running[key] = _Running(task, reply_id)
            try:
                async for event in self._run(tenant, session_id, turn, record, log):
                    running.inside = False
                    running.finished = isinstance(event, TurnCompleted)
                    yield event
                    running.inside = True
                    if running.requested and not running.finished:
                        raise asyncio.CancelledError
            except asyncio.CancelledError:
                if not running.requested:
                    raise
                # Stopped by CancelReply, not by this RPC's own caller: the caller is
                # still there and gets a status saying what happened.
                if task.cancelling():
                    task.uncancel()
                raise _cancelled() from None
            finally:
                del self._running[key]

    async def _run(
        self,
        tenant: str,
        session_id: str,
        turn: TurnInput,
        record: Recorder | None,
        log: ReplyLog | None,
    ) -> AsyncGenerator[TurnEvent, None]:
        session = await live_session(self._store, tenant, session_id, self._clock())
        if turn.tool_results:
            state = await self._resume(session, turn)
            answers = {r.call_id: r.is_error for r in turn.tool_results}
            for part in state.added[-1].parts:
                response = part.function_response
                if response is not None and response.id in answers:
                    yield ToolCallAnswered(response, answers[response.id], 0.0)
        else:
            state = await self._begin(session, turn)
        yield MessageCompleted(state.added[-1])
        async for event in self._loop(state, turn, record, log):
            yield event

    async def _begin(self, session: Session, turn: TurnInput) -> _Turn:
        if session.pending is not None:
            raise FailedPrecondition(
                "the session is waiting for tool_results answering its pending tool calls",
                reason="TOOL_RESULTS_PENDING",
            )
        policy = session.settings.context_policy
        history = await compaction.load_history(
            self._store, session.tenant, session.session_id, policy
        )
        state = _Turn(session, new_turn_id(), session.next_seq, history)
        user = Message(Role.USER, turn.parts, state.next_seq, self._clock(), state.turn_id)
        if policy.compaction is not None:
            summary = await self._compact(state, user, turn)
            if summary is not None:
                state.added.append(summary)
                user = replace(user, seq=summary.seq + 1)
                # The turn itself begins at its user message (a paused turn's first_seq).
                state.first_seq = user.seq
        state.added.append(user)
        return state

    async def _compact(self, state: _Turn, user: Message, turn: TurnInput) -> Message | None:
        """A new summary (at `user`'s seq) when what the turn would send reaches the
        policy's compaction trigger; None when it does not, there is nothing older than
        the turns kept, or summarising fails (logged and counted: the window applies).

        A summary the previous turn began in the background for the same range is used
        (awaited if still running) instead of asking again."""
        session = state.session
        policy = session.settings.context_policy
        config = policy.compaction
        assert config is not None
        contents = [*state.history, user]
        key = (session.tenant, session.session_id)
        ready = self._prepared.pop(key, None)
        if not compaction.reaches_trigger(compaction.contents_to_send(contents, policy), config):
            if ready is not None:
                ready.task.cancel()
            return None
        planned = compaction.plan(contents, config)
        if planned is None:
            if ready is not None:
                ready.task.cancel()
            return None
        covered, older = planned
        if ready is not None and ready.uid == session.uid and ready.covered == covered:
            made = await ready.task
        else:
            if ready is not None:
                ready.task.cancel()
            made = await self._summarise(session, older, config, turn.timeout)
        if made is None:
            return None
        text, builder, model = made
        return Message(
            Role.MODEL,
            (Part(text=text),),
            user.seq,
            self._clock(),
            state.turn_id,
            usage=builder.usage,
            finish_reason=builder.resolved_finish_reason(),
            model=model,
            summary=covered,
        )

    def _prepare_compaction(self, state: _Turn) -> None:
        """After a stored turn: begins, in the background, the summary the next turn will
        need if it reaches the trigger with even a one-token message (see _compact)."""
        session = state.session
        policy = session.settings.context_policy
        config = policy.compaction
        if config is None or self._max_prepared <= 0:
            return
        contents = [*state.history, *state.added]
        next_user = Message(Role.USER, (Part(text="."),), state.next_seq)
        contents.append(next_user)
        sent = compaction.contents_to_send(contents, policy)
        planned = (
            compaction.plan(contents, config) if compaction.reaches_trigger(sent, config) else None
        )
        if planned is None:
            return
        covered, older = planned
        key = (session.tenant, session.session_id)
        self.forget(*key)
        while len(self._prepared) >= self._max_prepared:
            oldest = next(iter(self._prepared))
            self._prepared.pop(oldest).task.cancel()
        task = asyncio.create_task(self._summarise(session, older, config, None))
        self._prepared[key] = _Prepared(session.uid, covered, task)

    def forget(self, tenant: str, session_id: str) -> None:
        """Cancels the session's background summary, if one is running or ready (the
        session was deleted, or the next turn will not use it)."""
        prepared = self._prepared.pop((tenant, session_id), None)
        if prepared is not None:
            prepared.task.cancel()

    def cancel_background(self) -> None:
        """Cancels every background summary (at shutdown)."""
        for prepared in self._prepared.values():
            prepared.task.cancel()
        self._prepared.clear()

    async def _summarise(
        self,
        session: Session,
        older: Sequence[Message],
        config: Compaction,
        seconds_left: float | None,
    ) -> tuple[str, ReplyBuilder, str] | None:
        """The model's summary of `older`: its text, the call's builder (usage, finish)
        and the model asked; None, logged and counted, when the call fails or says
        nothing. Cancellation propagates."""
        settings = session.settings
        ask = Part(text=compaction.summarising_request_text(older, config))
        request = ModelRequest(
            model=config.model or settings.model or self._provider.default_model,
            contents=[Message(Role.USER, (ask,))],
            timeout=seconds_left,
            allow_function_calls=False,
            labels=settings.labels,
            summarising=True,
        )
        builder = ReplyBuilder()
        error = ""
        try:
            async for chunk in self._provider.stream(request):
                builder.add(chunk)
        except Exception as exc:
            error = str(exc) or type(exc).__name__
        text = "".join(p.text for p in builder.parts if p.text is not None and not p.thought)
        if not error and not text.strip():
            error = "the model returned no summary text"
        if error:
            self._compacted("failed")
            log.warning(
                "compaction failed, the context window applies",
                session_id=session.session_id,
                error=error,
            )
            return None
        self._compacted("ok")
        return text, builder, request.model

    def _compacted(self, outcome: str) -> None:
        if self._on_compaction is not None:
            self._on_compaction(outcome)

    async def _resume(self, session: Session, turn: TurnInput) -> _Turn:
        responses = check_tool_results(session.pending, turn.tool_results)
        pending = session.pending
        assert pending is not None
        # The paused turn is sent whole, however long it is.
        history = await compaction.load_history(
            self._store,
            session.tenant,
            session.session_id,
            session.settings.context_policy,
            at_least=session.next_seq - pending.first_seq,
        )
        state = _Turn(session, pending.turn_id, pending.first_seq, history, pending.rounds)
        state.added.append(
            responses_message(
                pending.calls,
                responses,
                seq=state.next_seq,
                create_time=self._clock(),
                turn_id=state.turn_id,
            )
        )
        return state

    async def _loop(
        self, state: _Turn, turn: TurnInput, record: Recorder | None, log: ReplyLog | None
    ) -> AsyncGenerator[TurnEvent, None]:
        settings = state.session.settings
        caller_names = {d.name for d in settings.function_declarations}
        enabled = frozenset(settings.tools)
        calls_allowed = True
        empty = False
        while True:
            request = self._request(state, turn, calls_allowed)
            builder = ReplyBuilder()
            async for delta in stream_model(
                self._provider, request, builder, deltas=turn.stream_text
            ):
                yield delta
            state.usage = state.usage + builder.usage
            finish = builder.resolved_finish_reason()
            answer = with_call_ids(
                builder.message(
                    seq=state.next_seq,
                    create_time=self._clock(),
                    turn_id=state.turn_id,
                    model=request.model,
                )
            )
            if not calls_allowed:
                # The last word after the round limit: calls would go unanswered.
                finish = FinishReason.MAX_TOOL_ROUNDS
                answer = without_calls(answer)
            if not any(p.has_content for p in answer.parts):
                # No content (no candidate, an empty text, a bare signature): nothing to
                # store or send back; the turn ends here, reported as such.
                empty = True
                break
            state.added.append(answer)
            yield MessageCompleted(answer)
            calls = calls_of(answer)
            if not calls:
                break
            for call in calls:
                yield ToolCallRequested(call, caller_executed=call.name in caller_names)
            if state.rounds >= self._max_tool_rounds:
                # Answer the calls with an error and ask once more, without tools, so
                # the turn still ends with the model's own words.
                error = {"error": ROUND_LIMIT_ERROR.format(self._max_tool_rounds)}
                stopped = {c.id: FunctionResponse(c.id, c.name, error) for c in calls}
                state.added.append(self._responses(state, stopped))
                yield MessageCompleted(state.added[-1])
                calls_allowed = False
                finish = FinishReason.MAX_TOOL_ROUNDS
                continue
            server_calls = [c for c in calls if c.name not in caller_names]
            answered = await run_server_calls(self._tools, enabled, server_calls)
            for event in answered:
                yield event
            state.rounds += 1
            by_id = {a.response.id: a.response for a in answered}
            waiting = [c for c in calls if c.name in caller_names]
            if waiting:
                pending = PendingTurn(
                    state.turn_id, state.first_seq, state.rounds, calls, tuple(by_id.values())
                )
                reply = self._reply(state, builder, FinishReason.TOOL_CALLS_PENDING, waiting, log)
                await self._commit(state, pending, reply, record, log)
                yield TurnCompleted(reply)
                return
            state.added.append(self._responses(state, by_id))
            yield MessageCompleted(state.added[-1])
        # A turn where the model answered the user's message with no content is not
        # stored at all: history stays as it was and the message can simply be sent
        # again; the reply says so and carries the message. A turn that ran tools or
        # answered tool results first is stored, without a final answer.
        stored = any(m.role is Role.MODEL for m in state.added) or state.session.pending is not None
        unstored = None
        if not stored:
            unstored = state.added[0]
            state.added.clear()
        reply = self._reply(state, builder, finish, (), log)
        if empty:
            reply = replace(
                reply,
                no_content=True,
                no_content_reason=_no_content_reason(builder, finish, stored),
                unstored_message=unstored,
            )
        if stored:
            await self._commit(state, None, reply, record, log)
            self._prepare_compaction(state)
        elif record is not None:
            # Nothing to store but the answer itself: a retry must get this answer back,
            # not call the model again and perhaps get another. Writing it decides the
            # outcome as a commit does.
            self._committing(state.session)
            await complete(self._store.put_request(record(state.session, reply)))
        yield TurnCompleted(reply)

    def _responses(self, state: _Turn, by_id: dict[str, FunctionResponse]) -> Message:
        """The responses to the calls of the turn's last (model) message."""
        return responses_message(
            calls_of(state.added[-1]),
            by_id,
            seq=state.next_seq,
            create_time=self._clock(),
            turn_id=state.turn_id,
        )

    def _request(self, state: _Turn, turn: TurnInput, calls_allowed: bool) -> ModelRequest:
        settings = state.session.settings
        config = settings.generation_config
        if turn.config_override is not None:
            config = turn.config_override.merged_over(config)
            check_cache_use(
                config,
                settings.system_instruction,
                bool(settings.tools or settings.function_declarations or settings.builtin_tools),
                "generation_config",
            )
        enabled = set(settings.tools)
        declarations = [d for d in self._tools.declarations() if d.name in enabled]
        return ModelRequest(
            model=settings.model or self._provider.default_model,
            contents=compaction.contents_to_send(state.contents(), settings.context_policy),
            system_instruction=settings.system_instruction,
            generation_config=config,
            function_declarations=[*declarations, *settings.function_declarations],
            safety_settings=settings.safety_settings,
            builtin_tools=settings.builtin_tools,
            timeout=turn.timeout,
            allow_function_calls=calls_allowed,
            labels=settings.labels,
            session=SessionRef.of(state.session, self._clock()),
        )

    def _reply(
        self,
        state: _Turn,
        builder: ReplyBuilder,
        finish: FinishReason,
        waiting: Sequence[FunctionCall],
        log: ReplyLog | None,
    ) -> TurnReply:
        last_model = next((m for m in reversed(state.added) if m.role is Role.MODEL), None)
        return TurnReply(
            turn_id=state.turn_id,
            text=last_model.text if last_model is not None else "",
            messages=tuple(state.added),
            finish_reason=finish,
            usage=state.usage,
            pending_tool_calls=tuple(waiting),
            model=builder.model_version or (last_model.model if last_model else ""),
            block_reason=builder.block_reason,
            candidate_metadata=builder.candidate_metadata,
            prompt_feedback=builder.prompt_feedback,
            reply_id=log.reply_id if log is not None else "",
        )

    async def _commit(
        self,
        state: _Turn,
        pending: PendingTurn | None,
        reply: TurnReply,
        record: Recorder | None,
        log: ReplyLog | None,
    ) -> None:
        session = state.session
        expire_time = session.expire_time
        if expire_time is not None and expire_time <= self._clock():
            # Expired while the model ran: the session is gone for every reader (and for
            # the tenant's quota), so the turn must not bring it back.
            raise NotFound(
                f"session {session.session_id!r} expired while the turn ran; it was not stored",
                reason="SESSION_NOT_FOUND",
            )
        usage = session.usage + state.usage
        for message in state.added:
            # A summary's cost is the session's too (as an imported copy sums it).
            if message.summary is not None and message.usage is not None:
                usage = usage + message.usage
        updated = session.evolve(
            message_count=session.message_count + len(state.added),
            next_seq=state.next_seq,
            usage=usage,
            pending=pending,
            update_time=self._clock(),
            version=session.version + 1,
        )
        request = record(session, reply) if record is not None else None
        written = await log.final_write(reply) if log is not None else None
        # From here the turn's outcome is the commit's: CancelReply no longer stops it,
        # and a caller that leaves is told so only after the write ended, still holding
        # the session lock, so no other write to the session can overlap this one.
        self._committing(session)
        await complete(
            self._store.commit_turn(updated, state.added, session.version, request, written)
        )

    def _committing(self, session: Session) -> None:
        """The turn's outcome is being written: from now on CancelReply does not stop it."""
        running = self._running.get((session.tenant, session.session_id))
        if running is not None:
            running.committing = True


def _cancelled() -> Cancelled:
    return Cancelled(
        "CancelReply stopped this reply; the turn was not stored", reason="REPLY_CANCELLED"
    )


def _no_content_reason(builder: ReplyBuilder, finish: FinishReason, stored: bool) -> str:
    """Why a turn ended without an answer, in words a person reading a log understands."""
    said = [f"finish reason {finish.value}"]
    metadata = builder.candidate_metadata or {}
    if isinstance(message := metadata.get("finishMessage"), str) and message:
        said.append(f"Gemini said: {message}")
    if builder.block_reason:
        said.append(f"block reason {builder.block_reason}")
    outcome = (
        "the turn's tool calls and results were stored, without a final answer"
        if stored
        else "nothing of this turn was stored: history is unchanged and the message can "
        "be sent again"
    )
    return f"the model's answer had no content ({'; '.join(said)}); {outcome}"
