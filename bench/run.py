"""The benchmark runs: each figure for the bridge beside the same figure for the
bare pygls echo server (or a cold LLM-stack start), in the same run, as a ratio.

Every figure is a median over repeated runs after a warm-up. Bridge and reference
runs take turns, and a ratio is the median of the ratios of run i of the bridge to
run i of the reference: a drift in the machine's speed (these VMs drift by a
quarter within a minute) then moves both members of a pair alike.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.wire import BARE, BRIDGE, ROOT, peak_rss_kib, spawn
from kai_rpc.client import BridgeClient

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"

COLD_LLM_STACK = (
    "from langchain_openai import ChatOpenAI; "
    "ChatOpenAI(model='gpt-4o-mini', api_key='bench', base_url='http://127.0.0.1:9/v1')"
)
ECHO_PARAMS = {"text": "hello from the benchmark", "n": 1, "list": [1, 2, 3]}


@dataclass(frozen=True)
class Sizes:
    """How many repetitions each figure takes."""

    starts: int
    echoes: int
    pipelined: int
    pipeline_rounds: int
    reconfigurations: int
    chats: int


FULL = Sizes(
    starts=31,
    echoes=600,
    pipelined=2000,
    pipeline_rounds=5,
    reconfigurations=9,
    chats=5,
)
QUICK = Sizes(
    starts=1, echoes=30, pipelined=100, pipeline_rounds=1, reconfigurations=1, chats=1
)


@dataclass
class Figure:
    """One row of the table."""

    name: str
    bridge: float
    reference: float
    unit: str
    reference_name: str
    target: str | None = None
    passed: bool | None = None
    samples: dict[str, list[float]] = field(default_factory=dict)
    paired: tuple[str, str] | None = None
    """The two sample lists taken in turns: bridge run i beside reference run i."""

    @property
    def ratio(self) -> float:
        """The median paired ratio, or the ratio of the medians without pairs."""
        if self.paired is None:
            return self.ratio_of_medians
        ours, theirs = (self.samples[key] for key in self.paired)
        return median([a / b for a, b in zip(ours, theirs, strict=True)])

    @property
    def ratio_of_medians(self) -> float:
        return self.bridge / self.reference if self.reference else float("nan")


def spawn_env() -> dict[str, str]:
    """This machine's environment without proxy and CA variables, as the tests use."""
    sys.path.insert(0, str(ROOT))
    from tests.support.environ import clean_environ

    return clean_environ()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of a process, in clock ticks."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])


async def settle(*pids: int, quiet: float = 0.3, limit: float = 20.0) -> None:
    """Wait until none of ``pids`` used CPU for ``quiet`` seconds (a worker's
    background LLM warm-up, a retiring worker's exit), so runs do not overlap."""
    deadline = time.monotonic() + limit
    last = [cpu_ticks(pid) for pid in pids]
    while time.monotonic() < deadline:
        await asyncio.sleep(quiet)
        now = [cpu_ticks(pid) for pid in pids]
        if now == last:
            return
        last = now


@contextlib.asynccontextmanager
async def running(
    command: list[str], env: dict[str, str], options: dict[str, Any] | None = None
) -> AsyncIterator[BridgeClient]:
    peer = await spawn(command, env)
    try:
        await peer.initialize(options)
        yield peer
    finally:
        await peer.stop()


# -- start-up ---------------------------------------------------------------------


async def time_to_initialize(command: list[str], env: dict[str, str]) -> float:
    peer = await spawn(command, env)
    try:
        await peer.initialize()
        elapsed = time.perf_counter() - peer.started
        if command is BRIDGE:
            await peer.ready()
        return elapsed
    finally:
        await peer.stop()


async def startup(env: dict[str, str], sizes: Sizes) -> Figure:
    bridge: list[float] = []
    bare: list[float] = []
    await time_to_initialize(BRIDGE, env)  # warm-up: page cache, bytecode
    await time_to_initialize(BARE, env)
    for index in range(sizes.starts):
        # Which of the pair starts first alternates too, so neither always runs
        # in the wake of the other.
        if index % 2:
            bare.append(await time_to_initialize(BARE, env))
            bridge.append(await time_to_initialize(BRIDGE, env))
        else:
            bridge.append(await time_to_initialize(BRIDGE, env))
            bare.append(await time_to_initialize(BARE, env))
    return Figure(
        "start-up (spawn to initialize result)",
        median(bridge) * 1000,
        median(bare) * 1000,
        "ms",
        "bare pygls",
        samples={"bridge": bridge, "bare": bare},
        paired=("bridge", "bare"),
    )


# -- forwarding -------------------------------------------------------------------


