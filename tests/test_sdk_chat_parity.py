"""google-genai's own chat as the oracle for what chatd sends Gemini.

Each scenario runs twice against the same strict fake: through chatd over gRPC (the gemini
provider, caller-executed function declarations answered with `tool_results`), and through
the SDK's `client.aio.chats` with automatic function calling off (function calls answered
with `Part.from_function_response`, call ids carried). The requests the fake received are
compared one by one as JSON values, normalized only for key casing and base64 alphabet,
and so are the histories each keeps for its next turn (chatd's stored messages, the SDK's
curated history).

They must be equal, except for the differences a scenario names, each checked as what it is
(see DIFFERENCES). A scenario that names a difference its requests do not show fails too, so
the list stays exact.

Adding a scenario: append a `Scenario` to SCENARIOS with its turns and the fake's replies.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from google import genai
from google.genai import types
from google.protobuf import json_format, struct_pb2

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import content_pb2, session_pb2
from tests.conftest import Chatd
from tests.fake_gemini import (
    FakeGemini,
    Json,
    Raw,
    RecordedRequest,
    Reply,
    ScriptSource,
    b64decode,
    call_part,
    text_part,
    thought_part,
    usage,
)
from tests.helpers import all_messages

# --------------------------------------------------------------------------- differences

# chatd stores a streamed reply as one model message; the SDK's chat keeps one history entry
# per streamed chunk. Checked: chatd's model content equals the SDK's consecutive model
# contents merged (adjacent text of the same kind joined, parts in order, a signature
# staying on the part it came with and closing its run of text).
MERGED_STREAM_CHUNKS = "merged stream chunks"
# chatd streams every model call and joins a reply's adjacent text parts of one kind into
# one part, a part with a signature closing the run: a signature-only part (the API streams
# a reply's signature as a final `{"text": "", "thoughtSignature": ...}` chunk) joins the
# text before it. Unstreamed, the SDK's chat keeps the parts as they came. Checked: chatd's
# content equals the SDK's with its adjacent text parts joined by that rule.
JOINED_TEXT_PARTS = "joined text parts"
# A per-turn generation config: chatd merges it over the session's for that turn; the SDK's
# chat replaces its whole config (instruction and tools included) with the one passed.
# Checked: the exact generationConfig of each, and that only the SDK's request lost the
# system instruction and tools.
MERGED_TURN_CONFIG = "merged turn config"
# A function call the model sent without an id: chatd gives it one (`call-<seq>-<index>`)
# so the caller can answer it, and sends that id with the call and its response; the SDK
# sends neither. Checked: every invented id names a call and the response that answers it.
INVENTED_CALL_IDS = "invented call ids"
# The SDK's chat leaves a streamed turn out of the history it sends (and keeps) when a chunk
# of the reply had no content, such as a last chunk holding only the finish reason and
# usage; chatd keeps the turn. Checked: chatd's contents without that turn's user and model
# contents equal the SDK's.
FORGOTTEN_TURN = "turn the SDK's chat forgot"

DIFFERENCES = (
    MERGED_STREAM_CHUNKS,
    JOINED_TEXT_PARTS,
    MERGED_TURN_CONFIG,
    INVENTED_CALL_IDS,
    FORGOTTEN_TURN,
)


# --------------------------------------------------------------------------- scenarios


def versioned(reply: Reply, version: str) -> ScriptSource:
    """`reply` reporting `version` as its modelVersion, as the API does when a versioned
    model serves the name requested (an alias, or a stable name served by a -001 build)."""

    def script(request: RecordedRequest) -> Raw:
        if request.method == "streamGenerateContent":
            return Raw(reply.events(version))
        return Raw([reply.response(version)])

    return script


@dataclass(frozen=True)
class Turn:
    """One call on each side: a user message (text or SDK parts), or results answering the
    calls the previous turn left pending, one JSON value per call in call order."""

    user: str | Sequence[types.Part] | None = None
    results: Sequence[Any] = ()
    # Per-turn override, as GenerateContentConfig fields (snake_case).
    config: Mapping[str, Any] | None = None
    # The generationConfig chatd must send for this turn (camelCase), when `config` is set.
    merged_config: Json | None = None
    stream: bool = False
    # The SDK's chat leaves this turn out of its history (FORGOTTEN_TURN).
    sdk_forgets: bool = False
    # What the fake answers this turn's model call(s).
    replies: Sequence[ScriptSource] = ()


@dataclass(frozen=True)
class Scenario:
    id: str
    turns: Sequence[Turn]
    model: str = "gemini-2.5-flash"
    system_instruction: str = ""
    # The session's generation settings, as GenerateContentConfig fields (snake_case).
    config: Mapping[str, Any] = field(default_factory=dict)
    # Caller-executed functions: {"name", "description", "parameters" (JSON schema)}.
    functions: Sequence[Json] = ()
    differences: frozenset[str] = frozenset()
    # How many contents each keeps for its next turn at the end, where that is the point.
    kept: int | None = None


SIG_A = bytes(range(0, 256, 3))
SIG_B = b"\xfb\xff\xfe signature B \x00"
WEATHER: Json = {
    "name": "get_weather",
    "description": "Current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
TIME: Json = {
    "name": "get_time",
    "description": "Current time in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xfb\xff\xfe"


SCENARIOS = [
    Scenario(
        "plain-text-3-turns",
        [
            Turn("Hello", replies=[Reply(text="Hi there.", usage=usage(3, 3))]),
            Turn("How are you?", replies=[Reply(text="Fine, thanks.")]),
            Turn("Bye", replies=[Reply(text="Goodbye.")]),
        ],
    ),
    Scenario(
        "multipart-user-message",
        [
            Turn(
                [
                    types.Part.from_text(text="What is in this image?"),
                    types.Part.from_bytes(data=PNG, mime_type="image/png"),
                ],
                replies=[Reply(text="A tiny PNG.")],
            ),
            Turn("And its colours?", replies=[Reply(text="None to speak of.")]),
        ],
    ),
    Scenario(
        "system-instruction",
        [
            Turn("Hello", replies=[Reply(text="Ahoy.")]),
            Turn("Again", replies=[Reply(text="Ahoy again.")]),
        ],
        system_instruction="Answer like a pirate.",
        config={"temperature": 0.25, "top_k": 5},
    ),
    Scenario(
        "blocked-prompt-then-normal-turn",
        [
            Turn("Hello", replies=[Reply(text="Hi.")]),
            Turn("something bad", replies=[Reply(block_reason="SAFETY")]),
            Turn("something fine", replies=[Reply(text="Sure.")]),
        ],
        # Neither keeps the blocked prompt: chatd stores nothing of the turn, the SDK's chat
        # leaves it (and the empty model entry it records) out of its curated history.
        kept=4,
    ),
    Scenario(
        "max-tokens-reply",
        [
            Turn(
                "Tell me a long story",
                replies=[Reply(text="Once upon a", finish_reason="MAX_TOKENS")],
            ),
            Turn("Go on", replies=[Reply(text="time there was a fake.")]),
        ],
        config={"max_output_tokens": 4},
    ),
    Scenario(
        "thinking-with-signatures",
        [
            Turn(
                "What is 2+2?",
                replies=[
                    Reply(
                        parts=[
                            thought_part("Adding two and two.", signature=SIG_A),
                            text_part("4"),
                        ],
                        usage=usage(5, 1, thoughts=7),
                    )
                ],
            ),
            Turn(
                "And times 3?",
                replies=[
                    Reply(
                        parts=[thought_part("Four times three."), text_part("12", signature=SIG_B)]
                    )
                ],
            ),
            Turn("Thanks", replies=[Reply(text="Welcome.")]),
        ],
        config={"thinking_config": {"include_thoughts": True, "thinking_budget": 512}},
    ),
    Scenario(
        "one-function-call",
        [
            Turn(
                "Weather in Paris?",
                replies=[Reply(parts=[call_part("get_weather", {"city": "Paris"}, id="w1")])],
            ),
            Turn(results=[{"sky": "clear", "celsius": 21}], replies=[Reply(text="Clear, 21 C.")]),
            Turn("Thanks", replies=[Reply(text="Welcome.")]),
        ],
        functions=[WEATHER],
    ),
    Scenario(
        "parallel-calls-signature-on-first",
        [
            Turn(
                "Weather and time in Rome?",
                replies=[
                    Reply(
                        parts=[
                            call_part("get_weather", {"city": "Rome"}, id="p1", signature=SIG_A),
                            call_part("get_time", {"city": "Rome"}, id="p2"),
                        ]
                    )
                ],
            ),
            Turn(results=[{"sky": "rain"}, "09:30"], replies=[Reply(text="Rainy, 09:30.")]),
            Turn("Thanks", replies=[Reply(text="Welcome.")]),
        ],
        functions=[WEATHER, TIME],
    ),
    Scenario(
        "calls-without-ids",
        [
            Turn(
                "Weather and time in Oslo?",
                replies=[
                    Reply(
                        parts=[
                            call_part("get_weather", {"city": "Oslo"}, signature=SIG_A),
                            call_part("get_time", {"city": "Oslo"}),
                        ]
                    )
                ],
            ),
            Turn(results=[{"sky": "snow"}, "23:00"], replies=[Reply(text="Snowy, 23:00.")]),
            Turn("Thanks", replies=[Reply(text="Welcome.")]),
        ],
        functions=[WEATHER, TIME],
        differences=frozenset({INVENTED_CALL_IDS}),
    ),
    Scenario(
        "per-turn-generation-config",
        [
            Turn("Hello", replies=[Reply(text="Hi.")]),
            Turn(
                "Be creative",
                config={"temperature": 0.75, "max_output_tokens": 64},
                merged_config={"temperature": 0.75, "topK": 5, "maxOutputTokens": 64},
                replies=[Reply(text="Purple.")],
            ),
            Turn("Back to normal", replies=[Reply(text="Blue.")]),
        ],
        system_instruction="Be brief.",
        config={"temperature": 0.25, "top_k": 5},
        functions=[WEATHER],
        differences=frozenset({MERGED_TURN_CONFIG}),
    ),
    Scenario(
        "non-binary-float-settings",
        [
            Turn("Hello", replies=[Reply(text="Hi.")]),
            Turn("Again", replies=[Reply(text="Hi again.")]),
        ],
        config={"temperature": 0.7, "top_p": 0.95, "presence_penalty": 0.1},
    ),
    Scenario(
        "streamed-replies",
        [
            Turn(
                "Count to ten",
                stream=True,
                replies=[Reply(text="one two three four five six seven eight nine ten", chunks=4)],
            ),
            Turn(
                "Think it over",
                stream=True,
                replies=[
                    Reply(
                        parts=[
                            thought_part("Counting again, slowly.", signature=SIG_A),
                            text_part("Still ten, I promise.", signature=SIG_B),
                        ],
                        chunks=3,
                    )
                ],
            ),
            Turn("Thanks", stream=True, replies=[Reply(text="Any time.", chunks=2)]),
        ],
        config={"thinking_config": {"include_thoughts": True}},
        differences=frozenset({MERGED_STREAM_CHUNKS}),
    ),
    Scenario(
        "gemini-3-function-calls",
        [
            Turn(
                "Weather and time in Lima?",
                replies=[
                    Reply(
                        parts=[
                            thought_part("I need both tools."),
                            call_part("get_weather", {"city": "Lima"}, id="g1", signature=SIG_A),
                            call_part("get_time", {"city": "Lima"}, id="g2"),
                        ]
                    )
                ],
            ),
            Turn(
                results=[{"sky": "fog"}, "14:00"],
                replies=[
                    Reply(
                        parts=[
                            call_part("get_weather", {"city": "Cusco"}, id="g3", signature=SIG_B)
                        ]
                    )
                ],
            ),
            Turn(results=[{"sky": "sun"}], replies=[Reply(text="Foggy in Lima, sunny in Cusco.")]),
            Turn("Thanks", replies=[Reply(text="Welcome.")]),
            Turn("Bye", replies=[Reply(text="Bye.")]),
        ],
        model="gemini-3-pro-preview",
        config={"thinking_config": {"include_thoughts": True, "thinking_level": "HIGH"}},
        functions=[WEATHER, TIME],
    ),
    Scenario(
        "signature-in-its-own-part",
        [
            Turn("Hi", replies=[Reply(text="Hello.", parts=[text_part("", signature=SIG_A)])]),
            Turn("Bye", replies=[Reply(text="Bye.")]),
        ],
        model="gemini-3-pro-preview",
        differences=frozenset({JOINED_TEXT_PARTS}),
    ),
    Scenario(
        "signature-in-its-own-part-streamed",
        [
            Turn(
                "Hi",
                stream=True,
                replies=[
                    Reply(text="Hello there.", parts=[text_part("", signature=SIG_A)], chunks=2)
                ],
            ),
            Turn("Bye", stream=True, replies=[Reply(text="Bye.")]),
        ],
        model="gemini-3-pro-preview",
        differences=frozenset({MERGED_STREAM_CHUNKS}),
    ),
    Scenario(
        "stream-ending-with-a-chunk-without-content",
        [
            Turn("Hello", stream=True, replies=[Reply(text="Hi.")]),
            Turn(
                "Tell me more",
                stream=True,
                sdk_forgets=True,
                replies=[
                    Raw(
                        [
                            Reply(text="Mo", finish_reason=None).response("gemini-2.5-flash"),
                            Reply(text="re.", finish_reason=None).response("gemini-2.5-flash"),
                            {
                                "candidates": [{"finishReason": "STOP"}],
                                "usageMetadata": usage(4, 2),
                            },
                        ]
                    )
                ],
            ),
            Turn("Thanks", stream=True, replies=[Reply(text="Welcome.")]),
        ],
        differences=frozenset({FORGOTTEN_TURN}),
    ),
    Scenario(
        "gemini-3-versioned-model-with-calls",
        [
            Turn(
                "Weather in Quito?",
                replies=[
                    versioned(
                        Reply(
                            parts=[
                                call_part(
                                    "get_weather", {"city": "Quito"}, id="v1", signature=SIG_A
                                )
                            ]
                        ),
                        "gemini-3-pro-preview-11-2025",
                    )
                ],
            ),
            Turn(
                results=[{"sky": "cloud"}],
                replies=[versioned(Reply(text="Cloudy."), "gemini-3-pro-preview-11-2025")],
            ),
            Turn("Thanks", replies=[Reply(text="Welcome.")]),
        ],
        model="gemini-3-pro-preview",
        functions=[WEATHER],
    ),
    Scenario(
        "model-version-differs-from-model-name",
        [
            Turn(
                "What is 2+2?",
                replies=[
                    versioned(
                        Reply(parts=[thought_part("Sum.", signature=SIG_A), text_part("4")]),
                        "gemini-2.5-flash-001",
                    )
                ],
            ),
            Turn("Thanks", replies=[versioned(Reply(text="Welcome."), "gemini-2.5-flash-001")]),
        ],
        config={"thinking_config": {"include_thoughts": True}},
    ),
]


# --------------------------------------------------------------------------- chatd's run


def _chatd_config(config: Mapping[str, Any]) -> session_pb2.GenerationConfig:
    fields = dict(config)
    thinking = fields.pop("thinking_config", None)
    out = session_pb2.GenerationConfig(**fields)
    if thinking is not None:
        level = thinking.get("thinking_level")
        out.thinking.SetInParent()
        if "include_thoughts" in thinking:
            out.thinking.include_thoughts = thinking["include_thoughts"]
        if "thinking_budget" in thinking:
            out.thinking.thinking_budget = thinking["thinking_budget"]
        if level is not None:
            out.thinking.thinking_level = session_pb2.ThinkingConfig.ThinkingLevel.Value(
                f"THINKING_LEVEL_{level}"
            )
    return out


def _chatd_part(part: types.Part) -> content_pb2.Part:
    """The same part in chatd's API (whose Part JSON has the Gemini API's field names)."""
    as_json = part.model_dump(mode="json", by_alias=True, exclude_none=True)
    return json_format.ParseDict(as_json, content_pb2.Part())


def _value(result: Any) -> struct_pb2.Value:
    return json_format.ParseDict(result, struct_pb2.Value())


def _history_part(part: content_pb2.Part) -> Json:
    """A stored part as JSON, its function call arguments and response read from their exact
    JSON text (the Struct twin would turn 3 into 3.0)."""
    out: Json = json_format.MessageToDict(part)
    for key, struct, text in (
        ("functionCall", "args", "argsJson"),
        ("functionResponse", "response", "responseJson"),
    ):
        if key in out and text in out[key]:
            out[key][struct] = json.loads(out[key].pop(text))
    return out


async def run_chatd(chatd: Chatd, scenario: Scenario) -> list[Json]:
    """Plays the scenario through chatd; returns the history it stored, as Gemini JSON."""
    await chatd.stub.CreateSession(
        pb.CreateSessionRequest(
            session_id="parity",
            session=session_pb2.Session(
                model=scenario.model,
                system_instruction=scenario.system_instruction,
                generation_config=_chatd_config(scenario.config),
                function_declarations=[
                    session_pb2.FunctionDeclaration(
                        name=f["name"],
                        description=f["description"],
                        parameters=json_format.ParseDict(f["parameters"], struct_pb2.Struct()),
                    )
                    for f in scenario.functions
                ],
            ),
        )
    )
    pending: Sequence[content_pb2.FunctionCall] = ()
    for turn in scenario.turns:
        fields: dict[str, Any] = {"session_id": "parity"}
        if turn.results:
            assert len(turn.results) == len(pending), "one result per pending call"
            fields["tool_results"] = [
                pb.ToolResult(call_id=call.id, result=_value(result))
                for call, result in zip(pending, turn.results, strict=True)
            ]
        elif isinstance(turn.user, str):
            fields["text"] = turn.user
        else:
            fields["parts"] = [_chatd_part(p) for p in turn.user or ()]
        if turn.config is not None:
            fields["generation_config"] = _chatd_config(turn.config)
        if turn.stream:
            events = [e async for e in chatd.stub.StreamReply(pb.StreamReplyRequest(**fields))]
            reply = events[-1].reply
        else:
            reply = (await chatd.stub.SendMessage(pb.SendMessageRequest(**fields))).reply
        pending = list(reply.pending_tool_calls)
    return [
        {
            "role": "user" if m.role == content_pb2.ROLE_USER else "model",
            "parts": [_history_part(p) for p in m.parts],
        }
        for m in await all_messages(chatd.stub, "parity")
    ]


# --------------------------------------------------------------------------- the SDK's run


def _sdk_config(
    config: Mapping[str, Any], instruction: str = "", functions: Sequence[Json] = ()
) -> types.GenerateContentConfig:
    fields: dict[str, Any] = dict(config)
    if instruction:
        fields["system_instruction"] = instruction
    if functions:
        fields["tools"] = [
            types.Tool(
                function_declarations=[
                    types.FunctionDeclaration(
                        name=f["name"],
                        description=f["description"],
                        parameters_json_schema=f["parameters"],
                    )
                    for f in functions
                ]
            )
        ]
    return types.GenerateContentConfig(
        **fields,
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )


def _sdk_pending(chat: Any) -> list[types.FunctionCall]:
    """The function calls of the chat's last model turn (all its streamed entries)."""
    history = chat.get_history(curated=True)
    trailing: list[types.Content] = []
    for content in reversed(history):
        if content.role != "model":
            break
        trailing.insert(0, content)
    return [p.function_call for c in trailing for p in c.parts or () if p.function_call]


