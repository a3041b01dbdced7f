"""Replies: every run of a turn as a resource with an id, a state and numbered events.

A reply is one SendMessage or StreamReply that runs a turn. Its events are numbered
1, 2, 3, ... and anyone may follow it from any sequence number (StreamReply with
reply_id and starting_after), read it (GetReply), list it, or cancel it from any replica.

Where a reply's events are kept:
- while it runs, in the memory of the replica running it (a LiveReply), so followers on
  that replica see every event as it happens;
- a background reply's events are also written to the store as it runs (at each
  completed message, and `flush_interval` seconds after an event left unwritten, also
  while the model is silent), so followers on other replicas sharing the store see them
  within that interval. One write of a reply's events at a time (LiveReply.lock): each
  continues the one before;
- once it ends, in the store with its record: in the same transaction as the turn's
  messages when the turn is stored, in a write of their own otherwise. The sweeper
  forgets ended replies `window` seconds after they ended.
A unary SendMessage run in the foreground keeps one event, its outcome (nobody saw the
others). A foreground reply that fails before its first event is not kept: its caller
got the error, and never its id.

A background reply's record carries this replica's id and a lease that the keeper
renews every lease/3 seconds. A replica that dies (kill -9, a lost host) stops renewing;
any replica's keeper then marks its running replies FAILED (UNAVAILABLE, reason
REPLICA_LOST): within lease + lease/3 seconds with PostgreSQL, and at start-up with a
store of one process (nothing else can be running them). Nothing of such a turn was
stored, so sending the same request (same request_id) again runs it once.

Replicas tell each other of new events and of cancellations over the ReplyBus
(PostgreSQL LISTEN/NOTIFY); followers also poll the store every `poll_interval`
seconds, since a notification can be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace

import structlog

from server.sessions.errors import (
    RETRYABLE_CODES,
    Cancelled,
    ChatdError,
    InvalidArgument,
    NotFound,
    ReplyFailed,
    ResourceExhausted,
    Unavailable,
)
from server.sessions.events import MessageCompleted, TurnCompleted, TurnEvent, TurnReply
from server.sessions.model import JSONObject
from server.sessions.ports import (
    ReplyBus,
    ReplyError,
    ReplyEvents,
    ReplyRecord,
    ReplyState,
    ReplyWrite,
    SessionStore,
)
from server.sessions.writes import complete

log = structlog.get_logger("chatd.replies")

# Encodes events numbered first_seq, first_seq + 1, ... as one payload. The rpc layer's
# wire form (StreamReplyResponse messages): the domain never reads a payload back.
EventEncoder = Callable[[int, Sequence[TurnEvent]], bytes]

# A reply whose replica stopped renewing its lease.
REPLICA_LOST = ReplyError(
    "UNAVAILABLE",
    "the replica running this reply stopped before it ended; nothing of the turn was "
    "stored: send the request again",
    "REPLICA_LOST",
)
# Records swept per keeper pass and per transaction.
BATCH = 500
# A far lease horizon: with a store of one process, every running reply found at
# start-up belongs to a process that is gone.
_EVERY_LEASE = 1e12


def new_reply_id() -> str:
    """'r', the time in microseconds as 14 hex digits, and 16 random hex digits (64 bits):
    ids made later sort later, so stores append them to their indexes' ends."""
    return f"r{time.time_ns() // 1000:014x}{os.urandom(8).hex()}"


def reply_error(exc: ChatdError) -> ReplyError:
    return ReplyError(exc.code, exc.message, exc.reason)


def retryable(error: ReplyError) -> bool:
    """Whether sending the same request again may succeed (nothing of it was stored)."""
    return error.code in RETRYABLE_CODES


def _failure(error: ReplyError) -> ReplyFailed:
    return ReplyFailed(error.code, error.message, reason=error.reason or None)


