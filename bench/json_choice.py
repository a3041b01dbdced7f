"""The JSON library for the gemini provider's wire path, measured: `python -m bench.json_choice`.

Decoding: the 50 SSE payloads of a streamed reply shaped as Gemini streams one (each event
a GenerateContentResponse with text, usage and model version; a signature and the finish
reason on the last), with the stdlib's `json`, `orjson`, and `msgspec` (untyped
`msgspec.json.decode`, and typed Structs for the fields chatd reads). Encoding: a
20-message `contents` list (alternating user/model text of about 200 characters). Then the
whole per-chunk parse: google-genai's (`_GenerateContentResponse_from_mldev` and
`GenerateContentResponse._from_response`, what its stream does for each event, and then
chatd's former mapping of the SDK types) against `orjson.loads` + `chunk_from_json`, and
the SSE split itself (google-genai's `HttpResponse` line decoder and event split against
`SseDecoder`). Figures are µs per operation, the best of `--repeat` timings; CPU-bound,
single-threaded, so a busy machine inflates them all alike.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import platform
import timeit
from collections.abc import Callable
from typing import Any

import msgspec
import orjson
from google.genai import _api_client, types
from google.genai import models as sdk_models

from server.providers.gemini.answers import chunk_from_json
from server.providers.gemini.sse import SseDecoder
from tests.sdk_response_oracle import chunk_from_sdk, sse_response

CHUNKS = 50
MODEL_VERSION = "gemini-2.5-flash"
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "Gemini",
    "streams",
    "its",
    "answer",
]


def reply_events(chunks: int = CHUNKS) -> list[dict[str, Any]]:
    """A streamed reply as Gemini sends it: every event carries the candidate, the running
    usage, the model version and the response id."""
    events = []
    for i in range(chunks):
        text = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(6)) + " "
        part: dict[str, Any] = {"text": text}
        candidate: dict[str, Any] = {"content": {"parts": [part], "role": "model"}, "index": 0}
        if i == chunks - 1:
            part["thoughtSignature"] = base64.b64encode(bytes(range(256)) * 2).decode()
            candidate["finishReason"] = "STOP"
        events.append(
            {
                "candidates": [candidate],
                "usageMetadata": {
                    "promptTokenCount": 1000,
                    "candidatesTokenCount": 5 * (i + 1),
                    "totalTokenCount": 1000 + 5 * (i + 1),
                    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1000}],
                    "thoughtsTokenCount": 120,
                },
                "modelVersion": MODEL_VERSION,
                "responseId": "mZ3PaLzYJ4WnkdUP1Y2M0Ac",
            }
        )
    return events


def contents(messages: int = 20) -> list[dict[str, Any]]:
    text = ("Some history text of a chat, about two hundred characters long. " * 4)[:200]
    return [
        {"role": "user" if i % 2 == 0 else "model", "parts": [{"text": f"{i} {text}"}]}
        for i in range(messages)
    ]


# msgspec's typed decode: Structs for what chatd reads (unknown fields are skipped, so a
# part's fields chatd does not model would be lost: the untyped decode keeps them).
class SPart(msgspec.Struct, rename="camel", omit_defaults=True):
    text: str | None = None
    thought: bool | None = None
    thought_signature: str | None = None
    function_call: dict[str, Any] | None = None


class SContent(msgspec.Struct, omit_defaults=True):
    parts: list[SPart] = []
    role: str | None = None


class SCandidate(msgspec.Struct, rename="camel", omit_defaults=True):
    content: SContent | None = None
    finish_reason: str | None = None
    index: int | None = None


class SModalityCount(msgspec.Struct, rename="camel"):
    modality: str | None = None
    token_count: int | None = None


class SUsage(msgspec.Struct, rename="camel", omit_defaults=True):
    prompt_token_count: int | None = None
    candidates_token_count: int | None = None
    total_token_count: int | None = None
    thoughts_token_count: int | None = None
    prompt_tokens_details: list[SModalityCount] | None = None


class SResponse(msgspec.Struct, rename="camel", omit_defaults=True):
    candidates: list[SCandidate] = []
    usage_metadata: SUsage | None = None
    model_version: str | None = None
    response_id: str | None = None


class SMessage(msgspec.Struct, omit_defaults=True):
    role: str
    parts: list[SPart]


def per_op(fn: Callable[[], object], repeat: int, ops: int = 1) -> float:
    """µs per op: the best of `repeat` timings of enough calls for about 0.2 s each."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    number = max(1, number)
    best = min(timer.repeat(repeat=repeat, number=number))
    return best / number / ops * 1e6


