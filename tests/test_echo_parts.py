"""The echo provider shows every StreamReply event kind offline, code execution parts too."""

from __future__ import annotations

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import session_pb2
from server.providers.echo import CODE_NOT_RUN
from tests.conftest import Chatd, StartChatd
from tests.helpers import all_messages


async def test_code_lines_give_code_execution_parts_as_part_events(chatd: Chatd) -> None:
    """`/code SOURCE` answers with executable code and a result saying it was not run,
    streamed as `part` events and stored typed."""
    await chatd.stub.CreateSession(
        pb.CreateSessionRequest(session_id="c", session=session_pb2.Session())
    )
    events = [
        e
        async for e in chatd.stub.StreamReply(
            pb.StreamReplyRequest(session_id="c", text="/code print(6 * 7)")
        )
    ]
    parts = [e.part for e in events if e.HasField("part")]
    assert [p.WhichOneof("data") for p in parts] == ["executable_code", "code_execution_result"]
    assert parts[0].executable_code.code == "print(6 * 7)"
    assert parts[1].code_execution_result.output == CODE_NOT_RUN
    assert "not a language model" in events[-1].reply.text
    stored = (await all_messages(chatd.stub, "c"))[1]
    assert [p.WhichOneof("data") for p in stored.parts] == [
        "text",
        "executable_code",
        "code_execution_result",
    ]


async def test_echo_deltas_hold_the_configured_number_of_words(start_chatd: StartChatd) -> None:
    """CHATD_ECHO_WORDS_PER_CHUNK sets how many words each text delta carries (4 by
    default, as Gemini streams phrases); the reply is the same text either way."""
    texts: dict[int, list[str]] = {}
    for words in (1, 4):
        chatd = await start_chatd(echo_words_per_chunk=words)
        await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="w"))
        request = pb.StreamReplyRequest(session_id="w", text="one two three four five")
        events = [e async for e in chatd.stub.StreamReply(request)]
        texts[words] = [e.text_delta.text for e in events if e.HasField("text_delta")]
    assert "".join(texts[1]) == "".join(texts[4])
    assert max(len(t.split()) for t in texts[1]) == 1
    assert max(len(t.split()) for t in texts[4]) == 4
    assert len(texts[1]) > len(texts[4])
