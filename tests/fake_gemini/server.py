"""The fake Gemini server itself: routing, scripts, records."""

from __future__ import annotations

import asyncio
import binascii
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.fake_gemini.common import (
    _METHODS,
    _PATH,
    _T,
    _VERTEX_PATH,
    TOKEN_PATH,
    Json,
    Method,
    _log,
)
from tests.fake_gemini.connection import _ClientGone, _Connection
from tests.fake_gemini.credentials import (
    _CLOCK_SKEW,
    _DEVCONSOLE,
    _MAX_ASSERTION_LIFETIME,
    JWT_BEARER_GRANT,
    TOKEN_AUDIENCE,
    CredentialsRefused,
    IssuedToken,
    _b64url_decode,
    _check_api_key,
    _GrantRefused,
    _rsa_key,
)
from tests.fake_gemini.implicit_cache import ImplicitCache
from tests.fake_gemini.rules import InvalidRequest, check_request
from tests.fake_gemini.scripts import (
    Disconnect,
    Drop,
    HttpError,
    Raw,
    RecordedRequest,
    Reply,
    Script,
    ScriptSource,
    Tokens,
    _ScriptQueues,
    echo_default,
)

if TYPE_CHECKING:
    from tests.fake_gemini.caches import FakeCaches

# --------------------------------------------------------------------------- the server


