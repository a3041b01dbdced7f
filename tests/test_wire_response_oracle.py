"""google-genai as the oracle of chatd's response parsing.

Generated GenerateContentResponse JSON (camelCase, the Gemini API's and Vertex AI's shapes:
every part kind, finish reasons known and not, usage with modality details, prompt
feedback, grounding, citation and URL context metadata) is sent as an SSE body both to
google-genai's own response path (generate_content_stream on a genai.Client whose httpx2
client answers through a MockTransport) followed by chatd's former mapping of the SDK's
types (tests/sdk_response_oracle.py), and to chatd's (sse_payloads, orjson.loads,
chunk_from_json). The ModelChunks must be equal once the documented differences are
normalized (server/providers/gemini/answers.py says why chatd keeps what Gemini sent):

- bytes fields kept as JSON (thoughtSignature, inlineData.data, continuationToken, sdkBlob
  in gemini_part and candidate_metadata): chatd keeps the base64 as sent, the SDK
  re-encodes it URL-safe, so both are compared decoded;
- Gemini API candidates: the SDK keeps only the fields `_Candidate_from_mldev` copies
  (finishMessage is dropped) and renames citationMetadata.citationSources to citations;
  chatd's metadata is compared after the same drop and rename.

Fields the SDK does not know at all (dropped by it, kept by chatd) are a property of their
own. Not generated, as Gemini sends neither: JSON null where a field is unset (the SDK
drops it, chatd keeps it inside metadata and gemini_part) and enum names in another letter
case (the SDK upper-cases a name it knows). google-genai's automatic continuation is off:
it posts again for a continuationToken, which is not parsing.

The SSE split is compared with the SDK's segments for bodies cut anywhere; the one
difference, a comment line (skipped by chatd, a payload that fails to parse for the SDK),
is an example of its own.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
from collections.abc import AsyncGenerator, Iterator
from dataclasses import replace
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.providers.gemini.answers import b64_bytes, chunk_from_json
from server.providers.gemini.sse import SseDecoder, sse_payloads
from server.sessions.model import Part
from server.sessions.ports import ModelChunk
from tests.sdk_response_oracle import (
    SdkStream,
    chunk_from_sdk,
    sdk_raw_segments,
    sdk_segments,
    sse_response,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ORACLE = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)

# ----------------------------------------------------------------------------- strategies

Json = dict[str, Any]

words = st.text(max_size=12)
names = st.sampled_from(["f", "get_weather", "lookup", ""])
ids = st.sampled_from(["", "call-1", "c2"])
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**31), 2**31), words, st.floats(allow_nan=False)
)
# Function arguments and responses: free JSON objects (keys that name no bytes field).
objects = st.dictionaries(
    st.sampled_from(["a", "b", "city", "result", "error", "n"]),
    st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=6),
    max_size=3,
)


@st.composite
def b64(draw: st.DrawFn, min_size: int = 1) -> str:
    """Some bytes in base64, standard or URL-safe, padded or not."""
    raw = draw(st.binary(min_size=min_size, max_size=24))
    text = draw(st.sampled_from([base64.b64encode, base64.urlsafe_b64encode]))(raw).decode()
    return text.rstrip("=") if draw(st.booleans()) else text


def kind(required: Json, optional: Json) -> st.SearchStrategy[Json]:
    """A part kind's object: usually with its required keys, sometimes with any subset."""
    return st.one_of(
        st.fixed_dictionaries(required, optional=optional),
        st.fixed_dictionaries({}, optional={**required, **optional}),
    )


