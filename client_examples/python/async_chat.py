"""A two-turn chat with chatd on grpc.aio, and a safe retry with `request_id`.

The same flow as sync_chat.py, with asyncio. Then it shows retries: a turn sent with a
`request_id` can be sent again (say, after a timeout whose outcome you never saw) and
chatd returns the first reply instead of running the turn twice.

Run it against `make run` (from the repository root):

    .venv/bin/python client_examples/python/async_chat.py
    .venv/bin/python client_examples/python/async_chat.py --address chatd:443 --tls --api-key KEY
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Sequence

import grpc
from connection import TIMEOUT, Connection, argument_parser, connection, report

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import chat_service_pb2_grpc, content_pb2, session_pb2


async def chat(conn: Connection) -> None:
    async with conn.aio_channel() as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        metadata = conn.metadata

        created = await stub.CreateSession(
            pb.CreateSessionRequest(session=session_pb2.Session(display_name="async example")),
            metadata=metadata,
            timeout=TIMEOUT,
        )
        session_id = created.session.session_id
        print(f"session: {session_id}")

        for text in ("Hello from asyncio!", "And a second message."):
            response = await stub.SendMessage(
                pb.SendMessageRequest(session_id=session_id, text=text),
                metadata=metadata,
                timeout=TIMEOUT,
            )
            print(f"you:   {text}")
            print(f"model: {response.reply.text}")

        # Retries: give the turn an id of your own, and reuse it when you send it again.
        request = pb.SendMessageRequest(
            session_id=session_id, text="Send me once.", request_id=str(uuid.uuid4())
        )
        first = await stub.SendMessage(request, metadata=metadata, timeout=TIMEOUT)
        retry = await stub.SendMessage(request, metadata=metadata, timeout=TIMEOUT)
        same = retry.reply.turn_id == first.reply.turn_id and retry.reply.text == first.reply.text
        print(f"request_id {request.request_id}: turn {first.reply.turn_id}")
        print(f"retry returned the same reply: {same}")

        # History holds the retried turn once: three turns, six messages.
        listed = await stub.ListMessages(
            pb.ListMessagesRequest(session_id=session_id), metadata=metadata, timeout=TIMEOUT
        )
        user_turns = [m for m in listed.messages if m.role == content_pb2.ROLE_USER]
        print(f"history: {len(listed.messages)} messages, {len(user_turns)} user messages")


def main(argv: Sequence[str] | None = None) -> int:
    args = argument_parser(__doc__).parse_args(argv)
    try:
        asyncio.run(chat(connection(args)))
    except grpc.RpcError as error:  # grpc.aio.AioRpcError is one
        return report(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
