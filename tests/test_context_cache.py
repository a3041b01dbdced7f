"""Cache-friendly context: the stepped window, identical instructions and tools on every
request, and cached token counts per turn and per session (on the fake Gemini, whose
implicit cache reports the prefix it has seen before)."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2

from bench import long_conversation
from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import content_pb2, session_pb2
from server.sessions.context import history_needed, is_turn_start, select_window
from server.sessions.model import (
    ContextPolicy,
    FunctionCall,
    FunctionResponse,
    Message,
    Part,
    Role,
    SessionSettings,
    Usage,
)
from server.sessions.tokens import message_tokens
from server.store import codec
from tests.conftest import Chatd, StartChatd, fast_gemini
from tests.fake_gemini import (
    FakeGemini,
    ImplicitCache,
    RecordedRequest,
    Reply,
    call_part,
    fake_tokens,
)
from tests.helpers import violated_fields
from tests.test_tools_rpc import TEST_TOOLS

# ----------------------------------------------------------------------------- domain


class Conversation:
    """A history grown turn by turn as chatd stores it: seqs from 0, turns of a user
    message and a model answer, every third turn with a function call round between."""

    def __init__(self, gap: int = 1) -> None:
        self.messages: list[Message] = []
        # Seqs only increase: an imported history keeps its ids, gaps and all.
        self.gap = gap

    def _add(self, role: Role, part: Part, turn: int, usage: Usage | None = None) -> None:
        seq = len(self.messages) * self.gap
        self.messages.append(Message(role, (part,), seq, 0.0, f"t{turn}", usage))

    def begin(self, turn: int) -> None:
        self._add(Role.USER, Part(text=f"question {turn} " + "x" * (turn % 5 * 30)), turn)
        if turn % 3 == 1:
            self._add(Role.MODEL, Part(function_call=FunctionCall(f"c{turn}", "f")), turn)
            self._add(Role.USER, Part(function_response=FunctionResponse(f"c{turn}", "f")), turn)

    def answer(self, turn: int) -> None:
        self._add(Role.MODEL, Part(text="answer"), turn, Usage(candidates_tokens=40 + turn % 7))


def windows(policy: ContextPolicy, turns: int, gap: int = 1) -> list[Sequence[Message]]:
    """The window of each turn's request, chosen from the history chatd would load."""
    talk = Conversation(gap)
    sent = []
    for turn in range(turns):
        stored = len(talk.messages)
        talk.begin(turn)
        needed = history_needed(policy)
        loaded = talk.messages if needed is None else talk.messages[max(stored - needed, 0) :]
        window = select_window(loaded, policy)
        assert list(window) == list(select_window(talk.messages, policy)), (
            "the loaded history decides exactly what the whole history would"
        )
        sent.append(window)
        talk.answer(turn)
    return sent


def tokens(window: Sequence[Message]) -> int:
    return sum(message_tokens(m) for m in window)


POLICIES = [
    ContextPolicy(max_messages=20, low_water_fraction=0.5),
    ContextPolicy(max_tokens=600, low_water_fraction=0.5),
    ContextPolicy(max_messages=24, max_tokens=900, low_water_fraction=0.25),
]


@pytest.mark.parametrize("policy", POLICIES, ids=["messages", "tokens", "both"])
def test_stepped_window_keeps_its_start_until_a_step_and_respects_the_limits(
    policy: ContextPolicy,
) -> None:
    sent = windows(policy, 150)
    sliding = windows(ContextPolicy(policy.max_messages, policy.max_tokens), 150)
    starts = [w[0].seq for w in sent]
    assert starts == sorted(starts), "the window only moves forward"
    for window in sent:
        assert is_turn_start(window[0]), "a window begins where a turn begins"
        assert not 0 < policy.max_messages < len(window)
        assert not 0 < policy.max_tokens < tokens(window)
        calls = {p.function_call.id for m in window for p in m.parts if p.function_call}
        answers = {p.function_response.id for m in window for p in m.parts if p.function_response}
        assert calls == answers, "no call without its response, no response without its call"
    moves = sum(a != b for a, b in itertools.pairwise(starts))
    sliding_starts = [w[0].seq for w in sliding]
    sliding_moves = sum(a != b for a, b in itertools.pairwise(sliding_starts))
    assert sliding_moves > 80, "the sliding window moves on most turns"
    assert moves * 2 <= sliding_moves, "the stepped window keeps its start for several turns"


