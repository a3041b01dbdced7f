"""The noisy tenant of test_noisy_neighbour, as its own process (another service's load):
floods streams beyond its per-tenant limit and imports (and exports, forks) a large
session, then prints one JSON line of what it saw.

    python -m tests.reliability.noisy_tenant --address 127.0.0.1:PORT --workers 12 ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter

import grpc

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import chat_service_pb2_grpc, content_pb2, session_pb2
from tests.helpers import rich_details

NOISY = (("authorization", "Bearer key-noisy"),)
PART_MESSAGES = 5000
LARGE = 64 * 1024 * 1024
OPTIONS = [
    ("grpc.max_send_message_length", LARGE),
    ("grpc.max_receive_message_length", LARGE),
]


def document_parts(messages: int) -> list[pb.StreamImportSessionRequest]:
    """A document of short alternating user/model messages, in StreamImportSession parts."""
    header = session_pb2.SessionDocument(format_version=1)
    header.session.model = "echo"
    requests = [pb.StreamImportSessionRequest(document=header)]
    for start in range(0, messages, PART_MESSAGES):
        part = session_pb2.SessionDocument()
        for i in range(start, min(start + PART_MESSAGES, messages)):
            message = part.messages.add(
                message_id=str(i),
                role=content_pb2.ROLE_USER if i % 2 == 0 else content_pb2.ROLE_MODEL,
                turn_id=f"t{i // 2}",
            )
            message.create_time.seconds = 1_700_000_000 + i
            message.parts.add(text=f"message {i}")
        requests.append(pb.StreamImportSessionRequest(document=part))
    return requests


async def stream_worker(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub,
    index: int,
    outcomes: Counter[str],
    stop: asyncio.Event,
) -> None:
    """Reopens a slow stream as soon as one ends; a refusal is retried after 50 ms."""
    while not stop.is_set():
        try:
            call = stub.StreamReply(
                pb.StreamReplyRequest(session_id=f"noisy-{index}", text="flood " * 10),
                metadata=NOISY,
                timeout=60,
            )
            async for _ in call:
                pass
            outcomes["OK"] += 1
        except grpc.aio.AioRpcError as exc:
            info = rich_details(exc).get("ErrorInfo")
            outcomes[info.reason if info else exc.code().name] += 1
            await asyncio.sleep(0.05)


async def main(args: argparse.Namespace) -> None:
    parts = document_parts(args.import_messages)
    unary = None
    if args.unary_import:
        whole = session_pb2.SessionDocument()
        for request in parts:
            whole.MergeFrom(request.document)
        unary = pb.ImportSessionRequest(document=whole, session_id="big-unary")
    summary: dict[str, object] = {}
    async with grpc.aio.insecure_channel(args.address, options=OPTIONS) as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        for i in range(args.workers):
            await stub.CreateSession(
                pb.CreateSessionRequest(session_id=f"noisy-{i}"), metadata=NOISY
            )
        print("ready", flush=True)
        outcomes: Counter[str] = Counter()
        stop = asyncio.Event()
        workers = [
            asyncio.create_task(stream_worker(stub, i, outcomes, stop)) for i in range(args.workers)
        ]
        started = time.perf_counter()
        await asyncio.sleep(0.5)  # the flood is on before the import starts
        imported = await stub.StreamImportSession(iter(parts), metadata=NOISY, timeout=600)
        summary["stream_import_messages"] = imported.session.message_count
        summary["stream_import_seconds"] = round(time.perf_counter() - started - 0.5, 2)
        if unary is not None:
            done = await stub.ImportSession(unary, metadata=NOISY, timeout=600)
            summary["unary_import_messages"] = done.session.message_count
            exported = await stub.ExportSession(
                pb.ExportSessionRequest(session_id="big-unary"), metadata=NOISY, timeout=600
            )
            summary["exported_messages"] = len(exported.document.messages)
            forked = await stub.ForkSession(
                pb.ForkSessionRequest(session_id="big-unary", new_session_id="fork"),
                metadata=NOISY,
                timeout=600,
            )
            summary["forked_messages"] = forked.session.message_count
        rest = args.seconds - (time.perf_counter() - started)
        if rest > 0:
            await asyncio.sleep(rest)
        stop.set()
        await asyncio.gather(*workers)
        summary["streams"] = dict(outcomes)
        summary["seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--import-messages", type=int, required=True)
    parser.add_argument("--unary-import", action="store_true")
    parser.add_argument("--seconds", type=float, default=3.0)
    asyncio.run(main(parser.parse_args()))
