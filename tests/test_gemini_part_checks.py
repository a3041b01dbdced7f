"""A part given as Gemini JSON that chatd accepts must not make a later request one the
real API refuses (the strict fake refuses what it refuses)."""

from __future__ import annotations

import json
from collections.abc import Mapping

import grpc
import pytest
from google.protobuf import field_mask_pb2

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import content_pb2, session_pb2
from tests.conftest import Chatd
from tests.fake_gemini import FakeGemini, Reply, get_field, text_part
from tests.helpers import all_messages, violated_fields
from tests.test_gemini_fidelity import model, new_session, send, text, user


def odd(value: Mapping[str, object]) -> content_pb2.Part:
    return content_pb2.Part(gemini_part=json.dumps(value))


async def append(chatd: Chatd, *messages: content_pb2.Message) -> None:
    await chatd.stub.AppendMessages(pb.AppendMessagesRequest(session_id="g", messages=messages))


async def test_a_gemini_part_with_empty_text_needs_a_signature(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    """Gemini refuses an empty text part without a thought signature in every later turn:
    chatd refuses it in a gemini_part as it does in a typed part."""
    await new_session(gemini_chatd)
    for bad in ({"text": ""}, {"text": "", "thought": True}):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await append(gemini_chatd, user(odd(bad), text("q")), model(text("a")))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(err.value) == ["messages[0].parts[0].gemini_part"]
    signed = {"text": "", "thoughtSignature": "AAEC", "partMetadata": {"k": 1}}
    await append(gemini_chatd, user(text("q")), model(text("a"), odd(signed)))
    await send(gemini_chatd, "next")
    assert fake_gemini.requests[-1].rejection is None
    assert get_field(fake_gemini.requests[-1].contents[1], "parts", 1, "part_metadata") == {"k": 1}


@pytest.mark.parametrize(
    "bad",
    [
        {"text": "a", "functionCall": {"name": "f"}},
        {"inline_data": {"mimeType": "image/png", "data": "AAAA"}, "text": "x"},
    ],
)
async def test_a_gemini_part_holds_one_kind_of_data(
    gemini_chatd: Chatd, fake_gemini: FakeGemini, bad: dict[str, object]
) -> None:
    """Gemini's Part.data is a oneof: a part with two kinds of data is refused in every
    later turn, so chatd refuses it when it is given."""
    await new_session(gemini_chatd)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await append(gemini_chatd, user(odd(bad), text("q")), model(text("a")))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == ["messages[0].parts[0].gemini_part"]
    await send(gemini_chatd, "next")
    assert fake_gemini.requests[-1].rejection is None


async def test_a_signed_empty_gemini_part_of_another_model_is_left_out(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    """After a model change a kept Gemini JSON part goes without its signature; one whose
    text is empty is then left out, as a typed one is (Gemini refuses empty text unsigned)."""
    await new_session(gemini_chatd, model="gemini-a")
    signed = {"text": "", "partMetadata": {"k": 1}, "thoughtSignature": "AAEC"}
    fake_gemini.push(Reply(parts=[text_part("hello"), signed]))
    await send(gemini_chatd, "hi")
    await gemini_chatd.stub.UpdateSession(
        pb.UpdateSessionRequest(
            session=session_pb2.Session(session_id="g", model="gemini-b"),
            update_mask=field_mask_pb2.FieldMask(paths=["model"]),
        )
    )
    await send(gemini_chatd, "next")
    assert fake_gemini.requests[-1].rejection is None
    sent = fake_gemini.requests[-1].contents[1]["parts"]
    assert [get_field(p, "text") for p in sent] == ["hello"]
    history = await all_messages(gemini_chatd.stub, "g")
    assert len(history[1].parts) == 2


@pytest.mark.parametrize(
    "bad",
    [
        {"text": "a", "thoughtSignature": "Q"},
        {"inlineData": {"mimeType": "image/png", "data": "Q"}},
        {"inlineData": {"bogus": 1}},
        {"functionCall": {"name": "f", "args": [1]}},
    ],
)
async def test_a_gemini_part_google_genai_refuses_is_refused_when_given(
    gemini_chatd: Chatd, fake_gemini: FakeGemini, bad: dict[str, object]
) -> None:
    """A gemini_part goes through google-genai in every later turn: one it refuses (bad
    base64, unknown or mistyped fields inside) is refused when given, not on each turn
    after."""
    await new_session(gemini_chatd)
    for call, field in (
        (
            append(gemini_chatd, user(odd(bad), text("q")), model(text("a"))),
            "messages[0].parts[0].gemini_part",
        ),
        (
            gemini_chatd.stub.SendMessage(
                pb.SendMessageRequest(session_id="g", parts=[text("q"), odd(bad)])
            ),
            "parts[1].gemini_part",
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(err.value) == [field]
    await send(gemini_chatd, "next")
    assert fake_gemini.requests[-1].rejection is None


@pytest.mark.parametrize(
    ("given", "kind"),
    [
        (
            {"inlineData": {"mimeType": "image/png", "data": "AAAA", "displayName": "x"}},
            "inlineData",
        ),
        (
            {"file_data": {"mime_type": "image/png", "file_uri": "gs://a/b", "display_name": "x"}},
            "fileData",
        ),
    ],
)
async def test_a_gemini_part_goes_to_the_gemini_api_without_media_display_names(
    gemini_chatd: Chatd, fake_gemini: FakeGemini, given: dict[str, object], kind: str
) -> None:
    """The Gemini API's Blob and FileData have no display name (Vertex AI's do): a kept
    Gemini JSON part goes without it, as a typed part does, and keeps it in history."""
    await new_session(gemini_chatd)
    await append(gemini_chatd, user(odd(given), text("q")), model(text("a")))
    await send(gemini_chatd, "next")
    assert fake_gemini.requests[-1].rejection is None
    part = fake_gemini.requests[-1].contents[0]["parts"][0]
    assert get_field(part, kind, "mimeType") == "image/png"
    assert get_field(part, kind, "displayName") is None
    history = await all_messages(gemini_chatd.stub, "g")
    assert json.loads(history[0].parts[0].gemini_part) == given


@pytest.mark.parametrize(
    "streamed",
    [{"willContinue": True}, {"partialArgs": [{"jsonPath": "$.a", "stringValue": "x"}]}],
)
async def test_a_gemini_part_call_goes_without_how_it_was_streamed(
    gemini_chatd: Chatd, fake_gemini: FakeGemini, streamed: dict[str, object]
) -> None:
    """A kept function call part goes back with its id, name and args only: google-genai
    refuses partial_args and will_continue on the Gemini API, in every later turn."""
    await new_session(gemini_chatd)
    call = {"functionCall": {"name": "f", "args": {"a": "x"}, **streamed}}
    await append(gemini_chatd, user(text("q")), model(odd(call)))
    await send(gemini_chatd, "next")
    assert fake_gemini.requests[-1].rejection is None
    sent = fake_gemini.requests[-1].contents[1]["parts"][0]
    assert get_field(sent, "functionCall") == {"name": "f", "args": {"a": "x"}}
    history = await all_messages(gemini_chatd.stub, "g")
    assert json.loads(history[1].parts[0].gemini_part) == call


async def test_a_gemini_part_with_its_own_media_resolution_goes_through_v1beta(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    """Per-part media resolution is served by v1beta, not v1, in a gemini_part as in a
    typed part."""
    await new_session(gemini_chatd)
    await send(gemini_chatd, "plain")
    assert fake_gemini.requests[-1].path.startswith("/v1/")
    image = {
        "inlineData": {"mimeType": "image/png", "data": "iVBORw=="},
        "media_resolution": {"level": "MEDIA_RESOLUTION_HIGH"},
    }
    await gemini_chatd.stub.SendMessage(
        pb.SendMessageRequest(session_id="g", parts=[text("look"), odd(image)])
    )
    sent = fake_gemini.requests[-1]
    assert sent.rejection is None
    assert sent.path.startswith("/v1beta/")
    part = sent.contents[-1]["parts"][1]
    assert get_field(part, "mediaResolution") == {"level": "MEDIA_RESOLUTION_HIGH"}


async def test_an_unsigned_empty_text_part_of_an_answer_is_not_kept(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    """An answer part with empty text, no signature and fields chatd does not model is
    dropped like any empty text chunk: kept, it would be refused in every later turn."""
    await new_session(gemini_chatd)
    fake_gemini.push(Reply(parts=[text_part("hello"), {"text": "", "partMetadata": {"k": 1}}]))
    await send(gemini_chatd, "hi")
    await send(gemini_chatd, "next")
    assert fake_gemini.requests[-1].rejection is None
    history = await all_messages(gemini_chatd.stub, "g")
    assert [p.text for p in history[1].parts] == ["hello"]
    exported = await gemini_chatd.stub.ExportSession(pb.ExportSessionRequest(session_id="g"))
    await gemini_chatd.stub.ImportSession(
        pb.ImportSessionRequest(document=exported.document, session_id="copy")
    )
