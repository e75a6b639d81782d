"""Bad input on the real bridge's stdin: each message is answered, the bridge
survives, the same worker keeps serving, and nothing sent around it is lost."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from kai_rpc import policy
from kai_rpc.framing import MAX_MESSAGE_BYTES
from tests.support.client import BridgeClient, ResponseError, bridge, environ_of

pytestmark = pytest.mark.asyncio(loop_scope="module")


def frame(body: bytes, header: bytes = b"Content-Length") -> bytes:
    return b"%s: %d\r\n\r\n%s" % (header, len(body), body)


def request(request_id: Any, method: str, params: Any = None) -> bytes:
    message = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return json.dumps(message, separators=(",", ":")).encode()


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} missing for {pid}")


async def answers(client: BridgeClient, *ids: Any) -> list[dict[str, Any]]:
    futures = [client.expect_response(i) for i in ids]
    return list(await asyncio.wait_for(asyncio.gather(*futures), 30))


async def sandwich(client: BridgeClient, bad: bytes, tag: str) -> dict[str, Any]:
    """Send an echo, ``bad``, and another echo in one write; both echoes must be
    answered by the same worker; return the error the bad bytes got."""
    before, after = f"{tag}-before", f"{tag}-after"
    futures = [client.expect_response(before), client.expect_response(after)]
    errors = len([m for m in client.received if "error" in m])
    client.write_raw(
        frame(request(before, "echo", {"n": 1}))
        + bad
        + frame(request(after, "echo", {"n": 2}))
    )
    first, second = await asyncio.wait_for(asyncio.gather(*futures), 30)
    assert first["result"] == {"n": 1}
    assert second["result"] == {"n": 2}
    async with asyncio.timeout(10):
        while True:
            fresh = [m for m in client.received if "error" in m][errors:]
            if fresh:
                return fresh[0]
            await asyncio.sleep(0.02)


@dataclass
class Shared:
    """One bridge for the cheap cases, and the worker that must still be serving
    (a test that changes the environment on purpose moves it on)."""

    client: BridgeClient
    pid: int

    def __iter__(self) -> Iterator[Any]:
        return iter((self.client, self.pid))


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def shared() -> AsyncIterator[Shared]:
    async with bridge() as client:
        await client.initialize({"env": {"KEEP": "me"}})
        report = await client.ready()
        yield Shared(client, report["worker"]["pid"])


async def same_worker(client: BridgeClient, pid: int) -> None:
    report = await client.request("getEnvironmentStatus")
    assert report["worker"]["pid"] == pid
    assert report["worker"]["restarts"] == 0
    assert await client.request("echo", ["still", "here"]) == ["still", "here"]


@pytest.mark.parametrize(
    ("bad", "code", "expected_id"),
    [
        (frame(b'{"jsonrpc": "2.0", "id": 9, "method": "echo"'), -32700, None),
        (frame(b'{"jsonrpc":"2.0","id":9,"method":"\xff\xfe"}'), -32700, None),
        (frame(b"[" * 50_000 + b"]" * 50_000), -32700, None),
        (
            frame(
                b'{"jsonrpc":"2.0","id":9,"method":"echo","params":['
                + b"7" * 5000
                + b"]}"
            ),
            -32700,
            None,
        ),
        (frame(b'{"jsonrpc":"1.0","id":9,"method":"echo"}'), -32600, 9),
        (frame(b'{"id":9,"method":"echo"}'), -32600, 9),
        (frame(b"[1, 2, 3]"), -32600, None),
        (frame(b'{"jsonrpc":"2.0","id":9,"method":"echo","params":"text"}'), -32600, 9),
        (frame(b'{"jsonrpc":"2.0","id":{"x":1},"method":"echo"}'), -32600, None),
        (b"Content-Type: application/json\r\n\r\n", -32600, None),
        (b"Content-Length: twelve\r\n\r\n", -32600, None),
    ],
    ids=[
        "truncated-json",
        "invalid-utf8",
        "nesting-past-recursion-limit",
        "integer-past-digit-limit",
        "jsonrpc-1.0",
        "no-jsonrpc-member",
        "array-body",
        "params-a-string",
        "id-an-object",
        "no-content-length",
        "content-length-not-a-number",
    ],
)
async def test_bad_frames_are_answered_and_the_worker_keeps_serving(
    shared: Shared, bad: bytes, code: int, expected_id: Any
) -> None:
    """Each malformed frame gets its JSON-RPC error (with its id when one can be
    read), and the requests written just before and after it are both served by the
    same worker."""
    client, pid = shared
    error = await sandwich(client, bad, f"bad-{code}-{len(bad)}")
    assert error["error"]["code"] == code
    assert error["id"] == expected_id
    assert error["error"]["message"]
    await same_worker(client, pid)


@pytest.mark.parametrize(
    "header",
    [
        b"content-length: %d\r\n\r\n",
        b"CONTENT-LENGTH: %d\r\n\r\n",
        b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n"
        b"Content-Length: %d\r\nX-Extra: 1\r\n\r\n",
        b"Content-Length:%d\n\n",
    ],
    ids=["lower", "upper", "extra-headers", "no-space-bare-newlines"],
)
async def test_header_variants_are_served(shared: Shared, header: bytes) -> None:
    """content-length in another case, extra headers around it and bare newlines
    are all accepted."""
    client, pid = shared
    body = request(f"variant-{header[:12]!r}", "echo", {"ok": True})
    future = client.expect_response(f"variant-{header[:12]!r}")
    client.write_raw(header % len(body) + body)
    assert (await asyncio.wait_for(future, 30))["result"] == {"ok": True}
    await same_worker(client, pid)


@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        ("setEnvironment", {"env": ["A", "B"]}, "env"),
        ("setEnvironment", {"env": {"A": "1"}, "replace": 1}, "replace"),
        ("initialize", {"processId": None, "capabilities": {}}, "initialize"),
        ("chat", {"messages": "hello"}, "messages"),
        ("probeConnectivity", {"timeoutMs": "soon"}, "timeoutMs"),
    ],
)
async def test_params_of_the_wrong_type_name_the_field(
    shared: Shared, method: str, params: Any, field: str
) -> None:
    """Wrong params are -32602 (or -32600 for a second initialize) naming what is
    wrong, for the bridge's own methods and the worker's alike."""
    client, pid = shared
    with pytest.raises(ResponseError) as caught:
        await client.request(method, params)
    assert caught.value.code in (-32602, -32600)
    assert field in caught.value.message
    await same_worker(client, pid)


async def test_odd_notifications_are_survived(shared: Shared) -> None:
    """A cancel for an unhashable id, settings of the wrong shape and an unknown
    notification get no answer and break nothing."""
    client, pid = shared
    client.notify("$/cancelRequest", {"id": {"not": "hashable"}})
    client.notify("$/cancelRequest", [1, 2])
    client.notify("workspace/didChangeConfiguration", {"settings": {"kai": {"env": 5}}})
    client.notify("workspace/didChangeConfiguration", "nonsense")
    client.notify("no/such/notification", {"x": 1})
    client.send({"jsonrpc": "2.0", "id": "never-asked", "result": 1})
    await same_worker(client, pid)
    assert client.process.returncode is None


async def test_a_ten_thousand_key_env_map_is_applied_and_reported(
    shared: Shared,
) -> None:
    """10,000 keys in one setEnvironment are each reported and reach the new
    worker's environment, and the bridge keeps serving."""
    client, _ = shared
    env = {f"KAI_BULK_{i:05d}": f"value-{i}" for i in range(10_000)}
    report = await client.request("setEnvironment", {"env": env}, timeout=60)
    reported = {v["name"]: v["status"] for v in report["variables"]}
    assert all(reported[name] == "applied" for name in env)
    worker_env = environ_of(report["worker"]["pid"])
    assert all(worker_env[name] == value for name, value in env.items())
    assert worker_env["KEEP"] == "me"
    cleared = await client.request(
        "setEnvironment", {"env": dict.fromkeys(env)}, timeout=60
    )
    assert "KAI_BULK_00000" not in environ_of(cleared["worker"]["pid"])
    assert await client.request("echo", {"after": "bulk"}) == {"after": "bulk"}
    shared.pid = cleared["worker"]["pid"]