@pytest.mark.parametrize("policy", POLICIES, ids=["messages", "tokens", "both"])
def test_seq_gaps_of_an_imported_history_keep_the_window_full_and_within_limits(
    policy: ContextPolicy,
) -> None:
    """Ids 0, 7, 14, ... (an import keeps its ids): the stepped window still sends about
    as much history as the limits allow, and never more. (Its message steps are counted in
    ids, so with gaps they are shorter: the prefix then holds for fewer turns.)"""
    sent = windows(policy, 80, gap=7)
    sliding = windows(replace(policy, low_water_fraction=0.0), 80, gap=7)
    for turn, (window, slid) in enumerate(zip(sent, sliding, strict=True)):
        earlier = len(window) - len([m for m in window if m.turn_id == f"t{turn}"])
        if policy.max_messages:
            assert len(window) <= policy.max_messages or earlier == 0
        if policy.max_tokens:
            assert tokens(window) <= policy.max_tokens or earlier == 0
        # Never less than the low-water share of what sliding sends (one turn of slack).
        assert len(window) >= math.floor(policy.low_water_fraction * len(slid)) - 3


def test_a_step_drops_to_about_the_low_water_mark() -> None:
    policy = ContextPolicy(max_messages=40, low_water_fraction=0.5)
    sent = windows(policy, 200)
    after_steps = [
        len(b) for a, b in itertools.pairwise(sent) if a[0].seq != b[0].seq and len(a) > 8
    ]
    assert after_steps, "the window stepped"
    # A step is 20 message seqs, aligned to turn starts (turns here are 2 or 4 messages).
    assert all(len(w) <= 40 for w in sent)
    assert all(16 <= n <= 28 for n in after_steps), after_steps


def test_without_a_low_water_mark_the_window_slides_as_before() -> None:
    policy = ContextPolicy(max_messages=8)
    assert not policy.stepped
    assert history_needed(policy) == 8
    sent = windows(policy, 30)
    for before, after in itertools.pairwise(sent[5:]):
        assert before[0].seq != after[0].seq, "sliding: the first content changes every turn"


def test_a_low_water_mark_without_a_limit_sends_everything() -> None:
    policy = ContextPolicy(low_water_fraction=0.5)
    assert not policy.stepped
    assert history_needed(policy) is None
    assert windows(policy, 10)[-1][0].seq == 0


def test_the_current_turn_is_sent_whole_even_past_the_limit() -> None:
    history = [
        Message(Role.USER, (Part(text="old"),), 0),
        Message(Role.MODEL, (Part(text="a"),), 1),
        Message(Role.USER, (Part(text="now"),), 2),
        Message(Role.MODEL, (Part(function_call=FunctionCall("c", "f")),), 3),
        Message(Role.USER, (Part(function_response=FunctionResponse("c", "f")),), 4),
    ]
    window = select_window(history, ContextPolicy(max_messages=2, low_water_fraction=0.5))
    assert [m.seq for m in window] == [2, 3, 4]


def test_low_water_fraction_round_trips_through_the_store_codec() -> None:
    settings = SessionSettings(context_policy=ContextPolicy(40, 0, 0.5))
    data = codec.settings_to_dict(settings)
    assert data["context_policy"] == {"max_messages": 40, "low_water_fraction": 0.5}
    back = codec.settings_from_dict(json.loads(json.dumps(data)))
    assert back.context_policy == ContextPolicy(40, 0, 0.5)
    old = codec.settings_from_dict({"context_policy": {"max_messages": 4}})
    assert old.context_policy.low_water_fraction == 0.0, "sessions stored before slide"


# ----------------------------------------------------------------------------- the fake