resolution_levels = st.sampled_from(
    [
        "MEDIA_RESOLUTION_LOW",
        "MEDIA_RESOLUTION_MEDIUM",
        "MEDIA_RESOLUTION_HIGH",
        "MEDIA_RESOLUTION_ULTRA_HIGH",
        "MEDIA_RESOLUTION_UNSPECIFIED",
    ]
)
blob = kind(
    {"mimeType": st.sampled_from(["image/png", "audio/wav", ""]), "data": b64(min_size=0)},
    {"displayName": st.sampled_from(["", "cat.png"])},
)
file_data = kind(
    {"mimeType": st.sampled_from(["application/pdf", ""]), "fileUri": words},
    {"displayName": st.sampled_from(["", "doc.pdf"])},
)
partial_args = st.lists(
    st.fixed_dictionaries(
        {"jsonPath": st.sampled_from(["$.a", "$.city"])},
        optional={"stringValue": words, "willContinue": st.booleans()},
    ),
    max_size=2,
)
KINDS: dict[str, st.SearchStrategy[Any]] = {
    "text": words,
    "inlineData": blob,
    "fileData": file_data,
    "functionCall": kind(
        {"name": names},
        {"id": ids, "args": objects, "partialArgs": partial_args, "willContinue": st.booleans()},
    ),
    "functionResponse": kind(
        {"name": names},
        {
            "id": ids,
            "response": objects,
            "willContinue": st.booleans(),
            "scheduling": st.sampled_from(["SILENT", "WHEN_IDLE", "INTERRUPT"]),
            "parts": st.lists(st.fixed_dictionaries({"inlineData": blob}), max_size=1),
        },
    ),
    "executableCode": kind(
        {"language": st.sampled_from(["PYTHON", "LANGUAGE_UNSPECIFIED"]), "code": words},
        {"id": ids},
    ),
    "codeExecutionResult": kind(
        {
            "outcome": st.sampled_from(
                ["OUTCOME_OK", "OUTCOME_FAILED", "OUTCOME_DEADLINE_EXCEEDED"]
            ),
            "output": words,
        },
        {"id": ids},
    ),
    "toolCall": kind(
        {"toolType": st.sampled_from(["GOOGLE_SEARCH_WEB", "URL_CONTEXT", "GOOGLE_MAPS"])},
        {"id": ids, "args": objects},
    ),
    "toolResponse": kind(
        {"toolType": st.sampled_from(["GOOGLE_SEARCH_WEB", "FILE_SEARCH"])},
        {"id": ids, "response": objects},
    ),
    # Part kinds chatd does not model.
    "videoMetadata": st.fixed_dictionaries(
        {}, optional={"fps": st.floats(0, 60), "startOffset": st.just("1.5s")}
    ),
    "partMetadata": objects,
}
part_extras: dict[str, st.SearchStrategy[Any]] = {
    "thought": st.booleans(),
    "thoughtSignature": st.one_of(b64(), st.just("")),
    "mediaResolution": st.fixed_dictionaries(
        {}, optional={"level": resolution_levels, "numTokens": st.integers(0, 999)}
    ),
}


# Parts chatd types whole: one kind with its required keys, the keys chatd models and
# some that say nothing (false, empty ids and display names).
nothing = st.just(False)
CLEAN_KINDS: dict[str, st.SearchStrategy[Any]] = {
    "text": words,
    "inlineData": st.fixed_dictionaries(
        {"mimeType": st.sampled_from(["image/png", ""]), "data": b64(min_size=0)},
        optional={"displayName": st.sampled_from(["", "cat.png"])},
    ),
    "fileData": st.fixed_dictionaries(
        {"mimeType": st.just("application/pdf"), "fileUri": words},
        optional={"displayName": st.sampled_from(["", "doc.pdf"])},
    ),
    "functionCall": st.fixed_dictionaries(
        {"name": names}, optional={"id": ids, "args": objects, "willContinue": nothing}
    ),
    "functionResponse": st.fixed_dictionaries(
        {"name": names}, optional={"id": ids, "response": objects, "willContinue": nothing}
    ),
    "executableCode": st.fixed_dictionaries(
        {"language": st.just("PYTHON"), "code": words}, optional={"id": ids}
    ),
    "codeExecutionResult": st.fixed_dictionaries(
        {"outcome": st.just("OUTCOME_OK"), "output": words}, optional={"id": ids}
    ),
    "toolCall": st.fixed_dictionaries(
        {"toolType": st.just("GOOGLE_SEARCH_WEB")}, optional={"id": ids, "args": objects}
    ),
    "toolResponse": st.fixed_dictionaries(
        {"toolType": st.just("URL_CONTEXT")}, optional={"id": ids, "response": objects}
    ),
}
clean_extras: dict[str, st.SearchStrategy[Any]] = {
    "thought": st.booleans(),
    "thoughtSignature": b64(),
    "mediaResolution": st.one_of(
        st.fixed_dictionaries({"level": resolution_levels.filter(lambda v: "UNSPEC" not in v)}),
        st.just({}),
    ),
    "videoMetadata": st.just({}),
}


