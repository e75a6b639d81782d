"""The frame reader and message parser, in-process: an asyncio.StreamReader fed in
chunks, and property tests over arbitrary chunking, header case and junk."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kai_rpc.exceptions import (
    FramingError,
    InvalidRequest,
    KaiRpcError,
    MessageTooLarge,
    ParseError,
)
from kai_rpc.framing import (
    MAX_HEADER_LINE_BYTES,
    FrameReader,
    encode_message,
    new_stream_reader,
    parse_body,
)

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
messages = st.builds(
    lambda i, params: {"jsonrpc": "2.0", "id": i, "method": "echo", "params": params},
    st.integers(0, 10**6),
    st.dictionaries(st.text(max_size=8), json_values, max_size=4),
)


def read_all(
    data: bytes, cuts: list[int] | None = None, max_bytes: int | None = None
) -> list[bytes | KaiRpcError]:
    """Feed ``data`` split at ``cuts`` into a reader; every frame or error, in order,
    until end of stream."""

    async def run() -> list[bytes | KaiRpcError]:
        stream = new_stream_reader()
        reader = (
            FrameReader(stream) if max_bytes is None else FrameReader(stream, max_bytes)
        )
        points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts or [])})

        async def feed() -> None:
            for start, end in itertools.pairwise(points):
                stream.feed_data(data[start:end])
                await asyncio.sleep(0)
            stream.feed_eof()

        feeder = asyncio.create_task(feed())
        out: list[bytes | KaiRpcError] = []
        while True:
            try:
                body = await reader.read_frame()
            except KaiRpcError as exc:
                out.append(exc)
                continue
            if body is None:
                break
            out.append(body)
        await feeder
        return out

    return asyncio.run(asyncio.wait_for(run(), 30))


def frame(body: bytes, name: str = "Content-Length", extra: bytes = b"") -> bytes:
    return b"%s%s: %d\r\n\r\n%s" % (extra, name.encode(), len(body), body)


def test_header_name_in_any_case_and_extra_headers_are_accepted() -> None:
    """content-length in any case is read, and Content-Type or unknown headers beside
    it, before or after, are ignored."""
    body = b'{"jsonrpc":"2.0","method":"x"}'
    data = (
        frame(body, "content-length")
        + frame(body, "CONTENT-LENGTH", b"Content-Type: application/json\r\n")
        + b"Content-Length: %d\r\nX-Whatever: 1\r\n\r\n%s" % (len(body), body)
    )
    assert read_all(data) == [body, body, body]


def test_a_block_without_content_length_is_an_error_and_the_next_frame_reads() -> None:
    """A header block lacking Content-Length (or with a bad one) raises FramingError,
    and the frame after it is read intact."""
    body = b"{}"
    data = (
        b"Content-Type: x\r\n\r\n"
        + b"Content-Length: -4\r\n\r\n"
        + b"Content-Length: 1e3\r\n\r\n"
        + frame(body)
    )
    out = read_all(data)
    assert [type(item) for item in out] == [FramingError] * 3 + [bytes]
    assert out[-1] == body


async def test_noise_lines_between_frames_are_skipped() -> None:
    """Lines without a colon inside a block that has a Content-Length (a worker's
    stray print) are counted as noise, not errors."""
    body = b"{}"
    stream = new_stream_reader()
    stream.feed_data(b"stray output\nmore noise\n" + frame(body))
    stream.feed_eof()
    reader = FrameReader(stream)
    assert await reader.read_frame() == body
    assert reader.noise_lines == 2


def test_an_overlong_header_line_is_refused_in_bounded_memory() -> None:
    """A header line longer than the line limit raises FramingError without being
    kept, and the stream resynchronises."""
    body = b"{}"
    data = b"X-Junk: " + b"a" * (MAX_HEADER_LINE_BYTES * 8) + b"\r\n\r\n" + frame(body)
    out = read_all(data, cuts=[100, 5000, 20000])
    assert isinstance(out[0], FramingError)
    assert out[-1] == body


def test_an_absurd_content_length_is_refused_not_crashed_on() -> None:
    """A Content-Length of thousands of digits (past int()'s digit limit) is refused
    as too large instead of raising ValueError out of the reader."""
    out = read_all(b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n" + b"x" * 100)
    assert len(out) == 1
    assert isinstance(out[0], MessageTooLarge)


def test_an_oversized_body_is_refused_before_it_arrives() -> None:
    """MessageTooLarge is raised as soon as the header is read, before any of the
    body is sent, and the body is skipped on the next read."""

    async def run() -> None:
        stream = new_stream_reader()
        reader = FrameReader(stream, max_bytes=1000)
        stream.feed_data(b"Content-Length: 5000\r\n\r\n")
        with pytest.raises(MessageTooLarge, match="5000 bytes refused"):
            await asyncio.wait_for(reader.read_frame(), 5)
        stream.feed_data(b"y" * 5000 + frame(b"{}"))
        stream.feed_eof()
        assert await asyncio.wait_for(reader.read_frame(), 5) == b"{}"

    asyncio.run(run())


def test_a_body_at_the_limit_is_accepted_and_one_over_is_refused() -> None:
    """A body of exactly max_bytes is returned; max_bytes + 1 is MessageTooLarge and
    the following frame still reads."""
    limit = 4096
    out = read_all(
        frame(b"a" * limit) + frame(b"b" * (limit + 1)) + frame(b"{}"),
        cuts=[10, 3000, 6000],
        max_bytes=limit,
    )
    assert out[0] == b"a" * limit
    assert isinstance(out[1], MessageTooLarge)
    assert out[2] == b"{}"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", ParseError),
        (b"\xff\xfe{}", ParseError),
        (b"[" * 100_000 + b"]" * 100_000, ParseError),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"x","params":[' + b"9" * 5000 + b"]}",
            ParseError,
        ),
        (b"[1, 2]", InvalidRequest),
        (b'{"jsonrpc":"1.0","id":1,"method":"x"}', InvalidRequest),
        (b'{"jsonrpc":"2.0","id":1,"method":5}', InvalidRequest),
        (b'{"jsonrpc":"2.0","id":1,"method":"x","params":"text"}', InvalidRequest),
        (b'{"jsonrpc":"2.0","id":[1],"method":"x"}', InvalidRequest),
        (b'{"jsonrpc":"2.0","id":1}', InvalidRequest),
    ],
)
def test_bad_bodies_raise_only_protocol_errors(
    body: bytes, error: type[KaiRpcError]
) -> None:
    """Invalid UTF-8, invalid JSON, nesting past the recursion limit and integers past
    int()'s digit limit are ParseError; valid JSON that is not JSON-RPC 2.0 is
    InvalidRequest; nothing else escapes."""
    with pytest.raises(error):
        parse_body(body)


@PROPERTY
@given(
    st.lists(messages, min_size=1, max_size=6),
    st.lists(st.integers(0, 10_000), max_size=30),
    st.lists(
        st.sampled_from(
            ["Content-Length", "content-length", "CONTENT-length", "cOnTeNt-LeNgTh"]
        ),
        min_size=6,
        max_size=6,
    ),
    st.lists(st.booleans(), min_size=6, max_size=6),
)
def test_valid_frames_survive_any_chunking_and_header_case(
    batch: list[dict[str, Any]], cuts: list[int], names: list[str], extras: list[bool]
) -> None:
    """Valid frames split at arbitrary byte positions, with any header-name case and
    optional extra headers, come out whole, in order, and parse back equal."""
    data = b""
    for message, name, extra in zip(batch, names, extras, strict=False):
        body = json.dumps(message).encode()
        data += frame(
            body,
            name,
            b"Content-Type: application/vscode-jsonrpc\r\n" if extra else b"",
        )
    out = read_all(data, cuts)
    assert [parse_body(item) for item in out if isinstance(item, bytes)] == batch
    assert len(out) == len(batch)


@PROPERTY
@given(
    st.lists(messages, min_size=1, max_size=4),
    st.lists(
        st.binary(max_size=200).filter(lambda b: b":" not in b and b"\n" not in b),
        min_size=4,
        max_size=4,
    ),
    st.lists(st.integers(0, 10_000), max_size=20),
)
def test_junk_between_frames_costs_at_most_an_error_per_junk_block(
    batch: list[dict[str, Any]], junk: list[bytes], cuts: list[int]
) -> None:
    """Junk lines ending in a blank line between valid frames produce FramingErrors,
    never another exception, and every valid frame still comes out intact."""
    data = b""
    for message, noise in zip(batch, junk, strict=False):
        data += noise + b"\r\n\r\n" + encode_message(message)
    out = read_all(data, cuts)
    bodies = [parse_body(item) for item in out if isinstance(item, bytes)]
    assert bodies == batch
    assert all(isinstance(item, bytes | FramingError) for item in out)


@PROPERTY
@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=10))
def test_arbitrary_bytes_never_break_the_reader(data: bytes, cuts: list[int]) -> None:
    """Any byte stream ends in frames and protocol errors only, and at end of stream
    the reader returns None instead of hanging or raising something else."""
    for item in read_all(data, cuts, max_bytes=1000):
        if isinstance(item, bytes):
            with contextlib.suppress(ParseError, InvalidRequest):
                parse_body(item)
