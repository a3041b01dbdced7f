"""chatd's own encoding of Gemini request bodies: domain values straight to REST JSON bytes.

The body of models.generateContent / streamGenerateContent
(https://ai.google.dev/api/generate-content#request-body; Vertex AI's
GenerateContentRequest: https://cloud.google.com/vertex-ai/generative-ai/docs/reference/rest/
v1/projects.locations.endpoints/generateContent) and of countTokens
(https://ai.google.dev/api/tokens#method:-models.counttokens), in camelCase as documented,
holding exactly the values google-genai sends for the same request
(tests/test_wire_request_oracle.py holds the two side by side).

A history message's Content is encoded once and kept as long as the Message object lives
(a memo keyed by identity, dropped by a weakref callback when the message is collected):
the store's cache hands the same Message objects to every turn, so a turn costs a dict
lookup per old message and the encoding of the new ones. Parts chatd models are written
directly; a part kept as Gemini JSON (Part.gemini_part) is read through google-genai's
types.Part, as the SDK would read it, once per message and variant.
"""

from __future__ import annotations

import base64
import enum
import json
import re
import struct
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

import orjson
import pydantic
from google.genai import types

from server.sessions import errors
from server.sessions.model import (
    Blob,
    BuiltinTools,
    FileData,
    FunctionResponsePart,
    GenerationConfig,
    Message,
    Part,
    Role,
)
from server.sessions.ports import ModelRequest

# --------------------------------------------------------------------- the history's rules

# The dummy signature Gemini documents for function calls it did not sign itself ("Can I
# transfer a conversation from another model...?": https://ai.google.dev/gemini-api/docs/
# thought-signatures). These are the bytes whose URL-safe base64 (what the SDK sends) is the
# documented string.
DUMMY_SIGNATURE = base64.urlsafe_b64decode("skip_thought_signature_validator")
# Models that refuse an unsigned function call of the current turn (same source).
_SIGNED_CALL_MODELS = re.compile(r"(?:models/)?gemini-3")
_SIGNATURE_KEYS = ("thoughtSignature", "thought_signature")
_PART_MEDIA_RESOLUTION_KEYS = frozenset({"mediaResolution", "media_resolution"})


def _without_signature(part: Part) -> Part | None:
    """`part` without its thought signature; None when nothing else was in it."""
    if part.signature_only or (part.text == "" and part.thought_signature):
        return None
    if part.gemini_part is not None:
        rest = {k: v for k, v in part.gemini_part.items() if k not in _SIGNATURE_KEYS}
        # Empty text went only with its signature: Gemini refuses it unsigned.
        if not rest or rest.get("text") == "":
            return None
        return replace(part, gemini_part=rest)
    return replace(part, thought_signature=b"")


def _strip_signatures(message: Message) -> Message:
    parts = tuple(p for p in map(_without_signature, message.parts) if p is not None)
    return replace(message, parts=parts)


def _current_turn_start(messages: Sequence[Message]) -> int:
    """Index of the first message of the turn in progress: after the last user message that
    is not only function responses (found scanning back from the end)."""
    for index in range(len(messages) - 1, -1, -1):
        m = messages[index]
        if m.role is Role.USER and not all(p.function_response is not None for p in m.parts):
            return index + 1
    return 0


def current_turn_start(messages: Sequence[Message]) -> int:
    """Index of the first message after the current turn's user message (0: there is
    none): the messages before that user message are what the next turns send again."""
    return _current_turn_start(messages)


def _signed_first_call(message: Message) -> Message:
    """`message` with the documented dummy signature on its first function call, if that
    call has no signature of its own (Gemini 3 refuses it unsigned in the current turn)."""
    for index, part in enumerate(message.parts):
        if part.function_call is not None:
            if part.thought_signature:
                return message
            parts = list(message.parts)
            parts[index] = replace(part, thought_signature=DUMMY_SIGNATURE)
            return replace(message, parts=tuple(parts))
    return message


def _by_other_model(message: Message, model: str) -> bool:
    return message.role is Role.MODEL and bool(message.model) and message.model != model


def _current_turn_changes(messages: Sequence[Message], model: str) -> dict[int, Message]:
    """The current turn's model messages that go to `model` changed (a dummy signature on
    their first call), by index; empty unless `model` is a Gemini 3 model."""
    if not _SIGNED_CALL_MODELS.match(model):
        return {}
    changed: dict[int, Message] = {}
    for index in range(_current_turn_start(messages), len(messages)):
        m = messages[index]
        if m.role is Role.MODEL:
            base = _entry(m).unsigned(m) if _by_other_model(m, model) else m
            signed = _signed_first_call(base)
            if signed is not base:
                changed[index] = signed
    return changed


