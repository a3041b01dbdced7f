"""google-genai as the oracle of chatd's request encoding (server/providers/gemini/wire.py).

For generated requests (every part kind chatd models, parts kept as Gemini JSON, other
models' messages, Gemini 3 turns, every setting) the body RequestEncoder builds must equal,
as JSON, the body google-genai itself sends for the same request built as SDK types
(tests/sdk_oracle.py) through its own request path, on the Gemini API and on Vertex AI;
where the SDK refuses the request, the encoder refuses it with the provider's domain error.

The SDK writes nested objects' keys in snake_case (model_dump of its pydantic types) and
the encoder in the documented camelCase: keys are compared in camelCase, except inside
free-form JSON values (function arguments, responses, schemas, labels), compared as they are.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import orjson
import pydantic
import pytest
from google import genai
from google.genai import _transformers as sdk_transformers
from google.genai import types
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from server.providers.gemini import wire
from server.providers.gemini.wire import RequestEncoder
from server.sessions import errors
from server.sessions.model import (
    Blob,
    BuiltinTools,
    CodeExecutionResult,
    ExecutableCode,
    FileData,
    FunctionCall,
    FunctionDeclaration,
    FunctionResponse,
    FunctionResponsePart,
    GenerationConfig,
    Message,
    Part,
    Role,
    SafetySetting,
    ServerToolCall,
    ServerToolResponse,
    ThinkingConfig,
    ToolConfig,
)
from server.sessions.ports import ModelRequest
from tests import sdk_oracle

ORACLE = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TIMEOUT = 120.0

# ----------------------------------------------------------------------------- the SDK side

SSE = (
    b'data: {"candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]},'
    b' "finishReason": "STOP"}]}\n\n'
)


class Recorder:
    """A google-genai client whose transport records what it is asked to post."""

    def __init__(self, vertex: bool) -> None:
        self.bodies: list[bytes] = []
        self.http = httpx2.AsyncClient(transport=httpx2.MockTransport(self._answer))
        options = types.HttpOptions(httpx_async_client=self.http)
        # Vertex AI's express mode (an API key, no project) is enough for the body.
        self.client = genai.Client(api_key="oracle-key", vertexai=vertex, http_options=options)

    def _answer(self, request: httpx2.Request) -> httpx2.Response:
        self.bodies.append(request.content)
        if request.url.path.endswith(":countTokens"):
            return httpx2.Response(200, json={"totalTokens": 1})
        return httpx2.Response(200, content=SSE, headers={"content-type": "text/event-stream"})

    def last_body(self) -> Any:
        [body] = self.bodies
        self.bodies.clear()
        return json.loads(body)


@dataclass(frozen=True)
class Refused:
    """A request that was not sent: the domain error's reason."""

    reason: str


def _sdk_types(
    request: ModelRequest, vertex: bool, forward_labels: bool
) -> tuple[list[types.Content], types.GenerateContentConfig] | Refused:
    """The request as SDK types, refused as GeminiProvider refused them (its _config, then
    its _contents)."""
    try:
        config = sdk_oracle.to_config(
            request, TIMEOUT, vertex=vertex, forward_labels=forward_labels
        )
    except pydantic.ValidationError:
        return Refused("INVALID_MODEL_SETTINGS")
    try:
        contents = sdk_oracle.to_contents(request.contents, request.model, vertex=vertex)
    except pydantic.ValidationError:
        return Refused("INVALID_GEMINI_PART")
    return contents, config


async def _sdk_generate(
    recorder: Recorder, request: ModelRequest, vertex: bool, forward_labels: bool
) -> Any:
    built = _sdk_types(request, vertex, forward_labels)
    if isinstance(built, Refused):
        return built
    contents, config = built
    try:
        stream = await recorder.client.aio.models.generate_content_stream(
            model=request.model, contents=contents, config=config
        )
        async for _ in stream:
            pass
    except ValueError:
        # Raised building the request, before anything is sent (GeminiProvider's
        # _refused_request).
        assert not recorder.bodies
        return Refused("INVALID_GEMINI_PART")
    return recorder.last_body()


