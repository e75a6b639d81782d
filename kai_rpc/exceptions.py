"""Every exception kai-rpc raises on purpose.

Messages name the offending value (redacted where it could be secret) and the fix.
Exceptions that become JSON-RPC errors carry their ``code``.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from kai_rpc.contract import ErrorCode

M = TypeVar("M", bound=BaseModel)


class KaiRpcError(Exception):
    """Base of kai-rpc's own errors."""

    code: int = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def to_error(self) -> dict[str, Any]:
        """The JSON-RPC ``error`` object for this exception."""
        error: dict[str, Any] = {"code": int(self.code), "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class PolicyFileError(KaiRpcError):
    """The policy file cannot be read or does not validate."""


class FramingError(KaiRpcError):
    """A frame on the wire breaks the LSP base protocol."""

    code = ErrorCode.INVALID_REQUEST


class MessageTooLarge(FramingError):
    """A frame announced a body above the size limit; its body was discarded."""

    code = ErrorCode.MESSAGE_TOO_LARGE


class ParseError(KaiRpcError):
    """A frame body is not UTF-8 JSON."""

    code = ErrorCode.PARSE_ERROR


class InvalidRequest(KaiRpcError):
    """A JSON value that is not a JSON-RPC 2.0 message, or one sent out of turn."""

    code = ErrorCode.INVALID_REQUEST

    def __init__(self, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class InvalidParams(KaiRpcError):
    """Params of the wrong shape; the message names the field."""

    code = ErrorCode.INVALID_PARAMS


def validate_params(model: type[M], params: Any) -> M:
    """``params`` (absent counts as ``{}``) as ``model``, or InvalidParams naming
    each bad field by its JSON path, with the offending values left out."""
    try:
        return model.model_validate(params if params is not None else {})
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False, include_input=False):
            path = ".".join(str(part) for part in error["loc"]) or "params"
            problems.append(f"{path}: {error['msg']}")
        raise InvalidParams("invalid params: " + "; ".join(problems)) from None


class ServerNotInitialized(KaiRpcError):
    code = ErrorCode.SERVER_NOT_INITIALIZED


class WorkerStartFailed(KaiRpcError):
    """A new worker did not become ready; the previous one keeps serving."""

    code = ErrorCode.WORKER_START_FAILED


class WorkerLost(KaiRpcError):
    """The worker exited while it held a request."""

    code = ErrorCode.WORKER_LOST


class WorkerUnavailable(KaiRpcError):
    """No worker can take the request (failed, or stopping)."""

    code = ErrorCode.WORKER_UNAVAILABLE


class RemoteError(KaiRpcError):
    """An error response from the other end, re-raised with its own code."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message, data)
        self.code = code


class ChatFailed(KaiRpcError):
    """The LLM call behind ``chat`` failed; ``data`` holds the failure kind."""

    code = ErrorCode.REQUEST_FAILED


class LlmSetupFailed(KaiRpcError):
    """The environment gives no usable LLM HTTP client (a CA source, a proxy URL,
    a missing API key); ``data`` holds the failure kind, as for ChatFailed."""

    code = ErrorCode.REQUEST_FAILED
