"""A background reply's events written while it runs: the write made because the model
went silent and the turn's own writes (its next events, its commit) never overlap; each
continues the one before."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from chatd.v1 import chat_service_pb2 as pb
from server.sessions.ports import ReplyWrite
from server.store import SqliteStore
from tests.conftest import Chatd, StartChatd
from tests.fakes import GatedProvider
from tests.helpers import all_messages, read_event

FLUSH_INTERVAL = 1.0


class HeldEventsStore:
    """Passes every call to `inner`; the first put_reply carrying events from `first_seq`
    on reports itself in `entered` and waits for `release`. `writes` lists the (first,
    last) sequence numbers of every put_reply with events, in the order they began."""

    def __init__(self, inner: Any, first_seq: int) -> None:
        self.inner = inner
        self.first_seq = first_seq
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.writes: list[tuple[int, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def put_reply(self, write: ReplyWrite) -> bool:
        events = write.events
        if events is not None:
            self.writes.append((events.first_seq, events.last_seq))
            if events.first_seq == self.first_seq and not self.entered.is_set():
                self.entered.set()
                await self.release.wait()
        written: bool = await self.inner.put_reply(write)
        return written


async def until(predicate: Any) -> None:
    """Polls `predicate` until it holds (for state the fakes keep without an event)."""
    while not predicate():  # noqa: ASYNC110
        await asyncio.sleep(0.001)


async def test_a_write_made_while_the_model_is_silent_and_the_turns_own_writes_never_overlap(
    start_chatd: StartChatd, tmp_path: Path
) -> None:
    store = HeldEventsStore(await SqliteStore.open(str(tmp_path / "flush.db")), first_seq=2)
    provider = GatedProvider()
    chatd: Chatd = await start_chatd(
        store=store, provider=provider, reply_flush_interval=FLUSH_INTERVAL
    )
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="s"))
    sent = await chatd.stub.SendMessage(
        pb.SendMessageRequest(session_id="s", text="hi", background=True)
    )
    reply_id = sent.reply.reply_id
    provider.release()  # one word (event 2), then the model is silent
    # FLUSH_INTERVAL after the user's message was stored, event 2 is written: held here.
    await store.entered.wait()
    provider.release()  # the turn's next event is due a write of its own at once
    # The model gave its next word (event 3); the turn now waits to write it.
    await until(lambda: provider.unreleased == 0)
    provider.release(2)  # the rest of the answer
    store.release.set()

    events = []
    follow = chatd.stub.StreamReply(pb.StreamReplyRequest(reply_id=reply_id))
    while not (event := await read_event(follow)).HasField("reply"):
        events.append(event)
    assert event.reply.text == "one two three four"
    done = await chatd.stub.GetReply(pb.GetReplyRequest(reply_id=reply_id))
    assert done.reply.state == pb.REPLY_STATE_COMPLETED
    numbers = [e.sequence_number for e in done.events]
    assert numbers == list(range(1, done.reply.last_sequence_number + 1))
    assert [e.sequence_number for e in events] == numbers[:-1]
    # Each write continued the one before it; the held one was the second.
    assert store.writes[1][0] == 2
    assert [first for first, _ in store.writes[1:]] == [last + 1 for _, last in store.writes[:-1]]
    assert len(await all_messages(chatd.stub, "s")) == 2
