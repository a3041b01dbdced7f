"""Proto <-> domain conversion for the stateless GenerateContent RPCs."""

from __future__ import annotations

from typing import Protocol

from chatd.v1 import chat_service_pb2 as pb
from server.rpc.content_codec import (
    FINISH_TO_PB,
    content_to_pb,
    contents_from_pb,
    function_call_to_pb,
    usage_to_pb,
)
from server.rpc.metadata_codec import candidate_metadata_to_pb, prompt_feedback_to_pb
from server.rpc.session_codec import (
    builtin_tools_from_pb,
    function_declarations_from_pb,
    generation_config_from_pb,
)
from server.sessions.events import TextDelta, ToolCallRequested
from server.sessions.model import FinishReason, JSONObject, SafetySetting, Usage
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
        builtin_tools=builtin_tools_from_pb(request.builtin_tools),
        labels=dict(request.labels),
    )


class ModelAnswer(Protocol):
    """What a GenerationDone and a TurnReply both say of the model's (last) answer."""

    @property
    def finish_reason(self) -> FinishReason: ...
    @property
    def usage(self) -> Usage: ...
    @property
    def model(self) -> str: ...
    @property
    def block_reason(self) -> str: ...
    @property
    def candidate_metadata(self) -> JSONObject | None: ...
    @property
    def no_content(self) -> bool: ...
    @property
    def prompt_feedback(self) -> JSONObject | None: ...


def answer_to_pb(answer: ModelAnswer, out: pb.Generation | pb.Reply) -> None:
    """The fields a Generation and a Reply share, which describe the model's answer."""
    out.finish_reason = FINISH_TO_PB[answer.finish_reason]
    usage_to_pb(answer.usage, out.usage)
    out.model = answer.model
    out.block_reason = answer.block_reason
    if answer.candidate_metadata is not None:
        candidate_metadata_to_pb(answer.candidate_metadata, out.candidate_metadata)
    out.no_content = answer.no_content
    if answer.prompt_feedback is not None:
        prompt_feedback_to_pb(answer.prompt_feedback, out.prompt_feedback)


def generation_to_pb(done: GenerationDone, out: pb.Generation) -> None:
    content_to_pb(done.content, out.content)
    out.text = done.content.text
    answer_to_pb(done, out)


def generation_event_to_pb(
    event: GenerationEvent, sequence_number: int
) -> pb.StreamGenerateContentResponse:
    out = pb.StreamGenerateContentResponse(sequence_number=sequence_number)
    match event:
        case TextDelta(text=text, thought=thought):
            out.text_delta.text = text
            out.text_delta.thought = thought
        case ToolCallRequested(call=call):
            function_call_to_pb(call, out.function_call)
        case GenerationDone():
            generation_to_pb(event, out.generation)
    return out
