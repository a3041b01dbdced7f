"""An interactive terminal chat with chatd: replies stream in as the model writes them.

Type a message and press Enter; /help lists the commands (/new [ID], /list, /switch ID,
/history, /export FILE.json, /quit). Ctrl-C while a reply streams cancels that turn
(nothing of it is stored). Input is read line by line, so a pipe can drive it too:

    .venv/bin/python client_examples/python/chat_cli.py
    .venv/bin/python client_examples/python/chat_cli.py --session demo
    printf 'hello\\n/history\\n' | .venv/bin/python client_examples/python/chat_cli.py

A failed command prints its status and the chat goes on; the exit code is non-zero only
when chatd cannot be reached (or rejects the credentials) at start.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
from connection import TIMEOUT, Metadata, argument_parser, connection, report
from google.protobuf import json_format

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import chat_service_pb2_grpc, content_pb2, session_pb2

Stub = chat_service_pb2_grpc.ChatServiceStub

HELP = """\
  a plain line         send it as a message (the first one starts a session)
  //text               send "/text" (e.g. //call NAME {...} for the echo provider)
  /new [ID]            start a new session (with ID, or one chatd generates)
  /list                list sessions, newest first (* marks the current one)
  /switch ID           continue another session
  /history             show the current session's messages
  /export FILE.json    save the current session (ExportSession) as JSON
  /help                this help
  /quit                leave (so does Ctrl-D)"""


def describe(part: content_pb2.Part) -> str:
    kind = part.WhichOneof("data")
    if kind == "text":
        return part.text
    if kind == "function_call":
        args = json.dumps(json_format.MessageToDict(part.function_call.args))
        return f"[call {part.function_call.name}({args})]"
    if kind == "function_response":
        return f"[result of {part.function_response.name}]"
    return f"[{kind}]"


class ChatCli:
    """The client's state (which session is current) and one method per command."""

    def __init__(self, stub: Stub, metadata: Metadata) -> None:
        self.stub = stub
        self.metadata = metadata
        self.session_id = ""

    def handle(self, line: str) -> bool:
        """Runs one input line; False means quit. gRPC errors are reported, not raised."""
        command, _, argument = line.strip().partition(" ")
        argument = argument.strip()
        try:
            if not command:
                pass
            elif not command.startswith("/") or command.startswith("//"):
                self.send(line.strip().removeprefix("/"))
            elif command == "/quit":
                return False
            elif command == "/new":
                self.new_session(argument)
            elif command == "/list":
                self.list_sessions()
            elif command == "/switch" and argument:
                self.switch(argument)
            elif command == "/history":
                self.history()
            elif command == "/export" and argument:
                self.export(Path(argument))
            else:
                print(HELP if command == "/help" else f"cannot run {line.strip()!r}; try /help")
        except grpc.RpcError as error:
            report(error)
        return True

    def new_session(self, session_id: str = "") -> None:
        # New sessions may use every server tool chatd offers (the first page is plenty).
        tools = self.stub.ListTools(pb.ListToolsRequest(), metadata=self.metadata, timeout=TIMEOUT)
        session = session_pb2.Session(
            display_name="chat_cli", tools=[tool.name for tool in tools.tools]
        )
        request = pb.CreateSessionRequest(session_id=session_id, session=session)
        created = self.stub.CreateSession(request, metadata=self.metadata, timeout=TIMEOUT)
        self.session_id = created.session.session_id
        print(f"new session {self.session_id} (tools: {', '.join(session.tools) or 'none'})")

    def list_sessions(self) -> None:
        page_token = ""
        while True:
            request = pb.ListSessionsRequest(page_token=page_token)
            page = self.stub.ListSessions(request, metadata=self.metadata, timeout=TIMEOUT)
            for session in page.sessions:
                mark = "*" if session.session_id == self.session_id else " "
                updated = session.update_time.ToDatetime().strftime("%Y-%m-%d %H:%M")
                print(
                    f"{mark} {session.session_id}  {session.message_count} messages, "
                    f"updated {updated}  {session.display_name}"
                )
            page_token = page.next_page_token
            if not page_token:
                return

    def switch(self, session_id: str) -> None:
        request = pb.GetSessionRequest(session_id=session_id)
        session = self.stub.GetSession(request, metadata=self.metadata, timeout=TIMEOUT).session
        self.session_id = session.session_id
        print(f"switched to {session.session_id} ({session.message_count} messages)")

    def messages(self) -> Iterator[content_pb2.Message]:
        page_token = ""
        while True:
            request = pb.ListMessagesRequest(session_id=self.session_id, page_token=page_token)
            page = self.stub.ListMessages(request, metadata=self.metadata, timeout=TIMEOUT)
            yield from page.messages
            page_token = page.next_page_token
            if not page_token:
                return

    def history(self) -> None:
        if not self.session_id:
            print("no session yet: /new, /switch ID, or just type a message")
            return
        for message in self.messages():
            role = content_pb2.Role.Name(message.role).removeprefix("ROLE_").lower()
            print(f"{role}: {' '.join(describe(p) for p in message.parts)}")

    def export(self, path: Path) -> None:
        if not self.session_id:
            print("no session to export")
            return
        request = pb.ExportSessionRequest(session_id=self.session_id)
        document = self.stub.ExportSession(request, metadata=self.metadata, timeout=TIMEOUT)
        # Proto field names, as grpcurl prints them; ImportSession reads this JSON back.
        text = json_format.MessageToJson(document.document, preserving_proto_field_name=True)
        path.write_text(text + "\n", encoding="utf-8")
        print(f"exported {len(document.document.messages)} messages to {path}")

    def send(self, text: str) -> None:
        if not self.session_id:
            self.new_session()
        request = pb.StreamReplyRequest(session_id=self.session_id, text=text)
        call = self.stub.StreamReply(request, metadata=self.metadata, timeout=TIMEOUT)
        print("model: ", end="", flush=True)
        try:
            for event in call:
                kind = event.WhichOneof("event")
                if kind == "text_delta" and not event.text_delta.thought:
                    print(event.text_delta.text, end="", flush=True)
                elif kind == "tool_call":
                    print(f"[calls {event.tool_call.function_call.name}] ", end="", flush=True)
                elif kind == "reply" and event.reply.pending_tool_calls:
                    names = ", ".join(c.name for c in event.reply.pending_tool_calls)
                    print(f"\n(the turn waits for results of caller tools: {names})", end="")
        except KeyboardInterrupt:
            # Stops the model call; chatd stores nothing of this turn, unless its commit had begun.
            call.cancel()
            print("\n(cancelled)", end="")
        finally:
            print()


def read_lines(prompt: str) -> Iterator[str]:
    """Input lines until end of file (Ctrl-D) or Ctrl-C at the prompt."""
    while True:
        try:
            yield input(prompt)
        except (EOFError, KeyboardInterrupt):
            return


def main(argv: Sequence[str] | None = None) -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--session", default="", help="session to continue")
    args = parser.parse_args(argv)
    conn = connection(args)
    interactive = sys.stdin.isatty()
    if interactive:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
    with conn.channel() as channel:
        cli = ChatCli(chat_service_pb2_grpc.ChatServiceStub(channel), conn.metadata)
        try:  # fail early, with a clear message, if chatd is unreachable or refuses us
            if args.session:
                cli.switch(args.session)
            else:
                cli.stub.ListSessions(
                    pb.ListSessionsRequest(page_size=1), metadata=conn.metadata, timeout=TIMEOUT
                )
        except grpc.RpcError as error:
            return report(error)
        if interactive:
            print(f"connected to {conn.address}; /help for commands")
        for line in read_lines("> " if interactive else ""):
            if not interactive:
                print(f"> {line}")  # a transcript that reads like the terminal session
            if not cli.handle(line):
                break
    return 0


if __name__ == "__main__":
    sys.exit(main())