def _sdk_response(call: types.FunctionCall, result: Any) -> types.Part:
    part = types.Part.from_function_response(name=call.name or "", response={"result": result})
    assert part.function_response is not None
    part.function_response.id = call.id  # the API pairs a response with its call by id
    return part


async def run_sdk(fake: FakeGemini, scenario: Scenario) -> list[Json]:
    """Plays the scenario through the SDK's chat; returns its curated history (what it
    sends next), as Gemini JSON."""
    client = genai.Client(
        api_key="test-key", http_options=types.HttpOptions(base_url=fake.base_url)
    )
    try:
        chat = client.aio.chats.create(
            model=scenario.model,
            config=_sdk_config(scenario.config, scenario.system_instruction, scenario.functions),
        )
        for turn in scenario.turns:
            message: Any
            if turn.results:
                calls = _sdk_pending(chat)
                assert len(turn.results) == len(calls), "one result per pending call"
                message = [_sdk_response(c, r) for c, r in zip(calls, turn.results, strict=True)]
            else:
                message = turn.user
            # The SDK's chat takes a per-call config instead of its own, whole.
            config = _sdk_config(turn.config) if turn.config is not None else None
            if turn.stream:
                stream = await chat.send_message_stream(message, config=config)
                async for _chunk in stream:
                    pass
            else:
                await chat.send_message(message, config=config)
        return [
            c.model_dump(mode="json", by_alias=True, exclude_none=True)
            for c in chat.get_history(curated=True)
        ]
    finally:
        await client.aio.aclose()


