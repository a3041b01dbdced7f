"""Domain values: sessions, messages and their parts, as frozen slotted dataclasses."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeAlias

# A JSON value as produced by json.loads.
JSON: TypeAlias = Any
JSONObject: TypeAlias = Mapping[str, Any]

DEFAULT_TENANT = "default"


class Role(enum.Enum):
    USER = "user"
    MODEL = "model"


class FinishReason(enum.Enum):
    """Why a turn or model call ended; values match the proto enum's suffixes."""

    UNSPECIFIED = "UNSPECIFIED"
    STOP = "STOP"
    MAX_TOKENS = "MAX_TOKENS"
    SAFETY = "SAFETY"
    RECITATION = "RECITATION"
    LANGUAGE = "LANGUAGE"
    OTHER = "OTHER"
    BLOCKLIST = "BLOCKLIST"
    PROHIBITED_CONTENT = "PROHIBITED_CONTENT"
    SPII = "SPII"
    MALFORMED_FUNCTION_CALL = "MALFORMED_FUNCTION_CALL"
    IMAGE_SAFETY = "IMAGE_SAFETY"
    UNEXPECTED_TOOL_CALL = "UNEXPECTED_TOOL_CALL"
    TOO_MANY_TOOL_CALLS = "TOO_MANY_TOOL_CALLS"
    MISSING_THOUGHT_SIGNATURE = "MISSING_THOUGHT_SIGNATURE"
    IMAGE_OTHER = "IMAGE_OTHER"
    PROMPT_BLOCKED = "PROMPT_BLOCKED"
    TOOL_CALLS_PENDING = "TOOL_CALLS_PENDING"
    MAX_TOOL_ROUNDS = "MAX_TOOL_ROUNDS"


class SessionState(enum.Enum):
    ACTIVE = "ACTIVE"
    AWAITING_TOOL_RESULTS = "AWAITING_TOOL_RESULTS"


@dataclass(frozen=True, slots=True)
class Blob:
    mime_type: str
    data: bytes
    display_name: str = ""


@dataclass(frozen=True, slots=True)
class FileData:
    mime_type: str
    file_uri: str
    display_name: str = ""


@dataclass(frozen=True, slots=True)
class FunctionCall:
    id: str
    name: str
    args: JSONObject = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FunctionResponsePart:
    """Media a function returns beside its JSON response: exactly one of the two."""

    inline_data: Blob | None = None
    file_data: FileData | None = None


@dataclass(frozen=True, slots=True)
class FunctionResponse:
    id: str
    name: str
    response: JSONObject = field(default_factory=dict)
    parts: tuple[FunctionResponsePart, ...] = ()


@dataclass(frozen=True, slots=True)
class ExecutableCode:
    """Code the model ran with Gemini's code execution tool."""

    language: str
    code: str
    id: str = ""


@dataclass(frozen=True, slots=True)
class CodeExecutionResult:
    outcome: str
    output: str = ""
    id: str = ""


@dataclass(frozen=True, slots=True)
class ServerToolCall:
    """A call to one of Gemini's own tools, which Gemini runs itself (a `toolCall` part)."""

    id: str
    tool_type: str
    args: JSONObject = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ServerToolResponse:
    """Gemini's own answer to a ServerToolCall (a `toolResponse` part)."""

    id: str
    tool_type: str
    response: JSONObject = field(default_factory=dict)


_SET = object.__setattr__


@dataclass(frozen=True, slots=True)
class Part:
    """At most one of text, inline_data, file_data, function_call, function_response,
    executable_code, code_execution_result, tool_call, tool_response and gemini_part.

    `gemini_part` is a part chatd does not model, kept as the Gemini REST JSON of the
    whole part (its signature included) and sent back as it came. A part with none of
    them set carries only its thought_signature.
    """

    text: str | None = None
    inline_data: Blob | None = None
    file_data: FileData | None = None
    function_call: FunctionCall | None = None
    function_response: FunctionResponse | None = None
    thought: bool = False
    thought_signature: bytes = b""
    executable_code: ExecutableCode | None = None
    code_execution_result: CodeExecutionResult | None = None
    tool_call: ServerToolCall | None = None
    tool_response: ServerToolResponse | None = None
    gemini_part: JSONObject | None = None

    # Gemini's MediaResolution name for an inline_data or file_data part ("" = unset).
    media_resolution: str = ""

    # Written out rather than generated: the generated __init__ of a frozen dataclass
    # looks up object.__setattr__ anew for each of the 13 fields, which made a Part
    # twice as slow to build, and a reply streams one per chunk. Same fields, same order.
    def __init__(
        self,
        text: str | None = None,
        inline_data: Blob | None = None,
        file_data: FileData | None = None,
        function_call: FunctionCall | None = None,
        function_response: FunctionResponse | None = None,
        thought: bool = False,
        thought_signature: bytes = b"",
        executable_code: ExecutableCode | None = None,
        code_execution_result: CodeExecutionResult | None = None,
        tool_call: ServerToolCall | None = None,
        tool_response: ServerToolResponse | None = None,
        gemini_part: JSONObject | None = None,
        media_resolution: str = "",
    ) -> None:
        set_ = _SET
        set_(self, "text", text)
        set_(self, "inline_data", inline_data)
        set_(self, "file_data", file_data)
        set_(self, "function_call", function_call)
        set_(self, "function_response", function_response)
        set_(self, "thought", thought)
        set_(self, "thought_signature", thought_signature)
        set_(self, "executable_code", executable_code)
        set_(self, "code_execution_result", code_execution_result)
        set_(self, "tool_call", tool_call)
        set_(self, "tool_response", tool_response)
        set_(self, "gemini_part", gemini_part)
        set_(self, "media_resolution", media_resolution)

    @property
    def signature_only(self) -> bool:
        """The part holds nothing but a thought signature."""
        return (
            self.text is None
            and self.inline_data is None
            and self.file_data is None
            and self.function_call is None
            and self.function_response is None
            and self.executable_code is None
            and self.code_execution_result is None
            and self.tool_call is None
            and self.tool_response is None
            and self.gemini_part is None
        )

    @property
    def has_content(self) -> bool:
        """The part says something: not an empty text, not a bare signature."""
        return not self.signature_only and self.text != ""