def wire_messages(messages: Sequence[Message], model: str) -> list[Message]:
    """The history as it goes to `model`.

    Thought signatures belong to the model that made them (reports say they do not carry
    across models), so a model message written by another model goes without them. On
    Gemini 3, a function call of the current turn must carry a signature
    (https://ai.google.dev/gemini-api/docs/thought-signatures); one that has none (history
    appended or written by another model) gets the dummy signature that page documents.
    Messages left with no parts are left out.
    """
    changed = _current_turn_changes(messages, model)
    out = []
    for index, m in enumerate(messages):
        if index in changed:
            m = changed[index]
        elif _by_other_model(m, model):
            m = _entry(m).unsigned(m)
        if m.parts:
            out.append(m)
    return out


def needs_v1beta(messages: Sequence[Message]) -> bool:
    """Per-part media resolution is served by the Gemini API's v1beta, not by v1
    (https://ai.google.dev/gemini-api/docs/media-resolution), a part kept as Gemini JSON's
    included. Each message is looked at once in its life (see the memo below)."""
    memo = _MEMO
    for m in messages:
        entry = memo.get(id(m))
        if entry is None or entry() is not m:
            entry = _entry(m)
        if entry.media_resolution:
            return True
    return False


def _as_float32(value: float) -> bytes:
    return struct.pack("<f", value)


def shortest_float32(value: float) -> float:
    """The shortest decimal with the same float32 as `value`.

    chatd's API carries these settings as protobuf floats, so a caller's 0.7 arrives as
    0.699999988079071; Gemini is sent 0.7, what the caller wrote (and what google-genai
    itself sends for 0.7)."""
    single = _as_float32(value)
    for digits in range(1, 10):
        shortest = float(f"{value:.{digits}g}")
        if _as_float32(shortest) == single:
            return shortest
    return value


# Google Cloud label rules (https://cloud.google.com/resource-manager/docs/labels-overview):
# keys start with a lowercase letter; keys and values hold lowercase letters, digits, _ and -.
_CLOUD_LABEL_KEY = re.compile(r"[a-z][a-z0-9_\-]{0,62}")
_CLOUD_LABEL_VALUE = re.compile(r"[a-z0-9_\-]{0,63}")


def upstream_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The labels Vertex AI accepts as request labels; the others stay chatd's own."""
    return {
        k: v
        for k, v in labels.items()
        if _CLOUD_LABEL_KEY.fullmatch(k) and _CLOUD_LABEL_VALUE.fullmatch(v)
    }


# --------------------------------------------------------------------- JSON building blocks


def _b64(data: bytes) -> str:
    """Bytes as google-genai sends them: URL-safe base64 with padding (both alphabets are
    accepted by the API: https://protobuf.dev/programming-guides/json/)."""
    return base64.urlsafe_b64encode(data).decode("ascii")


def _plain(value: object) -> object:
    # JSON objects reach the provider as any Mapping (e.g. MappingProxyType).
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(value: object) -> bytes:
    try:
        return orjson.dumps(value, default=_plain)
    except orjson.JSONEncodeError:
        # What orjson refuses and the standard library writes: integers beyond 64 bits,
        # strings with lone surrogates (escaped).
        return json.dumps(value, default=_plain, separators=(",", ":")).encode()


def _enum_names(kind: type[enum.Enum]) -> Callable[[str], str]:
    """google-genai's reading of an enum field (CaseInSensitiveEnum): a value it knows as is,
    a member name in upper or lower case as that member's value, anything else unchanged."""
    values = {str(m.value) for m in kind}
    names = {name: str(m.value) for name, m in kind.__members__.items()}

    def wire(value: str) -> str:
        if value in values:
            return value
        return names.get(value.upper()) or names.get(value.lower()) or value

    return wire


_LANGUAGE = _enum_names(types.Language)
_OUTCOME = _enum_names(types.Outcome)
_TOOL_TYPE = _enum_names(types.ToolType)
_PART_MEDIA_RESOLUTION = _enum_names(types.PartMediaResolutionLevel)
_THINKING_LEVEL = _enum_names(types.ThinkingLevel)
_MEDIA_RESOLUTION = _enum_names(types.MediaResolution)
_SERVICE_TIER = _enum_names(types.ServiceTier)
_HARM_CATEGORY = _enum_names(types.HarmCategory)
_HARM_THRESHOLD = _enum_names(types.HarmBlockThreshold)
_CALLING_MODE = _enum_names(types.FunctionCallingConfigMode)


