"""Checks on caller-supplied settings and messages; each failure names the offending field."""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from server.sessions.errors import InvalidArgument
from server.sessions.model import (
    Compaction,
    FunctionResponsePart,
    GenerationConfig,
    JSONObject,
    Message,
    Part,
    SessionSettings,
    Usage,
)
from server.sessions.values import check_json_depth

_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-/@]{0,127}")
_FUNCTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")
LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}")
_ENUM_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_MIME = re.compile(r"[\w.+\-]+/[\w.+\-]+")
# An explicit cache: the Gemini API's "cachedContents/ID", or Vertex AI's full name.
_CACHED_CONTENT = re.compile(
    r"(?:projects/[A-Za-z0-9_.\-]{1,128}/locations/[A-Za-z0-9_\-]{1,64}/)?"
    r"cachedContents/[A-Za-z0-9_\-]{1,128}"
)
# The values google-genai 3.6.1 knows (types.ThinkingLevel, MediaResolution, ...).
THINKING_LEVELS = ("MINIMAL", "LOW", "MEDIUM", "HIGH", "XHIGH")
MEDIA_RESOLUTIONS = ("MEDIA_RESOLUTION_LOW", "MEDIA_RESOLUTION_MEDIUM", "MEDIA_RESOLUTION_HIGH")
PART_MEDIA_RESOLUTIONS = (*MEDIA_RESOLUTIONS, "MEDIA_RESOLUTION_ULTRA_HIGH")
SERVICE_TIERS = ("standard", "flex", "priority")
FUNCTION_CALLING_MODES = ("AUTO", "ANY", "NONE", "VALIDATED")


@dataclass(frozen=True, slots=True)
class MessageLimits:
    """How big one caller message may be."""

    max_text_chars: int = 100_000
    max_parts: int = 64


MAX_LABELS = 64
MAX_LABEL_VALUE = 256
MAX_DISPLAY_NAME = 512
MAX_STOP_SEQUENCES = 16
MAX_TURN_ID = 128
# Gemini reports token counts as int32; a session's sums then stay far inside int64.
MAX_TOKEN_COUNT = 2**31 - 1
_USAGE_FIELDS = (
    ("prompt_token_count", "prompt_tokens"),
    ("candidates_token_count", "candidates_tokens"),
    ("total_token_count", "total_tokens"),
    ("thoughts_token_count", "thoughts_tokens"),
    ("cached_content_token_count", "cached_tokens"),
    ("tool_use_prompt_token_count", "tool_use_prompt_tokens"),
)
_DETAIL_FIELDS = (
    ("prompt_tokens_details", "prompt_details"),
    ("candidates_tokens_details", "candidates_details"),
    ("cache_tokens_details", "cache_details"),
    ("tool_use_prompt_tokens_details", "tool_use_prompt_details"),
)


def _range(field: str, value: float | None, low: float, high: float) -> None:
    if value is not None and not (math.isfinite(value) and low <= value <= high):
        raise InvalidArgument(
            field,
            f"must be between {low:g} and {high:g} (got {value:g})",
            reason="VALUE_OUT_OF_RANGE",
        )