# Token counts per modality, e.g. (("TEXT", 12), ("IMAGE", 258)), in the model's order.
ModalityCounts: TypeAlias = tuple[tuple[str, int], ...]


def _sum_counts(a: ModalityCounts, b: ModalityCounts) -> ModalityCounts:
    if not b:
        return a
    if not a:
        return b
    totals = dict(a)
    for modality, count in b:
        totals[modality] = totals.get(modality, 0) + count
    return tuple(totals.items())


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    candidates_tokens: int = 0
    total_tokens: int = 0
    thoughts_tokens: int = 0
    cached_tokens: int = 0
    tool_use_prompt_tokens: int = 0
    prompt_details: ModalityCounts = ()
    candidates_details: ModalityCounts = ()
    cache_details: ModalityCounts = ()
    tool_use_prompt_details: ModalityCounts = ()
    # How the call was billed (Vertex AI); describes one call, so sums keep none.
    traffic_type: str = ""

    def __add__(self, other: Usage) -> Usage:
        """Counts add up, per modality too; the traffic type of one call is not a sum."""
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.candidates_tokens + other.candidates_tokens,
            self.total_tokens + other.total_tokens,
            self.thoughts_tokens + other.thoughts_tokens,
            self.cached_tokens + other.cached_tokens,
            self.tool_use_prompt_tokens + other.tool_use_prompt_tokens,
            _sum_counts(self.prompt_details, other.prompt_details),
            _sum_counts(self.candidates_details, other.candidates_details),
            _sum_counts(self.cache_details, other.cache_details),
            _sum_counts(self.tool_use_prompt_details, other.tool_use_prompt_details),
        )


@dataclass(frozen=True, slots=True)
class Summary:
    """The seqs a compaction summary covers, `first_seq` to `last_seq` both included."""

    first_seq: int
    last_seq: int


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Message:
    """One history entry. `seq` orders a session's messages and never repeats.

    Weak-referenceable: a provider may keep what it derives from a message (its encoded
    request JSON) for exactly as long as the message object lives."""

    role: Role
    parts: tuple[Part, ...]
    seq: int = 0
    create_time: float = 0.0
    turn_id: str = ""
    usage: Usage | None = None
    finish_reason: FinishReason | None = None
    model: str = ""
    # What Gemini said about a model answer besides its parts (grounding, citations,
    # safety ratings, finish message...): the candidate's other fields, camelCase JSON.
    candidate_metadata: JSONObject | None = None
    # Set on a compaction summary: the messages it stands for (see Summary).
    summary: Summary | None = None

    @property
    def text(self) -> str:
        """The message's answer text: its non-thought text parts joined."""
        return "".join(p.text for p in self.parts if p.text is not None and not p.thought)


@dataclass(frozen=True, slots=True)
class ThinkingConfig:
    include_thoughts: bool | None = None
    thinking_budget: int | None = None
    thinking_level: str | None = None

    def merged_over(self, base: ThinkingConfig) -> ThinkingConfig:
        """This config's set fields over `base`. A budget and a level exclude each other
        (Gemini refuses both), so setting one here drops the other from `base`."""
        budget = self.thinking_budget
        level = self.thinking_level
        if budget is None and level is None:
            budget, level = base.thinking_budget, base.thinking_level
        include = self.include_thoughts
        return ThinkingConfig(base.include_thoughts if include is None else include, budget, level)