async def sequential_echo(peer: BridgeClient, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        await peer.request("echo", ECHO_PARAMS)
        times.append(time.perf_counter() - started)
    return times


async def pipelined_echo(peer: BridgeClient, count: int) -> float:
    """Messages per second with ``count`` echoes written at once."""
    started = time.perf_counter()
    futures = [peer.start_request("echo", ECHO_PARAMS) for _ in range(count)]
    await asyncio.wait_for(asyncio.gather(*futures), 120)
    return count / (time.perf_counter() - started)


async def forwarding(env: dict[str, str], sizes: Sizes) -> tuple[Figure, Figure]:
    async with running(BRIDGE, env) as bridge, running(BARE, env) as bare:
        report = await bridge.ready()
        await settle(bridge.pid, report["worker"]["pid"])
        blocks = 5
        per_block = max(1, sizes.echoes // blocks)
        await sequential_echo(bridge, 50)
        await sequential_echo(bare, 50)
        bridge_rtt: list[float] = []
        bare_rtt: list[float] = []
        for _ in range(blocks):
            bridge_rtt += await sequential_echo(bridge, per_block)
            bare_rtt += await sequential_echo(bare, per_block)

        await pipelined_echo(bridge, sizes.pipelined // 4)
        await pipelined_echo(bare, sizes.pipelined // 4)
        bridge_rate: list[float] = []
        bare_rate: list[float] = []
        for _ in range(sizes.pipeline_rounds):
            bridge_rate.append(await pipelined_echo(bridge, sizes.pipelined))
            bare_rate.append(await pipelined_echo(bare, sizes.pipelined))
    round_trip = Figure(
        "echo round trip, sequential",
        median(bridge_rtt) * 1e6,
        median(bare_rtt) * 1e6,
        "us",
        "bare pygls",
    )
    throughput = Figure(
        f"echo throughput, {sizes.pipelined} pipelined",
        median(bridge_rate),
        median(bare_rate),
        "msg/s",
        "bare pygls",
        samples={"bridge": bridge_rate, "bare": bare_rate},
        paired=("bridge", "bare"),
    )
    return round_trip, throughput


# -- reconfiguration and the first chat -------------------------------------------


def cold_llm_stack(env: dict[str, str]) -> float:
    """A fresh interpreter that imports langchain-openai and builds a ChatOpenAI."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", COLD_LLM_STACK], env=env, check=True)
    return time.perf_counter() - started


@contextlib.contextmanager
def fake_llm() -> Any:
    """tests/support/fake_llm.py's HTTPS OpenAI look-alike and its CA file."""
    import trustme

    from kai_rpc.local_llm import FakeLlm

    ca = trustme.CA()
    server = FakeLlm(ca).start()
    with tempfile.TemporaryDirectory() as directory:
        ca_file = Path(directory) / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        try:
            yield server, str(ca_file)
        finally:
            server.stop()


async def reconfiguration(
    env: dict[str, str], sizes: Sizes
) -> tuple[Figure, Figure, Figure, dict[str, int | None]]:
    with fake_llm() as (llm, ca_file):
        options = {
            "env": {"SSL_CERT_FILE": ca_file, "BENCH_GENERATION": "0"},
            "modelProvider": {
                "args": {"model": "fake-model", "base_url": llm.url, "api_key": "bench"}
            },
        }
        chat = {"messages": [{"role": "user", "content": "hello"}]}
        async with running(BRIDGE, env, options) as bridge:
            report = await bridge.ready()
            await bridge.request("chat", chat)  # warm-up: the fake server, the CA
            await settle(bridge.pid, report["worker"]["pid"])

            changes: list[float] = []
            cold: list[float] = []
            first_chats: list[float] = []
            warm_chats: list[float] = []
            generation = 0
            for index in range(sizes.reconfigurations + 1):
                generation += 1
                started = time.perf_counter()
                report = await bridge.request(
                    "setEnvironment", {"env": {"BENCH_GENERATION": str(generation)}}
                )
                elapsed = time.perf_counter() - started
                if index:  # the first is a warm-up
                    changes.append(elapsed)
                await settle(bridge.pid, report["worker"]["pid"])
                if index:
                    cold.append(await asyncio.to_thread(cold_llm_stack, env))

            for _ in range(sizes.chats):
                generation += 1
                report = await bridge.request(
                    "setEnvironment", {"env": {"BENCH_GENERATION": str(generation)}}
                )
                started = time.perf_counter()
                await bridge.request("chat", chat)
                first_chats.append(time.perf_counter() - started)
                await settle(bridge.pid, report["worker"]["pid"])
                started = time.perf_counter()
                await bridge.request("chat", chat)
                warm_chats.append(time.perf_counter() - started)

            worker_pid = report["worker"]["pid"]
            memory = {
                "bridge_peak_rss_kib": peak_rss_kib(bridge.pid),
                "worker_peak_rss_kib": peak_rss_kib(worker_pid),
            }
    cold_ms = median(cold) * 1000
    change = Figure(
        "setEnvironment round trip (new worker ready)",
        median(changes) * 1000,
        cold_ms,
        "ms",
        "cold LLM-stack start",
        samples={"bridge": changes, "cold": cold},
        paired=("bridge", "cold"),
    )
    first = Figure(
        "first chat right after setEnvironment",
        median(first_chats) * 1000,
        cold_ms,
        "ms",
        "cold LLM-stack start",
        samples={"first": first_chats},
    )
    warm = Figure(
        "chat on a settled worker",
        median(warm_chats) * 1000,
        cold_ms,
        "ms",
        "cold LLM-stack start",
        samples={"warm": warm_chats},
    )
    return change, first, warm, memory


async def bare_memory(env: dict[str, str], sizes: Sizes) -> int | None:
    async with running(BARE, env) as bare:
        await pipelined_echo(bare, sizes.pipelined)
        return peak_rss_kib(bare.pid)


# -- the table --------------------------------------------------------------------

TARGETS: dict[str, tuple[str, Callable[[float], bool]]] = {
    "start-up": ("<= 1.3x", lambda r: r <= 1.3),
    "echo round trip": ("<= 2.5x", lambda r: r <= 2.5),
    "echo throughput": (">= 0.5x", lambda r: r >= 0.5),
    "setEnvironment": ("<= 0.3x", lambda r: r <= 0.3),
}


def judge(figure: Figure) -> None:
    for prefix, (text, check) in TARGETS.items():
        if figure.name.startswith(prefix):
            figure.target = text
            figure.passed = check(figure.ratio)


def table(figures: list[Figure], memory: dict[str, int | None]) -> str:
    header = f"{'figure':<46} {'bridge':>14} {'reference':>14} {'ratio':>7}  target"
    lines = [header, "-" * (len(header) + 14)]
    for f in figures:
        verdict = ""
        if f.target is not None:
            verdict = f"{f.target} {'pass' if f.passed else 'FAIL'}"
        bridge = f"{f.bridge:.1f} {f.unit}"
        reference = f"{f.reference:.1f} {f.unit}"
        lines.append(
            f"{f.name:<46} {bridge:>14} {reference:>14} {f.ratio:>6.2f}x  {verdict}"
        )
        lines.append(f"{'':<46} {'':>14} {'(' + f.reference_name + ')':>14}")
    lines.append("")
    for name, kib in memory.items():
        shown = f"{kib / 1024:.1f} MiB" if kib else "n/a"
        label = name.removesuffix("_kib").replace("_", " ")
        lines.append(f"{label:<46} {shown:>14}")
    return "\n".join(lines)


def compile_bytecode() -> None:
    """Compile kai_rpc and bench to bytecode, as installing a package does.

    An editable install leaves that to the first import, and where
    PYTHONDONTWRITEBYTECODE is set (it is on these machines) every start compiles
    the sources again: the start-up figure would time Python's compiler.
    """
    for package in ("kai_rpc", "bench"):
        compileall.compile_dir(ROOT / package, quiet=1)


async def run(sizes: Sizes, only: set[str] | None) -> dict[str, Any]:
    compile_bytecode()
    env = spawn_env()
    figures: list[Figure] = []
    memory: dict[str, int | None] = {}
    steps: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("startup", lambda: startup(env, sizes)),
        ("forwarding", lambda: forwarding(env, sizes)),
        ("reconfiguration", lambda: reconfiguration(env, sizes)),
        ("memory", lambda: bare_memory(env, sizes)),
    ]
    for name, step in steps:
        if only and name not in only:
            continue
        print(f"... {name}", file=sys.stderr, flush=True)
        result = await step()
        if name == "startup":
            figures.append(result)
        elif name == "forwarding":
            figures += list(result)
        elif name == "reconfiguration":
            *rows, worker_memory = result
            figures += rows
            memory.update(worker_memory)
        else:
            memory["bare_pygls_peak_rss_kib"] = result
    for figure in figures:
        judge(figure)
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average": os.getloadavg(),
        },
        "figures": [
            {**asdict(f), "ratio": f.ratio, "ratio_of_medians": f.ratio_of_medians}
            for f in figures
        ],
        "memory_kib": memory,
        "table": table(figures, memory),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one run of each, fast")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON file")
    parser.add_argument(
        "--only",
        action="append",
        choices=["startup", "forwarding", "reconfiguration", "memory"],
        help="run only these parts (repeatable)",
    )
    args = parser.parse_args(argv)

    results = asyncio.run(run(QUICK if args.quick else FULL, set(args.only or ())))
    results["quick"] = args.quick
    print(results["table"])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {args.output}")
    return 0