def _not_on_vertex(field: str) -> errors.UpstreamRejected:
    """A part field only the Gemini Developer API takes (google-genai refuses to send it
    to Vertex AI)."""
    return errors.UpstreamRejected(
        f"the Gemini SDK refused to send this request: {field} parameter is only supported "
        "in Gemini Developer API mode, not on Vertex AI",
        reason="INVALID_GEMINI_PART",
    )


# --------------------------------------------------------------------- parts


def _media(blob_or_file: Blob | FileData, vertex: bool) -> dict[str, Any]:
    """A Blob or FileData (also a function response's): Vertex AI's carry a display name,
    the Gemini API's do not (https://ai.google.dev/api/caching#Blob)."""
    out: dict[str, Any] = {"mimeType": blob_or_file.mime_type}
    if isinstance(blob_or_file, Blob):
        out["data"] = _b64(blob_or_file.data)
    else:
        out["fileUri"] = blob_or_file.file_uri
    if vertex and blob_or_file.display_name:
        out["displayName"] = blob_or_file.display_name
    return out


def _response_part(part: FunctionResponsePart, vertex: bool) -> dict[str, Any]:
    if part.inline_data is not None:
        return {"inlineData": _media(part.inline_data, vertex)}
    if part.file_data is not None:
        return {"fileData": _media(part.file_data, vertex)}
    return {}


def _with_id(value: dict[str, Any], id_: str) -> dict[str, Any]:
    if id_:
        value["id"] = id_
    return value


def _typed_part(part: Part, vertex: bool) -> dict[str, Any]:
    """A part chatd models, as https://ai.google.dev/api/caching#Part lays it out."""
    out: dict[str, Any] = {}
    if part.media_resolution:
        out["mediaResolution"] = {"level": _PART_MEDIA_RESOLUTION(part.media_resolution)}
    if part.text is not None:
        out["text"] = part.text
    elif part.inline_data is not None:
        out["inlineData"] = _media(part.inline_data, vertex)
    elif part.file_data is not None:
        out["fileData"] = _media(part.file_data, vertex)
    elif (call := part.function_call) is not None:
        out["functionCall"] = _with_id({"name": call.name, "args": call.args}, call.id)
    elif (response := part.function_response) is not None:
        value: dict[str, Any] = {"name": response.name, "response": response.response}
        if response.parts:
            value["parts"] = [_response_part(p, vertex) for p in response.parts]
        out["functionResponse"] = _with_id(value, response.id)
    elif (code := part.executable_code) is not None:
        out["executableCode"] = _with_id(
            {"language": _LANGUAGE(code.language), "code": code.code}, code.id
        )
    elif (result := part.code_execution_result) is not None:
        out["codeExecutionResult"] = _with_id(
            {"outcome": _OUTCOME(result.outcome), "output": result.output}, result.id
        )
    elif (tool := part.tool_call) is not None:
        if vertex:
            raise _not_on_vertex("tool_call")
        out["toolCall"] = _with_id(
            {"toolType": _TOOL_TYPE(tool.tool_type), "args": tool.args}, tool.id
        )
    elif (answer := part.tool_response) is not None:
        if vertex:
            raise _not_on_vertex("tool_response")
        out["toolResponse"] = _with_id(
            {"toolType": _TOOL_TYPE(answer.tool_type), "response": answer.response}, answer.id
        )
    if part.thought:
        out["thought"] = True
    if part.thought_signature:
        out["thoughtSignature"] = _b64(part.thought_signature)
    return out


# Part fields google-genai refuses to send to Vertex AI (models._Part_to_vertex).
_GEMINI_API_ONLY = (
    ("toolCall", "tool_call"),
    ("toolResponse", "tool_response"),
    ("partMetadata", "part_metadata"),
)