def sdk_parse(payload: bytes) -> types.GenerateContentResponse:
    """What google-genai's stream does with one event (models.py, _generate_content_stream)."""
    response = sdk_models._GenerateContentResponse_from_mldev(json.loads(payload), None, None)
    return types.GenerateContentResponse._from_response(response=response, kwargs={})


def sdk_split(body: bytes, reads: list[bytes]) -> list[str]:
    async def run() -> list[str]:
        response = _api_client.HttpResponse({}, sse_response(reads))
        return [s async for s in response._aiter_response_stream()]

    return asyncio.run(run())


def chatd_split(reads: list[bytes]) -> list[bytes]:
    decoder = SseDecoder()
    out = [p for chunk in reads for p in decoder.feed(chunk)]
    return out + decoder.end()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    repeat = args.repeat

    events = reply_events()
    payloads = [orjson.dumps(e) for e in events]
    assert [json.loads(p) for p in payloads] == events
    body = b"".join(b"data: " + p + b"\r\n\r\n" for p in payloads)
    reads = [body[i : i + 1024] for i in range(0, len(body), 1024)]
    typed_decoder = msgspec.json.Decoder(SResponse)
    history = contents()
    typed_history = [
        SMessage(m["role"], [SPart(text=p["text"]) for p in m["parts"]]) for m in history
    ]
    encoder = msgspec.json.Encoder()
    assert msgspec.json.decode(encoder.encode(typed_history)) == history
    assert chatd_split(reads) == payloads
    # The two parses agree on this reply (tests/test_wire_response_oracle.py at large).
    assert [chunk_from_json(orjson.loads(p)) for p in payloads] == [
        chunk_from_sdk(sdk_parse(p)) for p in payloads
    ]

    def each(decode: Callable[[bytes], object]) -> Callable[[], object]:
        return lambda: [decode(p) for p in payloads]

    n = len(payloads)
    rows: list[tuple[str, str, float]] = [
        ("decode 1 SSE payload", "json.loads", per_op(each(json.loads), repeat, n)),
        ("decode 1 SSE payload", "orjson.loads", per_op(each(orjson.loads), repeat, n)),
        (
            "decode 1 SSE payload",
            "msgspec.json.decode (untyped)",
            per_op(each(msgspec.json.decode), repeat, n),
        ),
        (
            "decode 1 SSE payload",
            "msgspec typed Structs",
            per_op(each(typed_decoder.decode), repeat, n),
        ),
        (
            "encode 20-message contents",
            "json.dumps(...).encode()",
            per_op(lambda: json.dumps(history).encode(), repeat),
        ),
        (
            "encode 20-message contents",
            "orjson.dumps",
            per_op(lambda: orjson.dumps(history), repeat),
        ),
        (
            "encode 20-message contents",
            "msgspec.json.encode (dicts)",
            per_op(lambda: encoder.encode(history), repeat),
        ),
        (
            "encode 20-message contents",
            "msgspec typed Structs",
            per_op(lambda: encoder.encode(typed_history), repeat),
        ),
        (
            "parse 1 chunk to ModelChunk",
            "google-genai parse + former to_chunk",
            per_op(each(lambda p: chunk_from_sdk(sdk_parse(p))), repeat, n),
        ),
        (
            "parse 1 chunk to ModelChunk",
            "google-genai parse only",
            per_op(each(sdk_parse), repeat, n),
        ),
        (
            "parse 1 chunk to ModelChunk",
            "orjson.loads + chunk_from_json",
            per_op(each(lambda p: chunk_from_json(orjson.loads(p))), repeat, n),
        ),
        (
            "parse 1 chunk to ModelChunk",
            "msgspec.json.decode + chunk_from_json",
            per_op(each(lambda p: chunk_from_json(msgspec.json.decode(p))), repeat, n),
        ),
        (
            "split 1 SSE event",
            "google-genai HttpResponse (async)",
            per_op(lambda: sdk_split(body, reads), repeat, n),
        ),
        (
            "split 1 SSE event",
            "SseDecoder",
            per_op(lambda: chatd_split(reads), repeat, n),
        ),
    ]
    print(
        f"python {platform.python_version()}, orjson {orjson.__version__}, "
        f"msgspec {msgspec.__version__}; {n} payloads of {min(map(len, payloads))}-"
        f"{max(map(len, payloads))} bytes; contents {len(orjson.dumps(history))} bytes"
    )
    print(f"{'operation':<30} {'how':<40} {'µs/op':>9}")
    for what, how, us in rows:
        print(f"{what:<30} {how:<40} {us:>9.2f}")


if __name__ == "__main__":
    main()
