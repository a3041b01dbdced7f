"""Proto <-> domain conversion for sessions and their settings."""

from __future__ import annotations

from google.protobuf import duration_pb2

from chatd.v1 import session_pb2 as pb
from server.rpc.content_codec import (
    dict_to_struct,
    function_call_to_pb,
    seconds_of,
    struct_to_dict,
    timestamp,
    usage_to_pb,
)
from server.sessions.errors import InvalidArgument
from server.sessions.model import (
    ContextPolicy,
    FunctionDeclaration,
    GenerationConfig,
    SafetySetting,
    Session,
    SessionSettings,
    SessionState,
    ThinkingConfig,
)

_LEVELS = {
    pb.ThinkingConfig.THINKING_LEVEL_MINIMAL: "MINIMAL",
    pb.ThinkingConfig.THINKING_LEVEL_LOW: "LOW",
    pb.ThinkingConfig.THINKING_LEVEL_MEDIUM: "MEDIUM",
    pb.ThinkingConfig.THINKING_LEVEL_HIGH: "HIGH",
}
_LEVELS_TO_PB = {v: k for k, v in _LEVELS.items()}
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
        response_json_schema=(
            struct_to_dict(config.response_json_schema, f"{field}.response_json_schema")
            if config.HasField("response_json_schema")
            else None
        ),
        thinking=thinking,
        presence_penalty=config.presence_penalty if has("presence_penalty") else None,
        frequency_penalty=config.frequency_penalty if has("frequency_penalty") else None,
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
        dict_to_struct(config.response_json_schema, out.response_json_schema)
    if config.thinking is not None:
        t = config.thinking
        out.thinking.SetInParent()
        if t.include_thoughts is not None:
            out.thinking.include_thoughts = t.include_thoughts
        if t.thinking_budget is not None:
            out.thinking.thinking_budget = t.thinking_budget
        if t.thinking_level is not None:
            out.thinking.thinking_level = _LEVELS_TO_PB[t.thinking_level]


def settings_from_pb(session: pb.Session) -> SessionSettings:
    expiration = session.WhichOneof("expiration")
    return SessionSettings(
        model=session.model,
        system_instruction=session.system_instruction,
        generation_config=generation_config_from_pb(
            session.generation_config, "session.generation_config"
        ),
        tools=tuple(session.tools),
        function_declarations=tuple(
            FunctionDeclaration(
                d.name,
                d.description,
                struct_to_dict(d.parameters, "session.function_declarations")
                if d.HasField("parameters")
                else None,
            )
            for d in session.function_declarations
        ),
        labels=dict(session.labels),
        display_name=session.display_name,
        context_policy=ContextPolicy(
            session.context_policy.max_messages, session.context_policy.max_tokens
        ),
        safety_settings=tuple(
            SafetySetting(s.category, s.threshold) for s in session.safety_settings
        ),
        ttl_seconds=_ttl(session.ttl) if expiration == "ttl" else None,
        expire_time=(
            seconds_of(session.expire_time, "session.expire_time")
            if expiration == "expire_time"
            else None
        ),
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
            dict_to_struct(decl.parameters, d.parameters)
    out.labels.update(s.labels)
    out.display_name = s.display_name
    out.context_policy.max_messages = s.context_policy.max_messages
    out.context_policy.max_tokens = s.context_policy.max_tokens
    for safety in s.safety_settings:
        out.safety_settings.add(category=safety.category, threshold=safety.threshold)
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
        raise InvalidArgument("session.ttl", "is not a valid duration") from None
