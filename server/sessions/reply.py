"""Merges streamed model chunks into one model message, its usage and its finish reason."""

from __future__ import annotations

from collections.abc import AsyncIterator

from server.sessions.events import PartReceived, TextDelta
from server.sessions.model import JSON, FinishReason, JSONObject, Message, Part, Role, Usage
from server.sessions.ports import ModelChunk, ModelProvider, ModelRequest
from server.sessions.values import too_deep

_NO_USAGE = Usage()


class ReplyBuilder:
    """Accumulates the chunks of one model call.

    Adjacent text parts of the same kind are joined so history holds one part per
    run of text, not one per chunk; a part carrying a thought signature closes its
    run so the signature stays attached to exactly the text it signed. Text pieces
    are joined once, when the run closes, not on every chunk.

    The model's output meets the same JSON nesting limit as a caller's input: a function
    call (or response) nested deeper is dropped here, before anything sees or stores it,
    with the other calls of the same reply, and the call ends with MALFORMED_FUNCTION_CALL,
    as Gemini itself reports a call it could not produce; the reply's text is kept. So no
    stored turn holds a value clients cannot decode.
    """

    def __init__(self) -> None:
        self._parts: list[Part] = []
        # The open run of text: its pieces and whether it is a thought.
        self._pieces: list[str] = []
        self._thought = False
        self.usage = _NO_USAGE
        self.finish_reason: FinishReason | None = None
        self.block_reason = ""
        self.model_version = ""
        self.dropped_calls = 0
        self._metadata: dict[str, JSON] = {}
        self.prompt_feedback: JSONObject | None = None

    def add(self, chunk: ModelChunk) -> None:
        for part in chunk.parts:
            self._add_part(part)
        if chunk.usage is not None:
            # Providers report cumulative usage per call; the last report wins.
            self.usage = chunk.usage
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
        if chunk.block_reason:
            self.block_reason = chunk.block_reason
        if chunk.model_version:
            self.model_version = chunk.model_version
        if chunk.candidate_metadata:
            self._merge_metadata(chunk.candidate_metadata)
        if chunk.prompt_feedback:
            self.prompt_feedback = chunk.prompt_feedback

    def _merge_metadata(self, metadata: JSONObject) -> None:
        """A streamed answer's metadata: each chunk's fields replace the earlier ones
        (Gemini sends grounding and ratings whole), except citations, which each chunk
        reports for its own text and so add up."""
        for key, value in metadata.items():
            earlier = self._metadata.get("citationMetadata")
            if key == "citationMetadata" and isinstance(earlier, dict):
                merged = {**earlier, **value}
                # Vertex AI names the list `citations`, the Gemini API `citationSources`.
                for name in ("citations", "citationSources"):
                    seen = list(earlier.get(name, []))
                    more = [c for c in value.get(name, []) if c not in seen]
                    if name == "citations" or seen or more:
                        merged[name] = seen + more
                self._metadata[key] = merged
            else:
                self._metadata[key] = value

    @property
    def candidate_metadata(self) -> JSONObject | None:
        return dict(self._metadata) or None

    @property
    def has_content(self) -> bool:
        """The answer holds something: a part that is not an empty text or a bare
        signature. Without content it is not an answer to store or send back."""
        return any(p.has_content for p in self.parts)

    def _add_part(self, part: Part) -> None:
        if (part.function_call is not None and too_deep(part.function_call.args)) or (
            part.function_response is not None and too_deep(part.function_response.response)
        ):
            self.dropped_calls += 1
            return
        if part.text is None:
            self._close_run()
            self._parts.append(part)
            return
        if self._pieces and part.thought != self._thought:
            self._close_run()
        if part.thought_signature:
            # The signed part ends the run: the signature belongs to all of its text.
            text = "".join(self._pieces) + part.text
            self._pieces = []
            self._parts.append(
                Part(text=text, thought=part.thought, thought_signature=part.thought_signature)
            )
        elif part.text:
            self._pieces.append(part.text)
            self._thought = part.thought

    def _close_run(self) -> None:
        if self._pieces:
            self._parts.append(Part(text="".join(self._pieces), thought=self._thought))
            self._pieces = []

    @property
    def parts(self) -> tuple[Part, ...]:
        self._close_run()
        if self.dropped_calls:
            # A reply keeps none of its calls once one is dropped: a partial set would
            # split calls the model made together (and the thought signature on the first).
            return tuple(
                p for p in self._parts if p.function_call is None and p.function_response is None
            )
        return tuple(self._parts)

    def resolved_finish_reason(self) -> FinishReason:
        if self.dropped_calls:
            return FinishReason.MALFORMED_FUNCTION_CALL
        if self.block_reason and not self.parts:
            return FinishReason.PROMPT_BLOCKED
        return self.finish_reason or FinishReason.STOP

    def message(self, *, seq: int, create_time: float, turn_id: str, model: str) -> Message:
        """The reply as a model message of `model`, the model name it was requested from.

        Not the model version the reply reports: signatures go back only to the model that
        made them, and the API often names the version serving a request differently
        (gemini-2.5-flash served by gemini-2.5-flash-001), which is the same model."""
        return Message(
            role=Role.MODEL,
            parts=self.parts,
            seq=seq,
            create_time=create_time,
            turn_id=turn_id,
            usage=self.usage,
            finish_reason=self.resolved_finish_reason(),
            model=model,
            candidate_metadata=self.candidate_metadata,
        )


async def stream_model(
    provider: ModelProvider, request: ModelRequest, builder: ReplyBuilder, *, deltas: bool = True
) -> AsyncIterator[TextDelta | PartReceived]:
    """Runs one model call into `builder`, yielding its text as it arrives and its other
    parts but function calls (reported once the answer is whole), unless `deltas` is
    off: a caller that waits for the whole reply skips an event per chunk."""
    async for chunk in provider.stream(request):
        if deltas:
            for part in chunk.parts:
                if part.text:
                    yield TextDelta(part.text, part.thought)
                elif part.has_content and part.function_call is None:
                    yield PartReceived(part)
        builder.add(chunk)