async def _sdk_count(
    recorder: Recorder, request: ModelRequest, vertex: bool, forward_labels: bool
) -> Any:
    """The countTokens body of chatd's count path before wire.py: the SDK's public
    count_tokens on Vertex AI, the SDK-built generateContentRequest on the Gemini API."""
    built = _sdk_types(request, vertex, forward_labels)
    if isinstance(built, Refused):
        return built
    contents, config = built
    try:
        if vertex:
            await recorder.client.aio.models.count_tokens(
                model=request.model,
                contents=contents,
                config=sdk_oracle.vertex_count_config(config),
            )
            return recorder.last_body()
        return sdk_oracle.count_generate_payload(recorder.client, request.model, contents, config)
    except ValueError:
        assert not recorder.bodies
        return Refused("INVALID_GEMINI_PART")


# ----------------------------------------------------------------------------- comparing

# Values that are free-form JSON in the API (Struct, JSON Schema, a map): their keys are
# data, not field names.
FREE_FORM = frozenset(
    {"args", "response", "parametersJsonSchema", "responseJsonSchema", "labels", "partMetadata"}
)
_SNAKE = re.compile(r"_([a-z0-9])")


def camel(key: str) -> str:
    return _SNAKE.sub(lambda m: m[1].upper(), key)


def canonical(value: Any, keys: Callable[[str], str] = camel) -> Any:
    """`value` with field names in camelCase (free-form values as they are), and booleans
    kept apart from numbers (True == 1 in Python, not in JSON)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            name = keys(key)
            out[name] = _exact(item) if name in FREE_FORM else canonical(item, keys)
        return out
    return _exact(value, keys, free=False)


def _exact(value: Any, keys: Callable[[str], str] = camel, free: bool = True) -> Any:
    if isinstance(value, dict):
        if free:
            return {k: _exact(v) for k, v in value.items()}
        return canonical(value, keys)
    if isinstance(value, list):
        return [_exact(v, keys, free) for v in value]
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", float(value))
    return value


def field_names(value: Any, inside: str = "") -> Iterator[str]:
    """Every field name of a body, free-form values left out."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            if key not in FREE_FORM:
                yield from field_names(item, key)
    elif isinstance(value, list):
        for item in value:
            yield from field_names(item, inside)


def encoded(call: Callable[[], bytes]) -> Any:
    try:
        body = call()
    except errors.UpstreamRejected as exc:
        return Refused(exc.reason)
    value = orjson.loads(body)
    snake = [name for name in field_names(value) if "_" in name]
    assert not snake, f"field names not in camelCase: {snake}"
    return value


def assert_same(mine: Any, sdk: Any) -> None:
    event(f"refused: {sdk.reason}" if isinstance(sdk, Refused) else "sent")
    if isinstance(sdk, Refused) or isinstance(mine, Refused):
        assert mine == sdk
        return
    assert canonical(mine) == canonical(sdk)


# ----------------------------------------------------------------------------- strategies

MODELS = ("gemini-2.5-flash", "gemini-3-pro-preview", "models/gemini-3-flash", "gemini-test")
PART_RESOLUTIONS = (
    "",
    "MEDIA_RESOLUTION_LOW",
    "MEDIA_RESOLUTION_HIGH",
    "MEDIA_RESOLUTION_ULTRA_HIGH",
    "media_resolution_medium",
)
names = st.text("abcdefgh_", min_size=1, max_size=6)
texts = st.text(max_size=12)
ids = st.sampled_from(["", "call-1", "c2"])
signatures = st.one_of(st.just(b""), st.binary(min_size=1, max_size=9))
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False, width=64)
    | st.text(max_size=6)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=3)
mimes = st.sampled_from(["image/png", "application/pdf", "text/plain"])
display_names = st.sampled_from(["", "picture.png", "doc"])
blobs = st.builds(Blob, mimes, st.binary(max_size=10), display_names)
files = st.builds(FileData, mimes, st.sampled_from(["gs://b/o", "https://x/y"]), display_names)
response_parts = st.one_of(
    st.builds(FunctionResponsePart, inline_data=blobs),
    st.builds(FunctionResponsePart, file_data=files),
)


def b64(data: bytes, alphabet: str) -> str:
    if alphabet == "standard":
        return base64.b64encode(data).decode()
    if alphabet == "unpadded":
        return base64.urlsafe_b64encode(data).decode().rstrip("=")
    return base64.urlsafe_b64encode(data).decode()


alphabets = st.sampled_from(["standard", "urlsafe", "unpadded"])


