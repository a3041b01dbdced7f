"""ScriptedModel: a ModelProvider that answers each call with the next scripted answer,
and can stop at a Gate until the test opens it, so a test decides where a call stands.

    model = ScriptedModel()
    model.answer("Hel", "lo!")                          # text deltas, then the final chunk
    model.answer(call("lookup", {"q": "x"}))            # a function call
    gate = Gate()
    model.answer("one ", gate, "two")                   # stops after "one " until gate.open()
    model.answer("half", Unavailable("gone", reason="UPSTREAM_UNAVAILABLE"))  # fails mid-stream

It keeps the ModelProvider contract as a real provider does: every call ends with a chunk
carrying usage and a finish reason; `ModelRequest.timeout` bounds a wait at a gate
(DeadlineExceeded, reason UPSTREAM_TIMEOUT); function calls are left out when
`allow_function_calls` is False (the model answers in words); a consumer that cancels or
closes the stream ends the call (its record says "closed").
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from server.sessions.errors import ChatdError, DeadlineExceeded
from server.sessions.model import JSON, FinishReason, FunctionCall, Part, Usage
from server.sessions.ports import ModelChunk, ModelRequest, TokenCount
from server.sessions.tokens import estimate_tokens


class Gate:
    """A point where a scripted answer waits: `reached` is set when a call gets there, and
    the call goes on once the test calls open()."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self._open = asyncio.Event()

    def open(self) -> None:
        self._open.set()

    async def pass_through(self) -> None:
        self.reached.set()
        await self._open.wait()


def call(name: str, args: Mapping[str, JSON] | None = None, call_id: str = "") -> Part:
    """A function call part; without `call_id` chatd gives the call an id of its own."""
    return Part(function_call=FunctionCall(call_id, name, dict(args or {})))


# What an answer is made of: a text delta, a part, a chunk sent as it is, a gate to wait
# at, or a domain error to raise there.
Step = str | Part | ModelChunk | Gate | ChatdError


@dataclass(frozen=True)
class Answer:
    steps: tuple[Step, ...]
    finish_reason: FinishReason = FinishReason.STOP
    # None: estimated from the request and the answer, as the echo provider does.
    usage: Usage | None = None


@dataclass
class ModelCall:
    """One call as the model saw it: the request, the chunks it sent and how it ended:
    "" while running, then "completed", "failed" or "closed" (the consumer cancelled it
    or closed the stream early). `ended` is set when it ends."""

    request: ModelRequest
    chunks: list[ModelChunk] = field(default_factory=list)
    outcome: str = ""
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def text(self) -> str:
        return "".join(p.text or "" for c in self.chunks for p in c.parts)


class ScriptedModel:
    """Answers calls in order with the scripted answers; a call with none left fails
    the test (AssertionError). `calls` records every call; `called` is set at each new
    one (and replaced by a fresh event), so a test can wait for the next call."""

    def __init__(self, *, name: str = "scripted", default_model: str = "scripted-model") -> None:
        self._name = name
        self._default_model = default_model
        self._answers: deque[Answer] = deque()
        self.calls: list[ModelCall] = []
        self.called = asyncio.Event()

    @property
    def name(self) -> str:
        return self._name

    @property
    def default_model(self) -> str:
        return self._default_model

    def answer(
        self,
        *steps: Step,
        finish_reason: FinishReason = FinishReason.STOP,
        usage: Usage | None = None,
    ) -> None:
        """Queues the answer to the next call without one."""
        self._answers.append(Answer(steps, finish_reason, usage))

    @property
    def unanswered(self) -> int:
        """Answers queued that no call has taken yet."""
        return len(self._answers)

    @property
    def requests(self) -> list[ModelRequest]:
        return [c.request for c in self.calls]

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        record = ModelCall(request)
        self.calls.append(record)
        called, self.called = self.called, asyncio.Event()
        called.set()
        deadline = (
            None if request.timeout is None else asyncio.get_running_loop().time() + request.timeout
        )
        try:
            assert self._answers, f"no answer scripted for call {len(self.calls)}"
            answer = self._answers.popleft()
            for step in answer.steps:
                if isinstance(step, Gate):
                    await _wait(step, deadline, request.model)
                    continue
                if isinstance(step, ChatdError):
                    raise step
                chunk = _chunk(step)
                if not request.allow_function_calls:
                    chunk = chunk._replace(
                        parts=tuple(p for p in chunk.parts if p.function_call is None)
                    )
                record.chunks.append(chunk)
                yield chunk
            final = ModelChunk(
                usage=answer.usage or _usage(request, record),
                finish_reason=answer.finish_reason,
                model_version=request.model,
            )
            record.chunks.append(final)
            yield final
            record.outcome = "completed"
        except (asyncio.CancelledError, GeneratorExit):
            record.outcome = "closed"
            raise
        except BaseException:
            record.outcome = "failed"
            raise
        finally:
            record.ended.set()

    async def count_tokens(self, request: ModelRequest) -> TokenCount:
        total = estimate_tokens(
            request.contents, request.system_instruction, request.function_declarations
        )
        return TokenCount(total, estimated=True)

    async def close(self) -> None:
        return None


async def _wait(gate: Gate, deadline: float | None, model: str) -> None:
    if deadline is None:
        await gate.pass_through()
        return
    try:
        async with asyncio.timeout_at(deadline):
            await gate.pass_through()
    except TimeoutError:
        raise DeadlineExceeded(
            f"model {model!r} did not answer before the request's deadline",
            reason="UPSTREAM_TIMEOUT",
        ) from None


def _chunk(step: str | Part | ModelChunk) -> ModelChunk:
    if isinstance(step, ModelChunk):
        return step
    return ModelChunk(parts=(Part(text=step) if isinstance(step, str) else step,))


def _usage(request: ModelRequest, record: ModelCall) -> Usage:
    prompt = estimate_tokens(request.contents, request.system_instruction)
    answer = max(1, -(-len(record.text) // 4))
    return Usage(prompt_tokens=prompt, candidates_tokens=answer, total_tokens=prompt + answer)
