"""LSP base-protocol framing: ``Content-Length`` headers, then a UTF-8 JSON body.

One reader serves every pipe kai-rpc speaks on: the IDE's stdin, each worker's stdout,
the recorder. It is stricter than most about what it refuses and more forgiving about
what it accepts: header names in any case, extra headers, a body of up to
``MAX_MESSAGE_BYTES``. A larger body is discarded in chunks, never buffered whole.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from kai_rpc.exceptions import FramingError, InvalidRequest, MessageTooLarge, ParseError

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_HEADER_LINE_BYTES = 8 * 1024
# The bridge-worker pipes carry a client's message of up to MAX_MESSAGE_BYTES inside
# the bridge's envelope (its worker-local id can be longer than the client's), and
# answers that repeat it; the client's limit there would drop a request the bridge
# has accepted, and its answer would never come.
WORKER_MAX_MESSAGE_BYTES = 2 * MAX_MESSAGE_BYTES
_DISCARD_CHUNK = 64 * 1024
# int() refuses more than 4300 digits (sys.get_int_max_str_digits); a length of
# more digits than this is absurd anyway and is refused as too large.
_MAX_LENGTH_DIGITS = 20


class FrameReader:
    """Reads framed message bodies from an asyncio stream."""

    def __init__(
        self, stream: asyncio.StreamReader, max_bytes: int = MAX_MESSAGE_BYTES
    ) -> None:
        self._stream = stream
        self._max_bytes = max_bytes
        self._skip = 0
        self.noise_lines = 0

    async def read_frame(self) -> bytes | None:
        """The next body, or None at end of stream.

        Raises FramingError for a broken header block (the stream stays usable: the
        reader resynchronises at the next blank line) and MessageTooLarge as soon as
        an oversized body is announced, so the sender hears of it at once; that body
        is discarded, in chunks, by the next call.
        """
        if self._skip:
            await self._discard(self._skip)
            self._skip = 0
        length = await self._read_headers()
        if length is None:
            return None
        if length > self._max_bytes:
            self._skip = length
            raise MessageTooLarge(
                f"message of {length} bytes refused: the limit is {self._max_bytes} "
                "bytes; send smaller messages"
            )
        try:
            return await self._stream.readexactly(length)
        except asyncio.IncompleteReadError:
            return None

    async def _read_headers(self) -> int | None:
        """The Content-Length of the next header block.

        Lines without a colon are noise (a worker's stray output, say): they are
        skipped, and only a block that ends without a usable Content-Length is an
        error. Memory stays bounded because each line is bounded.
        """
        length: int | None = None
        problem: str | None = None
        started = False
        while True:
            line = await self._read_line()
            if line is None:
                return None
            if not line.strip():
                if started:
                    break
                continue  # blank lines between frames
            started = True
            name, sep, value = line.decode("ascii", "replace").partition(":")
            if not sep:
                self.noise_lines += 1
                problem = problem or f"header line {line[:60]!r} has no ':'"
            elif name.strip().lower() == "content-length":
                length, problem = _parse_length(value.strip(), problem)
        if length is None:
            raise FramingError(problem or "header block without Content-Length")
        return length

    async def _read_line(self) -> bytes | None:
        try:
            return await self._stream.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            return exc.partial or None
        except asyncio.LimitOverrunError:
            await self._discard_line()
            raise FramingError(
                f"header line longer than {MAX_HEADER_LINE_BYTES} bytes"
            ) from None

    async def _discard_line(self) -> None:
        while True:
            try:
                await self._stream.readuntil(b"\n")
                return
            except asyncio.LimitOverrunError as exc:
                await self._stream.readexactly(exc.consumed)
            except asyncio.IncompleteReadError:
                return

    async def _discard(self, length: int) -> None:
        remaining = length
        while remaining > 0:
            chunk = await self._stream.read(min(remaining, _DISCARD_CHUNK))
            if not chunk:
                return
            remaining -= len(chunk)


def _parse_length(text: str, problem: str | None) -> tuple[int | None, str | None]:
    if text.isascii() and text.isdigit():
        if len(text) > _MAX_LENGTH_DIGITS:
            return 10**_MAX_LENGTH_DIGITS, problem
        return int(text), problem
    return None, problem or f"Content-Length {text[:40]!r} is not a whole number"


def encode_frame(body: bytes) -> bytes:
    """Header and body of one frame."""
    return b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


def dump_json(message: Any) -> bytes:
    """The compact UTF-8 JSON body of a message."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()


def encode_message(message: Any) -> bytes:
    """One frame holding ``message`` as JSON."""
    return encode_frame(dump_json(message))


def parse_body(body: bytes) -> dict[str, Any]:
    """A frame body as a JSON-RPC 2.0 message dict.

    Raises ParseError for bytes that are not UTF-8 JSON and InvalidRequest for JSON
    that is not a JSON-RPC 2.0 message object.
    """
    try:
        message = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ParseError(
            f"message body is not valid UTF-8 (byte {exc.start})"
        ) from None
    except json.JSONDecodeError as exc:
        raise ParseError(f"message body is not JSON: {exc.msg} at {exc.pos}") from None
    except RecursionError:
        raise ParseError("message body nests arrays or objects too deeply") from None
    except ValueError as exc:
        # int() past its digit limit, raised from inside the JSON decoder.
        raise ParseError(f"message body is not usable JSON: {exc}"[:200]) from None
    if not isinstance(message, dict):
        kind = type(message).__name__
        raise InvalidRequest(f"a JSON-RPC message must be an object, got {kind}")
    _check_shape(message)
    return message


def _check_shape(message: dict[str, Any]) -> None:
    if message.get("jsonrpc") != "2.0":
        raise InvalidRequest('"jsonrpc" must be "2.0"', _id_of(message))
    if "method" in message:
        if not isinstance(message["method"], str):
            raise InvalidRequest('"method" must be a string', _id_of(message))
        params = message.get("params")
        if params is not None and not isinstance(params, dict | list):
            raise InvalidRequest(
                '"params" must be an object or an array', _id_of(message)
            )
    elif "result" not in message and "error" not in message:
        raise InvalidRequest(
            "neither a request, a notification nor a response", _id_of(message)
        )
    if "id" in message and not _valid_id(message["id"]):
        raise InvalidRequest('"id" must be a string, a number or null')


def _valid_id(value: Any) -> bool:
    return value is None or (
        isinstance(value, str | int | float) and not isinstance(value, bool)
    )


def _id_of(message: dict[str, Any]) -> Any:
    """The id to answer an invalid message with: its own when usable, else null."""
    value = message.get("id")
    return value if _valid_id(value) else None


def new_stream_reader() -> asyncio.StreamReader:
    """A stream reader whose line limit bounds one header line."""
    return asyncio.StreamReader(limit=MAX_HEADER_LINE_BYTES)


class MessageWriter:
    """Writes frames to a pipe transport without blocking the event loop.

    ``tap`` sees every body written (the recorder uses it). ``write`` takes a whole
    frame, which is the writer interface pygls expects.
    """

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        tap: Callable[[bytes], None] | None = None,
    ) -> None:
        self._transport = transport
        self.tap = tap

    def send(self, message: Any) -> None:
        """Frame ``message`` as JSON and write it."""
        self.write(encode_message(message))

    def write(self, data: bytes) -> None:
        if self._transport.is_closing():
            logger.debug("dropping %d bytes: the pipe is closed", len(data))
            return
        if self.tap is not None:
            self.tap(data[data.index(b"\r\n\r\n") + 4 :])
        self._transport.write(data)

    def close(self) -> None:
        self._transport.close()


async def connect_stdio(
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> tuple[FrameReader, MessageWriter]:
    """Frame reader and writer on this process's stdin and stdout.

    File descriptor 1 is then pointed at stderr, so a stray print from any library
    lands in the log instead of corrupting the protocol stream.
    """
    loop = asyncio.get_running_loop()
    protocol_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    stream = new_stream_reader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stream), sys.stdin.buffer
    )
    transport, _ = await loop.connect_write_pipe(asyncio.Protocol, protocol_out)
    return FrameReader(stream, max_bytes), MessageWriter(transport)