class FakeGemini:
    """A fake Gemini REST endpoint served from its own thread and event loop."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        strict: bool = True,
        expected_api_key: str | None = None,
        implicit_caching: bool = False,
    ) -> None:
        self._host = host
        # When set, every Reply's usageMetadata is the cache's (see ImplicitCache).
        self.implicit_cache: ImplicitCache | None = ImplicitCache() if implicit_caching else None
        # cachedContents, and the checks and usage of requests naming one.
        from tests.fake_gemini.caches import FakeCaches

        self.caches: FakeCaches = FakeCaches()
        # Strict: refuse with HTTP 400 what the real API refuses (see check_request).
        self.strict = strict
        # None: any non-empty API key is valid; else only this one (400 API_KEY_INVALID).
        self.expected_api_key = expected_api_key
        # Seconds an issued access token lives, as the token endpoint's expires_in.
        self.token_lifetime = 3600
        # When set, the token endpoint refuses every grant: invalid_grant with this text.
        self.token_refusal: str | None = None
        self._trusted: dict[str, rsa.RSAPublicKey] = {}
        self._tokens: dict[str, IssuedToken] = {}
        self._port = 0
        self._scripts = _ScriptQueues()
        self._cond = threading.Condition()
        self._requests: list[RecordedRequest] = []
        self._disconnects: list[Disconnect] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._startup_error: BaseException | None = None

    # ---- lifecycle

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``, for ``types.HttpOptions(base_url=...)``."""
        if not self._port:
            raise RuntimeError("FakeGemini is not started")
        return f"http://{self._host}:{self._port}"

    def start(self) -> FakeGemini:
        """Binds a free port and starts serving in a daemon thread."""
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="fake-gemini", daemon=True
        )
        self._thread.start()
        if not ready.wait(10) or self._startup_error is not None:
            raise RuntimeError("FakeGemini failed to start") from self._startup_error
        return self

    def stop(self) -> None:
        """Closes every connection and stops the server thread."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> FakeGemini:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- scripting

    def push(self, script: ScriptSource, *, times: int = 1, method: Method | None = None) -> None:
        """Queues ``script`` for the next ``times`` requests (of ``method``, if given)."""
        self._scripts.push(script, times, method)

    def set_default(self, default: Callable[[RecordedRequest], Script] | None) -> None:
        """Sets what answers when no script is queued (None restores the echo default)."""
        self._scripts.default = default or echo_default

    def reset(self) -> None:
        """Forgets queued scripts, recorded requests and disconnects."""
        self._scripts.clear()
        with self._cond:
            self._requests.clear()
            self._disconnects.clear()

    # ---- credentials

    def service_account(
        self, email: str = "chatd@test-project.iam.gserviceaccount.com", *, trusted: bool = True
    ) -> Json:
        """A service-account key file's JSON whose ``token_uri`` is this fake's token
        endpoint (https://cloud.google.com/iam/docs/keys-create-delete#creating). The fake
        verifies the grant assertions it signs; ``trusted=False`` registers another public
        key for ``email``, so its grants fail with ``Invalid JWT Signature.``."""
        key = _rsa_key(0)
        with self._cond:
            self._trusted[email] = (key if trusted else _rsa_key(1)).public_key()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return {
            "type": "service_account",
            "project_id": email.split("@")[-1].split(".")[0],
            "private_key_id": "fake-key-1",
            "private_key": pem.decode("ascii"),
            "client_email": email,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.base_url + TOKEN_PATH,
            "universe_domain": "googleapis.com",
        }

    def issue_token(
        self, client_email: str = "direct", scope: str = "", lifetime: float | None = None
    ) -> str:
        """Issues an access token as the token endpoint would; ``lifetime`` in seconds
        (default ``token_lifetime``)."""
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        seconds = self.token_lifetime if lifetime is None else lifetime
        issued = IssuedToken(token, client_email, scope, time.monotonic() + seconds)
        with self._cond:
            self._tokens[token] = issued
        return token

    @property
    def issued_tokens(self) -> list[IssuedToken]:
        """The access tokens issued so far, oldest first."""
        with self._cond:
            return list(self._tokens.values())

    def expire_tokens(self) -> None:
        """Makes every issued token expired, as if its lifetime had passed."""
        now = time.monotonic()
        with self._cond:
            for token, issued in self._tokens.items():
                self._tokens[token] = IssuedToken(
                    issued.token, issued.client_email, issued.scope, now
                )

    def check_credentials(self, path: str, headers: dict[str, str]) -> None:
        """Raises CredentialsRefused where the service would refuse the request's
        credentials: an API key on Gemini API and Vertex AI express paths, a bearer token
        this fake issued (and that has not expired) on Vertex AI paths with a project."""
        target = urlsplit(path)
        vertex = _VERTEX_PATH.match(target.path)
        key = headers.get("x-goog-api-key") or (parse_qs(target.query).get("key") or [""])[0]
        if vertex is None:
            _check_api_key(key, self.expected_api_key, "generativelanguage.googleapis.com")
            return
        if vertex["project"] is None:
            _check_api_key(key, self.expected_api_key, "aiplatform.googleapis.com")
            return
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            _check_api_key(None, None, "aiplatform.googleapis.com")
        with self._cond:
            issued = self._tokens.get(token.strip())
        if issued is None or issued.expires_at <= time.monotonic():
            # https://cloud.google.com/docs/authentication/rest: an expired or unknown
            # access token is 401 UNAUTHENTICATED.
            raise CredentialsRefused(
                401,
                "Request had invalid authentication credentials. Expected OAuth 2 access "
                f"token, login cookie or other valid authentication credential. {_DEVCONSOLE}",
                "ACCESS_TOKEN_EXPIRED" if issued is not None else None,
                "aiplatform.googleapis.com",
            )

    def _grant(self, raw: bytes) -> Json:
        """The token endpoint: a service account's JWT-bearer grant, verified the way
        Google verifies it (https://developers.google.com/identity/protocols/oauth2/
        service-account#httprest); returns the token response or raises _GrantRefused."""
        form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
        if form.get("grant_type") != JWT_BEARER_GRANT:
            raise _GrantRefused(
                "unsupported_grant_type", f"Invalid grant_type: {form.get('grant_type', '')}"
            )
        if self.token_refusal is not None:
            raise _GrantRefused("invalid_grant", self.token_refusal)
        claims = self._verified_claims(form.get("assertion", ""))
        if not str(claims.get("scope", "")).strip():
            raise _GrantRefused(
                "invalid_scope", "Invalid OAuth scope or ID token audience provided."
            )
        token = self.issue_token(str(claims["iss"]), str(claims["scope"]))
        return {"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"}

    def _verified_claims(self, assertion: str) -> Json:
        try:
            head, payload, signature = assertion.split(".")
            header = json.loads(_b64url_decode(head))
            claims = json.loads(_b64url_decode(payload))
            signed = _b64url_decode(signature)
        except (ValueError, binascii.Error) as exc:
            raise _GrantRefused("invalid_grant", "Invalid JWT: malformed assertion") from exc
        if not isinstance(header, dict) or header.get("alg") != "RS256":
            raise _GrantRefused("invalid_grant", "Invalid JWT: the algorithm must be RS256")
        if not isinstance(claims, dict):
            raise _GrantRefused("invalid_grant", "Invalid JWT: malformed assertion")
        with self._cond:
            key = self._trusted.get(str(claims.get("iss")))
        if key is None:
            raise _GrantRefused("invalid_grant", "Invalid grant: account not found")
        try:
            key.verify(signed, f"{head}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature as exc:
            raise _GrantRefused("invalid_grant", "Invalid JWT Signature.") from exc
        if claims.get("aud") != TOKEN_AUDIENCE:
            raise _GrantRefused("invalid_grant", f"Invalid JWT: aud must be {TOKEN_AUDIENCE}")
        now = time.time()
        issued_at, expires = claims.get("iat"), claims.get("exp")
        if (
            not isinstance(issued_at, int)
            or not isinstance(expires, int)
            or expires - issued_at > _MAX_ASSERTION_LIFETIME
            or expires < now - _CLOCK_SKEW
            or issued_at > now + _CLOCK_SKEW
        ):
            raise _GrantRefused(
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                "reasonable timeframe. Check your iat and exp values in the JWT claim.",
            )
        return claims

    # ---- observation

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the requests received so far, oldest first."""
        with self._cond:
            return list(self._requests)

    @property
    def disconnects(self) -> list[Disconnect]:
        """A snapshot of the client hang-ups seen during unfinished responses."""
        with self._cond:
            return list(self._disconnects)

    def wait_for_request(self, count: int = 1, timeout: float = 1.0) -> RecordedRequest:
        """Blocks until ``count`` requests have arrived; returns the ``count``-th."""
        return self._wait(self._requests, count, timeout, "requests")

    def wait_for_disconnect(self, count: int = 1, timeout: float = 1.0) -> Disconnect:
        """Blocks until ``count`` disconnects were seen; returns the ``count``-th."""
        return self._wait(self._disconnects, count, timeout, "disconnects")

    # The wait runs in a worker thread, where asyncio.timeout could not interrupt it.
    async def await_disconnect(self, count: int = 1, timeout: float = 1.0) -> Disconnect:
        """``wait_for_disconnect`` without blocking the caller's event loop."""
        return await asyncio.to_thread(self.wait_for_disconnect, count, timeout)

    def _wait(self, items: list[_T], count: int, timeout: float, what: str) -> _T:
        with self._cond:
            if not self._cond.wait_for(lambda: len(items) >= count, timeout):
                raise TimeoutError(f"saw {len(items)} {what} in {timeout}s, wanted {count}")
            return items[count - 1]

    def _record(self, items: list[_T], item: _T) -> None:
        with self._cond:
            items.append(item)
            self._cond.notify_all()

    # ---- server thread

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            server = loop.run_until_complete(asyncio.start_server(self._on_connect, self._host, 0))
            self._port = server.sockets[0].getsockname()[1]
        except BaseException as exc:
            self._startup_error = exc
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._shutdown(server))
            loop.close()

    async def _shutdown(self, server: asyncio.Server) -> None:
        server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await server.wait_closed()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = _Connection(reader, writer)
        try:
            while conn.reusable and (parsed := await conn.read_request()) is not None:
                await self._answer(conn, *parsed)
        except (_ClientGone, asyncio.CancelledError):
            # Cancellation comes from stop(); re-raising it would make asyncio's start_server
            # callback log every open connection as an error.
            pass
        except Exception:
            # Surface bugs in the fake itself; the client just sees a dropped connection.
            _log.exception("fake gemini: unexpected error")
        finally:
            conn.close()
            self._tasks.discard(task)

    async def _answer(
        self, conn: _Connection, verb: str, target: str, headers: dict[str, str], raw: bytes
    ) -> None:
        path = urlsplit(target).path
        if verb == "POST" and path == TOKEN_PATH:
            try:
                await conn.send_json(200, self._grant(raw))
            except _GrantRefused as exc:
                await conn.send_json(400, exc.body)
            return
        if self.caches.serves(path):
            try:
                self.check_credentials(target, headers)
            except CredentialsRefused as exc:
                await conn.send_json(exc.code, exc.error.body())
                return
            hold = self.caches.holds.get(verb)
            if hold is not None:
                conn.watch_for_eof()
                try:
                    hold.reached.set()
                    while not hold.is_open:
                        await conn.pause(0.005)  # raises _ClientGone if the client hangs up
                finally:
                    await conn.stop_watching()
            await conn.send_json(*self.caches.answer(verb, path, raw))
            return
        vertex_match = _VERTEX_PATH.match(path)
        match = _PATH.match(path) or vertex_match
        method, model = (match["method"], match["model"]) if match else ("", "")
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        routed = verb == "POST" and method in _METHODS
        rejection = refused = None
        if routed:
            # Credentials are checked before the body, as the services do.
            try:
                self.check_credentials(target, headers)
            except CredentialsRefused as exc:
                refused = exc
        if routed and self.strict and refused is None:
            try:
                check_request(method, model, body, vertex=vertex_match is not None)
            except InvalidRequest as exc:
                rejection = str(exc)
        refusal = None
        if routed and refused is None and rejection is None:
            refusal = self.caches.refusal(model, method, body)
            rejection = refusal.message if refusal is not None else None
        request = RecordedRequest(
            method,
            model,
            target,
            headers,
            body,
            raw,
            time.monotonic(),
            vertex=vertex_match is not None,
            rejection=rejection,
            project=vertex_match["project"] if vertex_match else None,
            location=vertex_match["location"] if vertex_match else None,
            auth_failure=str(refused) if refused is not None else None,
        )
        self._record(self._requests, request)

        if not routed:
            await conn.send_json(404, HttpError(404, f"fake: no route {verb} {target}").body())
            return
        if refused is not None:
            await conn.send_json(refused.code, refused.error.body())
            return
        if rejection is not None:
            error = refusal or HttpError(400, rejection)
            await conn.send_json(error.code, error.body())
            return

        script = self._scripts.take(request)
        if isinstance(script, Reply) and request.method != "countTokens":
            answer, implicit = script.all_parts(), self.implicit_cache
            meta = self.caches.usage(request, answer, implicit)
            if meta is None and implicit is not None:
                meta = implicit.usage(request, answer)
            if meta is not None:
                script = replace(script, usage=meta)
        conn.watch_for_eof()
        try:
            await self._play(conn, request, script)
        except _ClientGone:
            self._record(self._disconnects, Disconnect(request, conn.events_sent, time.monotonic()))
            raise
        finally:
            await conn.stop_watching()

    async def _play(self, conn: _Connection, request: RecordedRequest, script: Script) -> None:
        match script:
            case Drop(delay=delay):
                await conn.pause(delay)
                conn.reusable = False
            case HttpError(delay=delay):
                await conn.pause(delay)
                await conn.send_json(script.code, script.body())
            case Tokens(total=total) if request.method == "countTokens":
                await conn.send_json(200, {"totalTokens": total})
            case Reply() | Raw() if request.method == "streamGenerateContent":
                await self._stream(conn, request, script)
            case Reply(delay=delay) if request.method == "generateContent":
                await conn.pause(delay)
                await conn.send_json(200, script.response(request.model))
            case Raw(responses=responses) if request.method == "generateContent":
                await conn.send_json(200, responses[0])
            case _:
                message = f"fake: {type(script).__name__} cannot answer {request.method}"
                await conn.send_json(500, HttpError(500, message).body())

    async def _stream(
        self, conn: _Connection, request: RecordedRequest, script: Reply | Raw
    ) -> None:
        if isinstance(script, Raw):
            events, delay, error_after = list(script.responses), 0.0, None
            drop_after = script.drop_after
        else:
            events, delay = script.events(request.model), script.delay
            error_after, drop_after = script.error_after, script.drop_after
        cut = error_after if error_after is not None else drop_after
        await conn.pause(delay)
        await conn.start_sse()
        for index, event in enumerate(events[:cut]):
            if index:
                await conn.pause(script.chunk_delay)
            if isinstance(script, Reply) and script.hold is not None and index == script.hold_after:
                script.hold.reached.set()
                while not script.hold.is_open:
                    await conn.pause(0.005)  # raises _ClientGone as soon as the client hangs up
            await conn.send_event(event)
        if isinstance(script, Reply) and error_after is not None:
            if conn.events_sent:
                await conn.pause(script.chunk_delay)
            await conn.send_event(script.error.body())
        elif drop_after is not None:
            conn.reusable = False  # closing now leaves the chunked body unterminated
            return
        await conn.end_sse()


def fake_gemini_fixture() -> Iterator[FakeGemini]:
    """Generator for a pytest fixture: ``fake_gemini = pytest.fixture(fake_gemini_fixture)``."""
    with FakeGemini() as fake:
        yield fake