@st.composite
def kept_parts(draw: st.DrawFn, gemini_api_only: bool) -> dict[str, Any]:
    """Gemini JSON parts: the kinds chatd keeps whole, in camelCase or snake_case, with
    base64 in either alphabet; now and then one the SDK will not read. With
    `gemini_api_only`, also fields the SDK sends only to the Gemini API."""
    alphabet = draw(alphabets)
    kinds = ["text", "call", "inline", "file", "response", "video", "code", "snake", "invalid"]
    if gemini_api_only:
        kinds += ["tool_call", "metadata"]
    kind = draw(st.sampled_from(kinds))
    part: dict[str, Any]
    if kind == "text":
        part = {"text": draw(texts), "thought": draw(st.booleans())}
    elif kind == "call":
        call: dict[str, Any] = {"name": draw(names), "args": draw(json_objects)}
        if draw(st.booleans()):
            call["id"] = draw(ids)
        if draw(st.booleans()):
            call["partialArgs"] = [{"jsonPath": "$.a", "stringValue": draw(texts)}]
        if draw(st.booleans()):
            call["willContinue"] = draw(st.booleans())
        part = {"functionCall": call}
    elif kind == "inline":
        blob = {"mimeType": draw(mimes), "data": b64(draw(st.binary(max_size=8)), alphabet)}
        if draw(st.booleans()):
            blob["displayName"] = draw(display_names)
        part = {"inlineData": blob}
    elif kind == "file":
        file = {"mimeType": draw(mimes), "fileUri": "gs://b/o"}
        if draw(st.booleans()):
            file["displayName"] = draw(display_names)
        part = {"fileData": file}
    elif kind == "response":
        response: dict[str, Any] = {"name": draw(names), "response": draw(json_objects)}
        if draw(st.booleans()):
            response["parts"] = [
                {"inlineData": {"mimeType": "image/png", "data": "AAEC", "displayName": "p"}}
            ]
        if gemini_api_only and draw(st.booleans()):
            response["willContinue"] = True
        if draw(st.booleans()):
            response["scheduling"] = draw(st.sampled_from(["SILENT", "when_idle"]))
        if gemini_api_only and draw(st.booleans()):
            response["parts"] = [{"mediaProcessing": "STATIC", "fileData": {"fileUri": "gs://b/o"}}]
        part = {"functionResponse": response}
    elif kind == "video":
        part = {
            "fileData": {"mimeType": "video/mp4", "fileUri": "gs://b/v.mp4"},
            "videoMetadata": {"startOffset": "1.5s", "fps": draw(st.sampled_from([1, 2.5]))},
        }
    elif kind == "tool_call":
        part = {"toolCall": {"toolType": "GOOGLE_SEARCH_WEB", "args": draw(json_objects)}}
    elif kind == "metadata":
        part = {"text": draw(texts), "partMetadata": {"some_key": draw(json_values)}}
    elif kind == "code":
        part = {
            "executableCode": {"language": draw(st.sampled_from(["PYTHON", "python"])), "code": "1"}
        }
    elif kind == "snake":
        part = {"inline_data": {"mime_type": "image/png", "data": "AAEC", "display_name": "x"}}
    else:
        part = draw(
            st.sampled_from(
                [
                    {"bogus": 1},
                    {"text": "x", "thoughtSignature": "not base64!"},
                    {"functionCall": {"name": 3}},
                ]
            )
        )
    if draw(st.booleans()):
        part["thoughtSignature"] = b64(draw(st.binary(max_size=8)), alphabet)
    if draw(st.integers(0, 5)) == 0:
        part["mediaResolution"] = {"level": "MEDIA_RESOLUTION_HIGH"}
    return part