def _kept_part(kept: Mapping[str, Any], vertex: bool) -> dict[str, Any]:
    """A part kept as Gemini JSON, as google-genai reads and sends it: read as a
    types.Part (the same refusals, base64 in either alphabet, enum names in either case),
    without how a function call was streamed (partialArgs, willContinue: a request's
    FunctionCall holds only its id, name and args), and on the Gemini API without the
    display names its Blob and FileData do not have.

    Raises UpstreamRejected (INVALID_GEMINI_PART) for what google-genai will not read or
    will not send to this API."""
    try:
        part = types.Part.model_validate(kept)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        raise errors.UpstreamRejected(
            f"a gemini_part in the history is not a part the Gemini SDK accepts "
            f"({where}: {first.get('msg')})",
            reason="INVALID_GEMINI_PART",
        ) from exc
    out: dict[str, Any] = part.model_dump(mode="json", by_alias=True, exclude_none=True)
    if (call := out.get("functionCall")) is not None:
        call.pop("partialArgs", None)
        call.pop("willContinue", None)
    if vertex:
        for key, field in _GEMINI_API_ONLY:
            if key in out:
                raise _not_on_vertex(field)
        if (response := out.get("functionResponse")) is not None:
            if "willContinue" in response:
                raise _not_on_vertex("function_response.will_continue")
            for item in response.get("parts", ()):
                if "mediaProcessing" in item:
                    raise _not_on_vertex("function_response.parts.media_processing")
        return out
    for key in ("inlineData", "fileData"):
        if key in out:
            out[key].pop("displayName", None)
    return out


def _part(part: Part, vertex: bool) -> dict[str, Any]:
    if part.gemini_part is not None:
        return _kept_part(part.gemini_part, vertex)
    return _typed_part(part, vertex)


def _content(message: Message, vertex: bool) -> bytes:
    encoded = _dumps(
        {"role": message.role.value, "parts": [_part(p, vertex) for p in message.parts]}
    )
    # Kept in the memo for as long as the message lives: orjson (3.13) returns its output in
    # a buffer of at least 4 KB, so a 250-byte message would hold 4 KB; the copy holds its
    # length (bench/README.md, "The gemini path": RSS per paced stream).
    return memoryview(encoded).tobytes()


# --------------------------------------------------------------------- the memo


def _has_media_resolution(message: Message) -> bool:
    return any(
        p.media_resolution
        or (p.gemini_part is not None and not _PART_MEDIA_RESOLUTION_KEYS.isdisjoint(p.gemini_part))
        for p in message.parts
    )


# An encoding of a message that goes as nothing (no parts left).
_NOTHING: Final = b""


class _Entry(weakref.ref[Message]):
    """What chatd keeps about one live Message, as the weak reference to it: its encoded
    Content per variant (Gemini API or Vertex AI, signed or with signatures dropped), its
    unsigned copy, and whether it asks for per-part media resolution.

    One object a message (not an entry beside a weakref and a callback closure): it lives
    as long as its message, for every message of every cached session, and a full
    garbage collection walks each of them."""

    __slots__ = ("_unsigned", "encoded", "key", "media_resolution")

    def __new__(cls, message: Message) -> _Entry:
        return super().__new__(cls, message, _forget)

    def __init__(self, message: Message) -> None:
        self.key = id(message)
        # Index: 2 * vertex + unsigned; None until encoded.
        self.encoded: list[bytes | None] = [None, None, None, None]
        self.media_resolution = _has_media_resolution(message)
        self._unsigned: Message | None = None

    def unsigned(self, message: Message) -> Message:
        if self._unsigned is None:
            self._unsigned = _strip_signatures(message)
        return self._unsigned


_MEMO: dict[int, _Entry] = {}


def _forget(entry: weakref.ref[Message]) -> None:
    """The weakref callback of a collected message: its entry goes (CPython calls it before
    the object's memory, and so its id, can be reused)."""
    assert isinstance(entry, _Entry)
    if _MEMO.get(entry.key) is entry:
        _MEMO.pop(entry.key, None)


def _entry(message: Message) -> _Entry:
    key = id(message)
    entry = _MEMO.get(key)
    if entry is None or entry() is not message:
        entry = _MEMO[key] = _Entry(message)
    return entry


def memo_size() -> int:
    """How many live messages have an entry in the encoding memo (for tests and stats)."""
    return len(_MEMO)


def _encoded(message: Message, vertex: bool, unsigned: bool) -> bytes:
    entry = _entry(message)
    variant = 2 * vertex + unsigned
    encoded = entry.encoded[variant]
    if encoded is None:
        sent = entry.unsigned(message) if unsigned else message
        encoded = _content(sent, vertex) if sent.parts else _NOTHING
        entry.encoded[variant] = encoded
    return encoded