def check_generation_config(config: GenerationConfig, prefix: str) -> None:
    _range(f"{prefix}.temperature", config.temperature, 0.0, 2.0)
    _range(f"{prefix}.top_p", config.top_p, 0.0, 1.0)
    _range(f"{prefix}.top_k", config.top_k, 1, 1_000_000)
    _range(f"{prefix}.max_output_tokens", config.max_output_tokens, 1, 10_000_000)
    _range(f"{prefix}.presence_penalty", config.presence_penalty, -2.0, 2.0)
    _range(f"{prefix}.frequency_penalty", config.frequency_penalty, -2.0, 2.0)
    stops = config.stop_sequences or ()
    if len(stops) > MAX_STOP_SEQUENCES:
        raise InvalidArgument(
            f"{prefix}.stop_sequences",
            f"at most {MAX_STOP_SEQUENCES} allowed",
            reason="GENERATION_CONFIG_INVALID",
        )
    if any(not s for s in stops):
        raise InvalidArgument(
            f"{prefix}.stop_sequences",
            "must not contain empty strings",
            reason="GENERATION_CONFIG_INVALID",
        )
    mime = config.response_mime_type
    if mime and _MIME.fullmatch(mime) is None:
        raise InvalidArgument(
            f"{prefix}.response_mime_type",
            f"{mime!r} is not a media type",
            reason="GENERATION_CONFIG_INVALID",
        )
    if config.response_json_schema is not None:
        if mime not in ("application/json", None, ""):
            raise InvalidArgument(
                f"{prefix}.response_json_schema",
                "requires response_mime_type application/json",
                reason="GENERATION_CONFIG_INVALID",
            )
        check_json_depth(config.response_json_schema, f"{prefix}.response_json_schema")
    if (thinking := config.thinking) is not None:
        _range(f"{prefix}.thinking.thinking_budget", thinking.thinking_budget, -1, 1 << 20)
        if thinking.thinking_budget is not None and thinking.thinking_level is not None:
            raise InvalidArgument(
                f"{prefix}.thinking.thinking_level",
                "set thinking_level or thinking_budget, not both: Gemini refuses a request "
                "carrying both",
                reason="GENERATION_CONFIG_INVALID",
            )
        _one_of(f"{prefix}.thinking.thinking_level", thinking.thinking_level, THINKING_LEVELS)
    _one_of(f"{prefix}.media_resolution", config.media_resolution, MEDIA_RESOLUTIONS)
    _one_of(f"{prefix}.service_tier", config.service_tier, SERVICE_TIERS)
    if (tools := config.tool_config) is not None:
        _one_of(f"{prefix}.tool_config.mode", tools.mode, FUNCTION_CALLING_MODES)
        if tools.allowed_function_names and tools.mode not in ("ANY", "VALIDATED"):
            raise InvalidArgument(
                f"{prefix}.tool_config.allowed_function_names",
                "only with mode MODE_ANY or MODE_VALIDATED",
                reason="GENERATION_CONFIG_INVALID",
            )
        for i, name in enumerate(tools.allowed_function_names):
            if _FUNCTION_NAME.fullmatch(name) is None:
                raise InvalidArgument(
                    f"{prefix}.tool_config.allowed_function_names[{i}]",
                    f"{name[:64]!r} is not a function name",
                    reason="GENERATION_CONFIG_INVALID",
                )
    cache = config.cached_content
    if cache is not None and _CACHED_CONTENT.fullmatch(cache) is None:
        raise InvalidArgument(
            f"{prefix}.cached_content",
            f"{cache[:64]!r} is not a cache name (cachedContents/ID, or on Vertex AI "
            "projects/P/locations/L/cachedContents/ID)",
            reason="GENERATION_CONFIG_INVALID",
        )


def _one_of(field: str, value: str | None, allowed: Sequence[str]) -> None:
    if value is not None and value not in allowed:
        raise InvalidArgument(
            field, f"{value[:64]!r} is not one of {', '.join(allowed)}", reason="VALUE_NOT_ALLOWED"
        )


def check_cache_use(
    config: GenerationConfig, system_instruction: str, tools: bool, prefix: str
) -> None:
    """A request reading an explicit cache carries no system instruction, tools or tool
    config of its own: Gemini refuses them beside cachedContent (they belong in the cache)."""
    if config.cached_content is None:
        return
    if system_instruction or tools or config.tool_config is not None:
        raise InvalidArgument(
            f"{prefix}.cached_content",
            "a request using a cached content may not set system_instruction, tools, "
            "builtin_tools, function_declarations or tool_config: Gemini refuses them "
            "beside a cache, which holds its own",
            reason="GENERATION_CONFIG_INVALID",
        )