async def test_keys_and_values_at_the_limits_pass_and_over_them_are_rejected(
    shared: Shared,
) -> None:
    """A name of MAX_NAME_BYTES and a value of MAX_VALUE_BYTES reach the worker; one
    byte more is rejected with a reason; the total size limit rejects the rest."""
    client, _ = shared
    long_name = "N" * policy.MAX_NAME_BYTES
    too_long_name = "M" * (policy.MAX_NAME_BYTES + 1)
    env = {
        long_name: "ok",
        too_long_name: "no",
        "AT_LIMIT": "v" * policy.MAX_VALUE_BYTES,
        "OVER_LIMIT": "w" * (policy.MAX_VALUE_BYTES + 1),
    }
    report = await client.request("setEnvironment", {"env": env}, timeout=60)
    status = {v["name"]: v for v in report["variables"]}
    assert status[long_name]["status"] == "applied"
    assert status["AT_LIMIT"]["status"] == "applied"
    for name in (too_long_name, "OVER_LIMIT"):
        assert status[name]["status"] == "rejected"
        assert "limit" in status[name]["reason"]
    worker_env = environ_of(report["worker"]["pid"])
    assert worker_env[long_name] == "ok"
    assert len(worker_env["AT_LIMIT"]) == policy.MAX_VALUE_BYTES
    assert too_long_name not in worker_env and "OVER_LIMIT" not in worker_env

    chunk = "x" * (policy.MAX_VALUE_BYTES - 100)
    flood = {f"KAI_BIG_{i:02d}": chunk for i in range(20)}
    report = await client.request(
        "setEnvironment", {"env": flood, "replace": True}, timeout=60
    )
    status = {v["name"]: v for v in report["variables"]}
    rejected = [n for n in flood if status[n]["status"] == "rejected"]
    assert rejected, "twenty values of ~64 KiB must overflow the 1 MiB total"
    assert all("limit" in status[n]["reason"] for n in rejected)
    worker_env = environ_of(report["worker"]["pid"])
    total = sum(len(k) + len(v) + 2 for k, v in worker_env.items())
    assert total <= policy.MAX_TOTAL_BYTES
    assert await client.request("echo", {"after": "limits"}) == {"after": "limits"}
    shared.pid = report["worker"]["pid"]


