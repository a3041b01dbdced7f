"""Caller-executed tools: the model calls a function that runs in your service.

The session declares `lookup_order` (a name, a description and a JSON schema) in
`function_declarations`. When the model calls it, chatd pauses the turn: the reply's
finish_reason is FINISH_REASON_TOOL_CALLS_PENDING and `pending_tool_calls` lists the
calls. This script runs each call locally and answers with `tool_results`; the turn
carries on, and may ask for more calls, until a reply has none pending.

The default message has a `/call` line, which makes chatd's offline echo provider call
the function; a real model decides for itself from the question.

Run it against `make run` (from the repository root):

    .venv/bin/python client_examples/python/caller_tools.py
    .venv/bin/python client_examples/python/caller_tools.py "Where is my order 7?"
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from connection import TIMEOUT, Metadata, argument_parser, connection, report
from google.protobuf import json_format
from google.protobuf.message import Message

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import chat_service_pb2_grpc, content_pb2, session_pb2

DEFAULT_MESSAGE = 'Where is order 42?\n/call lookup_order {"order_id": 42}'

LOOKUP_ORDER = session_pb2.FunctionDeclaration(
    name="lookup_order",
    description="The shipping status of a customer's order.",
)
LOOKUP_ORDER.parameters.update(
    {
        "type": "object",
        "properties": {"order_id": {"type": "integer", "description": "The order number."}},
        "required": ["order_id"],
    }
)


def lookup_order(order_id: int) -> dict[str, Any]:
    """The tool itself; in a real service this would query your order database."""
    number = int(order_id)
    if number <= 0:
        raise ValueError(f"there is no order {number}")
    return {"order_id": number, "status": "shipped", "carrier": "DHL"}


# The functions this service executes, by the name the model calls them with.
TOOLS: dict[str, Callable[..., dict[str, Any]]] = {"lookup_order": lookup_order}


def execute(call: content_pb2.FunctionCall) -> pb.ToolResult:
    """Runs one call locally; a failure is answered with an error the model can read."""
    tool = TOOLS.get(call.name)
    try:
        if tool is None:
            raise LookupError(f"unknown function {call.name!r}")
        # args_json is the arguments' exact JSON text (a Struct would turn 7 into 7.0).
        output = tool(**json.loads(call.args_json))
    except Exception as exc:  # report any failure to the model rather than crash
        return pb.ToolResult(call_id=call.id, error=str(exc))
    return pb.ToolResult(call_id=call.id, result_json=json.dumps(output))


def compact(message: Message) -> str:
    return json_format.MessageToJson(message, indent=None, sort_keys=True)


def run_turn(
    stub: chat_service_pb2_grpc.ChatServiceStub, metadata: Metadata, session_id: str, text: str
) -> pb.Reply:
    """Sends `text`, then answers pending tool calls until the turn is finished."""
    request = pb.SendMessageRequest(session_id=session_id, text=text)
    while True:
        reply = stub.SendMessage(request, metadata=metadata, timeout=TIMEOUT).reply
        if not reply.pending_tool_calls:
            return reply
        results = []
        for call in reply.pending_tool_calls:
            result = execute(call)
            print(f"model called {call.name}({compact(call.args)}) as {call.id}")
            if result.HasField("error"):
                print(f"  answered with error: {result.error}")
            else:
                print(f"  answered with result: {compact(result.result)}")
            results.append(result)
        # Every pending call must be answered in this one request.
        request = pb.SendMessageRequest(session_id=session_id, tool_results=results)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("message", nargs="?", default=DEFAULT_MESSAGE, help="message to send")
    args = parser.parse_args(argv)
    conn = connection(args)
    with conn.channel() as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        try:
            session = session_pb2.Session(
                display_name="caller tools example", function_declarations=[LOOKUP_ORDER]
            )
            created = stub.CreateSession(
                pb.CreateSessionRequest(session=session), metadata=conn.metadata, timeout=TIMEOUT
            )
            session_id = created.session.session_id
            print(f"session: {session_id}")
            print(f"you: {args.message}")
            reply = run_turn(stub, conn.metadata, session_id, args.message)
            print(f"model: {reply.text}")
            print(f"finish_reason: {content_pb2.FinishReason.Name(reply.finish_reason)}")
        except grpc.RpcError as error:
            return report(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
