"""Fake Gemini REST server (stdlib, plus cryptography for its token endpoint) that
google-genai talks to over real HTTP in tests.

Usage::

    with FakeGemini() as fake:  # or: fake_gemini_fixture wrapped in pytest.fixture
        fake.push(Reply(text="Hello there", chunks=3, chunk_delay=0.01))
        fake.push(HttpError(429, retry_delay="7s"), times=2)  # the next two requests fail
        client = genai.Client(
            api_key="k", http_options=types.HttpOptions(base_url=fake.base_url)
        )
        ...
        assert fake.requests[0].api_key == "k"
        assert fake.requests[0].texts() == ["hi"]
        fake.wait_for_disconnect(timeout=0.5)  # a client gave up on a stream

The fake is strict by default: a request the real API refuses (unknown field names, a
thinking budget beside a level, empty unsigned text, an unsigned current-turn call on
Gemini 3, ...; see ``check_request``) gets HTTP 400 INVALID_ARGUMENT with a message like
the API's, and its record carries ``rejection``. A test that sends such a request on
purpose sets ``fake.strict = False``. Gemini API paths (``/v1|v1beta|v1alpha/models/M:...``)
and Vertex AI paths (``.../publishers/google/models/M:...``, ``record.vertex``) are served.

The fake checks credentials the way the services do (``check_credentials``): Gemini API and
Vertex AI express paths need an API key (any non-empty key, unless ``expected_api_key`` is
set); Vertex AI paths with a project need ``Authorization: Bearer`` with a token the fake's
own OAuth 2.0 token endpoint (``POST /token``, the JWT-bearer grant of service-account
credentials) issued and that has not expired. ``service_account`` makes a key file whose
key the fake trusts, for ``GOOGLE_APPLICATION_CREDENTIALS``.

Scripts are consumed in order: per method if pushed with ``method=...``, else from a queue
shared by generateContent and streamGenerateContent; ``Tokens`` goes to countTokens. With
nothing queued the fake echoes the last user text (``set_default`` changes that). A script
may also be a callable taking the ``RecordedRequest`` and returning a script.

- ``Reply``: a model answer (text/parts, finish reason, usage, blocked prompt), streamed as
  ``chunks`` slices per text part, with delays, a mid-stream error event (``error_after``)
  or a mid-stream connection drop (``drop_after``); ``hold`` stops it after
  ``hold_after`` events until the test opens the ``Hold`` (a client hang-up still ends it).
- ``HttpError``: an HTTP error with a Google-style body (RetryInfo when ``retry_delay``).
- ``Drop``: close the connection without answering.  ``Tokens``: a countTokens answer.
- ``Raw``: GenerateContentResponse dicts sent verbatim.
- Implicit caching (``implicit_caching=True``, see ``ImplicitCache``): every answer's
  usageMetadata reports ``cachedContentTokenCount``, the tokens of the longest prefix of
  the request that an earlier request already sent, as Gemini's implicit caching does.
- Explicit caches (``fake.caches``, tests/fake_gemini/caches.py): cachedContents create,
  get, patch and delete, and what a request naming a cache is refused for and billed.
- Part builders ``text_part``, ``thought_part``, ``call_part``; ``usage`` builds
  usageMetadata. Requests keep their raw JSON; ``get_field`` and ``b64decode`` read it
  whatever the key casing or base64 alphabet.
"""

from __future__ import annotations

from tests.fake_gemini.caches import GONE, FakeCaches, min_tokens_of
from tests.fake_gemini.common import Json
from tests.fake_gemini.credentials import JWT_BEARER_GRANT
from tests.fake_gemini.implicit_cache import ImplicitCache, fake_tokens
from tests.fake_gemini.parts import (
    b64decode,
    b64encode,
    call_part,
    code_part,
    code_result_part,
    get_field,
    grounding,
    signature_part,
    text_part,
    thought_part,
    usage,
)
from tests.fake_gemini.rules import InvalidRequest, _check_fields
from tests.fake_gemini.scripts import (
    Drop,
    Hold,
    HttpError,
    Raw,
    RecordedRequest,
    Reply,
    Script,
    ScriptSource,
    Tokens,
    echo_default,
)
from tests.fake_gemini.server import FakeGemini, fake_gemini_fixture

__all__ = [
    "GONE",
    "JWT_BEARER_GRANT",
    "Drop",
    "FakeCaches",
    "FakeGemini",
    "Hold",
    "HttpError",
    "ImplicitCache",
    "InvalidRequest",
    "Json",
    "Raw",
    "RecordedRequest",
    "Reply",
    "Script",
    "ScriptSource",
    "Tokens",
    "_check_fields",
    "b64decode",
    "b64encode",
    "call_part",
    "code_part",
    "code_result_part",
    "echo_default",
    "fake_gemini_fixture",
    "fake_tokens",
    "get_field",
    "grounding",
    "min_tokens_of",
    "signature_part",
    "text_part",
    "thought_part",
    "usage",
]