async def test_chunked_frames_in_random_pieces_are_all_served(
    shared: Shared,
) -> None:
    """Fifty valid frames with random header case, split at random byte positions
    and written piece by piece, are all answered in full (a seeded fuzz example
    against the real bridge)."""
    client, pid = shared
    rng = random.Random(5)
    stream = b""
    expected = {}
    for i in range(50):
        params = {"i": i, "text": "é" * rng.randrange(0, 300)}
        name = "".join(
            c.upper() if rng.random() < 0.5 else c.lower() for c in "content-length"
        )
        stream += frame(request(f"fuzz-{i}", "echo", params), name.encode())
        expected[f"fuzz-{i}"] = params
    futures = {key: client.expect_response(key) for key in expected}
    position = 0
    assert client.process.stdin is not None
    while position < len(stream):
        step = rng.randrange(1, 700)
        client.write_raw(stream[position : position + step])
        await client.process.stdin.drain()
        position += step
    for key, future in futures.items():
        assert (await asyncio.wait_for(future, 30))["result"] == expected[key]
    await same_worker(client, pid)


async def test_requests_out_of_turn_leave_the_bridge_usable() -> None:
    """Before initialize every request is -32002 and notifications are dropped, and
    initialize still works; after shutdown requests are -32600 and exit still
    ends the bridge with code 0."""
    async with bridge() as client:
        client.notify("workspace/didChangeConfiguration", {"settings": {}})
        for method in ("echo", "setEnvironment", "shutdown"):
            with pytest.raises(ResponseError) as early:
                await client.request(method, {"env": {}})
            assert early.value.code == -32002
        await client.initialize()
        pid = (await client.ready())["worker"]["pid"]
        await client.request("shutdown")
        for method in ("echo", "setEnvironment", "getEnvironmentStatus"):
            with pytest.raises(ResponseError) as late:
                await client.request(method, {"env": {"A": "1"}})
            assert late.value.code == -32600
        assert environ_of(pid)  # the worker was not replaced after shutdown
        client.notify("exit")
        assert await asyncio.wait_for(client.process.wait(), 30) == 0


