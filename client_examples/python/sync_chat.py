"""A two-turn chat with chatd over a synchronous gRPC channel.

Creates a session, sends two messages (each SendMessage returns the whole reply), then
lists the session's stored history. chatd keeps the conversation: the caller only ever
sends the new message.

Run it against `make run` (from the repository root):

    .venv/bin/python client_examples/python/sync_chat.py
    .venv/bin/python client_examples/python/sync_chat.py "Hi there" "What did I just say?"
    CHATD_API_KEY=... .venv/bin/python client_examples/python/sync_chat.py --address chatd:443 --tls
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence

import grpc
from connection import TIMEOUT, Metadata, argument_parser, connection, report

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import chat_service_pb2_grpc, content_pb2, session_pb2

DEFAULT_MESSAGES = ("Hello, chatd!", "Do you remember what I said first?")


def create_session(stub: chat_service_pb2_grpc.ChatServiceStub, metadata: Metadata) -> str:
    """Creates a session with a few settings and returns its server-generated id."""
    request = pb.CreateSessionRequest(
        session=session_pb2.Session(
            display_name="sync example",
            system_instruction="You are a concise assistant.",
            labels={"example": "sync_chat"},
        )
    )
    response = stub.CreateSession(request, metadata=metadata, timeout=TIMEOUT)
    return response.session.session_id


def send(
    stub: chat_service_pb2_grpc.ChatServiceStub, metadata: Metadata, session_id: str, text: str
) -> pb.Reply:
    """Runs one turn: chatd adds the message to history, calls the model, stores both."""
    request = pb.SendMessageRequest(session_id=session_id, text=text)
    return stub.SendMessage(request, metadata=metadata, timeout=TIMEOUT).reply


def history(
    stub: chat_service_pb2_grpc.ChatServiceStub, metadata: Metadata, session_id: str
) -> Iterator[content_pb2.Message]:
    """Every stored message, oldest first, following page tokens."""
    page_token = ""
    while True:
        request = pb.ListMessagesRequest(session_id=session_id, page_token=page_token)
        page = stub.ListMessages(request, metadata=metadata, timeout=TIMEOUT)
        yield from page.messages
        page_token = page.next_page_token
        if not page_token:
            return


def message_text(message: content_pb2.Message) -> str:
    """The text parts of a message (function calls and results shown by name)."""
    pieces = []
    for part in message.parts:
        kind = part.WhichOneof("data")
        if kind == "text":
            pieces.append(part.text)
        elif kind == "function_call":
            pieces.append(f"[call {part.function_call.name}]")
        elif kind == "function_response":
            pieces.append(f"[result of {part.function_response.name}]")
    return " ".join(pieces)


def chat(
    stub: chat_service_pb2_grpc.ChatServiceStub, metadata: Metadata, messages: Sequence[str]
) -> None:
    """The example itself: a session, one turn per message, then the stored history."""
    session_id = create_session(stub, metadata)
    print(f"session: {session_id}")
    for text in messages:
        reply = send(stub, metadata, session_id, text)
        finish = content_pb2.FinishReason.Name(reply.finish_reason)
        print(f"you:   {text}")
        print(f"model: {reply.text}")
        print(f"       ({finish}, {reply.usage.total_token_count} tokens)")
    print("history:")
    for message in history(stub, metadata, session_id):
        role = content_pb2.Role.Name(message.role).removeprefix("ROLE_").lower()
        print(f"  #{message.message_id} {role}: {message_text(message)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("messages", nargs="*", default=DEFAULT_MESSAGES, help="messages to send")
    args = parser.parse_args(argv)
    conn = connection(args)
    with conn.channel() as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        try:
            chat(stub, conn.metadata, args.messages)
        except grpc.RpcError as error:
            return report(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