@st.composite
def parts(draw: st.DrawFn, gemini_api_only: bool) -> Part:
    """Parts of every kind chatd models; with `gemini_api_only`, also server tool calls and
    responses (which google-genai sends only to the Gemini API)."""
    kinds = ["text", "text", "thought", "inline", "file", "call", "response", "code", "result"]
    kinds += ["signature", "kept"]
    if gemini_api_only:
        kinds += ["tool_call", "tool_response"]
    kind = draw(st.sampled_from(kinds))
    signature = draw(signatures)
    resolution = draw(st.sampled_from(PART_RESOLUTIONS)) if draw(st.booleans()) else ""
    common: dict[str, Any] = {"thought_signature": signature, "media_resolution": resolution}
    if kind == "text":
        return Part(text=draw(texts), **common)
    if kind == "thought":
        return Part(text=draw(texts), thought=True, **common)
    if kind == "inline":
        return Part(inline_data=draw(blobs), **common)
    if kind == "file":
        return Part(file_data=draw(files), **common)
    if kind == "call":
        return Part(
            function_call=FunctionCall(draw(ids), draw(names), draw(json_objects)), **common
        )
    if kind == "response":
        response = FunctionResponse(
            draw(ids),
            draw(names),
            draw(json_objects),
            tuple(draw(st.lists(response_parts, max_size=2))),
        )
        return Part(function_response=response, **common)
    if kind == "code":
        language = draw(st.sampled_from(["PYTHON", "python", "LANGUAGE_UNSPECIFIED"]))
        return Part(executable_code=ExecutableCode(language, draw(texts), draw(ids)), **common)
    if kind == "result":
        outcome = draw(st.sampled_from(["OUTCOME_OK", "OUTCOME_FAILED", "outcome_ok"]))
        return Part(
            code_execution_result=CodeExecutionResult(outcome, draw(texts), draw(ids)), **common
        )
    if kind == "tool_call":
        tool_type = draw(st.sampled_from(["GOOGLE_SEARCH_WEB", "URL_CONTEXT", "google_maps"]))
        return Part(tool_call=ServerToolCall(draw(ids), tool_type, draw(json_objects)), **common)
    if kind == "tool_response":
        tool_type = draw(st.sampled_from(["GOOGLE_SEARCH_WEB", "URL_CONTEXT"]))
        return Part(
            tool_response=ServerToolResponse(draw(ids), tool_type, draw(json_objects)), **common
        )
    if kind == "signature":
        return Part(thought_signature=signature or b"sig")
    return Part(gemini_part=draw(kept_parts(gemini_api_only)))


@st.composite
def messages(draw: st.DrawFn, model: str, gemini_api_only: bool) -> Message:
    role = draw(st.sampled_from([Role.USER, Role.MODEL]))
    if role is Role.USER and draw(st.booleans()):
        # A tool round's answer: only function responses.
        response = FunctionResponse(draw(ids), draw(names), draw(json_objects))
        return Message(role, (Part(function_response=response),))
    written_by = ""
    if role is Role.MODEL:
        written_by = draw(st.sampled_from(["", model, "gemini-2.0-flash"]))
    history_parts = draw(st.lists(parts(gemini_api_only), max_size=3))
    return Message(role, tuple(history_parts), model=written_by)


thinking_configs = st.builds(
    ThinkingConfig,
    st.none() | st.booleans(),
    st.none() | st.integers(-1, 1 << 20),
    st.none() | st.sampled_from(["LOW", "HIGH", "minimal"]),
)
floats = st.none() | st.floats(-2, 2, width=32)
generation_configs = st.builds(
    GenerationConfig,
    temperature=floats,
    top_p=floats,
    top_k=st.none() | st.integers(1, 100),
    max_output_tokens=st.none() | st.integers(1, 10_000),
    stop_sequences=st.none() | st.lists(st.text(min_size=1, max_size=4), max_size=2).map(tuple),
    seed=st.none() | st.integers(-(2**31), 2**31 - 1),
    response_mime_type=st.none() | st.sampled_from(["application/json", "text/plain"]),
    response_json_schema=st.none() | json_objects,
    thinking=st.none() | thinking_configs,
    presence_penalty=floats,
    frequency_penalty=floats,
    media_resolution=st.none() | st.sampled_from(["MEDIA_RESOLUTION_LOW", "media_resolution_high"]),
    service_tier=st.none() | st.sampled_from(["standard", "flex", "PRIORITY"]),
    tool_config=st.none()
    | st.builds(
        ToolConfig,
        st.none() | st.sampled_from(["AUTO", "ANY", "NONE", "VALIDATED", "any"]),
        st.lists(names, max_size=2).map(tuple),
    ),
    cached_content=st.none()
    | st.sampled_from(["cachedContents/abc", "projects/p/locations/l/cachedContents/abc"]),
)
declarations = st.builds(
    FunctionDeclaration, names, st.sampled_from(["", "Does things"]), st.none() | json_objects
)
safety = st.builds(
    SafetySetting,
    st.sampled_from(["HARM_CATEGORY_HARASSMENT", "harm_category_hate_speech"]),
    st.sampled_from(["BLOCK_NONE", "block_only_high", "OFF"]),
)
labels = st.dictionaries(
    st.sampled_from(["team", "Env", "cost-center", "a.b"]), st.sampled_from(["x", "Prod", "1"])
)


