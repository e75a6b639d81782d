"""The real ``kai-rpc serve``: proxy and TLS through the bridge, its worker, a real
mitmdump sidecar and the HTTPS fake LLM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kai_rpc.local_llm import FakeLlm
from kai_rpc.sidecar import SidecarView
from tests.support.client import bridge
from tests.support.network_fixtures import PROXY_PASSWORD, PROXY_USER

HELLO = {"messages": [{"role": "user", "content": "over the bridge"}]}


def _options(fake_llm: FakeLlm, env: dict[str, str]) -> dict[str, Any]:
    return {
        "env": {"OPENAI_API_KEY": "sk-e2e-test-key-0001", **env},
        "endpoints": [fake_llm.url],
        "modelProvider": {"args": {"model": "fake-model", "max_retries": 0}},
    }


async def test_proxy_then_no_proxy_through_the_bridge(
    fake_llm: FakeLlm, sidecar: SidecarView, test_ca_file: Path, tmp_path: Path
) -> None:
    """initialize with a proxy: report, probe and chat all go through the sidecar;
    setEnvironment with NO_PROXY: report, probe and chat all go direct."""
    bundle = tmp_path / "both.pem"
    bundle.write_text(sidecar.ca_file.read_text() + test_ca_file.read_text())
    env = {"HTTPS_PROXY": sidecar.url, "SSL_CERT_FILE": str(bundle)}

    async with bridge() as client:
        await client.initialize(_options(fake_llm, env))
        report = await client.ready()
        probe = await client.request("probeConnectivity", {})
        chat = await client.request("chat", HELLO)
        proxied = sidecar.requests_to(fake_llm.host, fake_llm.port)

        report2 = await client.request(
            "setEnvironment", {"env": {"NO_PROXY": "127.0.0.2"}}
        )
        report2 = await client.ready()
        probe2 = await client.request("probeConnectivity", {"timeoutMs": 20000})
        chat2 = await client.request("chat", HELLO)
        after = sidecar.requests_to(fake_llm.host, fake_llm.port)

    route = report["proxy"]["routes"][0]
    assert route["proxy"] == sidecar.url and route["proxySource"] == "HTTPS_PROXY"
    assert probe["route"] == "proxy" and probe["ok"]
    assert "mitmproxy" in probe["certificate"]["issuer"]
    assert chat["content"] == "echo: over the bridge"
    assert [f["method"] for f in proxied] == ["GET", "POST"]

    route2 = report2["proxy"]["routes"][0]
    assert route2["proxy"] is None and route2["bypassedBy"] == "127.0.0.2"
    assert probe2["route"] == "direct" and probe2["ok"]
    assert "trustme" in probe2["certificate"]["issuer"]
    assert chat2["content"] == "echo: over the bridge"
    assert after == proxied
    assert len(fake_llm.chat_requests()) == 2


async def test_proxy_auth_through_the_bridge(
    fake_llm: FakeLlm, auth_sidecar: SidecarView
) -> None:
    """Without proxy credentials the probe says proxy_auth_required and chat fails
    with that kind; with them both work, and the password is never reported."""
    env = {"HTTPS_PROXY": auth_sidecar.url, "SSL_CERT_FILE": str(auth_sidecar.ca_file)}
    with_credentials = auth_sidecar.url_with(PROXY_USER, PROXY_PASSWORD)

    async with bridge() as client:
        await client.initialize(_options(fake_llm, env))
        await client.ready()
        probe = await client.request("probeConnectivity", {})
        failed = await client.request_raw("chat", HELLO)

        await client.request(
            "setEnvironment", {"env": {"HTTPS_PROXY": with_credentials}}
        )
        report = await client.ready()
        probe2 = await client.request("probeConnectivity", {})
        chat = await client.request("chat", HELLO)
    said = "".join(str(message) for message in client.received)

    assert probe["error"]["kind"] == "proxy_auth_required"
    assert failed["error"]["data"] == {"kind": "proxy_auth_required"}
    assert probe2["ok"] and chat["content"] == "echo: over the bridge"
    assert report["proxy"]["routes"][0]["proxy"].startswith(f"http://{PROXY_USER}:")
    assert PROXY_PASSWORD not in said
    assert PROXY_PASSWORD not in client.stderr.decode(errors="replace")


async def test_openai_proxy_with_sidecar_ca_through_the_bridge(
    fake_llm: FakeLlm, sidecar: SidecarView
) -> None:
    """OPENAI_PROXY with the sidecar's CA carries chat, and the report warns that
    it outranks HTTPS_PROXY."""
    env = {
        "OPENAI_PROXY": sidecar.url,
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "SSL_CERT_FILE": str(sidecar.ca_file),
    }

    async with bridge() as client:
        await client.initialize(_options(fake_llm, env))
        report = await client.ready()
        chat = await client.request("chat", HELLO)

    codes = {w["code"] for w in report["warnings"]}
    assert report["proxy"]["routes"][0]["proxySource"] == "OPENAI_PROXY"
    assert "OPENAI_PROXY_OVERRIDES_ENV_PROXY" in codes
    assert chat["content"] == "echo: over the bridge"
    assert len(sidecar.requests_to(fake_llm.host, fake_llm.port)) == 1