# --------------------------------------------------------------------------- normalization

# Values that are the caller's own JSON: their keys are data, never re-cased.
_OPAQUE = {"args", "response", "parametersJsonSchema", "responseJsonSchema", "parameters"}
_BYTES = {"thoughtSignature", "data"}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.capitalize() for word in rest)


def normalized(value: Any, key: str = "") -> Any:
    """`value` with camelCase keys and base64 in the standard alphabet."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            name = _camel(k)
            if name in _OPAQUE:
                out[name] = v
            elif name in _BYTES and isinstance(v, str):
                out[name] = base64.b64encode(b64decode(v)).decode()
            else:
                out[name] = normalized(v, name)
        return out
    if isinstance(value, list):
        return [normalized(v, key) for v in value]
    return value


def _joined(first: Json, second: Json) -> Json | None:
    """Two adjacent parts as one, when chatd joins them: text of the same kind (thought or
    not), the first not yet closed by a signature; a signature stays with its text."""
    if (
        "text" in first
        and "text" in second
        and "thoughtSignature" not in first
        and bool(first.get("thought")) == bool(second.get("thought"))
    ):
        return {**first, **second, "text": first["text"] + second["text"]}
    return None


def merged_model_runs(contents: list[Json]) -> list[Json]:
    """Consecutive model contents as one, the way chatd merges a streamed reply: parts in
    order, the text on either side of each boundary joined when chatd joins it."""
    out: list[Json] = []
    for content in contents:
        parts = [dict(p) for p in content["parts"]]
        if not (out and content["role"] == "model" and out[-1]["role"] == "model"):
            out.append({"role": content["role"], "parts": parts})
            continue
        before = out[-1]["parts"]
        if before and parts and (joined := _joined(before[-1], parts[0])) is not None:
            before[-1] = joined
            parts = parts[1:]
        before.extend(parts)
    return out


def joined_text_parts(contents: list[Json]) -> list[Json]:
    """Each model content with its adjacent text parts joined the way chatd joins them."""
    out: list[Json] = []
    for content in contents:
        parts: list[Json] = []
        for part in content["parts"]:
            joined = _joined(parts[-1], part) if parts and content["role"] == "model" else None
            if joined is None:
                parts.append(dict(part))
            else:
                parts[-1] = joined
        out.append({**content, "parts": parts})
    return out


_INVENTED = re.compile(r"^call-\d+-\d+$")


def without_invented_ids(contents: list[Json]) -> list[Json]:
    """chatd's contents without the ids it gave calls that had none, each checked to name
    one call and the response answering it."""
    calls: dict[str, str] = {}
    out = []
    for content in contents:
        parts = []
        for part in content["parts"]:
            part = dict(part)
            for kind in ("functionCall", "functionResponse"):
                if kind in part and _INVENTED.match(part[kind].get("id", "")):
                    inner = dict(part[kind])
                    invented = inner.pop("id")
                    if kind == "functionCall":
                        assert invented not in calls, f"id {invented} given twice"
                        calls[invented] = inner["name"]
                    else:
                        assert calls.get(invented) == inner["name"], f"{invented} answers no call"
                    part[kind] = inner
            parts.append(part)
        out.append({**content, "parts": parts})
    return out


# The request fields besides contents that both must send alike.
_SETTINGS = ("systemInstruction", "tools", "toolConfig", "safetySettings", "generationConfig")


def _settings(request: RecordedRequest) -> Json:
    body = normalized(request.body)
    return {k: body[k] for k in _SETTINGS if k in body}


def reconciled(
    scenario: Scenario, ours: list[Json], theirs: list[Json], forgotten: Sequence[int]
) -> tuple[list[Json], list[Json], set[str]]:
    """Both sides' contents with the scenario's named differences taken out, and the names
    of those that changed anything. `forgotten`: where each turn the SDK forgot starts in
    chatd's contents."""
    seen: set[str] = set()

    def apply(name: str, side: list[Json], change: Any) -> list[Json]:
        if name not in scenario.differences:
            return side
        changed: list[Json] = change(side)
        if changed != side:
            seen.add(name)
        return changed

    ours, theirs = normalized(ours), normalized(theirs)
    theirs = apply(MERGED_STREAM_CHUNKS, theirs, merged_model_runs)
    theirs = apply(JOINED_TEXT_PARTS, theirs, joined_text_parts)
    ours = apply(INVENTED_CALL_IDS, ours, without_invented_ids)
    for start in sorted(forgotten, reverse=True):
        # The user's message and chatd's one model content for it.
        ours = apply(FORGOTTEN_TURN, ours, lambda c, at=start: c[:at] + c[at + 2 :])
    return ours, theirs, seen