@st.composite
def requests(draw: st.DrawFn) -> ModelRequest:
    model = draw(st.sampled_from(MODELS))
    # A quarter of the histories hold what only the Gemini API takes.
    gemini_api_only = draw(st.integers(0, 3)) == 0
    history = draw(st.lists(messages(model, gemini_api_only), min_size=1, max_size=6))
    if draw(st.booleans()):
        # A tool round in progress: the model's calls (signed or not, by this model or
        # another), then their answers.
        calls = [
            Part(function_call=FunctionCall(draw(ids), draw(names)), thought_signature=signature)
            for signature in draw(st.lists(signatures, min_size=1, max_size=2))
        ]
        written_by = draw(st.sampled_from(["", model, "gemini-2.0-flash"]))
        answer = FunctionResponse(draw(ids), draw(names), draw(json_objects))
        history += [
            Message(
                Role.MODEL, (*draw(st.lists(parts(False), max_size=1)), *calls), model=written_by
            ),
            Message(Role.USER, (Part(function_response=answer),)),
        ]
    return ModelRequest(
        model=model,
        contents=history,
        system_instruction=draw(st.sampled_from(["", "Be terse."])),
        generation_config=draw(generation_configs),
        function_declarations=draw(st.lists(declarations, max_size=2)),
        safety_settings=draw(st.lists(safety, max_size=2)),
        allow_function_calls=draw(st.booleans()),
        builtin_tools=draw(st.builds(BuiltinTools, *[st.booleans()] * 5)),
        labels=draw(labels),
    )


# ----------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as running:
        yield running


@pytest.fixture(scope="module")
def recorders(runner: asyncio.Runner) -> Iterator[dict[bool, Recorder]]:
    made = {vertex: runner.run(_recorder(vertex)) for vertex in (False, True)}
    yield made
    for recorder in made.values():
        runner.run(recorder.http.aclose())


async def _recorder(vertex: bool) -> Recorder:
    return Recorder(vertex)


@pytest.mark.parametrize("vertex", [False, True], ids=["gemini_api", "vertex"])
@ORACLE
@given(request=requests(), forward_labels=st.booleans())
def test_generate_body_is_the_body_google_genai_sends(
    runner: asyncio.Runner,
    recorders: dict[bool, Recorder],
    vertex: bool,
    request: ModelRequest,
    forward_labels: bool,
) -> None:
    """generate_body equals, as JSON, the streamGenerateContent body of google-genai's own
    request path for the same request; both refuse the same requests with the same reason."""
    encoder = RequestEncoder(vertex=vertex, forward_labels=forward_labels)
    sdk = runner.run(_sdk_generate(recorders[vertex], request, vertex, forward_labels))
    mine = encoded(lambda: encoder.generate_body(request))
    assert_same(mine, sdk)


@pytest.mark.parametrize("vertex", [False, True], ids=["gemini_api", "vertex"])
@settings(ORACLE, max_examples=100)
@given(request=requests())
def test_count_tokens_body_is_the_body_of_the_sdk_count_path(
    runner: asyncio.Runner, recorders: dict[bool, Recorder], vertex: bool, request: ModelRequest
) -> None:
    """count_tokens_body equals the body of chatd's SDK-built count path: the
    generateContentRequest on the Gemini API, count_tokens' body on Vertex AI."""
    recorder = recorders[vertex]
    encoder = RequestEncoder(vertex=vertex, forward_labels=False)
    model_path = sdk_transformers.t_model(recorder.client._api_client, request.model)
    sdk = runner.run(_sdk_count(recorder, request, vertex, False))
    mine = encoded(lambda: encoder.count_tokens_body(request, model_path))
    assert_same(mine, sdk)


@settings(ORACLE, max_examples=50)
@given(request=requests())
def test_history_rules_and_api_version_are_the_sdk_paths(request: ModelRequest) -> None:
    """wire_messages (memoized, scanning back for the current turn) gives the messages the
    plain walk of tests/sdk_oracle.py gives; the Gemini API's v1beta is asked for exactly
    when the SDK-typed config asked for it, never on Vertex AI."""
    model = request.model
    sent = sdk_oracle.wire_messages(request.contents, model)
    assert wire.wire_messages(request.contents, model) == sent
    signatures = [p.thought_signature for m in sent for p in m.parts]
    event("dummy signature" if wire.DUMMY_SIGNATURE in signatures else "no dummy signature")
    config = sdk_oracle.to_config(request, TIMEOUT)
    assert config.http_options is not None
    expected = config.http_options.api_version
    assert RequestEncoder(vertex=False, forward_labels=False).api_version(request) == expected
    assert RequestEncoder(vertex=True, forward_labels=False).api_version(request) is None
