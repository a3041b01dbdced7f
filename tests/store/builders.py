"""Small constructors of sessions and messages for the store tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from server.sessions.model import (
    Blob,
    Compaction,
    ContextPolicy,
    FileData,
    FinishReason,
    FunctionCall,
    FunctionDeclaration,
    FunctionResponse,
    GenerationConfig,
    Message,
    Part,
    Role,
    SafetySetting,
    Session,
    SessionSettings,
    ThinkingConfig,
    Usage,
)
from server.sessions.ports import RequestRecord, SessionStore

T0 = 1_700_000_000.0
TENANT = "tenant-a"


def new_session(
    session_id: str = "s1",
    *,
    tenant: str = TENANT,
    created: float = T0,
    labels: Mapping[str, str] | None = None,
    settings: SessionSettings | None = None,
    ttl: float | None = None,
    expire: float | None = None,
    uid: str = "life-1",
) -> Session:
    if settings is None:
        settings = SessionSettings(
            model="gemini-test", labels=dict(labels or {}), ttl_seconds=ttl, expire_time=expire
        )
    return Session(tenant, session_id, settings, create_time=created, update_time=created, uid=uid)


def with_history(session: Session, *texts: str) -> tuple[Session, list[Message]]:
    """A new session that starts with one message per text (as a fork or import makes)."""
    messages = [
        text_message(i, text, role=(Role.USER, Role.MODEL)[i % 2], created=session.create_time)
        for i, text in enumerate(texts)
    ]
    return session.evolve(next_seq=len(texts), message_count=len(texts)), messages


def request_of(
    request_id: str, *, tenant: str = TENANT, created: float = T0, result: str = "ok"
) -> RequestRecord:
    return RequestRecord(tenant, request_id, f"fp-{request_id}", result, created)


def text_message(seq: int, text: str, *, role: Role = Role.USER, created: float = T0) -> Message:
    return Message(role, (Part(text=text),), seq=seq, create_time=created, turn_id=f"turn-{seq}")


def turn_of(
    session: Session, texts: Sequence[str], *, updated: float | None = None
) -> tuple[Session, list[Message]]:
    """The session after appending one message per text, and those messages."""
    when = session.update_time + 1 if updated is None else updated
    messages = [
        text_message(session.next_seq + i, text, created=when, role=(Role.USER, Role.MODEL)[i % 2])
        for i, text in enumerate(texts)
    ]
    after = session.evolve(
        version=session.version + 1,
        next_seq=session.next_seq + len(messages),
        message_count=session.message_count + len(messages),
        update_time=when,
    )
    return after, messages


async def commit(
    store: SessionStore, session: Session, *texts: str, updated: float | None = None
) -> Session:
    """Commits one turn of `texts` and returns the session as stored after it."""
    after, messages = turn_of(session, texts, updated=updated)
    await store.commit_turn(after, messages, session.version)
    return after


async def history(store: SessionStore, session: Session) -> list[str]:
    return [m.text for m in await store.recent_messages(session.tenant, session.session_id)]


# Every settings field set, with zeros where None would mean "inherit".
FULL_SETTINGS = SessionSettings(
    model="gemini-2.5-flash",
    system_instruction="Be brief.\nÜnïcödé 🚀 nul:\x00",
    generation_config=GenerationConfig(
        temperature=0.0,
        top_p=0.95,
        top_k=0,
        max_output_tokens=0,
        stop_sequences=(),
        seed=0,
        response_mime_type="application/json",
        response_json_schema={"type": "object", "properties": {"a": {"type": "integer"}}},
        thinking=ThinkingConfig(include_thoughts=False, thinking_budget=0, thinking_level="low"),
        presence_penalty=-0.5,
        frequency_penalty=0.0,
    ),
    tools=("calculator", "clock"),
    function_declarations=(
        FunctionDeclaration("lookup", "Looks things up", {"type": "object"}),
        FunctionDeclaration("bare"),
        FunctionDeclaration("empty_params", parameters={}),
    ),
    labels={"team": "ml", "a.b": "dotted", 'q"uote': "x"},
    display_name="Support chat",
    context_policy=ContextPolicy(
        max_messages=50,
        max_tokens=0,
        low_water_fraction=0.5,
        compaction=Compaction(trigger_tokens=9000, keep_recent_turns=3, instructions="brief"),
    ),
    safety_settings=(SafetySetting("HARM_CATEGORY_HATE_SPEECH", "BLOCK_NONE"),),
    ttl_seconds=0.0,
    expire_time=T0 + 3600.5,
)

# One of each part kind, with bytes covering every byte value.
EVERY_PART_KIND = Message(
    role=Role.MODEL,
    parts=(
        Part(text=""),
        Part(text='plain ünïcödé 🚀 "quoted" \\ back\nslash nul:\x00'),
        Part(text="a thought", thought=True, thought_signature=bytes(range(256))),
        Part(inline_data=Blob("image/png", bytes(range(256)) * 3, display_name="pic.png")),
        Part(inline_data=Blob("application/octet-stream", b"")),
        Part(file_data=FileData("application/pdf", "gs://bucket/doc.pdf", "doc")),
        Part(file_data=FileData("text/plain", "https://example.com/x.txt")),
        Part(
            function_call=FunctionCall(
                "call-1", "lookup", {"q": "x", "n": 0, "f": 1.5, "nested": {"l": [1, None, True]}}
            ),
            thought_signature=b"\x00sig\xff",
        ),
        Part(function_call=FunctionCall("", "no_args")),
        Part(function_response=FunctionResponse("call-1", "lookup", {"result": [1, 2, 3]})),
        Part(function_response=FunctionResponse("", "empty")),
    ),
    seq=0,
    create_time=T0 + 0.25,
    turn_id="turn-xyz",
    usage=Usage(prompt_tokens=10, candidates_tokens=0, total_tokens=10, thoughts_tokens=4),
    finish_reason=FinishReason.STOP,
    model="gemini-2.5-pro",
)
