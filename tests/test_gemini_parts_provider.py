"""GeminiProvider reading and writing the parts and metadata chatd carries for Gemini: the
real google-genai SDK over real HTTP against FakeGemini."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from server.providers.gemini import GeminiProvider, GeminiSettings
from server.providers.gemini.answers import chunk_from_json
from server.sessions import errors
from server.sessions.model import FunctionCall, Message, Part, Role
from server.sessions.ports import ModelChunk, ModelRequest
from server.sessions.reply import ReplyBuilder
from tests.fake_gemini import FakeGemini, Raw, fake_gemini_fixture, get_field

MODEL = "gemini-test"


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    yield from fake_gemini_fixture()


@pytest.fixture
async def provider(fake: FakeGemini) -> AsyncIterator[GeminiProvider]:
    made = GeminiProvider(
        GeminiSettings(api_key="k", base_url=fake.base_url, retry_attempts=1, timeout=5.0)
    )
    yield made
    await made.close()


def request(*messages: Message) -> ModelRequest:
    contents = messages or (Message(Role.USER, (Part(text="hi"),)),)
    return ModelRequest(model=MODEL, contents=contents)


async def collect(provider: GeminiProvider, req: ModelRequest) -> list[ModelChunk]:
    return [chunk async for chunk in provider.stream(req)]


def rating(probability: str) -> dict[str, str]:
    return {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": probability}


def event(parts: list[dict[str, object]], **candidate: object) -> dict[str, object]:
    return {"candidates": [{"content": {"role": "model", "parts": parts}, **candidate}]}


async def test_streamed_metadata_merges_citations_and_keeps_the_latest_of_the_rest(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    """Citations reported per chunk add up; grounding and ratings sent again replace the
    earlier ones, as Gemini sends them whole."""
    first = {"citationSources": [{"startIndex": 0, "endIndex": 2, "uri": "https://a"}]}
    second = {"citationSources": [{"startIndex": 3, "endIndex": 5, "uri": "https://b"}]}
    fake.push(
        Raw(
            [
                event(
                    [{"text": "ab"}],
                    citationMetadata=first,
                    safetyRatings=[rating("LOW")],
                ),
                event(
                    [{"text": "cd"}],
                    citationMetadata=second,
                    safetyRatings=[rating("NEGLIGIBLE")],
                    groundingMetadata={"webSearchQueries": ["q"]},
                    finishReason="STOP",
                ),
            ]
        )
    )
    builder = ReplyBuilder()
    for chunk in await collect(provider, request()):
        builder.add(chunk)
    metadata = builder.candidate_metadata
    assert metadata is not None
    # As the Gemini API names them (google-genai would rename them `citations`).
    assert [c["uri"] for c in metadata["citationMetadata"]["citationSources"]] == [
        "https://a",
        "https://b",
    ]
    assert metadata["safetyRatings"] == [rating("NEGLIGIBLE")]
    assert metadata["groundingMetadata"] == {"webSearchQueries": ["q"]}


async def test_explicit_defaults_keep_a_part_typed(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    """`thought: false`, an empty id or empty args say nothing chatd loses: the part stays
    typed rather than being kept as Gemini JSON."""
    fake.push(
        Raw(
            [
                event(
                    [
                        {"text": "x", "thought": False},
                        {"functionCall": {"name": "f", "args": {}, "id": ""}},
                    ]
                )
            ]
        )
    )
    chunks = await collect(provider, request())
    parts = [p for c in chunks for p in c.parts]
    assert parts[0] == Part(text="x")
    assert parts[1] == Part(function_call=FunctionCall("", "f", {}))


async def test_an_empty_part_is_dropped(fake: FakeGemini, provider: GeminiProvider) -> None:
    fake.push(Raw([event([{}, {"text": "x"}])]))
    chunks = await collect(provider, request())
    assert [p for c in chunks for p in c.parts] == [Part(text="x")]


async def test_a_kept_part_the_sdk_will_not_send_is_refused_not_an_internal_error(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    """A Gemini JSON part google-genai will not take is the request's fault:
    UpstreamRejected, and nothing reaches Gemini. A kept call's Vertex-only streaming
    fields (which google-genai refuses on the Gemini API) are left out instead."""
    bad_shape = (Message(Role.USER, (Part(gemini_part={"text": 5}),)),)
    with pytest.raises(errors.UpstreamRejected) as err:
        await collect(provider, request(*bad_shape))
    assert err.value.reason == "INVALID_GEMINI_PART"
    assert fake.requests == []
    streamed = {"functionCall": {"name": "f", "args": {}, "willContinue": True}}
    history = (
        Message(Role.USER, (Part(text="hi"),)),
        Message(Role.MODEL, (Part(gemini_part=streamed),)),
        Message(Role.USER, (Part(text="more"),)),
    )
    await collect(provider, request(*history))
    assert get_field(fake.requests[-1].contents[1], "parts", 0, "functionCall") == {
        "name": "f",
        "args": {},
    }


async def test_function_call_ids_and_signature_only_parts_go_out_as_stored(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    history = (
        Message(Role.USER, (Part(text="hi"),)),
        Message(
            Role.MODEL,
            (
                Part(function_call=FunctionCall("", "f", {"n": 3})),
                Part(thought_signature=b"\x01\x02"),
            ),
        ),
    )
    await collect(provider, request(*history))
    sent = fake.requests[-1].contents[1]["parts"]
    assert get_field(sent[0], "function_call") == {"args": {"n": 3}, "name": "f"}
    assert set(sent[1]) in ({"thoughtSignature"}, {"thought_signature"})


async def test_enum_values_the_sdk_does_not_know_are_kept_as_sent(
    fake: FakeGemini, provider: GeminiProvider
) -> None:
    """A language, outcome or tool type newer than google-genai stays the name Gemini sent."""
    fake.push(
        Raw(
            [
                event(
                    [
                        {"executableCode": {"language": "COBOL", "code": "DISPLAY 1"}},
                        {"codeExecutionResult": {"outcome": "OUTCOME_NEW", "output": "1"}},
                        {"toolCall": {"toolType": "NEW_TOOL", "args": {}}},
                    ]
                )
            ]
        )
    )
    chunks = await collect(provider, request())
    parts = [p for c in chunks for p in c.parts]
    assert parts[0].executable_code is not None
    assert parts[0].executable_code.language == "COBOL"
    assert parts[1].code_execution_result is not None
    assert parts[1].code_execution_result.outcome == "OUTCOME_NEW"
    assert parts[2].tool_call is not None
    assert parts[2].tool_call.tool_type == "NEW_TOOL"


def test_citations_under_the_gemini_apis_own_name_add_up_too() -> None:
    """Read from Gemini's JSON, a Gemini API answer's citations keep their name there,
    `citationSources` (Vertex AI's `citations` is what google-genai renames it to); the
    chunks' citations add up under it as under `citations`."""
    builder = ReplyBuilder()
    for text, uri in (("ab", "https://a"), ("cd", "https://b")):
        candidate = {
            "content": {"parts": [{"text": text}]},
            "citationMetadata": {"citationSources": [{"uri": uri}]},
        }
        builder.add(chunk_from_json({"candidates": [candidate]}))
    metadata = builder.candidate_metadata
    assert metadata is not None
    assert metadata["citationMetadata"] == {
        "citations": [],
        "citationSources": [{"uri": "https://a"}, {"uri": "https://b"}],
    }
