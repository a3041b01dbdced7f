"""RequestEncoder's per-message memo: a history message is encoded once for as long as the
Message object lives, each turn's changes (Gemini 3's dummy signature, another model's
signatures) never leak into another request, and dead messages leave the memo."""

from __future__ import annotations

import base64
import gc

import orjson

from server.providers.gemini import wire
from server.providers.gemini.wire import DUMMY_SIGNATURE, RequestEncoder
from server.sessions.model import FunctionCall, FunctionResponse, Message, Part, Role
from server.sessions.ports import ModelRequest

SIGNATURE = b"\x01\x02\x03"


def b64(data: bytes) -> str:
    """Bytes as google-genai sends them: URL-safe base64."""
    return base64.urlsafe_b64encode(data).decode()


def user(text: str) -> Message:
    return Message(Role.USER, (Part(text=text),))


def body(encoder: RequestEncoder, model: str, *history: Message) -> dict[str, object]:
    value: dict[str, object] = orjson.loads(
        encoder.generate_body(ModelRequest(model=model, contents=list(history)))
    )
    return value


def signatures(content: object) -> list[str | None]:
    assert isinstance(content, dict)
    return [part.get("thoughtSignature") for part in content["parts"]]


def test_a_message_is_encoded_once_and_forgotten_when_it_dies() -> None:
    """The same Message objects in a later request reuse their memo entries (the memo does
    not grow); once the messages are gone, so are their entries."""
    encoder = RequestEncoder(vertex=False, forward_labels=False)
    gc.collect()  # messages of earlier tests left in reference cycles
    before = wire.memo_size()
    history = [user(f"question {i}") for i in range(50)]

    first = body(encoder, "gemini-2.5-flash", *history)
    grown = wire.memo_size()
    new = user("one more")
    second = body(encoder, "gemini-2.5-flash", *history, new)

    assert grown == before + 50
    assert wire.memo_size() == grown + 1
    assert second["contents"][:50] == first["contents"]  # type: ignore[index]
    del history, new, first, second
    gc.collect()
    assert wire.memo_size() == before


def test_the_current_turns_dummy_signature_stays_in_its_turn() -> None:
    """On Gemini 3 an unsigned call of the current turn gets the dummy signature; the same
    Message object sent again, once the turn is over, goes without it."""
    encoder = RequestEncoder(vertex=False, forward_labels=False)
    question = user("weather?")
    call = Message(Role.MODEL, (Part(function_call=FunctionCall("c1", "weather")),))
    answer = Message(Role.USER, (Part(function_response=FunctionResponse("c1", "weather")),))
    dummy = b64(DUMMY_SIGNATURE)

    in_turn = body(encoder, "gemini-3-pro-preview", question, call, answer)
    after_turn = body(encoder, "gemini-3-pro-preview", question, call, answer, user("thanks"))
    in_turn_again = body(encoder, "gemini-3-pro-preview", question, call, answer)

    assert signatures(in_turn["contents"][1]) == [dummy]  # type: ignore[index]
    assert signatures(after_turn["contents"][1]) == [None]  # type: ignore[index]
    assert signatures(in_turn_again["contents"][1]) == [dummy]  # type: ignore[index]


def test_signatures_follow_the_model_asked_and_the_api() -> None:
    """One Message object, written by one model, sent to it and to another, on both APIs:
    each request gets its own variant, whatever was encoded before."""
    thought = Part(text="thinking", thought=True, thought_signature=SIGNATURE)
    reply = Message(Role.MODEL, (thought, Part(thought_signature=SIGNATURE)), model="gemini-a")
    gemini_api = RequestEncoder(vertex=False, forward_labels=False)
    vertex = RequestEncoder(vertex=True, forward_labels=False)
    signed = b64(SIGNATURE)

    for _ in range(2):
        for encoder in (gemini_api, vertex):
            own = body(encoder, "gemini-a", user("hi"), reply)
            other = body(encoder, "gemini-b", user("hi"), reply)
            assert signatures(own["contents"][1]) == [signed, signed]  # type: ignore[index]
            # The signature-only part goes with the signatures.
            assert signatures(other["contents"][1]) == [None]  # type: ignore[index]