# Fields of a kind that chatd does not model: one of them keeps the part whole.
UNMODELED: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "functionCall": {"partialArgs": partial_args, "willContinue": st.just(True)},
    "functionResponse": {
        "willContinue": st.just(True),
        "scheduling": st.just("SILENT"),
        "parts": st.lists(st.fixed_dictionaries({"inlineData": blob}), max_size=1),
    },
}
# Parts that say nothing, or next to nothing, or only through null in free JSON.
odd_parts: st.SearchStrategy[dict[str, Any]] = st.sampled_from(
    [
        {},
        {"thought": False},
        {"thought": True},
        {"text": ""},
        {"text": "", "thought": True},
        {"text": "", "mediaResolution": {"level": "MEDIA_RESOLUTION_HIGH"}},
        {"thoughtSignature": ""},
        {"mediaResolution": {}},
        {"videoMetadata": {}},
        {"functionCall": {}},
        {"functionCall": {"args": {"a": False}}},
        {"functionCall": {"args": {"a": None}}},
        {"inlineData": {}},
        {"partMetadata": {"a": None}},
        {"partMetadata": {}},
        {"toolCall": {"id": ""}},
        {"executableCode": {"code": "x"}},
        {"codeExecutionResult": {"outcome": "OUTCOME_OK"}},
    ]
)


@st.composite
def parts(draw: st.DrawFn) -> Json:
    """A part: one chatd types whole, often changed in one way that may keep it whole as
    gemini_part (a field chatd does not model, a required one missing, a second kind,
    flags it cannot hold) or make it say nothing."""
    key = draw(st.sampled_from(sorted(CLEAN_KINDS)))
    part = {key: draw(CLEAN_KINDS[key])}
    part.update(draw(st.fixed_dictionaries({}, optional=clean_extras)))
    change = draw(st.sampled_from(["field", "drop", "kind", "flags", "odd", "none", "none"]))
    if change == "field" and key in UNMODELED:
        field = draw(st.sampled_from(sorted(UNMODELED[key])))
        part[key] = {**part[key], field: draw(UNMODELED[key][field])}
    elif change == "drop" and key != "text":
        gone = draw(st.sampled_from(sorted(part[key])))
        part[key] = {k: v for k, v in part[key].items() if k != gone}
    elif change == "kind":
        other = draw(st.sampled_from(sorted(KINDS)))
        part[other] = draw(KINDS[other])
    elif change == "flags":
        part.update(draw(st.fixed_dictionaries({}, optional=part_extras)))
    elif change == "odd":
        part = dict(draw(odd_parts))
        part.update(draw(st.fixed_dictionaries({}, optional={"thoughtSignature": b64()})))
    return part