# --------------------------------------------------------------------- the request


def _cached_content_name(name: str, vertex: bool, project: str | None, location: str | None) -> str:
    """The cache's resource name as google-genai completes it (_transformers._resource_name)."""
    short = not name.startswith("cachedContents/") and "/" not in name
    if vertex:
        if name.startswith("projects/"):
            return name
        if name.startswith("locations/"):
            return f"projects/{project}/{name}"
        if name.startswith("cachedContents/"):
            return f"projects/{project}/locations/{location}/{name}"
        if short:
            return f"projects/{project}/locations/{location}/cachedContents/{name}"
        return name
    return f"cachedContents/{name}" if short else name


def _generation_config(config: GenerationConfig) -> dict[str, Any]:
    """https://ai.google.dev/api/generate-content#generationconfig"""
    out: dict[str, Any] = {}
    if config.temperature is not None:
        out["temperature"] = shortest_float32(config.temperature)
    if config.top_p is not None:
        out["topP"] = shortest_float32(config.top_p)
    if config.top_k is not None:
        out["topK"] = config.top_k
    if config.max_output_tokens is not None:
        out["maxOutputTokens"] = config.max_output_tokens
    if config.stop_sequences:
        out["stopSequences"] = list(config.stop_sequences)
    if config.presence_penalty is not None:
        out["presencePenalty"] = shortest_float32(config.presence_penalty)
    if config.frequency_penalty is not None:
        out["frequencyPenalty"] = shortest_float32(config.frequency_penalty)
    if config.seed is not None:
        out["seed"] = config.seed
    if config.response_mime_type is not None:
        out["responseMimeType"] = config.response_mime_type
    if config.response_json_schema is not None:
        out["responseJsonSchema"] = config.response_json_schema
    if config.media_resolution is not None:
        out["mediaResolution"] = _MEDIA_RESOLUTION(config.media_resolution)
    if (t := config.thinking) is not None:
        thinking: dict[str, Any] = {}
        if t.include_thoughts is not None:
            thinking["includeThoughts"] = t.include_thoughts
        if t.thinking_budget is not None:
            thinking["thinkingBudget"] = t.thinking_budget
        if t.thinking_level is not None:
            thinking["thinkingLevel"] = _THINKING_LEVEL(t.thinking_level)
        out["thinkingConfig"] = thinking
    return out


def _builtin_tools(tools: BuiltinTools) -> list[dict[str, Any]]:
    """Gemini's own tools, one Tool each (https://ai.google.dev/api/caching#Tool)."""
    out: list[dict[str, Any]] = []
    if tools.google_search:
        out.append({"googleSearch": {}})
    if tools.code_execution:
        out.append({"codeExecution": {}})
    if tools.url_context:
        out.append({"urlContext": {}})
    if tools.google_maps:
        out.append({"googleMaps": {"enableWidget": True} if tools.google_maps_widget else {}})
    return out


def _function_tool(request: ModelRequest) -> dict[str, Any]:
    declarations = []
    for d in request.function_declarations:
        declaration: dict[str, Any] = {"name": d.name}
        if d.description:
            declaration["description"] = d.description
        if d.parameters is not None:
            # The JSON Schema as given, not the OpenAPI subset of `parameters`
            # (https://ai.google.dev/api/caching#FunctionDeclaration).
            declaration["parametersJsonSchema"] = d.parameters
        declarations.append(declaration)
    return {"functionDeclarations": declarations}


def _tool_config(mode: str, names: Sequence[str] = ()) -> dict[str, Any]:
    calling: dict[str, Any] = {"mode": _CALLING_MODE(mode)}
    if names:
        calling["allowedFunctionNames"] = list(names)
    return {"functionCallingConfig": calling}


# What a cached content holds besides its contents, and a generate request naming it must
# not set: "CachedContent can not be used with GenerateContent request setting
# system_instruction, tools or tool_config" (HTTP 400; reported in
# https://github.com/googleapis/python-genai/issues/348 and
# https://github.com/googleapis/python-genai/issues/1119).
CACHED_FIELDS = ("systemInstruction", "tools", "toolConfig")


