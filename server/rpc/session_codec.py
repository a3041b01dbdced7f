"""Proto <-> domain conversion for sessions and their settings."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf import duration_pb2

from chatd.v1 import content_pb2 as content_pb
from chatd.v1 import session_pb2 as pb
from server.rpc.content_codec import (
    function_call_to_pb,
    media_resolution_from_pb,
    seconds_of,
    timestamp,
    usage_to_pb,
)
from server.rpc.json_codec import object_input, object_output
from server.sessions.errors import InvalidArgument
from server.sessions.model import (
    BuiltinTools,
    Compaction,
    ContextPolicy,
    FunctionDeclaration,
    GenerationConfig,
    SafetySetting,
    Session,
    SessionSettings,
    SessionState,
    ThinkingConfig,
    ToolConfig,
)

_LEVELS = {
    pb.ThinkingConfig.THINKING_LEVEL_MINIMAL: "MINIMAL",
    pb.ThinkingConfig.THINKING_LEVEL_LOW: "LOW",
    pb.ThinkingConfig.THINKING_LEVEL_MEDIUM: "MEDIUM",
    pb.ThinkingConfig.THINKING_LEVEL_HIGH: "HIGH",
    pb.ThinkingConfig.THINKING_LEVEL_XHIGH: "XHIGH",
}
_LEVELS_TO_PB = {v: k for k, v in _LEVELS.items()}
# Gemini's names for chatd's enums (the SDK's ServiceTier values are lower case).
_TIERS = {
    pb.GenerationConfig.SERVICE_TIER_STANDARD: "standard",
    pb.GenerationConfig.SERVICE_TIER_FLEX: "flex",
    pb.GenerationConfig.SERVICE_TIER_PRIORITY: "priority",
}
_TIERS_TO_PB = {v: k for k, v in _TIERS.items()}
_MODES = {
    pb.ToolConfig.MODE_AUTO: "AUTO",
    pb.ToolConfig.MODE_ANY: "ANY",
    pb.ToolConfig.MODE_NONE: "NONE",
    pb.ToolConfig.MODE_VALIDATED: "VALIDATED",
}
_MODES_TO_PB = {v: k for k, v in _MODES.items()}
_STATE_TO_PB = {
    SessionState.ACTIVE: pb.Session.STATE_ACTIVE,
    SessionState.AWAITING_TOOL_RESULTS: pb.Session.STATE_AWAITING_TOOL_RESULTS,
}


def generation_config_from_pb(
    config: pb.GenerationConfig, field: str = "generation_config"
) -> GenerationConfig:
    has = config.HasField
    thinking = None
    if config.HasField("thinking"):
        t = config.thinking
        thinking = ThinkingConfig(
            include_thoughts=t.include_thoughts if t.HasField("include_thoughts") else None,
            thinking_budget=t.thinking_budget if t.HasField("thinking_budget") else None,
            thinking_level=_LEVELS.get(t.thinking_level),
        )
    return GenerationConfig(
        temperature=config.temperature if has("temperature") else None,
        top_p=config.top_p if has("top_p") else None,
        top_k=config.top_k if has("top_k") else None,
        max_output_tokens=config.max_output_tokens if has("max_output_tokens") else None,
        stop_sequences=tuple(config.stop_sequences) or None,
        seed=config.seed if has("seed") else None,
        response_mime_type=config.response_mime_type or None,
        response_json_schema=object_input(
            config, "response_json_schema", "response_json_schema_json", field
        ),
        thinking=thinking,
        presence_penalty=config.presence_penalty if has("presence_penalty") else None,
        frequency_penalty=config.frequency_penalty if has("frequency_penalty") else None,
        media_resolution=media_resolution_from_pb(config.media_resolution) or None,
        service_tier=_TIERS.get(config.service_tier),
        tool_config=(
            ToolConfig(
                _MODES.get(config.tool_config.mode),
                tuple(config.tool_config.allowed_function_names),
            )
            if has("tool_config")
            else None
        ),
        cached_content=config.cached_content or None,
    )


def generation_config_to_pb(config: GenerationConfig, out: pb.GenerationConfig) -> None:
    for name in (
        "temperature",
        "top_p",
        "top_k",
        "max_output_tokens",
        "seed",
        "presence_penalty",
        "frequency_penalty",
    ):
        value = getattr(config, name)
        if value is not None:
            setattr(out, name, value)
    out.stop_sequences.extend(config.stop_sequences or ())
    out.response_mime_type = config.response_mime_type or ""
    if config.response_json_schema is not None:
        object_output(
            config.response_json_schema, out, "response_json_schema", "response_json_schema_json"
        )
    if config.thinking is not None:
        t = config.thinking
        out.thinking.SetInParent()
        if t.include_thoughts is not None:
            out.thinking.include_thoughts = t.include_thoughts
        if t.thinking_budget is not None:
            out.thinking.thinking_budget = t.thinking_budget
        if t.thinking_level is not None:
            out.thinking.thinking_level = _LEVELS_TO_PB[t.thinking_level]
    if config.media_resolution is not None:
        out.media_resolution = content_pb.MediaResolution.Value(config.media_resolution)
    if config.service_tier is not None:
        out.service_tier = _TIERS_TO_PB[config.service_tier]
    if (tools := config.tool_config) is not None:
        out.tool_config.SetInParent()
        if tools.mode is not None:
            out.tool_config.mode = _MODES_TO_PB[tools.mode]
        out.tool_config.allowed_function_names.extend(tools.allowed_function_names)
    out.cached_content = config.cached_content or ""


def function_declarations_from_pb(
    declarations: Sequence[pb.FunctionDeclaration], field: str
) -> tuple[FunctionDeclaration, ...]:
    return tuple(
        FunctionDeclaration(
            d.name,
            d.description,
            object_input(d, "parameters", "parameters_json", f"{field}[{i}]"),
        )
        for i, d in enumerate(declarations)
    )


def builtin_tools_from_pb(tools: pb.BuiltinTools) -> BuiltinTools:
    has = tools.HasField
    return BuiltinTools(
        google_search=has("google_search"),
        code_execution=has("code_execution"),
        url_context=has("url_context"),
        google_maps=has("google_maps"),
        google_maps_widget=has("google_maps") and tools.google_maps.enable_widget,
    )


def builtin_tools_to_pb(tools: BuiltinTools, out: pb.BuiltinTools) -> None:
    if tools.google_search:
        out.google_search.SetInParent()
    if tools.code_execution:
        out.code_execution.SetInParent()
    if tools.url_context:
        out.url_context.SetInParent()
    if tools.google_maps:
        out.google_maps.enable_widget = tools.google_maps_widget
        out.google_maps.SetInParent()


def settings_from_pb(session: pb.Session) -> SessionSettings:
    expiration = session.WhichOneof("expiration")
    return SessionSettings(
        model=session.model,
        system_instruction=session.system_instruction,
        generation_config=generation_config_from_pb(
            session.generation_config, "session.generation_config"
        ),
        tools=tuple(session.tools),
        function_declarations=function_declarations_from_pb(
            session.function_declarations, "session.function_declarations"
        ),
        labels=dict(session.labels),
        display_name=session.display_name,
        context_policy=ContextPolicy(
            session.context_policy.max_messages,
            session.context_policy.max_tokens,
            session.context_policy.low_water_fraction,
            _compaction_from_pb(session.context_policy),
        ),
        safety_settings=tuple(
            SafetySetting(s.category, s.threshold) for s in session.safety_settings
        ),
        builtin_tools=builtin_tools_from_pb(session.builtin_tools),
        ttl_seconds=_ttl(session.ttl) if expiration == "ttl" else None,
        expire_time=(
            seconds_of(session.expire_time, "session.expire_time")
            if expiration == "expire_time"
            else None
        ),
    )


def _compaction_from_pb(policy: pb.ContextPolicy) -> Compaction | None:
    if not policy.HasField("compaction"):
        return None
    c = policy.compaction
    return Compaction(
        c.trigger_tokens, c.trigger_messages, c.keep_recent_turns, c.model, c.instructions
    )


def session_to_pb(session: Session, out: pb.Session) -> None:
    s = session.settings
    out.session_id = session.session_id
    out.model = s.model
    out.system_instruction = s.system_instruction
    generation_config_to_pb(s.generation_config, out.generation_config)
    out.tools.extend(s.tools)
    for decl in s.function_declarations:
        d = out.function_declarations.add(name=decl.name, description=decl.description)
        if decl.parameters is not None:
            object_output(decl.parameters, d, "parameters", "parameters_json")
    out.labels.update(s.labels)
    out.display_name = s.display_name
    out.context_policy.max_messages = s.context_policy.max_messages
    out.context_policy.max_tokens = s.context_policy.max_tokens
    out.context_policy.low_water_fraction = s.context_policy.low_water_fraction
    compaction = s.context_policy.compaction
    if compaction is not None:
        out.context_policy.compaction.SetInParent()
        c = out.context_policy.compaction
        c.trigger_tokens = compaction.trigger_tokens
        c.trigger_messages = compaction.trigger_messages
        c.keep_recent_turns = compaction.keep_recent_turns
        c.model = compaction.model
        c.instructions = compaction.instructions
    for safety in s.safety_settings:
        out.safety_settings.add(category=safety.category, threshold=safety.threshold)
    if s.builtin_tools:
        builtin_tools_to_pb(s.builtin_tools, out.builtin_tools)
    if s.ttl_seconds is not None:
        out.ttl.FromNanoseconds(round(s.ttl_seconds * 1e9))
    elif s.expire_time is not None:
        timestamp(s.expire_time, out.expire_time)
    timestamp(session.create_time, out.create_time)
    timestamp(session.update_time, out.update_time)
    out.message_count = session.message_count
    usage_to_pb(session.usage, out.usage)
    out.state = _STATE_TO_PB[session.state]
    for call in session.pending_tool_calls:
        function_call_to_pb(call, out.pending_tool_calls.add())
    out.etag = f'W/"{session.version}-{session.uid}"'
    out.uid = session.uid


def _ttl(value: duration_pb2.Duration) -> float:
    try:
        return value.ToTimedelta().total_seconds()
    except (ValueError, OverflowError):
        raise InvalidArgument(
            "session.ttl", "is not a valid duration", reason="TTL_INVALID"
        ) from None
