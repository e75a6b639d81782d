"""The tests' way to drive the real ``kai-rpc serve``: the package's client, started
from a clean environment with DEBUG logging, plus views of /proc."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from kai_rpc.client import BridgeClient, ResponseError, start
from tests.support.environ import clean_environ

__all__ = [
    "FAULT_WORKER",
    "BridgeClient",
    "ResponseError",
    "bridge",
    "environ_of",
    "fault_worker_options",
    "pid_alive",
    "start_bridge",
]

SERVE = [sys.executable, "-m", "kai_rpc", "--log-level", "DEBUG", "serve"]
FAULT_WORKER = [sys.executable, str(Path(__file__).with_name("fault_worker.py"))]


def fault_worker_options(env: dict[str, Any] | None = None) -> dict[str, Any]:
    """initializationOptions that run the fault worker with ``env``."""
    return {"env": env or {}, "worker": {"command": FAULT_WORKER}}


async def start_bridge(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> BridgeClient:
    """Start ``kai-rpc serve`` with extra arguments from a clean environment."""
    environment = env if env is not None else clean_environ()
    return await start([*SERVE, *args], env=environment, cwd=cwd)


@contextlib.asynccontextmanager
async def bridge(
    *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[BridgeClient]:
    """A running bridge, stopped (and its workers gone) on exit."""
    client = await start_bridge(*args, env=env)
    try:
        yield client
    finally:
        await client.close()


def environ_of(pid: int) -> dict[str, str]:
    """The environment a process was started with, from /proc."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if item)
    return {k.decode(): v.decode() for k, v in pairs}


def pid_alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