def test_fake_implicit_cache_counts_the_longest_prefix_seen_before() -> None:
    cache = ImplicitCache(min_tokens=0)
    a, b, c = ({"role": "user", "parts": [{"text": t * 40}]} for t in "abc")
    instruction = {"parts": [{"text": "be brief"}]}

    def request(contents: list[Any], system: Any = instruction) -> RecordedRequest:
        body = {"contents": contents, "systemInstruction": system}
        return RecordedRequest("generateContent", "m", "/", {}, body, b"", 0.0)

    first = cache.usage(request([a, b]), [{"text": "ok"}])
    assert "cachedContentTokenCount" not in first
    assert first["promptTokenCount"] == fake_tokens(instruction) + fake_tokens(a) + fake_tokens(b)
    again = cache.usage(request([a, b, c]), [])
    assert again["cachedContentTokenCount"] == fake_tokens(instruction) + fake_tokens(
        a
    ) + fake_tokens(b)
    other_start = cache.usage(request([b, c]), [])
    assert other_start["cachedContentTokenCount"] == fake_tokens(instruction)
    other_instruction = cache.usage(request([a, b], {"parts": [{"text": "x"}]}), [])
    assert "cachedContentTokenCount" not in other_instruction
    small = ImplicitCache(min_tokens=10_000)
    small.usage(request([a]), [])
    assert "cachedContentTokenCount" not in small.usage(request([a, b]), [])


# ----------------------------------------------------------------------------- end to end


@pytest.fixture
def caching_gemini() -> Any:
    with FakeGemini(implicit_caching=True) as fake:
        assert fake.implicit_cache is not None
        fake.implicit_cache.min_tokens = 0
        yield fake


async def new_session(chatd: Chatd, session_id: str, **settings: Any) -> None:
    await chatd.stub.CreateSession(
        pb.CreateSessionRequest(session_id=session_id, session=session_pb2.Session(**settings))
    )


async def run_turns(chatd: Chatd, session_id: str, turns: int) -> list[Any]:
    replies = []
    for turn in range(turns):
        got = await chatd.stub.SendMessage(
            pb.SendMessageRequest(session_id=session_id, text=f"question {turn} " + "w" * 200)
        )
        replies.append(got.reply)
    return replies


async def test_stepped_window_keeps_the_sent_prefix_and_gemini_bills_it_as_cached(
    start_chatd: StartChatd, caching_gemini: FakeGemini
) -> None:
    chatd = await start_chatd(provider=fast_gemini(caching_gemini))
    await new_session(
        chatd,
        "sliding",
        system_instruction="be brief",
        context_policy=session_pb2.ContextPolicy(max_messages=20),
    )
    await new_session(
        chatd,
        "stepped",
        system_instruction="be brief",
        context_policy=session_pb2.ContextPolicy(max_messages=20, low_water_fraction=0.5),
    )
    shares = {}
    for name in ("sliding", "stepped"):
        caching_gemini.reset()
        replies = await run_turns(chatd, name, 30)
        requests = caching_gemini.requests
        assert all(len(r.contents) <= 20 for r in requests)
        firsts = [json.dumps(r.contents[0], sort_keys=True) for r in requests]
        changes = sum(a != b for a, b in itertools.pairwise(firsts))
        got = await chatd.stub.GetSession(pb.GetSessionRequest(session_id=name))
        cached = [r.usage.cached_content_token_count for r in replies]
        prompt = [r.usage.prompt_token_count for r in replies]
        assert got.session.usage.cached_content_token_count == sum(cached)
        assert got.session.usage.prompt_token_count == sum(prompt)
        shares[name] = (changes, sum(cached) / sum(prompt))
    sliding_changes, sliding_share = shares["sliding"]
    stepped_changes, stepped_share = shares["stepped"]
    assert sliding_changes >= 20, "sliding: the first content changes on nearly every turn"
    assert stepped_changes <= 6, "a step of 10 messages is 5 turns"
    assert stepped_share > 0.6
    assert stepped_share > sliding_share + 0.3


