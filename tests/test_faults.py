"""Faults the bridge survives, end to end, beyond tests/test_server.py: exact
environment after a crash, roll-back after a hung start, floods, spin-free
failure, a setEnvironment burst, and no orphans when the bridge is killed."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.support.client import (
    BridgeClient,
    ResponseError,
    bridge,
    environ_of,
    fault_worker_options,
    pid_alive,
    start_bridge,
)


def children(pid: int) -> dict[int, str]:
    """Child pid to state letter, for every process whose parent is ``pid``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found[int(entry.name)] = fields[0]
    return found


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def until(check: Any, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


async def test_a_killed_worker_comes_back_with_the_identical_environment() -> None:
    """After SIGKILL during a request the replacement worker's /proc environ equals
    the killed one's, byte for byte, and the held request failed at once."""
    async with bridge() as client:
        await client.initialize(fault_worker_options({"KEEP": "this", "lower": "x y"}))
        before = await client.ready()
        old_pid = before["worker"]["pid"]
        old_env = environ_of(old_pid)
        held = asyncio.create_task(client.request_raw("test/sleep", {"seconds": 60}))
        await asyncio.sleep(0.3)
        os.kill(old_pid, signal.SIGKILL)
        response = await asyncio.wait_for(held, 10)
        assert response["error"]["code"] == -32012
        report = await client.status_where(
            lambda r: r["worker"]["state"] == "ready" and r["worker"]["pid"] != old_pid
        )
        assert environ_of(report["worker"]["pid"]) == old_env
        assert await client.request("echo", {"back": True}) == {"back": True}


async def test_a_worker_that_never_gets_ready_is_killed_and_rolled_back() -> None:
    """A replacement that never answers its configuration is stopped after
    --ready-timeout; generation, environment and worker stay as they were and the
    hung process is not left behind."""
    async with bridge("--ready-timeout", "1") as client:
        await client.initialize(fault_worker_options({"STAGE": "good"}))
        before = await client.ready()
        pid = before["worker"]["pid"]
        with pytest.raises(ResponseError) as caught:
            await client.request("setEnvironment", {"env": {"FAULT_MODE": "hang"}})
        assert caught.value.code == -32011
        assert "within 1 s" in caught.value.message
        after = await client.request("getEnvironmentStatus")
        assert (after["generation"], after["worker"]["pid"]) == (
            before["generation"],
            pid,
        )
        assert "FAULT_MODE" not in environ_of(pid)
        await until(lambda: set(children(client.pid)) == {pid})
        assert await client.request("echo", {"ok": 1}) == {"ok": 1}


async def test_a_flooding_worker_is_survived_in_bounded_memory() -> None:
    """A replacement worker that writes 8 MiB of garbage to stdout and 8 MiB to
    stderr before serving still becomes ready and serves, and the bridge's peak RSS
    grows by far less than the flood."""
    async with bridge() as client:
        await client.initialize(fault_worker_options())
        await client.ready()
        baseline = peak_rss_kib(client.pid)
        report = await client.request(
            "setEnvironment", {"env": {"FAULT_MODE": "flood"}}, timeout=60
        )
        assert report["worker"]["state"] == "ready"
        assert await client.request("echo", {"after": "flood"}) == {"after": "flood"}
        assert await client.request("test/pid") == report["worker"]["pid"]
        grown = peak_rss_kib(client.pid) - baseline
        assert grown < 8 * 1024, f"bridge peak RSS grew by {grown} KiB"


async def test_a_flooding_worker_does_not_flood_the_bridge_log() -> None:
    """The bridge passes a worker's stderr on to its own log at a bounded rate and
    says how many lines it left out."""
    async with bridge() as client:
        await client.initialize(fault_worker_options({"FAULT_MODE": "flood"}))
        await client.ready(timeout=60)
        await client.request("echo", {})
        assert await client.shutdown_and_exit() == 0
    log = client.stderr.decode("utf-8", "replace")
    relayed = log.count("garbage without a frame header")
    assert 0 < relayed < 1000, relayed
    assert "lines of its stderr not shown" in log


async def test_a_worker_that_exits_at_start_is_not_respawned_in_a_spin() -> None:
    """A worker that always exits at start is started exactly max_failures (5)
    times with backoff, then the bridge is failed and starts no more."""
    async with bridge() as client:
        await client.initialize(fault_worker_options({"FAULT_MODE": "exit"}))
        await client.status_where(lambda r: r["worker"]["state"] == "failed", 60)
        started = re.findall(rb"worker \d+ started", bytes(client.stderr))
        assert len(started) == 5
        await asyncio.sleep(1.0)
        assert len(re.findall(rb"worker \d+ started", bytes(client.stderr))) == 5
        assert children(client.pid) == {}


async def test_a_burst_of_setenvironment_from_two_tasks() -> None:
    """200 setEnvironment calls from two tasks are all answered; the last one sent
    wins; afterwards one worker is alive, no child is a zombie, and the bridge holds
    no more file descriptors than before."""
    async with bridge("--retire-grace", "1") as client:
        await client.initialize({"env": {"BURST": "start"}})
        await client.ready()
        await client.request("setEnvironment", {"env": {"BURST": "warm"}})
        await until(lambda: len(children(client.pid)) == 1)
        fds_before = fd_count(client.pid)

        async def burst(name: str) -> list[asyncio.Future[dict[str, Any]]]:
            futures = []
            for i in range(100):
                futures.append(
                    asyncio.ensure_future(
                        client.request_raw(
                            "setEnvironment",
                            {"env": {"BURST": f"{name}-{i}", f"{name}_LAST": str(i)}},
                            timeout=120,
                        )
                    )
                )
                await asyncio.sleep(0)
            return futures

        a, b = await asyncio.gather(burst("A"), burst("B"))
        responses = await asyncio.gather(*a, *b)
        assert all("result" in r for r in responses), [
            r for r in responses if "error" in r
        ][:2]
        last_sent = "B-99"
        final = await client.request("getEnvironmentStatus")
        env = environ_of(final["worker"]["pid"])
        assert env["BURST"] == last_sent
        assert (env["A_LAST"], env["B_LAST"]) == ("99", "99")

        await until(lambda: list(children(client.pid)) == [final["worker"]["pid"]])
        assert "Z" not in children(client.pid).values()
        await until(lambda: fd_count(client.pid) <= fds_before)


async def test_killing_the_bridge_leaves_no_worker_even_mid_change() -> None:
    """SIGKILL on the bridge while one worker holds a request and its replacement
    is starting leaves no worker process within 3 seconds."""
    client: BridgeClient = await start_bridge("--ready-timeout", "30")
    try:
        await client.initialize(fault_worker_options())
        first = (await client.ready())["worker"]["pid"]
        held = client.expect_response("held")
        client.send(
            {
                "jsonrpc": "2.0",
                "id": "held",
                "method": "test/sleep",
                "params": {"seconds": 60},
            }
        )
        client.send(
            {
                "jsonrpc": "2.0",
                "id": "change",
                "method": "setEnvironment",
                "params": {"env": {"FAULT_MODE": "hang"}},
            }
        )
        await until(lambda: len(children(client.pid)) >= 2)
        workers = set(children(client.pid))
        assert first in workers
        client.process.kill()
        await client.process.wait()
        await until(lambda: not any(pid_alive(p) for p in workers), timeout=3)
        assert not held.done()  # the bridge died before it could answer
    finally:
        await client.close()
