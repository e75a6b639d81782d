"""The worker's LLM client against a real mitmdump sidecar and a real HTTPS fake LLM."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from kai_rpc import inspection
from kai_rpc.contract import ChatParams, ModelProvider, ProbeParams
from kai_rpc.exceptions import ChatFailed
from kai_rpc.llm import LlmClient
from kai_rpc.local_llm import FakeLlm
from kai_rpc.sidecar import SidecarView
from tests.support.environ import clean_environ
from tests.support.network_fixtures import PROXY_PASSWORD, PROXY_USER

API_KEY = "sk-test-api-key-0123456789"
PROVIDER = ModelProvider(args={"model": "fake-model", "max_retries": 0})
HELLO = ChatParams.model_validate({"messages": [{"role": "user", "content": "hi"}]})


def _environ(**variables: str) -> dict[str, str]:
    return clean_environ({"OPENAI_API_KEY": API_KEY, **variables})


def _closed_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def _chat(environ: dict[str, str], url: str) -> Any:
    client = LlmClient(environ, PROVIDER, [url])
    try:
        return await client.chat(HELLO)
    finally:
        await client.aclose()


async def _probe(environ: dict[str, str], url: str) -> Any:
    client = LlmClient(environ, PROVIDER, [url])
    try:
        return await client.probe(ProbeParams(timeout_ms=20_000))
    finally:
        await client.aclose()


async def test_chat_through_sidecar_with_its_ca(
    fake_llm: FakeLlm, sidecar: SidecarView
) -> None:
    """A chat goes through HTTPS_PROXY when SSL_CERT_FILE trusts the proxy's CA."""
    environ = _environ(HTTPS_PROXY=sidecar.url, SSL_CERT_FILE=str(sidecar.ca_file))

    result = await _chat(environ, fake_llm.url)

    assert result.content == "echo: hi"
    assert result.model == "fake-model"
    seen = sidecar.requests_to(fake_llm.host, fake_llm.port)
    assert [flow["path"] for flow in seen] == ["/v1/chat/completions"]
    assert fake_llm.chat_requests()[0].headers["authorization"] == f"Bearer {API_KEY}"


async def test_wrong_ca_is_tls_verify_failed(
    fake_llm: FakeLlm, sidecar: SidecarView, test_ca_file: Path
) -> None:
    """Trusting the server's CA but not the intercepting proxy's fails as
    tls_verify_failed, and the probe shows the proxy-issued certificate."""
    environ = _environ(HTTPS_PROXY=sidecar.url, SSL_CERT_FILE=str(test_ca_file))

    probe = await _probe(environ, fake_llm.url)
    with pytest.raises(ChatFailed) as failed:
        await _chat(environ, fake_llm.url)

    assert probe.error is not None and probe.error.kind == "tls_verify_failed"
    assert "SSL_CERT_FILE" in probe.error.message
    assert probe.certificate is not None and "mitmproxy" in probe.certificate.issuer
    assert failed.value.data == {"kind": "tls_verify_failed"}
    assert fake_llm.chat_requests() == []


async def test_proxyauth_without_credentials_is_proxy_auth_required(
    fake_llm: FakeLlm, auth_sidecar: SidecarView
) -> None:
    """A proxy demanding credentials that gets none is reported as
    proxy_auth_required, by the probe and by chat."""
    environ = _environ(
        HTTPS_PROXY=auth_sidecar.url, SSL_CERT_FILE=str(auth_sidecar.ca_file)
    )

    probe = await _probe(environ, fake_llm.url)
    with pytest.raises(ChatFailed) as failed:
        await _chat(environ, fake_llm.url)

    assert probe.error is not None and probe.error.kind == "proxy_auth_required"
    assert probe.route == "proxy" and not probe.ok
    assert failed.value.data == {"kind": "proxy_auth_required"}
    assert "user name and password" in failed.value.message
    assert [f["status"] for f in auth_sidecar.flows()][:1] == [407]


async def test_proxyauth_with_credentials_works_and_hides_them(
    fake_llm: FakeLlm, auth_sidecar: SidecarView
) -> None:
    """Credentials in the proxy URL authenticate, and the password never appears
    in the probe result or the report."""
    proxy = auth_sidecar.url_with(PROXY_USER, PROXY_PASSWORD)
    environ = _environ(HTTPS_PROXY=proxy, SSL_CERT_FILE=str(auth_sidecar.ca_file))

    probe = await _probe(environ, fake_llm.url)
    result = await _chat(environ, fake_llm.url)
    report = inspection.inspect(environ, [fake_llm.url], PROVIDER)

    assert probe.ok and probe.status == 200 and result.content == "echo: hi"
    assert PROXY_PASSWORD not in probe.model_dump_json()
    assert PROXY_PASSWORD not in report.model_dump_json()
    assert probe.proxy is not None and PROXY_USER in probe.proxy


async def test_no_proxy_goes_direct(
    fake_llm: FakeLlm, sidecar: SidecarView, test_ca_file: Path
) -> None:
    """A matching NO_PROXY entry sends the chat direct: the sidecar sees nothing."""
    environ = _environ(
        HTTPS_PROXY=sidecar.url,
        NO_PROXY="localhost,127.0.0.2",
        SSL_CERT_FILE=str(test_ca_file),
    )

    result = await _chat(environ, fake_llm.url)
    probe = await _probe(environ, fake_llm.url)

    assert result.content == "echo: hi"
    assert probe.route == "direct" and probe.ok
    assert sidecar.flows() == []
    assert len(fake_llm.chat_requests()) == 1