async def test_cached_tokens_are_reported_per_turn_and_summed_on_the_session(
    start_chatd: StartChatd, fake_gemini: FakeGemini
) -> None:
    gemini_chatd = await start_chatd(provider=fast_gemini(fake_gemini), tools=TEST_TOOLS)
    await new_session(gemini_chatd, "u", tools=["calculate"])
    for prompt, cached in ((30, 0), (50, 30)):
        fake_gemini.push(
            Reply(
                text="ok",
                usage={
                    "promptTokenCount": prompt,
                    "candidatesTokenCount": 2,
                    "totalTokenCount": prompt + 2,
                    "cachedContentTokenCount": cached,
                },
            )
        )
        got = await gemini_chatd.stub.SendMessage(pb.SendMessageRequest(session_id="u", text="hi"))
        assert got.reply.usage.cached_content_token_count == cached
    # A streamed turn of two model calls (a server tool round): the reply sums them.
    fake_gemini.push(
        Reply(
            parts=[call_part("calculate", {"expression": "1+1"})],
            usage={"promptTokenCount": 60, "totalTokenCount": 60, "cachedContentTokenCount": 40},
        )
    )
    fake_gemini.push(
        Reply(
            text="2",
            usage={"promptTokenCount": 70, "totalTokenCount": 70, "cachedContentTokenCount": 60},
        )
    )
    events = [
        e
        async for e in gemini_chatd.stub.StreamReply(
            pb.StreamReplyRequest(session_id="u", text="add")
        )
    ]
    assert events[-1].reply.usage.cached_content_token_count == 100
    session = await gemini_chatd.stub.GetSession(pb.GetSessionRequest(session_id="u"))
    assert session.session.usage.cached_content_token_count == 130
    assert session.session.usage.prompt_token_count == 210
    listed = await gemini_chatd.stub.ListMessages(pb.ListMessagesRequest(session_id="u"))
    model_usage = [
        m.usage.cached_content_token_count
        for m in listed.messages
        if m.role == content_pb2.ROLE_MODEL
    ]
    assert model_usage == [0, 30, 40, 60]


def _raw_field(request: Any, camel: str, snake: str) -> str:
    """A top-level field of the request body as the bytes chatd sent (key order kept)."""
    body = json.loads(request.raw_body)
    value = body.get(camel, body.get(snake))
    return json.dumps(value, ensure_ascii=False)


async def test_instruction_and_tools_are_sent_identically_on_every_request(
    start_chatd: StartChatd, fake_gemini: FakeGemini
) -> None:
    chatd = await start_chatd(provider=fast_gemini(fake_gemini), tools=TEST_TOOLS)
    params = struct_pb2.Struct()
    params.update(
        {
            "type": "object",
            "properties": {"zeta": {"type": "string"}, "alpha": {"type": "integer"}},
            "required": ["zeta", "alpha"],
        }
    )
    await new_session(
        chatd,
        "s",
        system_instruction="You are terse. " * 20,
        tools=["calculate", "get_current_time"],
        function_declarations=[
            session_pb2.FunctionDeclaration(name="lookup", description="d", parameters=params)
        ],
        builtin_tools=session_pb2.BuiltinTools(
            google_search=session_pb2.BuiltinTools.GoogleSearch()
        ),
    )
    fake_gemini.push(Reply(text="one"))
    fake_gemini.push(Reply(parts=[call_part("calculate", {"expression": "1+1"})]))
    fake_gemini.push(Reply(text="two"))
    fake_gemini.push(Reply(text="three"))
    for text in ("a", "b", "c"):
        await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="s", text=text))
    requests = fake_gemini.requests
    assert len(requests) == 4
    for camel, snake in (
        ("systemInstruction", "system_instruction"),
        ("tools", "tools"),
        ("toolConfig", "tool_config"),
    ):
        sent = {_raw_field(r, camel, snake) for r in requests}
        assert len(sent) == 1, f"{camel} differs between requests: {sent}"
    assert "lookup" in _raw_field(requests[0], "tools", "tools")


