"""The chatd-client package in use: create a session, stream a reply, answer a caller tool,
and read a rich error's ErrorInfo and BadRequest.

Against `make run` (echo provider), with the wheel installed (`make client-wheel`):

    python example.py                       # 127.0.0.1:50051
    python example.py HOST:PORT --api-key KEY [--tls]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence

import grpc

from chatd.client import AsyncChatClient, ChatClient, error_details
from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import content_pb2, session_pb2

LOOKUP_ORDER = session_pb2.FunctionDeclaration(
    name="lookup_order", description="The shipping status of a customer's order."
)
LOOKUP_ORDER.parameters.update(
    {"type": "object", "properties": {"order_id": {"type": "integer"}}, "required": ["order_id"]}
)


def lookup_order(order_id: int) -> dict[str, object]:
    """The caller-executed tool; a real service would query its order database."""
    return {"order_id": order_id, "status": "shipped"}


def stream(client: ChatClient, session_id: str, text: str) -> tuple[str, pb.Reply]:
    """Streams one turn, printing text as it arrives; returns the reply's id and the
    final reply."""
    reply_id = ""
    print("model: ", end="")
    for event in client.stream_reply(session_id, text=text):
        reply_id = event.reply_id or reply_id  # on the first event
        if event.HasField("text_delta"):
            print(event.text_delta.text, end="", flush=True)
        elif event.HasField("reply"):
            print()
            return reply_id, event.reply
    raise RuntimeError("the stream ended without a reply")


def answer_tools(client: ChatClient, session_id: str, reply: pb.Reply) -> pb.Reply:
    """Runs every pending caller tool call and answers them, until none are pending."""
    while reply.pending_tool_calls:
        results = []
        for call in reply.pending_tool_calls:
            output = lookup_order(**json.loads(call.args_json))
            print(f"tool call: {call.name}({call.args_json}) -> {json.dumps(output)}")
            results.append(pb.ToolResult(call_id=call.id, result_json=json.dumps(output)))
        reply = client.send_message(session_id, tool_results=results)
    return reply


async def history(address: str, api_key: str | None, tls: bool, session_id: str) -> int:
    """The session's message count, read with the asyncio client."""
    async with AsyncChatClient(address, api_key=api_key, tls=tls) as client:
        page = await client.list_messages(session_id, page_size=100)
        return len(page.messages)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("address", nargs="?", default="127.0.0.1:50051")
    parser.add_argument("--api-key", default=os.environ.get("CHATD_API_KEY"))
    parser.add_argument("--tls", action="store_true")
    args = parser.parse_args(argv)

    with ChatClient(args.address, api_key=args.api_key, tls=args.tls) as client:
        session = client.create_session(
            session_pb2.Session(display_name="example", function_declarations=[LOOKUP_ORDER])
        )
        print(f"session: {session.session_id}")

        reply_id, reply = stream(client, session.session_id, "Hello from chatd-client")
        print(f"finish_reason: {content_pb2.FinishReason.Name(reply.finish_reason)}")

        # A stored reply can be read back, or its stream resumed after an event.
        stored = client.get_reply(reply_id, skip_events=True).reply
        print(f"reply state: {pb.ReplyState.Name(stored.state)}")
        after = stored.last_sequence_number - 1
        resumed = list(client.stream_reply(reply_id=reply_id, starting_after=after))
        print(f"resumed after {after}: {[e.sequence_number for e in resumed]}")

        _, reply = stream(
            client, session.session_id, 'Where is order 42?\n/call lookup_order {"order_id": 42}'
        )
        reply = answer_tools(client, session.session_id, reply)
        print(f"after tools: {content_pb2.FinishReason.Name(reply.finish_reason)}")

        count = asyncio.run(history(args.address, args.api_key, args.tls, session.session_id))
        print(f"messages: {count}")

        try:
            client.create_session(session_id="not a valid id!")
        except grpc.RpcError as error:
            info, bad = error_details(error)
            print(f"error: {error.code().name}")
            print(f"reason: {info.reason if info else None}")
            for violation in bad.field_violations if bad else ():
                print(f"field: {violation.field}: {violation.description}")
        else:
            print("error: the malformed id was accepted", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