@dataclass(eq=False, slots=True)
class LiveReply:
    """A reply running in this process: its record and every event so far, in memory."""

    record: ReplyRecord
    encoder: EventEncoder
    clock: Callable[[], float]
    fingerprint: str = ""
    # Only the outcome is an event of this reply (a unary SendMessage: nobody saw the
    # events on the way, so the reply is its outcome, event 1).
    outcome_only: bool = False
    events: list[TurnEvent] = field(default_factory=list)
    # How many of `events` the store holds.
    stored: int = 0
    last_flush: float = 0.0
    ended: bool = False
    error: ReplyError | None = None
    # The reply the engine's commit wrote with the turn (see final_write).
    committed: TurnReply | None = None
    # Set before cancelling a background task at shutdown: how the reply ends then.
    stop_error: ChatdError | None = None
    task: asyncio.Task[None] | None = None
    # Held by each write of the reply's events while it runs (see the module doc).
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The turn is being stored or the reply is ending: no more timed writes.
    closing: bool = False
    # The timed write of events left unwritten, when one is due.
    flush_timer: asyncio.TimerHandle | None = None
    # CancelReply named this reply (it stops, or never starts if it waits its turn).
    cancel_requested: bool = False
    # How many follow_live readers it has now (a duplicate request waiting on it counts).
    followers: int = 0
    _wake: asyncio.Future[None] | None = None

    @property
    def reply_id(self) -> str:
        return self.record.reply_id

    def append(self, event: TurnEvent) -> None:
        self.events.append(event)
        self._notify()

    def end(self, error: ReplyError | None) -> None:
        self.ended = True
        self.error = error
        self._notify()

    def _notify(self) -> None:
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set_result(None)

    async def changed(self, seen: int) -> None:
        """Returns once there are more than `seen` events or the reply ended."""
        if self.ended or len(self.events) > seen:
            return
        if self._wake is None:
            self._wake = asyncio.get_running_loop().create_future()
        # Shielded: one follower leaving must not cancel the others' wait.
        await asyncio.shield(self._wake)

    def pending_events(self, extra: Sequence[TurnEvent] = ()) -> ReplyEvents | None:
        """The events the store does not hold yet (and `extra`), encoded."""
        events = [*self.events[self.stored :], *extra]
        if not events:
            return None
        first = self.stored + 1
        return ReplyEvents(first, first + len(events) - 1, self.encoder(first, events))

    async def final_write(self, reply: TurnReply) -> ReplyWrite:
        """The reply's record and last events, written by the engine with the turn's
        commit; TurnCompleted(reply) is counted as stored. Waits for a write of its events
        in progress, and lets no other start."""
        self.closing = True
        async with self.lock:
            return self._final_write(reply)

    def _final_write(self, reply: TurnReply) -> ReplyWrite:
        self.committed = reply
        state = (
            ReplyState.AWAITING_TOOL_RESULTS if reply.pending_tool_calls else ReplyState.COMPLETED
        )
        events = self.pending_events((TurnCompleted(reply),))
        assert events is not None
        r = self.record
        # Built field by field: dataclasses.replace costs several times more, every turn.
        record = ReplyRecord(
            r.tenant,
            r.session_id,
            r.reply_id,
            reply.turn_id,
            r.request_id,
            r.background,
            state,
            r.create_time,
            self.clock(),
            events.last_seq,
        )
        return ReplyWrite(record, events)


async def follow_live(live: LiveReply, after: int) -> AsyncIterator[tuple[int, TurnEvent]]:
    """(sequence number, event) of every event after `after`, as they come, until the
    reply ends; a failed or cancelled reply then raises ReplyFailed with its status.
    `live.followers` counts the reader meanwhile."""
    seen = after
    live.followers += 1
    try:
        while True:
            events = live.events
            while seen < len(events):
                seen += 1
                yield seen, events[seen - 1]
            if live.ended:
                if live.error is not None:
                    raise _failure(live.error)
                return
            await live.changed(seen)
    finally:
        live.followers -= 1


