"""``kai-rpc demo`` (what ``make run`` shows): the bridge at work, with no IDE and no
network beyond loopback.

It starts a local OpenAI-compatible LLM on 127.0.0.2 (HTTPS, certificate from a
fresh test CA) and a mitmdump sidecar on 127.0.0.1 that intercepts TLS, then drives
``kai-rpc serve`` as an IDE extension would: initialize with an env map that routes
the LLM through the sidecar and trusts a "corporate" CA bundle (the sidecar's CA and
the LLM's CA), a chat that the sidecar sees, a probe, then a NO_PROXY change that
sends the same chat direct, which the sidecar does not see. Each step prints the
bridge's report.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import trustme

from kai_rpc import doctor
from kai_rpc.client import BridgeClient, start
from kai_rpc.contract import EnvironmentReport, ProbeResult, WorkerInspection
from kai_rpc.local_llm import FakeLlm
from kai_rpc.sidecar import Sidecar, environ_without_network_settings

LLM_HOST = "127.0.0.2"
RULE = "-" * 88
BRIDGE = [sys.executable, "-m", "kai_rpc", "--log-level", "WARNING", "serve"]


def say(text: str) -> None:
    print(textwrap.dedent(text).strip(), flush=True)


def step(title: str) -> None:
    print(f"\n{RULE}\n{title}\n{RULE}", flush=True)


def show_report(report: dict[str, Any]) -> None:
    """The EnvironmentReport as the doctor's tables, with the variables first."""
    parsed = EnvironmentReport.model_validate(report)
    worker = parsed.worker
    print(
        f"generation {parsed.generation}; worker {worker.state}, pid {worker.pid}, "
        f"restarts {worker.restarts}"
    )
    rows = [["variable", "status", "value / reason"]]
    for entry in parsed.variables:
        detail = entry.reason if entry.status == "rejected" else entry.value
        rows.append([entry.name, entry.status, detail or ""])
    width = [max(len(row[i]) for row in rows) for i in range(2)]
    for row in rows:
        print(f"  {row[0]:<{width[0]}}  {row[1]:<{width[1]}}  {row[2]}")
    inspection = WorkerInspection(
        proxy=parsed.proxy, tls=parsed.tls, warnings=parsed.warnings
    )
    print(doctor.render(inspection))


def show_probe(result: dict[str, Any]) -> None:
    print(doctor.render_probes([ProbeResult.model_validate(result)]))


async def chat(client: BridgeClient, text: str) -> None:
    answer = await client.request(
        "chat", {"messages": [{"role": "user", "content": text}]}, timeout=60
    )
    print(f"chat answered: {answer['content']!r} (model {answer['model']})")


def show_forwarded(sidecar: Sidecar, llm: FakeLlm, before: int) -> None:
    seen = flows_to_llm(sidecar, llm) - before
    print(f"requests the sidecar forwarded to the LLM: {seen}")


def flows_to_llm(sidecar: Sidecar, llm: FakeLlm) -> int:
    return sum(
        1
        for flow in sidecar.flows()
        if flow["kind"] == "request" and flow["port"] == llm.port
    )


async def converse(
    client: BridgeClient, sidecar: Sidecar, llm: FakeLlm, bundle: Path
) -> None:
    step("1. initialize: LLM traffic through the sidecar, a corporate CA bundle")
    env = {
        "HTTPS_PROXY": sidecar.url,
        "SSL_CERT_FILE": str(bundle),
        "OPENAI_API_KEY": "sk-demo-this-value-never-leaves-the-worker",
        "LD_PRELOAD": "/tmp/not-today.so",
        "PYTHONHTTPSVERIFY": "0",
    }
    for name, value in env.items():
        print(f"  env {name} = {value if 'KEY' not in name else '(a secret)'}")
    result = await client.initialize(
        {
            "env": env,
            "modelProvider": {
                "provider": "ChatOpenAI",
                "args": {"model": "demo-model", "base_url": llm.url},
            },
        }
    )
    state = result["environment"]["worker"]["state"]
    print(f"initialize answered at once; worker {state}")
    show_report(await client.ready())

    step("2. chat and probe: the sidecar sees the request")
    before = flows_to_llm(sidecar, llm)
    await chat(client, "Hello through the proxy")
    show_forwarded(sidecar, llm, before)
    show_probe(await client.request("probeConnectivity", {}, timeout=60))

    step(f"3. setEnvironment NO_PROXY={LLM_HOST}: a new worker, the LLM goes direct")
    report = await client.request(
        "setEnvironment", {"env": {"NO_PROXY": LLM_HOST}}, timeout=60
    )
    show_report(report)
    before = flows_to_llm(sidecar, llm)
    await chat(client, "Hello, directly this time")
    show_forwarded(sidecar, llm, before)
    show_probe(await client.request("probeConnectivity", {}, timeout=60))

    step("4. shutdown and exit: the bridge stops its worker")
    code = await client.shutdown_and_exit()
    print(f"kai-rpc serve exited with code {code}")


async def run(workdir: Path) -> int:
    ca = trustme.CA()
    ca_file = workdir / "llm-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    llm = FakeLlm(ca, host=LLM_HOST)
    llm.start()
    sidecar = Sidecar(workdir / "sidecar", ca_file)
    try:
        say(f"""
            Local LLM (OpenAI-compatible, HTTPS):  {llm.url}
            mitmdump sidecar (intercepts TLS):     starting...""")
        sidecar.start()
        print(f"mitmdump sidecar listening at:        {sidecar.url}")
        bundle = workdir / "corporate-bundle.pem"
        bundle.write_text(sidecar.ca_file.read_text() + ca_file.read_text())
        # The bridge starts from this shell's environment without its proxy and CA
        # settings, so the demonstration behaves the same on every machine.
        client = await start(
            BRIDGE, env=environ_without_network_settings(), stderr=None
        )
        try:
            await converse(client, sidecar, llm, bundle)
        finally:
            await client.close()
    finally:
        sidecar.stop()
        llm.stop()
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="kai-rpc demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kai-rpc-demo-") as workdir:
        return asyncio.run(run(Path(workdir)))