def compare(
    scenario: Scenario, chatd: list[RecordedRequest], sdk: list[RecordedRequest]
) -> tuple[set[str], list[int]]:
    """Asserts the requests match turn by turn; returns the named differences they showed
    and where the turns the SDK forgot start in chatd's contents."""
    seen: set[str] = set()
    forgotten: list[int] = []
    assert len(chatd) == len(sdk) == len(scenario.turns), "one model call per turn"
    baseline = _settings(chatd[0]) if scenario.turns[0].config is None else None
    for index, (turn, ours, theirs) in enumerate(zip(scenario.turns, chatd, sdk, strict=True)):
        where = f"{scenario.id} turn {index + 1}"
        assert ours.model == theirs.model == scenario.model, where
        ours_contents, theirs_contents, differences = reconciled(
            scenario, ours.contents, theirs.contents, forgotten
        )
        seen |= differences
        assert ours_contents == theirs_contents, where
        if turn.sdk_forgets:
            forgotten.append(len(ours.contents) - 1)

        ours_settings, theirs_settings = _settings(ours), _settings(theirs)
        if turn.config is None:
            assert ours_settings == theirs_settings, where
            if baseline is not None:
                assert ours_settings == baseline, f"{where}: the session's settings"
            continue
        assert MERGED_TURN_CONFIG in scenario.differences, f"{where}: a turn config differs"
        seen.add(MERGED_TURN_CONFIG)
        # The SDK's chat sends the per-call config and nothing of its own.
        assert theirs_settings == {"generationConfig": normalized(dict(turn.config))}, where
        # chatd merges it over the session's and keeps the instruction and tools.
        assert ours_settings["generationConfig"] == turn.merged_config, where
        if baseline is not None:
            assert {k: v for k, v in ours_settings.items() if k != "generationConfig"} == {
                k: v for k, v in baseline.items() if k != "generationConfig"
            }, where
    return seen, forgotten


