"""Streams chatd's replies as they are produced, with the tool calls made along the way.

StreamReply runs the same turn as SendMessage but sends events as they happen: text
deltas, each tool call and its result, each completed message, and last a `reply` event
with the turn's summary (finish reason, usage).

The session enables the server tool `get_current_time`. The second default message has
a `/call` line, which makes chatd's offline echo provider call the tool; a real model
decides for itself from the question.

Run it against `make run` (from the repository root; CHATD_ECHO_DELAY_MS=150 make run
slows the echo provider down so you can watch the words arrive):

    .venv/bin/python client_examples/python/streaming.py
    .venv/bin/python client_examples/python/streaming.py "Tell me a story"
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import grpc
from connection import TIMEOUT, Metadata, argument_parser, connection, report
from google.protobuf import json_format
from google.protobuf.message import Message

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import chat_service_pb2_grpc, content_pb2, session_pb2

DEFAULT_MESSAGES = (
    "Hello! Please reply word by word.",
    'What time is it in Tokyo?\n/call get_current_time {"timezone": "Asia/Tokyo"}',
)


def as_json(message: Message) -> str:
    """A Struct (function arguments, a response) as compact JSON."""
    return json.dumps(json_format.MessageToDict(message), sort_keys=True)


def stream_turn(
    stub: chat_service_pb2_grpc.ChatServiceStub, metadata: Metadata, session_id: str, text: str
) -> pb.Reply:
    """Streams one turn to stdout and returns its final Reply."""
    request = pb.StreamReplyRequest(session_id=session_id, text=text)
    final = pb.Reply()
    in_text = False  # a line of model text is being printed

    def line(text: str) -> None:
        nonlocal in_text
        print(("\n" if in_text else "") + text, flush=True)
        in_text = False

    # The call is an iterator of events; the stream ends after the `reply` event.
    for event in stub.StreamReply(request, metadata=metadata, timeout=TIMEOUT):
        kind = event.WhichOneof("event")
        if kind == "text_delta" and not event.text_delta.thought:  # thoughts: include_thoughts
            print(("" if in_text else "model: ") + event.text_delta.text, end="", flush=True)
            in_text = True
        elif kind == "tool_call":
            call = event.tool_call.function_call
            who = "you must run it" if event.tool_call.caller_executed else "chatd runs it"
            line(f"[tool call {call.id}] {call.name}({as_json(call.args)}) - {who}")
        elif kind == "tool_result":
            result = event.tool_result.function_response
            status = "error" if event.tool_result.is_error else "ok"
            line(f"[tool result {result.id}] {status}: {as_json(result.response)}")
        elif kind == "reply":
            final = event.reply
        # `message` events (each stored message of the turn) are not needed here.
    if in_text:
        print()
    return final


def main(argv: Sequence[str] | None = None) -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("messages", nargs="*", default=DEFAULT_MESSAGES, help="messages to send")
    args = parser.parse_args(argv)
    conn = connection(args)
    with conn.channel() as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        try:
            session = session_pb2.Session(
                display_name="streaming example", tools=["get_current_time"]
            )
            created = stub.CreateSession(
                pb.CreateSessionRequest(session=session), metadata=conn.metadata, timeout=TIMEOUT
            )
            session_id = created.session.session_id
            print(f"session: {session_id}")
            for text in args.messages:
                print(f"you: {text}")
                reply = stream_turn(stub, conn.metadata, session_id, text)
                usage = reply.usage
                print(
                    f"finish_reason: {content_pb2.FinishReason.Name(reply.finish_reason)}, "
                    f"usage: {usage.prompt_token_count} prompt + "
                    f"{usage.candidates_token_count} reply = {usage.total_token_count} tokens"
                )
        except grpc.RpcError as error:
            return report(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