class Replies:
    """The replies of this replica, and how it reaches the others' (see the module doc).

    `owner` identifies this replica in the store; `single_process` says no other
    process shares the store (memory, SQLite), so running replies found at start-up
    are orphans. At most `max_background` background replies run here at once, and
    `max_background_per_tenant` of one tenant (0: no cap). Times are seconds.
    """

    def __init__(
        self,
        store: SessionStore,
        encoder: EventEncoder,
        *,
        bus: ReplyBus | None = None,
        clock: Callable[[], float] = time.time,
        lease: float = 10.0,
        flush_interval: float = 0.2,
        poll_interval: float = 1.0,
        single_process: bool = True,
        max_background: int = 0,
        max_background_per_tenant: int = 0,
    ) -> None:
        self._store = store
        self._max_background = max_background
        self._max_background_per_tenant = max_background_per_tenant
        # Background replies running here (until they end, as their followers see it).
        self._background_of: dict[str, int] = {}
        self._background_running = 0
        self._encoder = encoder
        self._bus = bus
        self._clock = clock
        self._lease = lease
        self._flush_interval = flush_interval
        self._poll_interval = poll_interval
        self._single_process = single_process
        self.owner = uuid.uuid4().hex
        self._live: dict[tuple[str, str], LiveReply] = {}
        self._by_request: dict[tuple[str, str], LiveReply] = {}
        # Followers of replies other replicas run, woken by their notices.
        self._remote: dict[tuple[str, str], set[asyncio.Future[None]]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._flushes: set[asyncio.Task[None]] = set()
        # Final writes that failed (the store was down): retried by the keeper.
        self._unwritten: list[ReplyWrite] = []
        self._keeper: asyncio.Task[None] | None = None
        # Stops this replica's running turn of a session (only the reply named, when one
        # is); set by ChatSessions (TurnEngine.cancel).
        self.cancel_local: Callable[[str, str, str], bool] = lambda tenant, session, reply: False
        # Lets go of what this replica's model provider keeps for a session another
        # replica deleted; set by ChatSessions.
        self.release_local: Callable[[str, str], None] = lambda tenant, session: None
        self._draining = False
        # Background replies storing their first record (drain waits for them).
        self._starting: set[asyncio.Future[None]] = set()
        if bus is not None:
            bus.subscribe(self._on_message)

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Fails the orphans of a single-process store, then starts the keeper."""
        if self._single_process:
            failed = 0
            while (
                n := await self._store.fail_stale_replies(
                    self._clock(), REPLICA_LOST, BATCH, expired_by=_EVERY_LEASE
                )
            ) > 0:
                failed += n
                if n < BATCH:
                    break
            if failed:
                log.warning("replies of the process before this one failed", replies=failed)
        self._keeper = asyncio.create_task(self._keep(), name="chatd-replies-keeper")

    async def drain(self, grace: float) -> None:
        """Lets background replies finish within `grace` seconds; those still running
        then are stopped and fail UNAVAILABLE (REPLICA_STOPPING): retryable, nothing of
        them stored. One whose commit had begun is not stopped by that: the write ends,
        the turn is stored and the reply is COMPLETED."""
        self._draining = True  # no background reply starts from now on
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(grace, 0.0)
        # Until none is left: one may be storing its first record (it then ends at once).
        while self._starting or self._background:
            if self._starting:
                await asyncio.wait(set(self._starting))
                continue
            tasks = set(self._background)
            _, pending = await asyncio.wait(tasks, timeout=max(deadline - loop.time(), 0.0))
            for live in list(self._live.values()):
                if live.task is not None and live.task in pending:
                    live.stop_error = _stopping()
                    live.task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
            self._keeper = None
        if self._unwritten:
            try:
                await self._write_unwritten()
            except Exception:
                log.exception("the ends of replies were not stored", replies=len(self._unwritten))

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            try:
                await self.keep_once()
            except Exception:  # retried on the next tick
                log.exception("reply keeper pass failed")

    async def keep_once(self) -> int:
        """Renews this replica's leases and fails other replicas' lapsed replies; how
        many it failed."""
        now = self._clock()
        try:
            if any(live.record.background for live in self._live.values()):
                await self._store.renew_replies(self.owner, now + self._lease)
            if self._unwritten:
                await self._write_unwritten()
        finally:
            failed = 0
            while (n := await self._store.fail_stale_replies(now, REPLICA_LOST, BATCH)) > 0:
                failed += n
                if n < BATCH:
                    break
            if failed:
                log.warning("replies of a lost replica failed", replies=failed)
        return failed

    async def _write_unwritten(self) -> None:
        """Stores the ends of replies that could not be stored when they ended; what
        still fails stays for the next pass (and the error is raised)."""
        pending, self._unwritten = self._unwritten, []
        for i, write in enumerate(pending):
            try:
                await self._put_end(write)
            except BaseException:
                self._unwritten[:0] = pending[i:]
                raise

    async def _put_end(self, write: ReplyWrite) -> bool:
        """put_reply for how a reply ended. When the store refuses its events because it
        holds more of them than this replica knew (a write whose outcome was lost), the
        end is written again from what the store holds."""
        try:
            return await self._store.put_reply(write)
        except ValueError:
            record = write.record
            stored = await self._store.get_reply(record.tenant, record.reply_id)
            if stored is None or stored.state is not ReplyState.RUNNING:
                return False
            events = write.events
            if events is not None and stored.last_seq >= events.last_seq:
                events = None  # the store holds them all already
            elif events is not None:
                log.error(
                    "a reply's stored events do not continue; its end is stored without the rest",
                    reply_id=record.reply_id,
                    stored=stored.last_seq,
                    first=events.first_seq,
                )
                events = None
            return await self._store.put_reply(
                ReplyWrite(replace(record, last_seq=stored.last_seq), events)
            )

    # ------------------------------------------------------------------ running

    @property
    def running(self) -> int:
        """How many replies run in this process now."""
        return len(self._live)

    def running_request(self, tenant: str, request_id: str) -> LiveReply | None:
        """The reply running here for this request id, if any."""
        return self._by_request.get((tenant, request_id))

    def begin(
        self,
        tenant: str,
        session_id: str,
        *,
        request_id: str = "",
        fingerprint: str = "",
        background: bool = False,
        outcome_only: bool = False,
    ) -> LiveReply:
        if background:
            if self._draining:
                raise Unavailable(
                    "this replica is stopping and starts no background reply: send it to another",
                    reason="REPLICA_STOPPING",
                )
            self._admit_background(tenant)
        now = self._clock()
        record = ReplyRecord(
            tenant=tenant,
            session_id=session_id,
            reply_id=new_reply_id(),
            turn_id="",
            request_id=request_id,
            background=background,
            state=ReplyState.RUNNING,
            create_time=now,
            update_time=now,
            owner=self.owner if background else "",
            lease_expire_time=now + self._lease if background else None,
        )
        live = LiveReply(
            record, self._encoder, self._clock, fingerprint, outcome_only, last_flush=now
        )
        self._live[tenant, live.reply_id] = live
        if background:
            self._background_of[tenant] = self._background_of.get(tenant, 0) + 1
            self._background_running += 1
        if request_id:
            self._by_request[tenant, request_id] = live
        return live

    def _admit_background(self, tenant: str) -> None:
        """Raises ResourceExhausted when another background reply would pass a cap."""
        held = self._background_of.get(tenant, 0)
        per_tenant = self._max_background_per_tenant
        if per_tenant and held >= per_tenant:
            raise ResourceExhausted(
                f"tenant {tenant!r} has its maximum of {per_tenant} background replies "
                "running on this replica (CHATD_MAX_STREAMS_PER_TENANT)",
                retry_after=1.0,
                reason="TOO_MANY_TENANT_BACKGROUND_REPLIES",
                limit=("CHATD_MAX_STREAMS_PER_TENANT", per_tenant),
            )
        if self._max_background and self._background_running >= self._max_background:
            raise ResourceExhausted(
                f"this replica runs its maximum of {self._max_background} background "
                "replies (CHATD_MAX_STREAMS)",
                retry_after=1.0,
                reason="TOO_MANY_BACKGROUND_REPLIES",
                limit=("CHATD_MAX_STREAMS", self._max_background),
            )

    async def start_background(
        self, live: LiveReply, events: Callable[[], AsyncIterator[TurnEvent]]
    ) -> None:
        """Stores the reply's record, then runs `events` to the end in a task of its own.
        Raises Unavailable (REPLICA_STOPPING) if the replica began to stop meanwhile."""
        starting = asyncio.get_running_loop().create_future()
        self._starting.add(starting)  # drain waits for it
        try:
            await self._store.put_reply(ReplyWrite(live.record))
        except BaseException:
            self._forget(live)
            raise
        finally:
            self._starting.discard(starting)
            starting.set_result(None)
        if self._draining:
            stopping = _stopping()
            await complete(self._end(live, stopping))
            raise stopping

        async def run() -> None:
            try:
                async for _ in self.track(live, events()):
                    pass
            except (ChatdError, asyncio.CancelledError):
                pass  # recorded by track
            except Exception:
                log.exception("background reply failed", reply_id=live.reply_id)

        task = asyncio.create_task(run(), name=f"chatd-reply-{live.reply_id}")
        live.task = task
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def track(
        self, live: LiveReply, events: AsyncIterator[TurnEvent]
    ) -> AsyncGenerator[TurnEvent, None]:
        """Passes a turn's events through, numbering and keeping them; ends the reply
        (and stores how it ended) when they end, fail, or the consumer leaves."""
        error: ChatdError | None = None
        try:
            async for event in events:
                if live.outcome_only and not isinstance(event, TurnCompleted):
                    yield event
                    continue
                if isinstance(event, TurnCompleted):
                    if event.reply.reply_id != live.reply_id:
                        # A retry's replay of an earlier run: this reply's outcome now.
                        event = TurnCompleted(replace(event.reply, reply_id=live.reply_id))
                    if live.committed is event.reply:
                        # Written with the turn's commit (see LiveReply.final_write).
                        live.append(event)
                        live.stored = len(live.events)
                        yield event
                        continue
                if live.record.background and self._flush_due(live, event):
                    await self._flush(live, event)
                live.append(event)
                if live.record.background and live.stored < len(live.events):
                    self._flush_later(live)
                yield event
        except ChatdError as exc:
            error = exc
            raise
        except (asyncio.CancelledError, GeneratorExit):
            # A caller that leaves once the commit has begun does not undo it: the turn
            # is stored, and the reply's stored record says COMPLETED (see _end_locked).
            error = live.stop_error or Cancelled(
                "the caller disconnected before the reply ended; the turn is stored only if "
                "its commit had begun",
                reason="CALLER_DISCONNECTED",
            )
            raise
        except Exception:
            error = Unavailable("the reply failed inside chatd", reason="INTERNAL_FAILURE")
            raise
        finally:
            if error is None and live.committed is not None and not live.record.background:
                # Stored with the turn's commit: nothing left to write or tell.
                self._forget(live)
                live.end(None)
            else:
                await complete(self._end(live, error))

    def _flush_due(self, live: LiveReply, event: TurnEvent) -> bool:
        return isinstance(event, MessageCompleted | TurnCompleted) or (
            self._clock() - live.last_flush >= self._flush_interval
        )

    def _flush_later(self, live: LiveReply) -> None:
        """Stores the events left unwritten `flush_interval` seconds after the last write,
        unless a write comes first: a model that goes silent mid-answer does not keep
        what it said from other replicas' followers."""
        if live.flush_timer is not None or live.closing:
            return
        delay = max(live.last_flush + self._flush_interval - self._clock(), 0.0)
        live.flush_timer = asyncio.get_running_loop().call_later(
            delay, self._start_timed_flush, live
        )

    def _start_timed_flush(self, live: LiveReply) -> None:
        live.flush_timer = None
        if live.closing or live.stored >= len(live.events):
            return
        task = asyncio.create_task(self._timed_flush(live), name=f"chatd-flush-{live.reply_id}")
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _timed_flush(self, live: LiveReply) -> None:
        async with live.lock:
            events = live.pending_events()
            if live.closing or events is None:
                return
            record = self._progress(live, events, live.events)
            try:
                written = await self._store.put_reply(ReplyWrite(record, events))
            except Exception:  # the events stay unwritten: the next write carries them
                log.exception("storing a reply's events failed", reply_id=live.reply_id)
                return
            if not written:
                return  # the lease lapsed: the turn's next write learns it and stops
            _stored(live, record)
        try:
            await self._publish(
                {"kind": "reply", "tenant": record.tenant, "reply_id": live.reply_id}
            )
        except Exception:
            log.exception("telling replicas of a reply's events failed", reply_id=live.reply_id)

    async def _flush(self, live: LiveReply, event: TurnEvent) -> None:
        """Stores the background reply's new events, `event` included, before anyone
        here sees `event`: what a follower here has seen, the store holds too."""
        async with live.lock:
            await self._flush_locked(live, event)

    async def _flush_locked(self, live: LiveReply, event: TurnEvent) -> None:
        events = live.pending_events((event,))
        assert events is not None
        record = self._progress(live, events, (*live.events, event))
        if not await self._store.put_reply(ReplyWrite(record, events)):
            raise Unavailable(
                "another replica declared this reply failed (its lease lapsed); the turn "
                "was stopped and not stored",
                reason="REPLY_LEASE_LOST",
            )
        _stored(live, record)
        await self._publish({"kind": "reply", "tenant": record.tenant, "reply_id": live.reply_id})

    def _progress(
        self, live: LiveReply, events: ReplyEvents, seen: Sequence[TurnEvent]
    ) -> ReplyRecord:
        """The running reply's record once `events` are stored (`seen`: every event so
        far, where its turn id is found), its lease renewed."""
        now = self._clock()
        return replace(
            live.record,
            turn_id=live.record.turn_id or _turn_id(seen),
            update_time=now,
            last_seq=events.last_seq,
            lease_expire_time=now + self._lease,
        )

    async def _end(self, live: LiveReply, error: ChatdError | None) -> None:
        """Records how the reply ended (unless the turn's commit did) and lets its
        followers go."""
        live.closing = True
        if live.flush_timer is not None:
            live.flush_timer.cancel()
            live.flush_timer = None
        async with live.lock:  # a timed write in progress ends first
            await self._end_locked(live, error)

    async def _end_locked(self, live: LiveReply, error: ChatdError | None) -> None:
        last = live.events[-1] if live.events else None
        if isinstance(last, TurnCompleted):
            # The consumer left after the last event: the reply ended as it did.
            error = None
        ended = reply_error(error) if error is not None else None
        try:
            if not live.events and not live.record.background and error is not None:
                # Failed before its first event (an unknown session, a refused input):
                # its caller got the error and never its id; nothing to keep.
                pass
            elif live.committed is None or error is not None:
                state = ReplyState.COMPLETED
                if isinstance(error, Cancelled) or (
                    error is not None and error.reason == "REPLY_CANCELLED"
                ):
                    state = ReplyState.CANCELLED
                elif error is not None:
                    state = ReplyState.FAILED
                elif isinstance(last, TurnCompleted) and last.reply.pending_tool_calls:
                    state = ReplyState.AWAITING_TOOL_RESULTS
                write = ReplyWrite(
                    replace(
                        live.record,
                        state=state,
                        update_time=self._clock(),
                        last_seq=len(live.events),
                        owner="",
                        lease_expire_time=None,
                        error=ended,
                        turn_id=live.record.turn_id or _turn_id(live.events),
                    ),
                    live.pending_events(),
                )
                try:
                    if not await self._put_end(write):
                        # Its outcome was stored first (a commit that ended as the turn
                        # was cancelled, a keeper that declared it lost): that is how
                        # it ended.
                        stored = await self._store.get_reply(live.record.tenant, live.reply_id)
                        ended = stored.error if stored is not None else ended
                        if ended is None and live.committed is not None:
                            # The turn was stored: its followers get its outcome.
                            live.append(TurnCompleted(live.committed))
                except Exception:
                    log.exception("storing how a reply ended failed", reply_id=live.reply_id)
                    self._unwritten.append(write)
        finally:
            self._forget(live)
            live.end(ended)
        if live.record.background:
            try:
                await self._publish(
                    {"kind": "reply", "tenant": live.record.tenant, "reply_id": live.reply_id}
                )
            except Exception:
                log.exception("telling replicas a reply ended failed", reply_id=live.reply_id)

    def _forget(self, live: LiveReply) -> None:
        tenant = live.record.tenant
        if self._live.get((tenant, live.reply_id)) is live:
            del self._live[tenant, live.reply_id]
            if live.record.background:
                self._background_running -= 1
                left = self._background_of[tenant] - 1
                if left:
                    self._background_of[tenant] = left
                else:
                    del self._background_of[tenant]
        request_id = live.record.request_id
        if request_id and self._by_request.get((tenant, request_id)) is live:
            del self._by_request[tenant, request_id]

    # ------------------------------------------------------------------ reading

    def live(self, tenant: str, reply_id: str) -> LiveReply | None:
        return self._live.get((tenant, reply_id))

    async def record(self, tenant: str, session_id: str, reply_id: str) -> ReplyRecord:
        """The reply as stored (or as it runs here). Raises NotFound, also when
        `session_id` is given and the reply is another session's."""
        live = self._live.get((tenant, reply_id))
        record = live.record if live is not None else await self._store.get_reply(tenant, reply_id)
        if record is None or (session_id and record.session_id != session_id):
            raise NotFound(f"reply {reply_id!r} not found", reason="REPLY_NOT_FOUND")
        return record

    async def follow_stored(
        self, tenant: str, reply_id: str, after: int
    ) -> AsyncGenerator[ReplyEvents, None]:
        """The payloads of a reply this replica does not run, from the store, until it
        ends; new ones as other replicas store them. A failed or cancelled reply then
        raises ReplyFailed. The first payload may start at or before `after`."""
        key = (tenant, reply_id)
        seen = after
        loop = asyncio.get_running_loop()
        while True:
            # Registered before the store is read, so a notice sent meanwhile wakes it.
            wake: asyncio.Future[None] = loop.create_future()
            self._remote.setdefault(key, set()).add(wake)
            try:
                record = await self._store.get_reply(tenant, reply_id)
                if record is None:
                    raise NotFound(f"reply {reply_id!r} not found", reason="REPLY_NOT_FOUND")
                if record.last_seq > seen:
                    for chunk in await self._store.reply_events(tenant, reply_id, seen):
                        if chunk.last_seq > seen:
                            yield chunk
                            seen = chunk.last_seq
                if record.state is not ReplyState.RUNNING:
                    if seen < record.last_seq:
                        continue
                    if record.error is not None:
                        raise _failure(record.error)
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake, self._poll_interval)
            finally:
                waiting = self._remote.get(key)
                if waiting is not None:
                    waiting.discard(wake)
                    if not waiting:
                        del self._remote[key]

    def check_after(self, record: ReplyRecord, after: int) -> None:
        """Raises InvalidArgument when the reply has no event `after` (yet)."""
        live = self._live.get((record.tenant, record.reply_id))
        last = len(live.events) if live is not None else record.last_seq
        if after > last:
            raise InvalidArgument(
                "starting_after",
                f"is past the reply's last event so far ({last})",
                reason="STARTING_AFTER_INVALID",
            )

    # ------------------------------------------------------------------ other replicas

    async def cancel(self, tenant: str, session_id: str, reply_id: str) -> bool:
        """Stops the reply (or, without reply_id, the session's running reply) wherever
        it runs. True if one was found running and told to stop."""
        if reply_id:
            record = await self.record(tenant, session_id, reply_id)
            if record.state is not ReplyState.RUNNING:
                return False
            session_id = record.session_id
            live = self._live.get((tenant, reply_id))
            if live is not None:
                return self._cancel_here(live)
            await self._publish(
                {
                    "kind": "cancel",
                    "tenant": tenant,
                    "session_id": session_id,
                    "reply_id": reply_id,
                },
                required=True,
            )
            return True
        if self.cancel_local(tenant, session_id, ""):
            return True
        # Read before telling the others: once told, the reply may end (CANCELLED) before
        # a read after the publish would see it running.
        newest = await self._store.list_replies(tenant, session_id, 1)
        await self._publish(
            {"kind": "cancel", "tenant": tenant, "session_id": session_id, "reply_id": ""},
            required=True,
        )
        return bool(newest) and newest[0].state is ReplyState.RUNNING

    async def session_deleted(self, tenant: str, session_id: str) -> None:
        """Tells the other replicas that the session was deleted, so that they let go of
        what their model provider keeps for it (release_local). A notice: with no other
        replica it does nothing; one the bus cannot send is logged and lost (what it
        would have released then goes by its own expiry)."""
        if self._bus is None:
            return
        await self._publish(
            {
                "kind": "session_deleted",
                "tenant": tenant,
                "session_id": session_id,
                "owner": self.owner,
            }
        )

    def _cancel_here(self, live: LiveReply) -> bool:
        """Stops a reply of this replica: its turn if it runs, else before it begins."""
        if live.ended or live.committed is not None:
            return False
        record = live.record
        if self.cancel_local(record.tenant, record.session_id, live.reply_id):
            return True
        live.cancel_requested = True  # still waiting for the session: it never starts
        return True

    async def _publish(self, message: JSONObject, *, required: bool = False) -> None:
        """Sends `message` to every replica. A notice (`required` False) that cannot be
        sent is logged and dropped: followers elsewhere also poll the store."""
        if self._bus is None:
            asyncio.get_running_loop().call_soon(self._on_message, message)
            return
        try:
            await self._bus.publish(message)
        except ChatdError:
            if required:
                raise
            log.warning("a notice to other replicas was lost", kind=message.get("kind"))

    def _on_message(self, message: JSONObject) -> None:
        tenant, kind = message.get("tenant"), message.get("kind")
        if not isinstance(tenant, str):
            return
        if kind == "reply" and isinstance(reply_id := message.get("reply_id"), str):
            for wake in self._remote.get((tenant, reply_id), ()):
                if not wake.done():
                    wake.set_result(None)
        elif kind == "cancel" and isinstance(session_id := message.get("session_id"), str):
            reply_id = message.get("reply_id")
            if isinstance(reply_id, str) and reply_id:
                live = self._live.get((tenant, reply_id))
                if live is not None and live.record.session_id == session_id:
                    self._cancel_here(live)
            else:
                self.cancel_local(tenant, session_id, "")
        elif (
            kind == "session_deleted"
            and isinstance(session_id := message.get("session_id"), str)
            and message.get("owner") != self.owner
        ):
            self.release_local(tenant, session_id)


def _stored(live: LiveReply, record: ReplyRecord) -> None:
    """The store now holds the reply as `record` says, its events up to record.last_seq."""
    live.record = record
    live.stored = record.last_seq
    live.last_flush = record.update_time


def _stopping() -> Unavailable:
    return Unavailable(
        "chatd stopped on this replica before the reply ended; nothing of the turn was "
        "stored: send the request again",
        reason="REPLICA_STOPPING",
    )


def _turn_id(events: Sequence[TurnEvent]) -> str:
    for event in events:
        if isinstance(event, MessageCompleted):
            return event.message.turn_id
    return ""