async def test_an_oversized_body_is_refused_at_once_and_streamed_past() -> None:
    """A 64 MiB message is refused before any of its body is sent, with a log line;
    the body is then discarded as it streams in without the bridge's peak RSS
    growing by its size; the request after it is served by the same worker."""
    async with bridge() as client:
        await client.initialize()
        pid = (await client.ready())["worker"]["pid"]
        streamed = 64 * 1024 * 1024
        client.write_raw(b"Content-Length: %d\r\n\r\n" % streamed)
        refusal = await asyncio.wait_for(client.expect_response(None), 30)
        assert refusal["error"]["code"] == -32010
        assert "refused" in refusal["error"]["message"]
        assert b"refused: the limit is" in client.stderr

        peak_before = vm_kib(client.pid, "VmHWM")
        assert client.process.stdin is not None
        chunk = b"z" * (1024 * 1024)
        for _ in range(streamed // len(chunk)):
            client.write_raw(chunk)
            await client.process.stdin.drain()
        assert await client.request("echo", {"after": "stream"}) == {"after": "stream"}
        grown = vm_kib(client.pid, "VmHWM") - peak_before
        assert grown < 16 * 1024, f"peak RSS grew by {grown} KiB"
        assert (await client.request("getEnvironmentStatus"))["worker"]["pid"] == pid


async def test_an_absurd_length_then_end_of_input_ends_the_bridge() -> None:
    """A Content-Length of 26 digits is refused at once, and when stdin then closes
    the bridge exits instead of waiting for a body that never comes."""
    async with bridge() as client:
        await client.initialize()
        await client.ready()
        client.write_raw(b"Content-Length: 99999999999999999999999999\r\n\r\npartial")
        refusal = await asyncio.wait_for(client.expect_response(None), 30)
        assert refusal["error"]["code"] == -32010
        assert client.process.stdin is not None
        client.process.stdin.close()
        assert await asyncio.wait_for(client.process.wait(), 30) == 1


async def test_a_message_of_exactly_the_limit_is_served_and_one_byte_more_refused() -> (
    None
):
    """An echo whose body is exactly 16 MiB comes back whole even when the bridge's
    worker-local id is longer than the client's; 16 MiB + 1 is refused with -32010
    and a log line, and the same worker serves the next request."""
    async with bridge() as client:
        await client.initialize()
        pid = (await client.ready())["worker"]["pid"]
        for _ in range(12):  # worker-local ids now have two digits
            await client.request("echo", {})
        empty = request(0, "echo", {"s": ""})
        padding = "a" * (MAX_MESSAGE_BYTES - len(empty))
        body = request(0, "echo", {"s": padding})
        assert len(body) == MAX_MESSAGE_BYTES
        future = client.expect_response(0)
        client.write_raw(frame(body))
        response = await asyncio.wait_for(future, 60)
        assert response["result"]["s"] == padding

        over = request(1000, "echo", {"s": padding + "b"})
        assert len(over) > MAX_MESSAGE_BYTES
        future = client.expect_response(None)
        client.write_raw(frame(over))
        refused = await asyncio.wait_for(future, 60)
        assert refused["error"]["code"] == -32010
        assert str(MAX_MESSAGE_BYTES) in refused["error"]["message"]
        assert b"bad frame from the client: message of" in client.stderr
        status = await client.request("getEnvironmentStatus")
        assert status["worker"]["pid"] == pid
        assert await client.request("echo", {"after": "big"}) == {"after": "big"}