def check_settings(settings: SessionSettings, known_tools: Collection[str], prefix: str) -> None:
    """Validates a whole SessionSettings; `prefix` is the proto path of the settings' message
    ("session", or "" where they are fields of the request itself)."""
    p = f"{prefix}." if prefix else ""
    if settings.model and _MODEL.fullmatch(settings.model) is None:
        raise InvalidArgument(
            f"{p}model", f"{settings.model[:64]!r} is not a model name", reason="MODEL_NAME_INVALID"
        )
    check_generation_config(settings.generation_config, f"{p}generation_config")
    check_cache_use(
        settings.generation_config,
        settings.system_instruction,
        bool(settings.tools or settings.function_declarations or settings.builtin_tools),
        f"{p}generation_config",
    )
    for i, tool in enumerate(settings.tools):
        if tool not in known_tools:
            raise InvalidArgument(
                f"{p}tools[{i}]",
                f"{tool[:64]!r} is not a registered tool (see ListTools)",
                reason="TOOL_UNKNOWN",
            )
    names: set[str] = set(settings.tools)
    for i, decl in enumerate(settings.function_declarations):
        field = f"{p}function_declarations[{i}]"
        if _FUNCTION_NAME.fullmatch(decl.name) is None:
            raise InvalidArgument(
                f"{field}.name",
                f"{decl.name[:64]!r} is not a function name (letters, digits, _ . -, max 64)",
                reason="FUNCTION_DECLARATION_INVALID",
            )
        if decl.name in names:
            raise InvalidArgument(
                f"{field}.name",
                f"{decl.name!r} is declared twice",
                reason="FUNCTION_DECLARATION_INVALID",
            )
        names.add(decl.name)
        if decl.parameters is not None:
            if decl.parameters.get("type", "object") != "object":
                raise InvalidArgument(
                    f"{field}.parameters",
                    "must be a JSON schema of type object",
                    reason="FUNCTION_DECLARATION_INVALID",
                )
            check_json_depth(decl.parameters, f"{field}.parameters")
    if len(settings.labels) > MAX_LABELS:
        raise InvalidArgument(
            f"{p}labels", f"at most {MAX_LABELS} labels allowed", reason="LABEL_INVALID"
        )
    for key, value in settings.labels.items():
        if LABEL_KEY.fullmatch(key) is None:
            raise InvalidArgument(
                f"{p}labels",
                f"{key[:64]!r} is not a label key (letters, digits, _ . - /)",
                reason="LABEL_INVALID",
            )
        if len(value) > MAX_LABEL_VALUE:
            raise InvalidArgument(
                f"{p}labels[{key}]", f"longer than {MAX_LABEL_VALUE}", reason="LABEL_INVALID"
            )
        if "\x00" in value:
            raise InvalidArgument(
                f"{p}labels[{key}]", "must not contain NUL characters", reason="LABEL_INVALID"
            )
    if len(settings.display_name) > MAX_DISPLAY_NAME:
        raise InvalidArgument(
            f"{p}display_name", f"longer than {MAX_DISPLAY_NAME}", reason="DISPLAY_NAME_TOO_LONG"
        )
    policy = settings.context_policy
    if policy.max_messages < 0:
        raise InvalidArgument(
            f"{p}context_policy.max_messages",
            "must not be negative",
            reason="CONTEXT_POLICY_INVALID",
        )
    if policy.max_tokens < 0:
        raise InvalidArgument(
            f"{p}context_policy.max_tokens", "must not be negative", reason="CONTEXT_POLICY_INVALID"
        )
    if not 0 <= policy.low_water_fraction < 1:  # NaN fails both comparisons
        raise InvalidArgument(
            f"{p}context_policy.low_water_fraction",
            "must be at least 0 and below 1",
            reason="CONTEXT_POLICY_INVALID",
        )
    if policy.compaction is not None:
        _check_compaction(policy.compaction, f"{p}context_policy.compaction")
    for i, safety in enumerate(settings.safety_settings):
        for name, value in (("category", safety.category), ("threshold", safety.threshold)):
            if _ENUM_NAME.fullmatch(value) is None:
                raise InvalidArgument(
                    f"{p}safety_settings[{i}].{name}",
                    f"{value[:64]!r} is not a valid name",
                    reason="SAFETY_SETTING_INVALID",
                )
    if settings.ttl_seconds is not None and not settings.ttl_seconds > 0:
        raise InvalidArgument(f"{p}ttl", "must be positive", reason="TTL_INVALID")