async def test_instruction_and_tools_are_sent_identically_after_a_restart(
    start_chatd: StartChatd, fake_gemini: FakeGemini, tmp_path: Path
) -> None:
    """What a session stored is sent in the same bytes by the next chatd on that store."""
    url = f"sqlite:///{tmp_path}/restart.db"
    params = struct_pb2.Struct()
    params.update(
        {
            "type": "object",
            "properties": {"zeta": {"type": "string"}, "alpha": {"type": "integer"}},
            "required": ["zeta", "alpha"],
        }
    )
    sent = []
    for run in range(2):
        chatd = await start_chatd(
            provider=fast_gemini(fake_gemini), tools=TEST_TOOLS, database_url=url
        )
        if run == 0:
            await new_session(
                chatd,
                "r",
                system_instruction="Answer briefly.",
                tools=["calculate"],
                function_declarations=[
                    session_pb2.FunctionDeclaration(name="lookup", parameters=params)
                ],
            )
        await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="r", text=f"turn {run}"))
        request = fake_gemini.requests[-1]
        sent.append(
            [
                _raw_field(request, "systemInstruction", "system_instruction"),
                _raw_field(request, "tools", "tools"),
            ]
        )
        await chatd.running.stop(grace=0)
    assert sent[0] == sent[1]


@pytest.mark.parametrize("value", [-0.1, 1.0, 2.5, math.nan])
async def test_low_water_fraction_out_of_range_is_refused_naming_the_field(
    chatd: Chatd, value: float
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await new_session(
            chatd,
            "bad",
            context_policy=session_pb2.ContextPolicy(max_messages=4, low_water_fraction=value),
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == ["session.context_policy.low_water_fraction"]


async def test_low_water_fraction_is_kept_and_updated(chatd: Chatd) -> None:
    await new_session(
        chatd,
        "w",
        context_policy=session_pb2.ContextPolicy(max_messages=40, low_water_fraction=0.5),
    )
    got = await chatd.stub.GetSession(pb.GetSessionRequest(session_id="w"))
    assert got.session.context_policy.low_water_fraction == 0.5
    updated = await chatd.stub.UpdateSession(
        pb.UpdateSessionRequest(
            session=session_pb2.Session(
                session_id="w",
                context_policy=session_pb2.ContextPolicy(max_messages=40, low_water_fraction=0.25),
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["context_policy"]),
        )
    )
    assert updated.session.context_policy.low_water_fraction == 0.25


async def test_long_conversation_bench_runs_shortened(tmp_path: Path) -> None:
    """The bench scenario, shortened so it cannot rot: every policy runs, the session's
    sums match the replies' (run checks that), stepped sends less and more of it cached.
    The 70% target is for the full run: a window of 12 messages steps every 3 turns."""
    lines: list[str] = []
    result, checks = await long_conversation.run(
        tmp_path, lines.append, turns=24, max_messages=12, min_cache_tokens=0
    )
    runs = {r["policy"]: r for r in result["runs"]}
    assert set(runs) == {p.name for p in long_conversation.POLICIES}
    assert all(r["turns"] == 24 and r["max_contents_sent"] <= 12 for r in runs.values())
    assert runs["stepped"]["prompt_tokens"] <= runs["sliding"]["prompt_tokens"]
    assert runs["stepped"]["cached_share"] > runs["sliding"]["cached_share"] + 0.3
    verdicts = {c.metric: c.verdict for c in checks}
    assert verdicts["stepped: cached share of prompt tokens"] in {"PASS", "MISS"}
    assert verdicts["stepped: prompt tokens sent vs sliding"] == "PASS"
    # Compaction summarised, its cost counted. With a trigger of 12 messages and 5 turns
    # kept it compacts every other turn, each a miss: the full run compares the policies.
    assert runs["compaction"]["summaries"] > 0
    assert runs["compaction"]["summary_prompt_tokens"] > 0
    assert verdicts["compaction: cached share of prompt tokens"] in {"PASS", "MISS"}
    assert verdicts["compaction: prompt tokens sent vs sliding"] in {"PASS", "MISS"}
    # The same conversations with explicit caches: the same tokens, at least as much cached.
    for name in ("stepped", "compaction"):
        explicit = runs[f"{name}+explicit"]
        assert explicit["prompt_tokens"] == runs[name]["prompt_tokens"]
        assert explicit["cached_share"] >= runs[name]["cached_share"]
    assert runs["stepped+explicit"]["caches_created"] > 0
    assert len(lines) == len(runs)
