"""A lean LSP client for the benchmarks: one subprocess, framed JSON both ways.

It does no logging and keeps no history, so what it measures is the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

BRIDGE = [sys.executable, "-m", "kai_rpc", "serve"]
BARE = [sys.executable, "-m", "bench.bare_echo_server"]


class RpcError(Exception):
    """An error response."""


def frame(message: Any) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


class Peer:
    """A server subprocess and the conversation with it."""

    def __init__(self, process: asyncio.subprocess.Process, started: float) -> None:
        self.process = process
        self.started = started
        self.notifications: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._pending: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def spawn(cls, command: list[str], env: dict[str, str]) -> Peer:
        started = time.perf_counter()
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
        )
        return cls(process, started)

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(frame(message))

    def start_request(self, method: str, params: Any) -> asyncio.Future[Any]:
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self.send(
            {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        )
        return future

    async def request(
        self, method: str, params: Any = None, timeout: float = 60
    ) -> Any:
        response = await asyncio.wait_for(self.start_request(method, params), timeout)
        if "error" in response:
            raise RpcError(f"{method}: {response['error']}")
        return response.get("result")

    async def initialize(self, options: dict[str, Any] | None = None) -> Any:
        params = {
            "processId": os.getpid(),
            "capabilities": {},
            "initializationOptions": options or {},
        }
        result = await self.request("initialize", params)
        self.send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
        return result

    async def worker_ready(self, timeout: float = 60) -> dict[str, Any]:
        """The bridge's report once its worker is ready."""
        report: dict[str, Any] = await self.request("getEnvironmentStatus")
        async with asyncio.timeout(timeout):
            while report["worker"]["state"] != "ready":
                message = await self.notifications.get()
                if message["method"] == "environmentStatus":
                    report = message["params"]
        return report

    async def close(self) -> None:
        """Ask politely (shutdown, exit), then kill."""
        if self.process.returncode is None:
            with contextlib.suppress(Exception):
                await self.request("shutdown", None, timeout=5)
                self.send({"jsonrpc": "2.0", "method": "exit"})
                await asyncio.wait_for(self.process.wait(), 5)
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    async def _read(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        while True:
            length = 0
            while line := await stdout.readline():
                if not line.strip():
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if not line:
                return
            message = json.loads(await stdout.readexactly(length))
            if "method" in message:
                if "id" not in message:
                    self.notifications.put_nowait(message)
                continue
            future = self._pending.pop(message.get("id"), None)
            if future is not None and not future.done():
                future.set_result(message)


def peak_rss_kib(pid: int) -> int | None:
    """VmHWM (peak resident set) of a live process, in KiB."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None
