"""The gemini provider's credentials against the fake: an API key for the Gemini API (and
Vertex AI express mode), and Vertex AI with Application Default Credentials, where
google-auth signs a service account's grant, gets an access token from the fake's token
endpoint and the SDK sends it as a bearer token. Through the provider Protocol and through
chatd over gRPC; no SDK or google-auth function is patched."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import chat_service_pb2_grpc
from server import app
from server.config import Settings
from server.providers.gemini import GeminiProvider
from server.sessions import errors
from server.sessions.model import Message, Part, Role
from server.sessions.ports import ModelProvider, ModelRequest
from tests.conftest import StartChatd, fast_gemini
from tests.fake_gemini import FakeGemini, Json
from tests.helpers import rich_details

MODEL = "gemini-2.5-flash"
PROJECT = "test-project"
LOCATION = "us-central1"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
# Variables google-genai and google-auth read, cleared so the host's own cannot leak in.
_AMBIENT = (
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_CLOUD_QUOTA_PROJECT",
    "GOOGLE_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_CLOUD_PROJECT",
    "GOOGLE_CLOUD_LOCATION",
    "GOOGLE_GENAI_USE_VERTEXAI",
    "GOOGLE_GENAI_API_VERSION",
)

ProviderFactory = Callable[..., GeminiProvider]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _AMBIENT:
        monkeypatch.delenv(name, raising=False)


def use_adc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, info: Json) -> Path:
    """Writes a service-account key file and points GOOGLE_APPLICATION_CREDENTIALS at it,
    which is where google-auth looks first for Application Default Credentials
    (https://cloud.google.com/docs/authentication/application-default-credentials)."""
    path = tmp_path / "service-account.json"
    path.write_text(json.dumps(info))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    return path


@pytest.fixture
def adc(fake_gemini: FakeGemini, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Json:
    """Application Default Credentials: a service account the fake's token endpoint trusts."""
    info = fake_gemini.service_account()
    use_adc(monkeypatch, tmp_path, info)
    return info


@pytest.fixture
async def make_provider(fake_gemini: FakeGemini) -> AsyncIterator[ProviderFactory]:
    """Builds providers on the fake (GeminiSettings overrides as keywords); closes them all."""
    made: list[GeminiProvider] = []

    def make(**overrides: Any) -> GeminiProvider:
        provider = fast_gemini(fake_gemini, **overrides)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.close()


def vertex(make: ProviderFactory) -> GeminiProvider:
    """The provider on Vertex AI with a project: credentials come from ADC, not a key."""
    return make(api_key=None, vertexai=True, project=PROJECT, location=LOCATION)


def request(text: str = "hi") -> ModelRequest:
    return ModelRequest(model=MODEL, contents=[Message(Role.USER, (Part(text=text),))])


async def reply_text(provider: ModelProvider, text: str = "hi") -> str:
    chunks = [chunk async for chunk in provider.stream(request(text))]
    return "".join(part.text or "" for chunk in chunks for part in chunk.parts)


async def refusal(provider: ModelProvider) -> errors.ChatdError:
    with pytest.raises(errors.ChatdError) as caught:
        await reply_text(provider)
    return caught.value


# --------------------------------------------------------------------------- Vertex AI, ADC


async def test_vertex_adc_turn_and_count_carry_the_token_the_endpoint_issued(
    fake_gemini: FakeGemini, adc: Json, make_provider: ProviderFactory
) -> None:
    """google-auth gets one token for the service account (signed grant, cloud-platform
    scope) and the SDK sends it on the project's Vertex AI paths, with no API key."""
    provider = vertex(make_provider)

    assert await reply_text(provider, "hello vertex") == "echo: hello vertex"
    count = await provider.count_tokens(request("one two three"))

    assert count.total_tokens == 3 and not count.estimated
    (issued,) = fake_gemini.issued_tokens
    assert issued.client_email == adc["client_email"]
    assert CLOUD_PLATFORM in issued.scope.split()
    stream, counted = fake_gemini.requests
    assert (stream.method, counted.method) == ("streamGenerateContent", "countTokens")
    for sent in (stream, counted):
        assert sent.vertex and (sent.project, sent.location) == (PROJECT, LOCATION)
        assert f"/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/" in sent.path
        assert sent.bearer_token == issued.token
        assert sent.api_key is None and sent.url_key is None
        assert sent.user_project is None
        assert sent.auth_failure is None and sent.rejection is None


async def test_vertex_adc_through_chatd_over_grpc(
    fake_gemini: FakeGemini, adc: Json, tmp_path: Path
) -> None:
    """chatd configured as an operator would (GOOGLE_GENAI_USE_VERTEXAI, project, location)
    builds its own provider, finds the credentials itself and answers a turn."""
    settings = Settings(
        listen="127.0.0.1:0",
        database_url=f"sqlite:///{tmp_path}/chatd.db",
        grace_period=1.0,
        metrics_listen="127.0.0.1:0",
        provider="gemini",
        gemini_vertexai=True,
        gemini_project=PROJECT,
        gemini_location=LOCATION,
        gemini_base_url=fake_gemini.base_url,
    )
    running = await app.start(settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = chat_service_pb2_grpc.ChatServiceStub(channel)
            await stub.CreateSession(pb.CreateSessionRequest(session_id="v"))
            reply = await stub.SendMessage(pb.SendMessageRequest(session_id="v", text="over grpc"))
    finally:
        await running.stop(grace=0)

    assert reply.reply.text == "echo: over grpc"
    (sent,) = fake_gemini.requests
    assert (sent.project, sent.location) == (PROJECT, LOCATION)
    assert sent.bearer_token == fake_gemini.issued_tokens[0].token


async def test_short_lived_tokens_are_refreshed_before_the_next_turn(
    fake_gemini: FakeGemini, adc: Json, make_provider: ProviderFactory
) -> None:
    """A token that lives less than google-auth's refresh threshold (3 min 45 s before
    expiry) counts as expired at once, so the next turn gets a fresh one first."""
    fake_gemini.token_lifetime = 60
    provider = vertex(make_provider)

    await reply_text(provider, "first")
    await reply_text(provider, "second")

    first, second = fake_gemini.issued_tokens
    assert first.token != second.token
    assert [r.bearer_token for r in fake_gemini.requests] == [first.token, second.token]
    assert all(r.auth_failure is None for r in fake_gemini.requests)


async def test_a_token_the_service_no_longer_accepts_is_the_operators_problem(
    fake_gemini: FakeGemini, adc: Json, make_provider: ProviderFactory
) -> None:
    """Vertex AI answers 401 UNAUTHENTICATED for a token it does not accept (here one it
    expired early, while google-auth still counts it valid): FailedPrecondition."""
    provider = vertex(make_provider)
    await reply_text(provider)
    fake_gemini.expire_tokens()

    error = await refusal(provider)

    assert isinstance(error, errors.FailedPrecondition)
    assert error.reason == "UPSTREAM_CREDENTIALS_REJECTED"
    assert "HTTP 401" in error.message
    assert fake_gemini.requests[-1].auth_failure is not None
    assert len(fake_gemini.issued_tokens) == 1


async def test_quota_project_is_sent_as_x_goog_user_project(
    fake_gemini: FakeGemini,
    adc: Json,
    make_provider: ProviderFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Credentials with a quota project (GOOGLE_CLOUD_QUOTA_PROJECT, read by google-auth:
    https://cloud.google.com/docs/authentication/troubleshoot-adc#user-creds-client-based)
    bill that project: the SDK sends it as x-goog-user-project."""
    monkeypatch.setenv("GOOGLE_CLOUD_QUOTA_PROJECT", "billing-project")
    provider = vertex(make_provider)

    await reply_text(provider)
    await provider.count_tokens(request())

    assert [r.user_project for r in fake_gemini.requests] == ["billing-project"] * 2


@pytest.mark.parametrize("cause", ["untrusted key", "revoked"])
async def test_a_refused_grant_names_the_fix(
    fake_gemini: FakeGemini,
    make_provider: ProviderFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    cause: str,
) -> None:
    """The token endpoint's invalid_grant (google-auth's RefreshError) is the operator's to
    fix, and nothing reaches the model."""
    if cause == "untrusted key":
        use_adc(monkeypatch, tmp_path, fake_gemini.service_account(trusted=False))
        expected = "invalid_grant: Invalid JWT Signature."
    else:
        use_adc(monkeypatch, tmp_path, fake_gemini.service_account())
        fake_gemini.token_refusal = "Token has been expired or revoked."
        expected = "invalid_grant: Token has been expired or revoked."
    provider = vertex(make_provider)

    for call in (reply_text(provider), provider.count_tokens(request())):
        with pytest.raises(errors.FailedPrecondition) as caught:
            await call
        assert caught.value.reason == "UPSTREAM_CREDENTIALS_REJECTED"
        assert expected in caught.value.message
        assert "GOOGLE_APPLICATION_CREDENTIALS" in caught.value.message
        assert "gcloud auth application-default login" in caught.value.message
    assert fake_gemini.requests == [] and fake_gemini.issued_tokens == []


async def test_missing_credentials_file_names_the_fix(
    fake_gemini: FakeGemini,
    make_provider: ProviderFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    provider = vertex(make_provider)

    error = await refusal(provider)

    assert isinstance(error, errors.FailedPrecondition)
    assert error.reason == "UPSTREAM_CREDENTIALS_REJECTED"
    assert "absent.json" in error.message
    assert "GOOGLE_APPLICATION_CREDENTIALS" in error.message
    assert fake_gemini.requests == []


async def test_an_unreachable_token_endpoint_is_unavailable(
    fake_gemini: FakeGemini,
    make_provider: ProviderFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """google-auth reports a token endpoint it cannot reach as its TransportError, which
    the SDK retries like a dropped connection; after the tries it is Unavailable."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    info = {**fake_gemini.service_account(), "token_uri": f"http://127.0.0.1:{port}/token"}
    use_adc(monkeypatch, tmp_path, info)
    provider = vertex(make_provider)

    error = await refusal(provider)

    assert isinstance(error, errors.Unavailable)
    assert error.reason == "UPSTREAM_UNAVAILABLE"
    assert "token endpoint" in error.message
    assert fake_gemini.requests == []


async def test_a_refused_grant_over_grpc_is_failed_precondition(
    start_chatd: StartChatd,
    fake_gemini: FakeGemini,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    use_adc(monkeypatch, tmp_path, fake_gemini.service_account(trusted=False))
    chatd = await start_chatd(
        provider=fast_gemini(
            fake_gemini, api_key=None, vertexai=True, project=PROJECT, location=LOCATION
        )
    )
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="v"))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="v", text="hi"))

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rich_details(caught.value)["ErrorInfo"].reason == "UPSTREAM_CREDENTIALS_REJECTED"
    assert "GOOGLE_APPLICATION_CREDENTIALS" in (caught.value.details() or "")


# --------------------------------------------------------------------------- API keys


@pytest.mark.parametrize("vertexai", [False, True], ids=["gemini-api", "vertex-express"])
async def test_the_api_key_travels_in_its_header_never_in_the_url(
    fake_gemini: FakeGemini, make_provider: ProviderFactory, vertexai: bool
) -> None:
    fake_gemini.expected_api_key = "right-key"
    provider = make_provider(api_key="right-key", vertexai=vertexai)

    assert await reply_text(provider, "keyed") == "echo: keyed"
    await provider.count_tokens(request())

    assert len(fake_gemini.requests) == 2
    for sent in fake_gemini.requests:
        assert sent.api_key == "right-key"
        assert sent.url_key is None and "right-key" not in sent.path
        assert sent.bearer_token is None
        assert sent.vertex == vertexai and sent.project is None
        assert sent.auth_failure is None
    assert fake_gemini.issued_tokens == []


@pytest.mark.parametrize("vertexai", [False, True], ids=["gemini-api", "vertex-express"])
async def test_a_wrong_api_key_is_the_operators_problem(
    fake_gemini: FakeGemini, make_provider: ProviderFactory, vertexai: bool
) -> None:
    """Google answers an unknown key with 400 INVALID_ARGUMENT and ErrorInfo reason
    API_KEY_INVALID; chatd reports it as the operator's key, not the caller's request."""
    fake_gemini.expected_api_key = "right-key"
    provider = make_provider(api_key="wrong-key", vertexai=vertexai)

    for call in (reply_text(provider), provider.count_tokens(request())):
        with pytest.raises(errors.FailedPrecondition) as caught:
            await call
        assert caught.value.reason == "UPSTREAM_CREDENTIALS_REJECTED"
        assert "HTTP 400 API_KEY_INVALID" in caught.value.message
        assert "GEMINI_API_KEY" in caught.value.message
        assert "wrong-key" not in caught.value.message
    assert all(r.auth_failure for r in fake_gemini.requests)


async def test_a_wrong_api_key_over_grpc_is_failed_precondition(
    start_chatd: StartChatd, fake_gemini: FakeGemini
) -> None:
    fake_gemini.expected_api_key = "right-key"
    chatd = await start_chatd(provider=fast_gemini(fake_gemini, api_key="wrong-key"))
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="k"))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="k", text="hi"))

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rich_details(caught.value)["ErrorInfo"].reason == "UPSTREAM_CREDENTIALS_REJECTED"
    assert "GEMINI_API_KEY" in (caught.value.details() or "")
