"""The payloads of a streamed Gemini answer (`streamGenerateContent?alt=sse`), as bytes.

Gemini streams one `GenerateContentResponse` JSON object per server-sent event
(https://ai.google.dev/api/generate-content#method:-models.streamgeneratecontent). The
events are split exactly as google-genai 3.6.1 splits them
(`google.genai._api_client.HttpResponse._aiter_response_stream` over `_SseLineDecoder`):

- lines end at CR, LF or CRLF only (never at U+2028, U+2029 or U+0085, which may stand
  unescaped in JSON strings), wherever the network cuts the bytes, a CR at the end of a
  read waiting for the next read to show whether an LF follows;
- a line starting `data: ` (with its space) adds the rest of the line to the event; an empty
  line ends the event, whose data lines are joined with LF; the end of the body ends it too;
- any other line is taken as raw JSON (how an error body may come, line by line) and
  buffered until its braces balance outside strings, then given as one payload, its lines
  joined with nothing between them;
- a line that is not UTF-8 has its bad bytes replaced by U+FFFD (the SDK decodes each line
  with `errors="replace"`).

One difference: a comment line (starting with `:`), which the SSE format says to ignore
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation),
is skipped here; google-genai would give it as a payload and then fail to parse it.
Gemini sends none.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx2

_DATA = b"data: "
_NEWLINES = (b"\r", b"\n")
# What moves the brace count of raw JSON: braces, and quotes and backslashes for strings.
_JSON_MARKS = re.compile(rb'[{}"\\]')


class SseDecoder:
    """Turns the bytes of an SSE body, cut anywhere, into its event payloads.

    `feed` takes each read in order and returns the payloads it completes; `end` returns
    what the end of the body completes. Work per read is a few bytes methods (split, join),
    never a Python loop over its bytes.
    """

    __slots__ = ("_data", "_depth", "_escaped", "_in_string", "_partial", "_raw", "_trailing_cr")

    def __init__(self) -> None:
        self._partial: list[bytes] = []  # the unfinished last line, in pieces
        self._trailing_cr = False
        self._data: list[bytes] = []  # the current event's data lines
        self._raw: list[bytes] = []  # raw JSON lines whose braces do not balance yet
        self._depth = 0
        self._in_string = False
        self._escaped = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """The payloads that `chunk` completes, in order."""
        if self._trailing_cr:
            chunk = b"\r" + chunk
            self._trailing_cr = False
        # A CR at the end may be the first half of a CRLF: hold it for the next read.
        if chunk.endswith(b"\r"):
            self._trailing_cr = True
            chunk = chunk[:-1]
        if not chunk:
            return []
        lines = chunk.splitlines()  # bytes.splitlines breaks at CR, LF and CRLF only
        tail = None if chunk.endswith(_NEWLINES) else lines.pop()
        if lines and self._partial:
            self._partial.append(lines[0])
            lines[0] = b"".join(self._partial)
            self._partial = []
        if tail is not None:
            self._partial.append(tail)
        if not lines:
            return []
        return self._lines(lines)

    def end(self) -> list[bytes]:
        """The payloads the end of the body completes: the last line, unfinished raw
        JSON, then the last event's data."""
        out: list[bytes] = []
        if self._partial or self._trailing_cr:
            line = b"".join(self._partial)
            self._partial = []
            self._trailing_cr = False
            out = self._lines([line])
        if self._raw:
            out.append(_text(b"".join(self._raw)))
            self._raw = []
        if self._data:
            out.append(_text(b"\n".join(self._data)))
            self._data = []
        return out

    def _lines(self, lines: list[bytes]) -> list[bytes]:
        out: list[bytes] = []
        for line in lines:
            if not line:
                if self._data:
                    out.append(_text(b"\n".join(self._data)))
                    self._data = []
            elif line.startswith(_DATA):
                self._data.append(line[6:])
            elif line.startswith(b":"):
                continue  # an SSE comment
            elif (raw := self._raw_line(line)) is not None:
                out.append(raw)
        return out

    def _raw_line(self, line: bytes) -> bytes | None:
        """Buffers a raw JSON line; the buffered JSON once its braces balance (as
        google-genai's `_RawJsonLineBuffer` counts them: outside strings only)."""
        depth, in_string = self._depth, self._in_string
        # Where the character a backslash escapes stands (-1: none); a backslash ending
        # the previous line escapes this line's first character.
        escaped_at = 0 if self._escaped else -1
        for mark in _JSON_MARKS.finditer(line):
            at = mark.start()
            c = mark.group()
            if in_string:
                if at == escaped_at:
                    continue
                if c == b"\\":
                    escaped_at = at + 1
                elif c == b'"':
                    in_string = False
            elif c == b'"':
                in_string = True
            elif c == b"{":
                depth += 1
            elif c == b"}":
                depth -= 1
        self._raw.append(line)
        if depth == 0:
            joined = _text(b"".join(self._raw))
            self._raw = []
            self._depth, self._in_string, self._escaped = 0, False, False
            return joined
        self._depth, self._in_string = depth, in_string
        self._escaped = in_string and escaped_at == len(line)
        return None


def _text(payload: bytes) -> bytes:
    """`payload` as valid UTF-8: bytes that are not become U+FFFD, as the SDK's decode does."""
    if payload.isascii():
        return payload
    return payload.decode("utf-8", "replace").encode("utf-8")


async def sse_payloads(response: httpx2.Response) -> AsyncIterator[bytes]:
    """The `data:` payloads of a `streamGenerateContent?alt=sse` body, one per event (and
    any raw JSON the body holds instead), as UTF-8 bytes ready for `orjson.loads`.

    Split as google-genai 3.6.1's `HttpResponse._aiter_response_stream` splits them (see
    the module docstring). Reads `response.aiter_bytes()` (so content encodings are undone)
    and closes the response when the body ends or the iteration is closed, as the SDK does.
    Raises what `aiter_bytes` raises (httpx2.TransportError subclasses)."""
    decoder = SseDecoder()
    try:
        async for chunk in response.aiter_bytes():
            for payload in decoder.feed(chunk):
                yield payload
        for payload in decoder.end():
            yield payload
    finally:
        await response.aclose()