safety_ratings = st.lists(
    st.fixed_dictionaries(
        {
            "category": st.sampled_from(
                ["HARM_CATEGORY_HATE_SPEECH", "HARM_CATEGORY_DANGEROUS_CONTENT"]
            ),
            "probability": st.sampled_from(["NEGLIGIBLE", "LOW", "HIGH"]),
        },
        optional={
            "blocked": st.booleans(),
            "probabilityScore": st.floats(0, 1),
            "severity": st.sampled_from(["HARM_SEVERITY_LOW", "HARM_SEVERITY_HIGH"]),
            "severityScore": st.floats(0, 1),
        },
    ),
    max_size=2,
)
citations = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "startIndex": st.integers(0, 500),
            "endIndex": st.integers(0, 500),
            "uri": st.just("https://example.com/a"),
            "title": words,
            "license": st.just("mit"),
            "publicationDate": st.fixed_dictionaries(
                {"year": st.integers(1990, 2030), "month": st.integers(1, 12)},
                optional={"day": st.integers(1, 28)},
            ),
        },
    ),
    max_size=2,
)
grounding = st.fixed_dictionaries(
    {},
    optional={
        "webSearchQueries": st.lists(words, max_size=2),
        "groundingChunks": st.lists(
            st.fixed_dictionaries(
                {"web": st.fixed_dictionaries({"uri": words}, optional={"title": words})}
            ),
            max_size=2,
        ),
        "groundingSupports": st.lists(
            st.fixed_dictionaries(
                {
                    "segment": st.fixed_dictionaries(
                        {},
                        optional={
                            "startIndex": st.integers(0, 99),
                            "endIndex": st.integers(0, 99),
                            "text": words,
                        },
                    ),
                    "groundingChunkIndices": st.lists(st.integers(0, 3), max_size=2),
                },
                optional={"confidenceScores": st.lists(st.floats(0, 1), max_size=2)},
            ),
            max_size=2,
        ),
        "searchEntryPoint": st.fixed_dictionaries(
            {}, optional={"renderedContent": words, "sdkBlob": b64()}
        ),
    },
)
url_context = st.fixed_dictionaries(
    {
        "urlMetadata": st.lists(
            st.fixed_dictionaries(
                {"retrievedUrl": words},
                optional={
                    "urlRetrievalStatus": st.sampled_from(
                        ["URL_RETRIEVAL_STATUS_SUCCESS", "URL_RETRIEVAL_STATUS_ERROR"]
                    )
                },
            ),
            max_size=2,
        )
    }
)
# google-genai 3.6.1's FinishReason members, and one it does not know.
finish_reasons = st.sampled_from(
    [
        "FINISH_REASON_UNSPECIFIED",
        "STOP",
        "MAX_TOKENS",
        "SAFETY",
        "RECITATION",
        "LANGUAGE",
        "OTHER",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "MALFORMED_FUNCTION_CALL",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_OTHER",
        "NO_IMAGE",
        "IMAGE_RECITATION",
        "UNEXPECTED_TOOL_CALL",
        "TOO_MANY_TOOL_CALLS",
        "MISSING_THOUGHT_SIGNATURE",
        "MALFORMED_RESPONSE",
        "ESCALATION",
        "PUP_LIMITED_DISABLED",
        "CONTINUATION",
        "MODEL_ARMOR",
        "A_REASON_FROM_THE_FUTURE",
    ]
)


def candidates(vertex: bool) -> st.SearchStrategy[Json]:
    citation_key = "citations" if vertex else "citationSources"
    return st.fixed_dictionaries(
        {},
        optional={
            "content": st.fixed_dictionaries(
                {"parts": st.lists(parts(), max_size=4)}, optional={"role": st.just("model")}
            ),
            "finishReason": finish_reasons,
            "finishMessage": words,
            "index": st.integers(0, 1),
            "tokenCount": st.integers(0, 999),
            "avgLogprobs": st.floats(-10, 0),
            "safetyRatings": safety_ratings,
            "citationMetadata": st.fixed_dictionaries({citation_key: citations}),
            "groundingMetadata": grounding,
            "urlContextMetadata": url_context,
            "logprobsResult": st.fixed_dictionaries(
                {
                    "chosenCandidates": st.lists(
                        st.fixed_dictionaries({"token": words, "logProbability": st.floats(-5, 0)}),
                        max_size=2,
                    )
                }
            ),
            "continuationToken": b64(),
        },
    )