# --------------------------------------------------------------------------- the test


def _play(fake: FakeGemini, scenario: Scenario) -> None:
    fake.reset()
    for turn in scenario.turns:
        for reply in turn.replies:
            fake.push(reply)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
async def test_chatd_sends_what_the_sdk_chat_sends(
    gemini_chatd: Chatd, fake_gemini: FakeGemini, scenario: Scenario
) -> None:
    assert scenario.differences <= set(DIFFERENCES)
    _play(fake_gemini, scenario)
    ours_history = await run_chatd(gemini_chatd, scenario)
    ours = fake_gemini.requests

    _play(fake_gemini, scenario)
    theirs_history = await run_sdk(fake_gemini, scenario)
    theirs = fake_gemini.requests

    for request in ours + theirs:
        assert request.rejection is None, request.rejection
    seen, forgotten = compare(scenario, ours, theirs)
    assert seen == scenario.differences

    # What each keeps for the next turn: chatd's stored history, the SDK's curated one.
    ours_history, theirs_history, kept = reconciled(
        scenario, ours_history, theirs_history, forgotten
    )
    assert ours_history == theirs_history
    if scenario.kept is not None:
        assert len(ours_history) == scenario.kept
    assert kept <= scenario.differences


# --------------------------------------------------------------------------- the checks' checks


