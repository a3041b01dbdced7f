"""The echo provider: an offline, deterministic stand-in that is plainly not a language model."""

from __future__ import annotations

import asyncio
import json
import math
import re
import sys
from collections.abc import AsyncIterator

from server.sessions.context import is_turn_start
from server.sessions.model import (
    CodeExecutionResult,
    ExecutableCode,
    FinishReason,
    FunctionCall,
    Message,
    Part,
    Role,
    Usage,
)
from server.sessions.ports import ModelChunk, ModelRequest, TokenCount
from server.sessions.tokens import CHARS_PER_TOKEN, estimate_tokens

NOTICE = "(chatd echo provider, not a language model)"

# A streamed chunk is a phrase of up to this many words by default, as Gemini streams
# phrases rather than single words (CHATD_ECHO_WORDS_PER_CHUNK).
WORDS_PER_CHUNK = 4


def _phrases(words: int) -> re.Pattern[str]:
    return re.compile(rf"(?:\S+\s*){{1,{words}}}|\s+")


# `/call NAME {json args}` on a line of its own asks for a function call.
_CALL = re.compile(r"^/call\s+(?P<name>\S+)\s*(?P<args>.*?)\s*$", re.MULTILINE)
CALL_USAGE = 'usage: /call <function> {"arg": "value"} (one call per line)'
# `/code SOURCE` on a line of its own shows what a code execution answer looks like.
_CODE = re.compile(r"^/code\s+(?P<code>.+?)\s*$", re.MULTILINE)
CODE_NOT_RUN = f"not run: {NOTICE} runs no code"


def _not_json(text: str) -> object:
    raise ValueError(f"{text} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def _double_sized(text: str) -> int:
    # Arguments travel as protobuf Struct numbers, which are doubles.
    value = int(text)
    if abs(value) > sys.float_info.max:
        raise ValueError(f"{text[:20]}... is out of range")
    return value


def _describe(part: Part) -> str:
    if part.text is not None:
        return part.text
    if part.inline_data is not None:
        return f"[{part.inline_data.mime_type}, {len(part.inline_data.data)} bytes]"
    if part.file_data is not None:
        return f"[{part.file_data.mime_type} file {part.file_data.file_uri}]"
    if part.function_response is not None:
        return f"[result of {part.function_response.name}]"
    if part.gemini_part is not None:
        return f"[Gemini part with {', '.join(sorted(part.gemini_part))}]"
    return ""


class EchoProvider:
    """Repeats the user's last message, says how much history it was sent, and streams it
    a few words at a time (`words_per_chunk`, WORDS_PER_CHUNK by default).

    A line `/call NAME {"arg": ...}` in the message makes it call function NAME instead
    (several lines: several calls at once), unless the request allows no function calls
    (ModelRequest.allow_function_calls): then it answers in words, as a model told so
    does; given the results, it reports them. `delay`
    seconds pass before each delta, to make streaming visible by hand.
    """

    def __init__(
        self,
        *,
        default_model: str = "echo",
        delay: float = 0.0,
        words_per_chunk: int = WORDS_PER_CHUNK,
    ) -> None:
        if words_per_chunk < 1:
            raise ValueError("words_per_chunk must be at least 1")
        self._default_model = default_model
        self._delay = delay
        self._phrases = _phrases(words_per_chunk)

    @property
    def name(self) -> str:
        return "echo"

    @property
    def default_model(self) -> str:
        return self._default_model

    def reply_text(self, request: ModelRequest) -> str:
        contents = request.contents
        last = next((m for m in reversed(contents) if m.role is Role.USER), None)
        said = " ".join(_describe(p) for p in last.parts) if last else ""
        turns = sum(1 for m in contents if is_turn_start(m))
        return (
            f'Echo: "{said}" - turn {turns} of this conversation, '
            f"{len(contents) - 1} earlier messages in context {NOTICE}"
        )

    def summary_text(self, request: ModelRequest) -> str:
        """A compaction summary: how many messages of each speaker the transcript holds,
        and how many earlier summaries (server.sessions.compaction.transcript's layout)."""
        text = "".join(p.text or "" for m in request.contents for p in m.parts)
        paragraphs = text.split("\n\n")
        user = sum(1 for p in paragraphs if p.startswith("user: "))
        model = sum(1 for p in paragraphs if p.startswith("model: "))
        earlier = sum(1 for p in paragraphs if p.startswith("[earlier summary]"))
        return (
            f"Echo summary: {user} user and {model} model messages, "
            f"{earlier} earlier summaries {NOTICE}"
        )

    def reply(self, request: ModelRequest) -> tuple[Part, ...] | str:
        """Function calls asked for with /call lines, a summary, or the reply text."""
        if request.summarising:
            return self.summary_text(request)
        last = request.contents[-1] if request.contents else None
        if last is not None and any(p.function_response is not None for p in last.parts):
            results = "; ".join(
                f"{r.name} returned {json.dumps(r.response, sort_keys=True)}"
                for p in last.parts
                if (r := p.function_response) is not None
            )
            return f"Echo: {results} {NOTICE}"
        text = "".join(p.text or "" for p in last.parts) if last is not None else ""
        calls = []
        for match in _CALL.finditer(text):
            try:
                args = json.loads(
                    match["args"] or "{}",
                    parse_constant=_not_json,
                    parse_float=_finite,
                    parse_int=_double_sized,
                )
            except (ValueError, RecursionError):
                # RecursionError: JSON nested far too deep for Python's parser.
                return f"Echo: cannot parse the arguments of /call {match['name']}: {CALL_USAGE}"
            if not isinstance(args, dict):
                return f"Echo: /call arguments must be a JSON object: {CALL_USAGE}"
            calls.append(Part(function_call=FunctionCall("", match["name"], args)))
        if calls and request.allow_function_calls:
            return tuple(calls)
        code = [m["code"] for m in _CODE.finditer(text)]
        if code:
            # The parts Gemini's code execution tool answers with, so that clients can be
            # built and tried offline; the code itself is never run.
            return (
                Part(text=f"Echo: code execution parts {NOTICE}"),
                *(
                    part
                    for i, source in enumerate(code)
                    for part in (
                        Part(executable_code=ExecutableCode("PYTHON", source, f"code-{i}")),
                        Part(
                            code_execution_result=CodeExecutionResult(
                                "OUTCOME_FAILED", CODE_NOT_RUN, f"code-{i}"
                            )
                        ),
                    )
                ),
            )
        return self.reply_text(request)

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        reply = self.reply(request)
        if isinstance(reply, str):
            for phrase in self._phrases.findall(reply):
                if self._delay:
                    await asyncio.sleep(self._delay)
                yield ModelChunk(parts=(Part(text=phrase),))
            answer = -(-len(reply) // CHARS_PER_TOKEN)
        else:
            if self._delay:
                await asyncio.sleep(self._delay)
            yield ModelChunk(parts=reply)
            answer = estimate_tokens([Message(Role.MODEL, reply)])
        prompt = estimate_tokens(request.contents, request.system_instruction)
        yield ModelChunk(
            usage=Usage(
                prompt_tokens=prompt, candidates_tokens=answer, total_tokens=prompt + answer
            ),
            finish_reason=FinishReason.STOP,
            model_version=request.model,
        )

    async def count_tokens(self, request: ModelRequest) -> TokenCount:
        total = estimate_tokens(
            request.contents, request.system_instruction, request.function_declarations
        )
        return TokenCount(total, estimated=True)

    async def close(self) -> None:
        return None