@dataclass(frozen=True, slots=True)
class GenerateParts:
    """A generate request's body in parts.

    `contents` are the encoded Contents, of which the first `prefix` come before the
    current turn's user message; `header` holds the systemInstruction, tools and toolConfig
    the request sends (CACHED_FIELDS, those present); `rest` every other field
    (generationConfig, safetySettings, labels, serviceTier, a caller's cachedContent)."""

    contents: list[bytes]
    prefix: int
    header: dict[str, Any]
    rest: dict[str, Any]
    vertex: bool = False
    project: str | None = None
    location: str | None = None

    def body(self, cached_content: str | None = None, cached: int = 0) -> bytes:
        """The generate body: whole, or, with `cached_content` (a cache's resource name,
        completed as google-genai completes it), naming that cache instead of sending its
        first `cached` contents and the header it holds."""
        if cached_content is None:
            rest = _dumps({**self.header, **self.rest})
            contents = self.contents
        else:
            name = _cached_content_name(cached_content, self.vertex, self.project, self.location)
            rest = _dumps({**self.rest, "cachedContent": name})
            contents = self.contents[cached:]
        return b'{"contents":[' + b",".join(contents) + b"]," + rest[1:]

    def header_bytes(self) -> bytes:
        """The header as JSON bytes: equal for two requests that send the same one."""
        return _dumps(self.header)

    def cache_body(self, model: str, count: int, ttl: str, display_name: str) -> bytes:
        """JSON body of cachedContents.create caching the header and the first `count`
        contents for `model` (its resource name: "models/NAME" on the Gemini API), for
        `ttl` (a protobuf Duration in JSON, "3600s"), named `display_name` (at most 128
        characters): {"model", "contents", "systemInstruction"?, "tools"?, "toolConfig"?,
        "ttl", "displayName"} (https://ai.google.dev/api/caching#CachedContent)."""
        head = b'{"model":' + _dumps(model) + b',"contents":['
        tail = _dumps({**self.header, "ttl": ttl, "displayName": display_name})
        return head + b",".join(self.contents[:count]) + b"]," + tail[1:]


