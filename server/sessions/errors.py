"""Domain errors; the rpc layer maps each class to one gRPC status code."""

from __future__ import annotations

from dataclasses import dataclass

# The most characters of an error's message (and of a field violation's description) a
# caller is sent. A message quoting a caller's value in full could otherwise exceed the
# caller's limit on trailing metadata (gRPC's default: 16 KiB of headers), where it travels
# three times (grpc-message and twice in grpc-status-details-bin), and the caller would get
# RESOURCE_EXHAUSTED instead of the error.
MAX_MESSAGE_CHARS = 1024


def clipped(text: str) -> str:
    """`text` cut to MAX_MESSAGE_CHARS characters, "..." marking a cut."""
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "field", clipped(self.field))
        object.__setattr__(self, "description", clipped(self.description))


class ChatdError(Exception):
    """Base of every error chatd reports to callers. `reason` is a stable UPPER_SNAKE code
    saying what went wrong (never a repeat of the status code; docs/errors.md lists them);
    `code` is the canonical status code's name (google.rpc.Code) callers are told."""

    reason = "CHATD_ERROR"
    code = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        message = clipped(message)
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class _Specific(ChatdError):
    """An error of a code many causes share: every raise site names its own `reason`."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message, reason=reason)


class InvalidArgument(ChatdError):
    code = "INVALID_ARGUMENT"

    def __init__(self, field: str, description: str, *, reason: str) -> None:
        super().__init__(f"{field}: {description}", reason=reason)
        self.violations = (FieldViolation(field, description),)


class NotFound(_Specific):
    code = "NOT_FOUND"


def session_not_found(session_id: str) -> NotFound:
    """The one answer for a session that does not exist, has expired, or is not the
    life of it the caller knew: the same words and reason from every layer."""
    return NotFound(f"session {session_id!r} not found", reason="SESSION_NOT_FOUND")


class AlreadyExists(_Specific):
    code = "ALREADY_EXISTS"


class DuplicateRequest(ChatdError):
    """A store refused a write because its request id was already recorded."""

    reason = "DUPLICATE_REQUEST"
    code = "ALREADY_EXISTS"


class FailedPrecondition(_Specific):
    code = "FAILED_PRECONDITION"


class Conflict(ChatdError):
    """A concurrent write won; the caller may retry (ABORTED)."""

    reason = "CONFLICT"
    code = "ABORTED"


class ResourceExhausted(ChatdError):
    code = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        reason: str,
        limit: tuple[str, int] | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.retry_after = retry_after
        # The setting that was reached and its value, for ErrorInfo's metadata.
        self.limit = limit


class Unavailable(_Specific):
    code = "UNAVAILABLE"


class DeadlineExceeded(_Specific):
    code = "DEADLINE_EXCEEDED"


class Cancelled(_Specific):
    code = "CANCELLED"


class Unimplemented(ChatdError):
    reason = "NOT_IMPLEMENTED"
    code = "UNIMPLEMENTED"


class UpstreamRejected(ChatdError):
    """The model API refused the request as invalid (INVALID_ARGUMENT without a field of ours)."""

    reason = "UPSTREAM_INVALID_ARGUMENT"
    code = "INVALID_ARGUMENT"


class Unauthenticated(_Specific):
    code = "UNAUTHENTICATED"


class ReplyFailed(ChatdError):
    """How a reply that failed or was cancelled ended, told again to whoever follows it
    later: the same status code, message and reason as its first caller got."""

    def __init__(self, code: str, message: str, *, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.code = code


# Codes whose failure left nothing stored: the same request may simply be sent again.
RETRYABLE_CODES = frozenset({"UNAVAILABLE", "ABORTED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})
