"""Stateless generation: the caller supplies the whole conversation and nothing is stored."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field

from server.sessions.errors import InvalidArgument
from server.sessions.events import PartReceived, TextDelta, ToolCallRequested
from server.sessions.model import (
    BuiltinTools,
    FinishReason,
    FunctionDeclaration,
    GenerationConfig,
    JSONObject,
    Message,
    SafetySetting,
    SessionSettings,
    Usage,
)
from server.sessions.ports import ModelProvider, ModelRequest
from server.sessions.reply import ReplyBuilder, stream_model
from server.sessions.validation import check_settings


@dataclass(frozen=True, slots=True)
class GenerateInput:
    model: str
    contents: Sequence[Message]
    system_instruction: str = ""
    generation_config: GenerationConfig = GenerationConfig()
    function_declarations: Sequence[FunctionDeclaration] = ()
    safety_settings: Sequence[SafetySetting] = ()
    timeout: float | None = None
    builtin_tools: BuiltinTools = BuiltinTools()
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GenerationDone:
    """The model's whole answer; always the last event of a generation."""

    content: Message
    finish_reason: FinishReason
    usage: Usage
    model: str
    block_reason: str = ""
    candidate_metadata: JSONObject | None = None
    # The answer had no content (no candidate, an empty text, a bare signature).
    no_content: bool = False
    prompt_feedback: JSONObject | None = None


GenerationEvent = TextDelta | ToolCallRequested | GenerationDone


async def generate(
    provider: ModelProvider, given: GenerateInput
) -> AsyncGenerator[GenerationEvent, None]:
    """Validates `given`, calls the model once and streams its answer."""
    if not given.contents:
        raise InvalidArgument(
            "contents", "is required: the conversation to continue", reason="FIELD_REQUIRED"
        )
    settings = SessionSettings(
        model=given.model,
        system_instruction=given.system_instruction,
        generation_config=given.generation_config,
        function_declarations=tuple(given.function_declarations),
        labels=dict(given.labels),
        safety_settings=tuple(given.safety_settings),
        builtin_tools=given.builtin_tools,
    )
    # The same rules as a session's settings, reported against this request's fields.
    check_settings(settings, known_tools=(), prefix="")
    request = ModelRequest(
        model=given.model or provider.default_model,
        contents=given.contents,
        system_instruction=given.system_instruction,
        generation_config=given.generation_config,
        function_declarations=given.function_declarations,
        safety_settings=given.safety_settings,
        timeout=given.timeout,
        builtin_tools=given.builtin_tools,
        labels=given.labels,
    )
    builder = ReplyBuilder()
    async for delta in stream_model(provider, request, builder):
        # StreamGenerateContent has no event for them: the final content carries them.
        if not isinstance(delta, PartReceived):
            yield delta
    for part in builder.parts:
        if part.function_call is not None:
            yield ToolCallRequested(part.function_call, caller_executed=True)
    yield GenerationDone(
        content=builder.message(seq=0, create_time=0.0, turn_id="", model=request.model),
        finish_reason=builder.resolved_finish_reason(),
        usage=builder.usage,
        model=builder.model_version or request.model,
        block_reason=builder.block_reason,
        candidate_metadata=builder.candidate_metadata,
        no_content=not builder.has_content,
        prompt_feedback=builder.prompt_feedback,
    )
