"""A JSON-RPC client for ``kai-rpc serve`` over its stdio, as an IDE would drive it.

``kai-rpc demo`` and the benchmarks use it, and the tests build on it. It parses
frames on its own rather than with the bridge's reader, so the two check each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SERVE = [sys.executable, "-m", "kai_rpc", "serve"]
DEFAULT_TIMEOUT = 30.0


class ResponseError(Exception):
    """An error response; ``code`` and ``message`` as the server sent them."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.code: int = error.get("code", 0)
        self.message: str = error.get("message", "")
        self.error = error


class BridgeClient:
    """Speaks LSP framing to a bridge subprocess and keeps everything it says."""

    def __init__(
        self, process: asyncio.subprocess.Process, started: float = 0.0
    ) -> None:
        self.process = process
        self.started = started
        """``time.perf_counter()`` just before the process was spawned."""
        self.received: list[dict[str, Any]] = []
        self.notifications: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.requests: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.stderr = bytearray()
        self._pending: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._tasks = [
            asyncio.create_task(self._read()),
            asyncio.create_task(self._drain_stderr()),
        ]

    @property
    def pid(self) -> int:
        return self.process.pid

    def write_raw(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)

    def send(self, message: dict[str, Any]) -> None:
        body = json.dumps(message).encode()
        self.write_raw(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    def start_request(
        self, method: str, params: Any = None
    ) -> asyncio.Future[dict[str, Any]]:
        """Send a request now; the future resolves to the whole response."""
        request_id = next(self._ids)
        future = self.expect_response(request_id)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)
        return future

    async def request_raw(
        self, method: str, params: Any = None, timeout: float = DEFAULT_TIMEOUT
    ) -> dict[str, Any]:
        """Send a request; return the whole response message."""
        return await asyncio.wait_for(self.start_request(method, params), timeout)

    def expect_response(self, request_id: Any) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending[request_id] = future
        return future

    async def request(
        self, method: str, params: Any = None, timeout: float = DEFAULT_TIMEOUT
    ) -> Any:
        """Send a request; return its result or raise ResponseError."""
        response = await self.request_raw(method, params, timeout)
        if "error" in response:
            raise ResponseError(response["error"])
        return response.get("result")

    def notify(self, method: str, params: Any = None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)

    async def initialize(self, options: dict[str, Any] | None = None) -> Any:
        result = await self.request(
            "initialize",
            {
                "processId": os.getpid(),
                "capabilities": {},
                "initializationOptions": options or {},
            },
        )
        self.notify("initialized", {})
        return result

    async def notification(
        self,
        method: str,
        predicate: Callable[[Any], bool] = lambda _: True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Any:
        """The params of the next notification ``method`` that satisfies predicate."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.notifications.get()
                if message["method"] == method and predicate(message.get("params")):
                    return message.get("params")

    async def status_where(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = DEFAULT_TIMEOUT,
    ) -> dict[str, Any]:
        """The next environmentStatus report that satisfies predicate."""
        result: dict[str, Any] = await self.notification(
            "environmentStatus", predicate, timeout
        )
        return result

    async def ready(self, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """Wait until the worker is ready; return that report."""
        report = await self.request("getEnvironmentStatus")
        if report["worker"]["state"] == "ready":
            return dict(report)
        return await self.status_where(
            lambda r: r["worker"]["state"] == "ready", timeout
        )

    async def shutdown_and_exit(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        await self.request("shutdown")
        self.notify("exit")
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def _read(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        while True:
            length = None
            while True:
                line = await stdout.readline()
                if not line:
                    return
                if not line.strip():
                    break
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            assert length is not None, "frame without Content-Length"
            message = json.loads(await stdout.readexactly(length))
            self.received.append(message)
            self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "method" in message and "id" in message:
            self.requests.put_nowait(message)
        elif "method" in message:
            self.notifications.put_nowait(message)
        else:
            future = self._pending.pop(message.get("id"), None)
            if future is not None and not future.done():
                future.set_result(message)

    async def _drain_stderr(self) -> None:
        stderr = self.process.stderr
        if stderr is None:  # not a pipe: inherited or discarded
            return
        while chunk := await stderr.read(65536):
            self.stderr.extend(chunk)

    async def stop(self, timeout: float = 5.0) -> None:
        """Ask the bridge to end (shutdown, exit); kill it if it does not."""
        if self.process.returncode is None:
            with contextlib.suppress(Exception):
                await self.shutdown_and_exit(timeout)
        await self.close()

    async def close(self) -> None:
        """Stop the bridge if it still runs and collect its output."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        await self.process.wait()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def start(
    command: list[str] | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stderr: int | None = asyncio.subprocess.PIPE,
) -> BridgeClient:
    """Spawn a bridge (default: this interpreter's ``kai-rpc serve``) and connect."""
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *(command or SERVE),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        env=env,
        cwd=cwd,
    )
    return BridgeClient(process, started)