async def test_openai_proxy_wins_over_https_proxy(
    fake_llm: FakeLlm, sidecar: SidecarView
) -> None:
    """OPENAI_PROXY carries LLM traffic even when HTTPS_PROXY names another proxy,
    and the sidecar's CA from SSL_CERT_FILE is trusted on that path."""
    dead = f"http://127.0.0.1:{_closed_port('127.0.0.1')}"
    environ = _environ(
        OPENAI_PROXY=sidecar.url,
        HTTPS_PROXY=dead,
        SSL_CERT_FILE=str(sidecar.ca_file),
    )

    result = await _chat(environ, fake_llm.url)

    assert result.content == "echo: hi"
    assert len(sidecar.requests_to(fake_llm.host, fake_llm.port)) == 1


@pytest.mark.parametrize(
    "variables",
    [
        {"HTTPS_PROXY": "{proxy}"},
        {"https_proxy": "{proxy}"},
        {"ALL_PROXY": "{proxy}"},
        {"HTTP_PROXY": "{proxy}"},
        {"OPENAI_PROXY": "{proxy}"},
        {"HTTPS_PROXY": "{proxy}", "NO_PROXY": "127.0.0.2"},
        {"HTTPS_PROXY": "{proxy}", "NO_PROXY": "127.0.0.0/8"},
        {"HTTPS_PROXY": "{proxy}", "NO_PROXY": "*"},
        {"HTTPS_PROXY": "{proxy}", "no_proxy": "127.0.0.2:{port}"},
        {"OPENAI_PROXY": "{proxy}", "NO_PROXY": "127.0.0.2"},
        {"HTTPS_PROXY": "{proxy}", "NO_PROXY": "[::1],127.0.0.2"},
    ],
    ids=lambda variables: ",".join(f"{k}={v}" for k, v in variables.items()),
)
async def test_report_route_is_the_wire_route(
    fake_llm: FakeLlm,
    sidecar: SidecarView,
    test_ca_file: Path,
    tmp_path: Path,
    variables: dict[str, str],
) -> None:
    """For each environment, the route the report and the probe claim is the route
    the sidecar saw the traffic take."""
    filled = {
        name: value.format(proxy=sidecar.url, port=fake_llm.port)
        for name, value in variables.items()
    }
    # Trust both the sidecar (proxied) and the fake LLM's own CA (direct).
    bundle = tmp_path / "both.pem"
    bundle.write_text(sidecar.ca_file.read_text() + test_ca_file.read_text())
    environ = _environ(SSL_CERT_FILE=str(bundle), **filled)

    route = inspection.inspect(environ, [fake_llm.url], PROVIDER).proxy.routes[0]
    probe = await _probe(environ, fake_llm.url)

    through_sidecar = bool(sidecar.requests_to(fake_llm.host, fake_llm.port))
    assert probe.ok, probe.error
    assert through_sidecar == (route.proxy is not None)
    assert probe.route == ("proxy" if through_sidecar else "direct")
    assert probe.proxy == route.proxy


async def test_refused_and_proxy_unreachable() -> None:
    """A closed port is 'refused' when direct and 'proxy_unreachable' via a proxy."""
    url = f"https://127.0.0.2:{_closed_port('127.0.0.2')}/v1"
    proxy = f"http://127.0.0.1:{_closed_port('127.0.0.1')}"

    direct = await _probe(_environ(), url)
    proxied = await _probe(_environ(HTTPS_PROXY=proxy), url)

    assert direct.error is not None and direct.error.kind == "refused"
    assert proxied.error is not None and proxied.error.kind == "proxy_unreachable"
    assert proxied.route == "proxy"


async def test_missing_ca_file_fails_loudly(fake_llm: FakeLlm) -> None:
    """A CA variable naming a missing file fails every call, naming the variable,
    instead of falling back to another trust store."""
    environ = _environ(SSL_CERT_FILE="/nonexistent/ca.pem")

    probe = await _probe(environ, fake_llm.url)
    with pytest.raises(ChatFailed) as failed:
        await _chat(environ, fake_llm.url)

    assert probe.error is not None and probe.error.kind == "tls_verify_failed"
    assert "SSL_CERT_FILE='/nonexistent/ca.pem' does not exist" in probe.error.message
    assert failed.value.data == {"kind": "tls_verify_failed"}


async def test_tls_verify_off_is_explicit(
    fake_llm: FakeLlm, sidecar: SidecarView
) -> None:
    """KAI_TLS_VERIFY=0 lets a call through an untrusted interceptor, and only it."""
    environ = _environ(HTTPS_PROXY=sidecar.url, KAI_TLS_VERIFY="0")

    probe = await _probe(environ, fake_llm.url)

    assert probe.ok


async def test_missing_api_key_is_an_actionable_chat_error(fake_llm: FakeLlm) -> None:
    """Without any API key chat fails with a message naming OPENAI_API_KEY."""
    with pytest.raises(ChatFailed, match="OPENAI_API_KEY"):
        await _chat(clean_environ(), fake_llm.url)


def test_warm_is_idempotent_across_threads() -> None:
    """warm() from several threads builds one ChatOpenAI."""
    client = LlmClient(_environ(), PROVIDER, ["https://127.0.0.2:9/v1"])
    threads = [threading.Thread(target=client.warm) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    first = client._chat_model
    client.warm()
    assert first is not None and client._chat_model is first


def test_import_is_light() -> None:
    """Importing kai_rpc.llm imports neither langchain nor openai."""
    code = (
        "import sys, kai_rpc.llm; "
        "print(sorted(m for m in ('langchain_openai', 'openai', 'httpx2') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=clean_environ(),
        check=True,
    )
    assert out.stdout.strip() == "[]"