modality_counts = st.lists(
    st.fixed_dictionaries(
        {"tokenCount": st.integers(0, 9999)},
        optional={
            "modality": st.sampled_from(
                ["TEXT", "IMAGE", "AUDIO", "VIDEO", "DOCUMENT", "MODALITY_UNSPECIFIED"]
            )
        },
    ),
    max_size=3,
)
counts = st.integers(0, 2**31 - 1)
usage = st.fixed_dictionaries(
    {},
    optional={
        "promptTokenCount": counts,
        "candidatesTokenCount": counts,
        "totalTokenCount": counts,
        "thoughtsTokenCount": counts,
        "cachedContentTokenCount": counts,
        "toolUsePromptTokenCount": counts,
        "promptTokensDetails": modality_counts,
        "candidatesTokensDetails": modality_counts,
        "cacheTokensDetails": modality_counts,
        "toolUsePromptTokensDetails": modality_counts,
        "trafficType": st.sampled_from(["ON_DEMAND", "PROVISIONED_THROUGHPUT"]),
    },
)
prompt_feedback = st.fixed_dictionaries(
    {},
    optional={
        "blockReason": st.sampled_from(
            ["SAFETY", "OTHER", "BLOCKLIST", "PROHIBITED_CONTENT", "IMAGE_SAFETY"]
        ),
        "blockReasonMessage": words,
        "safetyRatings": safety_ratings,
    },
)


def responses(vertex: bool) -> st.SearchStrategy[Json]:
    optional: dict[str, st.SearchStrategy[Any]] = {
        "candidates": st.lists(candidates(vertex), max_size=2),
        "usageMetadata": usage,
        "promptFeedback": prompt_feedback,
        "modelVersion": st.sampled_from(["gemini-2.5-flash-001", ""]),
        "responseId": st.just("r-1"),
    }
    if vertex:
        optional["createTime"] = st.just("2026-01-02T03:04:05.678901Z")
    return st.fixed_dictionaries({}, optional=optional)


# ----------------------------------------------------------------------------- helpers

BYTES_KEYS = frozenset({"thoughtSignature", "data", "continuationToken", "sdkBlob"})
# The candidate fields google-genai copies from a Gemini API answer (_Candidate_from_mldev).
MLDEV_CANDIDATE_KEYS = frozenset(
    {
        "content",
        "citationMetadata",
        "tokenCount",
        "finishReason",
        "groundingMetadata",
        "avgLogprobs",
        "index",
        "logprobsResult",
        "safetyRatings",
        "urlContextMetadata",
        "continuationToken",
    }
)


