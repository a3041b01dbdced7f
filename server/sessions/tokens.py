"""Token counts of messages: the model's recorded count where there is one, else an estimate."""

from __future__ import annotations

import json
from collections.abc import Iterable

from server.sessions.model import FunctionDeclaration, Message, Role

# About 4 characters a token for text, and a flat 258 tokens for each blob or file
# (Gemini's rate for an image).
CHARS_PER_TOKEN = 4
TOKENS_PER_BLOB = 258


def declarations_text(declarations: Iterable[FunctionDeclaration]) -> str:
    """Function declarations as the JSON text a request carries them in."""
    return "".join(
        json.dumps(
            {"name": d.name, "description": d.description, "parameters": d.parameters},
            separators=(",", ":"),
            default=dict,
        )
        for d in declarations
    )


def estimate_tokens(
    messages: Iterable[Message],
    system_instruction: str = "",
    declarations: Iterable[FunctionDeclaration] = (),
) -> int:
    """About what a request with these messages, instruction and declarations costs."""
    chars = len(system_instruction)
    if declarations:  # most calls have none: no JSON to build
        chars += len(declarations_text(declarations))
    blobs = 0
    for message in messages:
        for part in message.parts:
            if part.text is not None:
                chars += len(part.text)
            elif part.inline_data is not None or part.file_data is not None:
                blobs += 1
            elif part.function_call is not None:
                chars += len(part.function_call.name) + len(str(part.function_call.args))
            elif part.function_response is not None:
                response = part.function_response
                chars += len(response.name) + len(str(response.response))
                blobs += len(response.parts)
            elif part.executable_code is not None:
                chars += len(part.executable_code.code)
            elif part.code_execution_result is not None:
                chars += len(part.code_execution_result.output)
            elif part.tool_call is not None:
                chars += len(str(part.tool_call.args))
            elif part.tool_response is not None:
                chars += len(str(part.tool_response.response))
            elif part.gemini_part is not None:
                chars += len(str(part.gemini_part))
    return -(-chars // CHARS_PER_TOKEN) + blobs * TOKENS_PER_BLOB


def message_tokens(message: Message) -> int:
    """A model message's output tokens as the model counted them; an estimate otherwise."""
    usage = message.usage
    if message.role is Role.MODEL and usage is not None and usage.candidates_tokens > 0:
        return usage.candidates_tokens
    return estimate_tokens((message,))