def test_merging_keeps_signatures_on_their_parts() -> None:
    streamed: list[dict[str, Any]] = [
        {"role": "user", "parts": [{"text": "q"}]},
        {"role": "model", "parts": [{"text": "Thin", "thought": True}]},
        {"role": "model", "parts": [{"text": "king", "thought": True, "thoughtSignature": "QQ=="}]},
        {"role": "model", "parts": [{"text": "An"}]},
        {"role": "model", "parts": [{"text": "swer"}, {"functionCall": {"name": "f"}}]},
    ]
    assert merged_model_runs(streamed) == [
        {"role": "user", "parts": [{"text": "q"}]},
        {
            "role": "model",
            "parts": [
                {"text": "Thinking", "thought": True, "thoughtSignature": "QQ=="},
                {"text": "Answer"},
                {"functionCall": {"name": "f"}},
            ],
        },
    ]


def test_invented_ids_must_pair_a_call_with_its_response() -> None:
    call = {"role": "model", "parts": [{"functionCall": {"id": "call-1-0", "name": "f"}}]}
    wrong = {"role": "user", "parts": [{"functionResponse": {"id": "call-1-0", "name": "g"}}]}
    with pytest.raises(AssertionError):
        without_invented_ids([call, wrong])


def test_normalization_is_only_casing_and_base64_alphabet() -> None:
    sdk_style = {"thought_signature": "-_8=", "function_call": {"args": {"snake_key": 1}}}
    assert normalized(sdk_style) == {
        "thoughtSignature": "+/8=",
        "functionCall": {"args": {"snake_key": 1}},
    }