def decoded(value: Any) -> Any:
    """`value` with the base64 strings of bytes fields decoded (either alphabet)."""
    if isinstance(value, dict):
        return {
            k: b64_bytes(v) if k in BYTES_KEYS and isinstance(v, str) else decoded(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [decoded(v) for v in value]
    return value


def as_sdk_reads(metadata: Any, vertex: bool) -> Any:
    """chatd's candidate metadata as google-genai reports it (see the module docstring)."""
    if metadata is None or vertex:
        return metadata
    kept = {k: v for k, v in metadata.items() if k in MLDEV_CANDIDATE_KEYS}
    if "citationMetadata" in kept:
        sources = kept["citationMetadata"].get("citationSources")
        kept["citationMetadata"] = {} if sources is None else {"citations": sources}
    return kept or None


def normalized(chunk: ModelChunk, vertex: bool | None = None) -> ModelChunk:
    """`chunk` with bytes in JSON decoded; with `vertex` given, its metadata as the SDK
    reads that API's answers."""
    metadata = chunk.candidate_metadata
    if vertex is not None:
        metadata = as_sdk_reads(metadata, vertex)
    return chunk._replace(
        parts=tuple(
            replace(p, gemini_part=decoded(p.gemini_part)) if p.gemini_part is not None else p
            for p in chunk.parts
        ),
        candidate_metadata=decoded(metadata),
    )


def sse_body(objects: list[Json], newline: bytes = b"\n") -> bytes:
    return b"".join(b"data: " + orjson.dumps(o) + newline + newline for o in objects)


async def chatd_chunks(body: bytes) -> list[ModelChunk]:
    return [chunk_from_json(orjson.loads(p)) async for p in sse_payloads(sse_response([body]))]


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as made:
        yield made


@pytest.fixture(scope="module")
def gemini_api(runner: asyncio.Runner) -> Iterator[SdkStream]:
    stream = runner.run(_made(vertex=False))
    yield stream
    runner.run(stream.close())


@pytest.fixture(scope="module")
def vertex_ai(runner: asyncio.Runner) -> Iterator[SdkStream]:
    stream = runner.run(_made(vertex=True))
    yield stream
    runner.run(stream.close())


async def _made(*, vertex: bool) -> SdkStream:
    return SdkStream(vertex=vertex)


def oracle_check(runner: asyncio.Runner, sdk: SdkStream, response: Json, vertex: bool) -> None:
    body = sse_body([response], b"\r\n")
    expected = [chunk_from_sdk(r) for r in runner.run(sdk.parse(body))]
    got = runner.run(chatd_chunks(body))
    assert [normalized(c, vertex) for c in got] == [normalized(c) for c in expected]


# ----------------------------------------------------------------------------- properties


@ORACLE
@given(response=responses(vertex=False))
def test_gemini_api_answers_read_as_the_sdk_reads_them(
    runner: asyncio.Runner, gemini_api: SdkStream, response: Json
) -> None:
    oracle_check(runner, gemini_api, response, vertex=False)


@ORACLE
@given(response=responses(vertex=True))
def test_vertex_ai_answers_read_as_the_sdk_reads_them(
    runner: asyncio.Runner, vertex_ai: SdkStream, response: Json
) -> None:
    oracle_check(runner, vertex_ai, response, vertex=True)


PARTS = settings(ORACLE, max_examples=200)


@PARTS
@given(
    content=st.lists(parts(), min_size=1, max_size=3),
    vertex=st.booleans(),
    finish=finish_reasons,
)
def test_every_part_reads_as_the_sdk_reads_it(
    runner: asyncio.Runner,
    gemini_api: SdkStream,
    vertex_ai: SdkStream,
    content: list[Json],
    vertex: bool,
    finish: str,
) -> None:
    """Parts in numbers: typed, kept whole as gemini_part, signature-only or dropped."""
    response = {"candidates": [{"content": {"parts": content}, "finishReason": finish}]}
    oracle_check(runner, vertex_ai if vertex else gemini_api, response, vertex)


SIG = "c2lnbmVk"
# Each on a boundary between typed, kept whole and dropped.
BOUNDARY_PARTS: list[Json] = [
    {"text": "a"},
    {"text": "", "thoughtSignature": SIG},
    {"text": "a", "thoughtSignature": ""},
    {"text": "a", "thought": True, "mediaResolution": {"level": "MEDIA_RESOLUTION_HIGH"}},
    {"text": "a", "mediaResolution": {"level": "MEDIA_RESOLUTION_UNSPECIFIED"}},
    {"text": "a", "mediaResolution": {"level": "MEDIA_RESOLUTION_LOW", "numTokens": 0}},
    {"text": "a", "functionCall": {"name": "f"}},
    {"text": "a", "functionCall": {}},
    {"thoughtSignature": SIG},
    {"thoughtSignature": SIG, "partMetadata": {"a": None}},
    {"partMetadata": {"a": None}},
    {"partMetadata": {"a": False, "id": ""}},
    {"functionCall": {"name": "f", "willContinue": True}},
    {"functionCall": {"name": "f", "willContinue": False, "id": ""}},
    {"functionCall": {"name": "f", "partialArgs": []}},
    {"functionCall": {"name": "f", "args": {"a": None}}, "thoughtSignature": SIG},
    {"functionCall": {"id": "c", "args": {}}},
    {"functionResponse": {"name": "f", "parts": []}},
    {"functionResponse": {"name": "f", "scheduling": "SILENT"}},
    {"functionResponse": {"name": "", "response": {"r": [1, None]}}},
    {"inlineData": {"mimeType": "image/png"}},
    {"inlineData": {"data": "AA=="}},
    {"inlineData": {"mimeType": "", "data": "", "displayName": ""}},
    {"inlineData": {"mimeType": "a/b", "data": "_-8", "displayName": "x"}, "thought": True},
    {"fileData": {"fileUri": "gs://b/o"}},
    {"fileData": {"mimeType": "a/b", "fileUri": "gs://b/o", "displayName": "d"}},
    {"executableCode": {"code": "x"}},
    {"executableCode": {"language": "PYTHON"}},
    {"executableCode": {"language": "PYTHON", "code": "", "id": "e"}},
    {"codeExecutionResult": {"outcome": "OUTCOME_OK"}},
    {"codeExecutionResult": {"outcome": "OUTCOME_OK", "output": ""}},
    {"toolCall": {"id": "t"}},
    {"toolCall": {"toolType": "GOOGLE_SEARCH_WEB", "args": {"q": "x"}}},
    {"toolResponse": {"response": {}}},
    {"toolResponse": {"toolType": "URL_CONTEXT", "id": ""}},
    {"videoMetadata": {"fps": 1.0}, "text": "a"},
    {"videoMetadata": {}, "text": "a", "thought": False},
]


@pytest.mark.parametrize("vertex", [False, True])
@pytest.mark.parametrize("part", BOUNDARY_PARTS)
def test_parts_on_the_boundaries_read_as_the_sdk_reads_them(
    runner: asyncio.Runner,
    gemini_api: SdkStream,
    vertex_ai: SdkStream,
    part: Json,
    vertex: bool,
) -> None:
    response = {"candidates": [{"content": {"parts": [part]}}]}
    oracle_check(runner, vertex_ai if vertex else gemini_api, response, vertex)


UNKNOWN = {"aFieldFromTheFuture": {"level": 2, "note": "kept"}}


@settings(max_examples=60, deadline=None, derandomize=True)
@given(part=parts(), candidate=candidates(vertex=False), feedback=prompt_feedback)
def test_fields_the_sdk_does_not_know_are_kept_as_gemini_sent_them(
    part: Json, candidate: Json, feedback: Json
) -> None:
    """A part holding a field nobody models is kept whole, that field included (or dropped
    when it is an empty text without signature); the candidate's and the feedback's are
    kept in their metadata."""
    candidate = {**candidate, **UNKNOWN, "content": {"parts": [{**part, **UNKNOWN}]}}
    response = {"candidates": [candidate], "promptFeedback": {**feedback, **UNKNOWN}}
    chunk = chunk_from_json(orjson.loads(orjson.dumps(response)))
    assert chunk.candidate_metadata is not None
    assert chunk.candidate_metadata["aFieldFromTheFuture"] == UNKNOWN["aFieldFromTheFuture"]
    assert chunk.prompt_feedback == {**feedback, **UNKNOWN}
    if part.get("text") == "" and not part.get("thoughtSignature"):
        assert chunk.parts == ()
    else:
        assert chunk.parts == (Part(gemini_part={**part, **UNKNOWN}),)


# A streamed reply's events: text of any characters (U+2028 and U+0085 stay unescaped in
# JSON), now and then usage or a whole generated answer.
streamed = st.one_of(
    st.builds(
        lambda text, thought: {
            "candidates": [{"content": {"role": "model", "parts": [{"text": text, **thought}]}}]
        },
        st.text(max_size=40),
        st.sampled_from([{}, {"thought": True}]),
    ),
    st.fixed_dictionaries({"usageMetadata": usage}),
    responses(vertex=False),
)


@st.composite
def cut(draw: st.DrawFn, body: bytes) -> list[bytes]:
    """`body` cut into reads at random places (empty reads included)."""
    at = sorted(draw(st.lists(st.integers(0, len(body)), max_size=40)))
    bounds = [0, *at, len(body)]
    return [body[a:b] for a, b in itertools.pairwise(bounds)]


@ORACLE
@given(
    objects=st.lists(streamed, min_size=1, max_size=6),
    newline=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    data=st.data(),
)
def test_sse_payloads_are_the_sdks_segments_wherever_reads_cut_the_body(
    runner: asyncio.Runner, objects: list[Json], newline: bytes, data: st.DataObject
) -> None:
    body = sse_body(objects, newline)
    chunks = data.draw(cut(body))

    async def ours() -> list[Any]:
        return [orjson.loads(p) async for p in sse_payloads(sse_response(chunks))]

    assert runner.run(ours()) == runner.run(sdk_segments(chunks)) == objects


# Lines as they may come: data lines (multi-line events), raw JSON (an error body), other
# SSE fields, text that is not UTF-8, separators that are not SSE line ends.
sse_lines = st.lists(
    st.one_of(
        st.just(b""),
        st.builds(lambda t: b"data: " + t, st.binary(max_size=12)),
        st.builds(lambda t: b"data: " + t.encode(), st.text(max_size=8)),
        st.sampled_from(
            [
                b"data: \xe2\x82",
                b"data: \xe2\x80\xa8 \xc2\x85",
                b'{"error": {',
                b'  "message": "a } \\" {",',
                b'  "x": "\\\\"',
                b"}}",
                b'"\\',
                b"event: message",
                b"data:no-space",
                b"[1, 2]",
            ]
        ),
    ),
    max_size=12,
)


@ORACLE
@given(
    lines=sse_lines,
    newline=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    end=st.sampled_from([b"", b"\n", b"\r", b"\r\n\r\n"]),
    data=st.data(),
)
def test_sse_payloads_split_any_body_as_the_sdk_does(
    runner: asyncio.Runner, lines: list[bytes], newline: bytes, end: bytes, data: st.DataObject
) -> None:
    """Beyond well-formed events: multi-line data, raw JSON lines buffered until their
    braces balance, invalid UTF-8 (replaced by U+FFFD), U+2028 and U+0085 (no line ends)."""
    body = newline.join(lines) + end
    chunks = data.draw(cut(body))

    async def ours() -> list[str]:
        return [p.decode("utf-8") async for p in sse_payloads(sse_response(chunks))]

    assert runner.run(ours()) == runner.run(sdk_raw_segments(chunks))


# ----------------------------------------------------------------------------- examples


def test_a_comment_line_is_skipped() -> None:
    """The SSE format's comments are ignored (google-genai would fail on one)."""
    decoder = SseDecoder()
    got = decoder.feed(b': keep-alive\r\ndata: {"a": 1}\r\n\r\n:x\n')
    assert [*got, *decoder.end()] == [b'{"a": 1}']


def test_a_read_cut_inside_a_character_or_a_crlf_changes_nothing() -> None:
    body = 'data: {"text": "é€😀"}\r\n\r\n'.encode()
    for at in range(1, len(body)):
        decoder = SseDecoder()
        got = [*decoder.feed(body[:at]), *decoder.feed(body[at:]), *decoder.end()]
        assert [orjson.loads(p) for p in got] == [{"text": "é€😀"}]


def test_invalid_base64_raises() -> None:
    with pytest.raises(binascii.Error):
        b64_bytes("a")


async def test_sse_payloads_closes_the_response_it_read() -> None:
    response = sse_response([b'data: {"a": 1}\n\n', b'data: {"b": 2}\n\n'])
    payloads = sse_payloads(response)
    assert isinstance(payloads, AsyncGenerator)
    assert await anext(payloads) == b'{"a": 1}'
    await payloads.aclose()
    assert response.is_closed


async def test_a_stream_read_one_byte_at_a_time_splits_as_the_sdk_splits_it() -> None:
    """A whole reply's stream, cut one byte at a time."""
    objects = [
        {"candidates": [{"content": {"parts": [{"text": f"piece {i} é"}]}}]} for i in range(3)
    ]
    body = sse_body(objects, b"\r\n")
    chunks = [body[i : i + 1] for i in range(len(body))]
    ours = [orjson.loads(p) async for p in sse_payloads(sse_response(chunks))]
    assert ours == await sdk_segments(chunks) == objects