class RequestEncoder:
    """Request bodies for one Gemini backend: the Gemini Developer API (`vertex` False) or
    Vertex AI. Request labels go upstream only on Vertex AI with `forward_labels`.

    `project` and `location` complete a cache name given as "cachedContents/ID" on Vertex AI
    as google-genai does (its client's project and location).

    Every method raises errors.UpstreamRejected for a request google-genai would refuse to
    send: reason INVALID_GEMINI_PART for a part it cannot read or cannot send to this API,
    or for a history with nothing to send.
    """

    def __init__(
        self,
        *,
        vertex: bool,
        forward_labels: bool,
        project: str | None = None,
        location: str | None = None,
    ) -> None:
        self._vertex = vertex
        self._forward_labels = forward_labels
        self._project = project
        self._location = location

    def contents(self, request: ModelRequest) -> list[bytes]:
        """Each Content of the request's history as JSON bytes
        ({"role": "user"|"model", "parts": [...]}, https://ai.google.dev/api/caching#Content),
        as it goes to request.model (see wire_messages)."""
        return self.contents_split(request)[0]

    def contents_split(self, request: ModelRequest) -> tuple[list[bytes], int]:
        """`contents(request)`, and how many of them come before the current turn's user
        message: the part of what is sent that the next turns send again unchanged."""
        messages = request.contents
        model = request.model
        vertex = self._vertex
        changed = _current_turn_changes(messages, model)
        memo = _MEMO
        signed_variant = 2 * vertex
        model_role = Role.MODEL
        # The current turn's user message (-1: none).
        turn = _current_turn_start(messages) - 1
        prefix = 0
        out: list[bytes] = []
        for index, m in enumerate(messages):
            if index == turn:
                prefix = len(out)
            if changed and index in changed:
                fresh = changed[index]
                if fresh.parts:
                    out.append(_content(fresh, vertex))
                continue
            # The memo hit inlined: this loop is the per-message cost of every turn.
            variant = signed_variant
            if m.role is model_role and m.model and m.model != model:
                variant += 1
            entry = memo.get(id(m))
            if entry is not None and entry() is m:
                encoded = entry.encoded[variant]
                if encoded is None:
                    encoded = _encoded(m, vertex, bool(variant & 1))
            else:
                encoded = _encoded(m, vertex, bool(variant & 1))
            if encoded:
                out.append(encoded)
        if not out:
            raise errors.UpstreamRejected(
                "the Gemini SDK refused to send this request: contents are required.",
                reason="INVALID_GEMINI_PART",
            )
        return out, prefix

    def _rest(self, request: ModelRequest, *, generate: bool) -> dict[str, Any]:
        """Everything but the contents: of a generate body (`generate`), or of Vertex AI's
        countTokens body (the system instruction and tools)."""
        config = request.generation_config
        out: dict[str, Any] = {}
        # A cached content holds the system instruction and tools itself; Gemini refuses them
        # beside it (validation keeps sessions from having both).
        cached = config.cached_content is not None
        if request.system_instruction and not cached:
            out["systemInstruction"] = {
                "role": "user",
                "parts": [{"text": request.system_instruction}],
            }
        tools: list[dict[str, Any]] = []
        if request.function_declarations and not cached:
            tools.append(_function_tool(request))
            if generate:
                if not request.allow_function_calls:
                    # chatd's round limit: after the last round the model must answer in
                    # words, whatever the session's tool_config says.
                    out["toolConfig"] = _tool_config("NONE")
                elif (
                    tool_config := config.tool_config
                ) is not None and tool_config.mode is not None:
                    out["toolConfig"] = _tool_config(
                        tool_config.mode, tool_config.allowed_function_names
                    )
        if request.builtin_tools and not cached:
            builtin = _builtin_tools(request.builtin_tools)
            # google-genai sends the function declarations' Tool after the others on
            # generate calls (it merges all declarations into one Tool placed last), in the
            # given order on Vertex AI's countTokens.
            tools = [*builtin, *tools] if generate else [*tools, *builtin]
        if tools:
            out["tools"] = tools
        if not generate:
            return out
        if self._vertex and self._forward_labels and (labels := upstream_labels(request.labels)):
            out["labels"] = labels
        if request.safety_settings:
            out["safetySettings"] = [
                {"category": _HARM_CATEGORY(s.category), "threshold": _HARM_THRESHOLD(s.threshold)}
                for s in request.safety_settings
            ]
        if config.cached_content is not None:
            out["cachedContent"] = _cached_content_name(
                config.cached_content, self._vertex, self._project, self._location
            )
        if config.service_tier is not None:
            out["serviceTier"] = _SERVICE_TIER(config.service_tier)
        out["generationConfig"] = _generation_config(config)
        return out

    def generate_body(self, request: ModelRequest) -> bytes:
        """JSON body of models.generateContent / streamGenerateContent (without the model):
        {"contents": [...], "systemInstruction"?, "tools"?, "toolConfig"?, "labels"?,
        "safetySettings"?, "cachedContent"?, "serviceTier"?, "generationConfig": {...}}
        (https://ai.google.dev/api/generate-content#request-body)."""
        return self.generate_parts(request).body()

    def generate_parts(self, request: ModelRequest) -> GenerateParts:
        """The generate body of `request` in parts, for a body sent with or without an
        explicit cache of its stable prefix (see GenerateParts)."""
        contents, prefix = self.contents_split(request)
        rest = self._rest(request, generate=True)
        header = {key: rest.pop(key) for key in CACHED_FIELDS if key in rest}
        return GenerateParts(
            contents, prefix, header, rest, self._vertex, self._project, self._location
        )

    def count_tokens_body(self, request: ModelRequest, model_path: str) -> bytes:
        """JSON body of countTokens for what a generate call for `request` sends.

        On the Gemini API {"generateContentRequest": {"model": model_path, ...generate
        body...}}, which counts the system instruction and tools too
        (https://ai.google.dev/api/tokens#method:-models.counttokens); `model_path` is the
        model's resource name ("models/NAME"). On Vertex AI {"contents", "systemInstruction"?,
        "tools"?}, the fields its countTokens takes
        (https://cloud.google.com/vertex-ai/generative-ai/docs/reference/rest/v1/
        projects.locations.endpoints/countTokens); `model_path` is not in the body."""
        if self._vertex:
            contents = self.contents(request)
            rest = self._rest(request, generate=False)
            tail = b"," + _dumps(rest)[1:] if rest else b"}"
            return b'{"contents":[' + b",".join(contents) + b"]" + tail
        inner = self.generate_body(request)
        head = b'{"generateContentRequest":{"model":' + _dumps(model_path) + b","
        return head + inner[1:] + b"}"

    def api_version(self, request: ModelRequest) -> str | None:
        """ "v1beta" when the Gemini API needs it (needs_v1beta), else None (the SDK's
        default version)."""
        if not self._vertex and needs_v1beta(request.contents):
            return "v1beta"
        return None