def check_message_size(parts: Sequence[Part], field: str, limits: MessageLimits) -> None:
    if len(parts) > limits.max_parts:
        raise InvalidArgument(
            field,
            f"{len(parts)} parts; at most {limits.max_parts} allowed",
            reason="TOO_MANY_PARTS",
        )
    chars = 0
    for i, part in enumerate(parts):
        text = _text_of(part)
        if text is None:
            continue
        chars += len(text)
        if chars > limits.max_text_chars:
            name = "gemini_part" if part.gemini_part is not None else "text"
            where = f"{field}[{i}].{name}" if len(text) > limits.max_text_chars else field
            raise InvalidArgument(
                "text" if field == "parts" and len(parts) == 1 and name == "text" else where,
                f"{sum(len(_text_of(p) or '') for p in parts)} characters of text; "
                f"at most {limits.max_text_chars} allowed",
                reason="TEXT_TOO_LONG",
            )


def _text_of(part: Part) -> str | None:
    """The text a part holds, a Gemini JSON part's included."""
    if part.gemini_part is not None:
        text = part.gemini_part.get("text")
        return text if isinstance(text, str) else None
    return part.text


def check_part(part: Part, where: str) -> None:
    """Rules for any part of any message, each a part Gemini would refuse in every later
    turn: an empty text part (unless it carries a thought signature), data without a media
    type or bytes, a file without its URI, a function call or response without a name;
    and JSON values must stay within the nesting limit."""
    if part.text is not None and not part.text and not part.thought_signature:
        raise InvalidArgument(
            f"{where}.text",
            "is empty: Gemini refuses empty text parts (only a part carrying a "
            "thought_signature may have empty text)",
            reason="TEXT_EMPTY",
        )
    if part.inline_data is not None:
        if _MIME.fullmatch(part.inline_data.mime_type) is None:
            raise InvalidArgument(
                f"{where}.inline_data.mime_type", "is not a media type", reason="PART_INVALID"
            )
        if not part.inline_data.data:
            raise InvalidArgument(f"{where}.inline_data.data", "is empty", reason="PART_INVALID")
    if part.file_data is not None and not part.file_data.file_uri:
        raise InvalidArgument(f"{where}.file_data.file_uri", "is required", reason="PART_INVALID")
    if part.media_resolution:
        if part.inline_data is None and part.file_data is None:
            raise InvalidArgument(
                f"{where}.media_resolution",
                "applies to inline_data and file_data parts only",
                reason="PART_INVALID",
            )
        _one_of(f"{where}.media_resolution", part.media_resolution, PART_MEDIA_RESOLUTIONS)
    if part.function_call is not None:
        if not part.function_call.name:
            raise InvalidArgument(
                f"{where}.function_call.name", "is required", reason="PART_INVALID"
            )
        check_json_depth(part.function_call.args, f"{where}.function_call.args")
    if part.function_response is not None:
        if not part.function_response.name:
            raise InvalidArgument(
                f"{where}.function_response.name", "is required", reason="PART_INVALID"
            )
        check_json_depth(part.function_response.response, f"{where}.function_response.response")
        check_response_parts(part.function_response.parts, f"{where}.function_response.parts")
    if part.executable_code is not None and not part.executable_code.language:
        raise InvalidArgument(
            f"{where}.executable_code.language", "is required", reason="PART_INVALID"
        )
    if part.code_execution_result is not None and not part.code_execution_result.outcome:
        raise InvalidArgument(
            f"{where}.code_execution_result.outcome", "is required", reason="PART_INVALID"
        )
    if part.tool_call is not None and not part.tool_call.tool_type:
        raise InvalidArgument(f"{where}.tool_call.tool_type", "is required", reason="PART_INVALID")
    if part.tool_response is not None and not part.tool_response.tool_type:
        raise InvalidArgument(
            f"{where}.tool_response.tool_type", "is required", reason="PART_INVALID"
        )
    if part.gemini_part is not None:
        check_gemini_part(part.gemini_part, f"{where}.gemini_part")


