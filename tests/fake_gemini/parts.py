"""Builders and readers of Gemini JSON: parts, usage, base64, field lookup."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from typing import Any

from tests.fake_gemini.common import Json

# --------------------------------------------------------------------------- helpers


def b64encode(data: bytes) -> str:
    """Encodes bytes the way the Gemini API sends them (standard alphabet, padded)."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    """Decodes base64 in the standard or URL-safe alphabet, padded or not."""
    # The SDK sends URL-safe base64; the API and hand-written tests use the standard one.
    normalized = text.replace("-", "+").replace("_", "/")
    normalized += "=" * (-len(normalized) % 4)
    try:
        return base64.b64decode(normalized, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not base64: {text!r}") from exc


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.capitalize() for word in rest)


def get_field(obj: Any, *path: str | int, default: Any = None) -> Any:
    """Walks ``path`` through dicts/lists, matching each key in camelCase or snake_case."""
    for key in path:
        if isinstance(key, int):
            if not isinstance(obj, list) or not -len(obj) <= key < len(obj):
                return default
            obj = obj[key]
            continue
        if not isinstance(obj, dict):
            return default
        for candidate in (key, _camel(key), _snake(key)):
            if candidate in obj:
                obj = obj[candidate]
                break
        else:
            return default
    return obj


def text_part(text: str, *, signature: bytes | None = None) -> Json:
    """A text part, optionally carrying a thought signature."""
    return _with_signature({"text": text}, signature)


def thought_part(text: str, *, signature: bytes | None = None) -> Json:
    """A thought-summary part (``thought: true``)."""
    return _with_signature({"text": text, "thought": True}, signature)


def call_part(
    name: str,
    args: Json | None = None,
    *,
    id: str | None = None,  # mirrors the API field name
    signature: bytes | None = None,
) -> Json:
    """A functionCall part with optional id and thought signature."""
    call: Json = {"name": name, "args": args or {}}
    if id is not None:
        call["id"] = id
    return _with_signature({"functionCall": call}, signature)


def code_part(
    code: str, *, language: str = "PYTHON", id: str | None = None, signature: bytes | None = None
) -> Json:
    """An executableCode part (code execution tool)."""
    body: Json = {"language": language, "code": code}
    if id is not None:
        body["id"] = id
    return _with_signature({"executableCode": body}, signature)


def code_result_part(output: str, *, outcome: str = "OUTCOME_OK", id: str | None = None) -> Json:
    """A codeExecutionResult part."""
    body: Json = {"outcome": outcome, "output": output}
    if id is not None:
        body["id"] = id
    return {"codeExecutionResult": body}


def signature_part(signature: bytes) -> Json:
    """A part carrying only a thought signature, as the API streams them."""
    return {"thoughtSignature": b64encode(signature)}


def grounding(*sources: tuple[str, str], queries: Sequence[str] = ()) -> Json:
    """A groundingMetadata dict with web sources (uri, title), each supporting one segment."""
    return {
        "webSearchQueries": list(queries),
        "groundingChunks": [{"web": {"uri": uri, "title": title}} for uri, title in sources],
        "groundingSupports": [
            {
                "segment": {"startIndex": i, "endIndex": i + 1, "text": "x"},
                "groundingChunkIndices": [i],
                "confidenceScores": [0.5],
            }
            for i in range(len(sources))
        ],
        "searchEntryPoint": {"renderedContent": "<div>suggestions</div>"},
    }


def _with_signature(part: Json, signature: bytes | None) -> Json:
    if signature is not None:
        part["thoughtSignature"] = b64encode(signature)
    return part


def usage(prompt: int = 0, candidates: int = 0, thoughts: int = 0) -> Json:
    """A usageMetadata dict; the total is the sum, as the API reports it."""
    meta: Json = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates + thoughts,
    }
    if thoughts:
        meta["thoughtsTokenCount"] = thoughts
    return meta


def _split_text(text: str, pieces: int) -> list[str]:
    count = max(1, min(pieces, len(text)))
    size, extra = divmod(len(text), count)
    out: list[str] = []
    start = 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        out.append(text[start:end])
        start = end
    return out
