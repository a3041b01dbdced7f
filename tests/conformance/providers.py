"""The ModelProvider implementations the provider suite runs against, and how the suite
makes each answer what a test needs (a ProviderCase).

A new provider is one ProviderCase subclass and one entry in PROVIDERS: a function of the
pytest request that returns the case (it may ask for other fixtures, such as the fake
Gemini server, through request.getfixturevalue). A case answers None where its provider
cannot be made to do something (the echo provider never waits on anything, so it cannot
stall or time out); the suite skips those tests for it, saying why.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from opentelemetry.sdk.trace import TracerProvider

from server.metrics.core import Metrics
from server.metrics.provider import InstrumentedProvider
from server.providers.echo import EchoProvider
from server.sessions.errors import ChatdError, Unavailable, UpstreamRejected
from server.sessions.model import FunctionDeclaration, JSONObject, Message, Part, Role
from server.sessions.ports import ModelProvider, ModelRequest
from server.tracing.provider import TracedProvider
from server.tracing.setup import Tracing
from tests.conftest import fast_gemini
from tests.fake_gemini import (
    FakeGemini,
    HttpError,
    RecordedRequest,
    Reply,
    Script,
    call_part,
    get_field,
    usage,
)
from tests.fake_gemini import Hold as FakeHold
from tests.scripted_model import Gate, ScriptedModel, call

# A failure: the request that fails, the domain error class it must raise, and its reason.
Failure = tuple[ModelRequest, type[ChatdError], str]


def user(text: str) -> Message:
    return Message(Role.USER, (Part(text=text),))


class ProviderCase:
    """How the suite drives one provider. `model` is the model name its requests ask for."""

    provider: ModelProvider
    model: str
    # Why stalling() is None, for the skip message.
    never_waits = ""

    def request(self, text: str, **fields: object) -> ModelRequest:
        return ModelRequest(self.model, [user(text)], **fields)  # type: ignore[arg-type]

    def text(self, words: str) -> ModelRequest:
        """A request the provider answers in more than one chunk, in words that include
        `words`, ending with usage and finish reason STOP."""
        raise NotImplementedError

    def calling(
        self, declaration: FunctionDeclaration, args: JSONObject, *, allow: bool
    ) -> ModelRequest | None:
        """A request the provider answers with a call of `declaration` with `args`, unless
        `allow` is False: then in words. None: it cannot be made to call."""
        raise NotImplementedError

    def stalling(self, timeout: float | None = None) -> ModelRequest | None:
        """A request the provider answers with one chunk and then waits for its model until
        the call ends (`timeout` is the request's). None: the provider never waits."""
        return None

    async def released(self) -> None:
        """Returns once the provider has let go of a stalled call (closed it upstream)."""

    def failing(self, *, mid_stream: bool) -> Failure | None:
        """A request whose call fails, before any chunk or after one. None: it cannot fail."""
        return None

    async def close(self) -> None:
        await self.provider.close()


class EchoCase(ProviderCase):
    never_waits = "the echo provider answers at once: it waits on no model and cannot fail"

    def __init__(self) -> None:
        self.provider = EchoProvider(words_per_chunk=1)
        self.model = "echo"

    def text(self, words: str) -> ModelRequest:
        return self.request(words)

    def calling(
        self, declaration: FunctionDeclaration, args: JSONObject, *, allow: bool
    ) -> ModelRequest | None:
        return self.request(
            f"/call {declaration.name} {json.dumps(args)}",
            function_declarations=[declaration],
            allow_function_calls=allow,
        )


class ScriptedCase(ProviderCase):
    """tests.scripted_model.ScriptedModel: the domain tests' model keeps the contract too."""

    def __init__(self) -> None:
        self.scripted = ScriptedModel()
        self.provider = self.scripted
        self.model = self.scripted.default_model
        self._gates: list[Gate] = []

    def text(self, words: str) -> ModelRequest:
        self.scripted.answer(*(f"{w} " for w in words.split()))
        return self.request(words)

    def calling(
        self, declaration: FunctionDeclaration, args: JSONObject, *, allow: bool
    ) -> ModelRequest | None:
        self.scripted.answer("Let me look. ", call(declaration.name, args))
        return self.request(
            "look it up", function_declarations=[declaration], allow_function_calls=allow
        )

    def stalling(self, timeout: float | None = None) -> ModelRequest | None:
        gate = Gate()
        self._gates.append(gate)
        self.scripted.answer("first ", gate, "second")
        return self.request("wait", timeout=timeout)

    async def released(self) -> None:
        last = self.scripted.calls[-1]
        await last.ended.wait()
        assert last.outcome != "completed"

    def failing(self, *, mid_stream: bool) -> Failure | None:
        error = Unavailable("the model is overloaded", reason="UPSTREAM_UNAVAILABLE")
        self.scripted.answer(*(["partial "] if mid_stream else []), error)
        return self.request("fail"), Unavailable, "UPSTREAM_UNAVAILABLE"

    async def close(self) -> None:
        for gate in self._gates:
            gate.open()


class GeminiCase(ProviderCase):
    """GeminiProvider on the real google-genai SDK over real HTTP, against FakeGemini."""

    def __init__(self, fake: FakeGemini) -> None:
        self.fake = fake
        self.gemini = fast_gemini(fake)
        self.provider = self.gemini
        self.model = "gemini-test"
        self._holds: list[FakeHold] = []

    def text(self, words: str) -> ModelRequest:
        self.fake.push(Reply(text=words, chunks=3, usage=usage(2, 3)))
        return self.request(words)

    def calling(
        self, declaration: FunctionDeclaration, args: JSONObject, *, allow: bool
    ) -> ModelRequest | None:
        def answer(sent: RecordedRequest) -> Script:
            # The model does what the request's function calling mode tells it.
            mode = get_field(sent.body, "toolConfig", "functionCallingConfig", "mode")
            if mode == "NONE":
                return Reply(text="No calls, then.", usage=usage(2, 3))
            return Reply(parts=[call_part(declaration.name, dict(args))], usage=usage(2, 3))

        self.fake.push(answer)
        return self.request(
            "look it up", function_declarations=[declaration], allow_function_calls=allow
        )

    def stalling(self, timeout: float | None = None) -> ModelRequest | None:
        hold = FakeHold()
        self._holds.append(hold)
        self.fake.push(Reply(text="first second third", chunks=3, hold=hold, hold_after=1))
        return self.request("wait", timeout=timeout)

    async def released(self) -> None:
        # A generous wait for the fake's thread to notice the hang-up: not a bound on how
        # soon the provider let go.
        disconnect = await self.fake.await_disconnect(timeout=30.0)
        assert disconnect.request.method == "streamGenerateContent"

    def failing(self, *, mid_stream: bool) -> Failure | None:
        if mid_stream:
            error = HttpError(503, "overloaded")
            self.fake.push(Reply(text="abcdef", chunks=3, error_after=1, error=error))
            return self.request("fail"), Unavailable, "UPSTREAM_UNAVAILABLE"
        self.fake.push(HttpError(400, "bad request"))
        return self.request("fail"), UpstreamRejected, "UPSTREAM_INVALID_ARGUMENT"

    async def close(self) -> None:
        for hold in self._holds:
            hold.open()
        await self.gemini.close()


class DecoratedGeminiCase(GeminiCase):
    """The gemini provider inside the metrics and tracing decorators, as chatd serves it
    with both on: they must pass every chunk, error and cancellation through."""

    def __init__(self, fake: FakeGemini) -> None:
        super().__init__(fake)
        instrumented = InstrumentedProvider(self.gemini, Metrics())
        self.provider = TracedProvider(
            instrumented, Tracing(TracerProvider()), "gcp.gemini", "gemini"
        )


PROVIDERS: dict[str, Callable[[pytest.FixtureRequest], ProviderCase]] = {
    "echo": lambda request: EchoCase(),
    "scripted": lambda request: ScriptedCase(),
    "gemini": lambda request: GeminiCase(request.getfixturevalue("fake_gemini")),
    "gemini-decorated": lambda request: DecoratedGeminiCase(request.getfixturevalue("fake_gemini")),
}