@dataclass(frozen=True, slots=True)
class ToolConfig:
    """How the model may call functions: Gemini's FunctionCallingConfig."""

    mode: str | None = None  # AUTO, ANY, NONE, VALIDATED
    allowed_function_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GenerationConfig:
    """Sampling settings; None means inherit from the layer below."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_output_tokens: int | None = None
    stop_sequences: tuple[str, ...] | None = None
    seed: int | None = None
    response_mime_type: str | None = None
    response_json_schema: JSONObject | None = None
    thinking: ThinkingConfig | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    media_resolution: str | None = None  # MEDIA_RESOLUTION_LOW, _MEDIUM, _HIGH
    service_tier: str | None = None  # standard, flex, priority
    tool_config: ToolConfig | None = None
    cached_content: str | None = None  # cachedContents/ID

    def merged_over(self, base: GenerationConfig) -> GenerationConfig:
        """This config's set fields over `base`; the thinking config merges field by field
        (see ThinkingConfig.merged_over), a tool_config replaces the base's whole."""
        values = {}
        for name in self.__slots__:
            mine, theirs = getattr(self, name), getattr(base, name)
            if name == "thinking" and mine is not None and theirs is not None:
                mine = mine.merged_over(theirs)
            values[name] = mine if mine is not None else theirs
        return GenerationConfig(**values)


@dataclass(frozen=True, slots=True)
class Compaction:
    """When and how older turns are summarised (see server.sessions.compaction).

    Triggers: what would be sent reaches `trigger_tokens` tokens or `trigger_messages`
    messages (0 = that trigger is off). `keep_recent_turns` whole turns stay verbatim
    (0 = DEFAULT_KEEP_RECENT_TURNS). `model` and `instructions` default to the
    session's model and chatd's own instructions.
    """

    trigger_tokens: int = 0
    trigger_messages: int = 0
    keep_recent_turns: int = 0
    model: str = ""
    instructions: str = ""


@dataclass(frozen=True, slots=True)
class ContextPolicy:
    """Limits on what is sent to the model; 0 means no limit.

    `low_water_fraction` 0 slides the window one turn at a time; a value in (0, 1)
    drops turns in steps down to about that fraction of each limit (see
    server.sessions.context.select_window).
    """

    max_messages: int = 0
    max_tokens: int = 0
    low_water_fraction: float = 0.0
    compaction: Compaction | None = None

    @property
    def stepped(self) -> bool:
        """Turns are dropped in steps (a low-water mark is set and there is a limit)."""
        return self.low_water_fraction > 0 and (self.max_messages > 0 or self.max_tokens > 0)


@dataclass(frozen=True, slots=True)
class FunctionDeclaration:
    name: str
    description: str = ""
    parameters: JSONObject | None = None


@dataclass(frozen=True, slots=True)
class BuiltinTools:
    """Gemini's own tools a session enables (run by Gemini inside the model call)."""

    google_search: bool = False
    code_execution: bool = False
    url_context: bool = False
    google_maps: bool = False
    google_maps_widget: bool = False

    def __bool__(self) -> bool:
        return self.google_search or self.code_execution or self.url_context or self.google_maps


@dataclass(frozen=True, slots=True)
class SafetySetting:
    category: str
    threshold: str


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """What the caller chooses for a session."""

    model: str = ""
    system_instruction: str = ""
    generation_config: GenerationConfig = GenerationConfig()
    tools: tuple[str, ...] = ()
    function_declarations: tuple[FunctionDeclaration, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    display_name: str = ""
    context_policy: ContextPolicy = ContextPolicy()
    safety_settings: tuple[SafetySetting, ...] = ()
    builtin_tools: BuiltinTools = BuiltinTools()
    ttl_seconds: float | None = None
    expire_time: float | None = None


@dataclass(frozen=True, slots=True)
class PendingTurn:
    """A turn paused until the caller answers its caller-executed function calls.

    Its messages so far are already in history; `calls` are all the calls of the model's
    last message and `answered` the responses chatd already has (from server tools).
    """

    turn_id: str
    first_seq: int
    rounds: int
    calls: tuple[FunctionCall, ...]
    answered: tuple[FunctionResponse, ...] = ()

    @property
    def awaiting(self) -> tuple[FunctionCall, ...]:
        done = {r.id for r in self.answered}
        return tuple(c for c in self.calls if c.id not in done)


@dataclass(frozen=True, slots=True)
class Session:
    """A session as stored: settings plus what chatd keeps about it.

    `version` increases with every write; stores use it to refuse writes based on a
    stale read (optimistic concurrency). `next_seq` is the seq of the next message.
    `uid` names this life of the session (AIP-148): a session deleted, or expired, and
    created again under the same id has another uid, so a record made in one life (a
    request record, a cache entry, a write racing the delete) never applies to the next.
    """

    tenant: str
    session_id: str
    settings: SessionSettings
    create_time: float
    update_time: float
    message_count: int = 0
    next_seq: int = 0
    usage: Usage = Usage()
    pending: PendingTurn | None = None
    version: int = 1
    uid: str = ""

    @property
    def expire_time(self) -> float | None:
        """When the session expires: its fixed expire_time, or ttl after the last update."""
        if self.settings.ttl_seconds is not None:
            return self.update_time + self.settings.ttl_seconds
        return self.settings.expire_time

    @property
    def state(self) -> SessionState:
        return SessionState.ACTIVE if self.pending is None else SessionState.AWAITING_TOOL_RESULTS

    @property
    def pending_tool_calls(self) -> tuple[FunctionCall, ...]:
        return () if self.pending is None else self.pending.awaiting

    def evolve(self, **changes: Any) -> Session:
        return replace(self, **changes)
