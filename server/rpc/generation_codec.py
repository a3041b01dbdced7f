"""Proto <-> domain conversion for the stateless GenerateContent RPCs."""

from __future__ import annotations

from chatd.v1 import chat_service_pb2 as pb
from server.rpc.content_codec import (
    FINISH_TO_PB,
    content_to_pb,
    contents_from_pb,
    dict_to_struct,
    usage_to_pb,
)
from server.rpc.session_codec import function_declarations_from_pb, generation_config_from_pb
from server.sessions.events import TextDelta, ToolCallRequested
from server.sessions.model import SafetySetting
from server.sessions.stateless import GenerateInput, GenerationDone, GenerationEvent

GenerateRequest = pb.GenerateContentRequest | pb.StreamGenerateContentRequest


def generate_input(request: GenerateRequest, timeout: float | None) -> GenerateInput:
    """What a GenerateContent or StreamGenerateContent request asks for (same fields)."""
    return GenerateInput(
        model=request.model,
        contents=contents_from_pb(request.contents, "contents"),
        system_instruction=request.system_instruction,
        generation_config=generation_config_from_pb(request.generation_config),
        function_declarations=function_declarations_from_pb(
            request.function_declarations, "function_declarations"
        ),
        safety_settings=tuple(
            SafetySetting(s.category, s.threshold) for s in request.safety_settings
        ),
        timeout=timeout,
        labels=dict(request.labels),
    )


def generation_to_pb(done: GenerationDone, out: pb.Generation) -> None:
    content_to_pb(done.content, out.content)
    out.text = done.content.text
    out.finish_reason = FINISH_TO_PB[done.finish_reason]
    usage_to_pb(done.usage, out.usage)
    out.model = done.model
    out.block_reason = done.block_reason


def generation_event_to_pb(
    event: GenerationEvent, sequence_number: int
) -> pb.StreamGenerateContentResponse:
    out = pb.StreamGenerateContentResponse(sequence_number=sequence_number)
    match event:
        case TextDelta(text=text, thought=thought):
            out.text_delta.text = text
            out.text_delta.thought = thought
        case ToolCallRequested(call=call):
            out.function_call.id = call.id
            out.function_call.name = call.name
            dict_to_struct(call.args, out.function_call.args)
        case GenerationDone():
            generation_to_pb(event, out.generation)
    return out