# The fields of a Gemini Part (google-genai's types.Part, which refuses any other), by
# their REST names, with the JSON type each holds; snake_case names are accepted too.
_GEMINI_PART_FIELDS: dict[str, type] = {
    "text": str,
    "thought": bool,
    "thoughtSignature": str,
    "inlineData": dict,
    "fileData": dict,
    "functionCall": dict,
    "functionResponse": dict,
    "executableCode": dict,
    "codeExecutionResult": dict,
    "toolCall": dict,
    "toolResponse": dict,
    "videoMetadata": dict,
    "mediaResolution": dict,
    "partMetadata": dict,
    "audioTranscription": dict,
    "mediaProcessing": dict,
    "speechMetadata": dict,
    "documentMetadata": dict,
    "spreadsheetMetadata": dict,
    "audioMetadata": dict,
}
# Gemini's Part.data is a oneof (https://ai.google.dev/api/caching#Part): at most one of these.
_GEMINI_PART_DATA = frozenset(
    {
        "text",
        "inlineData",
        "fileData",
        "functionCall",
        "functionResponse",
        "executableCode",
        "codeExecutionResult",
        "toolCall",
        "toolResponse",
    }
)
_SNAKE = re.compile(r"_([a-z])")


def check_gemini_part(part: JSONObject, field: str) -> None:
    """A part given as Gemini JSON: a non-empty object of Gemini Part fields, each holding
    the right kind of JSON value, without empty text unless it carries a thought
    signature (as for a typed part), and with at most one kind of data."""
    if not part:
        raise InvalidArgument(
            field,
            "must be a non-empty JSON object of Gemini Part fields",
            reason="INVALID_GEMINI_PART",
        )
    names = {_SNAKE.sub(lambda m: m[1].upper(), key) for key in part}
    data = sorted(names & _GEMINI_PART_DATA)
    if len(data) > 1:
        raise InvalidArgument(
            field,
            f"holds {' and '.join(data)}: a Gemini Part holds one kind of data",
            reason="INVALID_GEMINI_PART",
        )
    if part.get("text") == "" and "thoughtSignature" not in names:
        raise InvalidArgument(
            field,
            "has empty text: Gemini refuses empty text parts (only a part carrying a "
            "thoughtSignature may have empty text)",
            reason="TEXT_EMPTY",
        )
    for key, value in part.items():
        name = _SNAKE.sub(lambda m: m[1].upper(), key)
        expected = _GEMINI_PART_FIELDS.get(name)
        if expected is None:
            raise InvalidArgument(
                field,
                f"{key[:64]!r} is not a field of a Gemini Part (see Gemini's Part)",
                reason="INVALID_GEMINI_PART",
            )
        if not isinstance(value, expected) or (expected is str and not value and name != "text"):
            kind = {str: "a string", bool: "true or false", dict: "an object"}[expected]
            raise InvalidArgument(field, f"{key!r} must be {kind}", reason="INVALID_GEMINI_PART")


def check_response_parts(parts: Sequence[FunctionResponsePart], field: str) -> None:
    """Media in a function response: data with its media type, or a file's URI."""
    for i, part in enumerate(parts):
        if part.inline_data is not None:
            if _MIME.fullmatch(part.inline_data.mime_type) is None:
                raise InvalidArgument(
                    f"{field}[{i}].inline_data.mime_type",
                    "is not a media type",
                    reason="PART_INVALID",
                )
            if not part.inline_data.data:
                raise InvalidArgument(
                    f"{field}[{i}].inline_data.data", "is empty", reason="PART_INVALID"
                )
        elif part.file_data is not None:
            if not part.file_data.file_uri:
                raise InvalidArgument(
                    f"{field}[{i}].file_data.file_uri", "is required", reason="PART_INVALID"
                )
        else:
            raise InvalidArgument(
                f"{field}[{i}]", "set inline_data or file_data", reason="MEDIA_MISSING"
            )


def check_parts(parts: Sequence[Part], field: str, limits: MessageLimits) -> None:
    """The size limits and the part rules, for the parts of one message."""
    check_message_size(parts, field, limits)
    for i, part in enumerate(parts):
        check_part(part, f"{field}[{i}]")


