"""The processes the benchmarks measure: the bridge and the bare pygls server,
both driven by the package's own client (kai_rpc.client)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from kai_rpc.client import BridgeClient, start

ROOT = Path(__file__).resolve().parent.parent

BRIDGE = [sys.executable, "-m", "kai_rpc", "serve"]
BARE = [sys.executable, "-m", "bench.bare_echo_server"]


async def spawn(command: list[str], env: dict[str, str]) -> BridgeClient:
    """A server subprocess to measure, its stderr discarded so it costs nothing."""
    return await start(command, env=env, cwd=ROOT, stderr=asyncio.subprocess.DEVNULL)


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
