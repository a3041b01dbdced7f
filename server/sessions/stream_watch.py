"""watch_stream: passes a model stream through and reports, once it ends, how it ended and
the last usage, finish reason and model version it carried (the provider decorators of
metrics and tracing record these)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass

from server.sessions.model import FinishReason, Usage
from server.sessions.ports import ModelChunk


@dataclass(slots=True)
class StreamSeen:
    """The last of each a stream reported (providers report them cumulatively)."""

    usage: Usage | None = None
    finish_reason: FinishReason | None = None
    model_version: str = ""


async def watch_stream(
    chunks: AsyncIterator[ModelChunk],
    on_end: Callable[[BaseException | None, StreamSeen], None],
) -> AsyncGenerator[ModelChunk, None]:
    """Yields `chunks`; when the stream ends, fails or is closed early, calls
    `on_end(failure, seen)` once, `failure` None when it ran to its end. A stream closed
    early (at our yield) closes the upstream call at once, not at garbage collection."""
    seen = StreamSeen()
    failure: BaseException | None = None
    try:
        async for chunk in chunks:
            if chunk.usage is not None:
                seen.usage = chunk.usage
            if chunk.finish_reason is not None:
                seen.finish_reason = chunk.finish_reason
            if chunk.model_version:
                seen.model_version = chunk.model_version
            yield chunk
    except BaseException as exc:
        failure = exc
        raise
    finally:
        try:
            aclose = getattr(chunks, "aclose", None)
            if failure is not None and aclose is not None:
                await aclose()
        finally:
            on_end(failure, seen)