def check_usage(usage: Usage, field: str) -> None:
    for name, attribute in _USAGE_FIELDS:
        value = getattr(usage, attribute)
        if not 0 <= value <= MAX_TOKEN_COUNT:
            raise InvalidArgument(
                f"{field}.{name}",
                f"must be between 0 and {MAX_TOKEN_COUNT} (got {value})",
                reason="USAGE_INVALID",
            )
    for name, attribute in _DETAIL_FIELDS:
        for i, (modality, count) in enumerate(getattr(usage, attribute)):
            if _ENUM_NAME.fullmatch(modality) is None:
                raise InvalidArgument(
                    f"{field}.{name}[{i}].modality",
                    "is not a modality name",
                    reason="USAGE_INVALID",
                )
            if not 0 <= count <= MAX_TOKEN_COUNT:
                raise InvalidArgument(
                    f"{field}.{name}[{i}].token_count",
                    f"must be between 0 and {MAX_TOKEN_COUNT} (got {count})",
                    reason="USAGE_INVALID",
                )
    if len(usage.traffic_type) > 64 or (
        usage.traffic_type and _ENUM_NAME.fullmatch(usage.traffic_type) is None
    ):
        raise InvalidArgument(
            f"{field}.traffic_type", "is not a traffic type name", reason="USAGE_INVALID"
        )


def check_messages(messages: Sequence[Message], field: str, limits: MessageLimits) -> None:
    """Caller-supplied history (appended, imported or sent statelessly): every message
    obeys the limits a message sent with SendMessage obeys, and carries plausible usage."""
    for i, message in enumerate(messages):
        check_parts(message.parts, f"{field}[{i}].parts", limits)
        if message.usage is not None:
            check_usage(message.usage, f"{field}[{i}].usage")
        # An imported turn_id is stored as it is, in a column PostgreSQL keeps as TEXT.
        if len(message.turn_id) > MAX_TURN_ID or "\x00" in message.turn_id:
            raise InvalidArgument(
                f"{field}[{i}].turn_id",
                f"at most {MAX_TURN_ID} characters, without NUL characters",
                reason="TURN_ID_INVALID",
            )


def check_user_parts(parts: Sequence[Part], field: str, limits: MessageLimits) -> None:
    """A user message: at least one part, no function calls or responses, no empty data,
    within the size limits."""
    check_message_size(parts, field, limits)
    if not parts or all(p.text is not None and not p.text.strip() for p in parts):
        raise InvalidArgument(
            "text", "the message is empty: set text or parts", reason="MESSAGE_EMPTY"
        )
    for i, part in enumerate(parts):
        where = f"{field}[{i}]"
        check_part(part, where)
        if part.function_call is not None or part.function_response is not None:
            raise InvalidArgument(
                where,
                "a user message carries text or data; answer tool calls with tool_results",
                reason="USER_MESSAGE_INVALID",
            )
        if (
            part.text is None
            and part.inline_data is None
            and part.file_data is None
            and part.gemini_part is None
        ):
            raise InvalidArgument(
                where,
                "has no content: set text, inline_data, file_data or gemini_part",
                reason="PART_EMPTY",
            )


MAX_COMPACTION_INSTRUCTIONS = 32_768


def _check_compaction(compaction: Compaction, field: str) -> None:
    """Raises InvalidArgument (COMPACTION_INVALID) naming the compaction field at fault."""
    for name in ("trigger_tokens", "trigger_messages", "keep_recent_turns"):
        if getattr(compaction, name) < 0:
            raise InvalidArgument(
                f"{field}.{name}", "must not be negative", reason="COMPACTION_INVALID"
            )
    if compaction.trigger_tokens == 0 and compaction.trigger_messages == 0:
        raise InvalidArgument(
            f"{field}.trigger_tokens",
            "set trigger_tokens or trigger_messages (or leave compaction unset)",
            reason="COMPACTION_INVALID",
        )
    if compaction.model and _MODEL.fullmatch(compaction.model) is None:
        raise InvalidArgument(
            f"{field}.model",
            f"{compaction.model[:64]!r} is not a model name",
            reason="MODEL_NAME_INVALID",
        )
    if len(compaction.instructions) > MAX_COMPACTION_INSTRUCTIONS:
        raise InvalidArgument(
            f"{field}.instructions",
            f"longer than {MAX_COMPACTION_INSTRUCTIONS} characters",
            reason="COMPACTION_INVALID",
        )
