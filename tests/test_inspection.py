"""Route and TLS inspection, evaluated against explicit environments (no network)."""

from __future__ import annotations

import datetime
import importlib.util
import os
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kai_rpc import inspection
from kai_rpc.contract import DEFAULT_ENDPOINT, ModelProvider, WorkerInspection

ENDPOINT = "https://llm.example.com/v1"
PROXY = "http://proxy.corp:3128"


def _inspect(environ: dict[str, str], *urls: str) -> WorkerInspection:
    return inspection.inspect(environ, list(urls) or [ENDPOINT], None)


def _codes(report: WorkerInspection) -> list[str]:
    return [warning.code for warning in report.warnings]


def _messages(report: WorkerInspection, code: str) -> list[str]:
    return [w.message for w in report.warnings if w.code == code]


def _self_signed(path: Path, not_before: datetime.datetime, days: int) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Kai Test Old CA")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def test_evaluated_in_swaps_and_restores_os_environ() -> None:
    """Library code reads the given mapping inside the block, the real one after."""
    real = os.environ
    with inspection.evaluated_in({"https_proxy": PROXY}):
        assert urllib.request.getproxies_environment() == {"https": PROXY}
    assert os.environ is real
    assert "https" not in urllib.request.getproxies_environment()


def test_evaluated_in_is_a_no_op_for_os_environ() -> None:
    """The worker's own os.environ is used as is."""
    with inspection.evaluated_in(os.environ):
        assert isinstance(os.environ, os._Environ)


def test_default_endpoints_precedence() -> None:
    """Provider base_url, then OPENAI_API_BASE, then OPENAI_BASE_URL, then OpenAI."""
    environ = {"OPENAI_BASE_URL": "https://b/v1", "OPENAI_API_BASE": "https://a/v1"}
    provider = ModelProvider(args={"base_url": "https://p/v1"})

    assert inspection.default_endpoints(environ, provider) == ["https://p/v1"]
    assert inspection.default_endpoints(environ, None) == ["https://a/v1"]
    assert inspection.default_endpoints({"OPENAI_BASE_URL": "https://b/v1"}, None) == [
        "https://b/v1"
    ]
    assert inspection.default_endpoints({}, None) == [DEFAULT_ENDPOINT]


def test_route_names_client_proxy_source_and_redacts() -> None:
    """A proxied route names the client library, the variable, and hides the
    password."""
    report = _inspect({"HTTPS_PROXY": "http://alice:hunter2-pw@proxy.corp:3128"})
    route = report.proxy.routes[0]

    assert route.client == "httpx2" and route.client_version
    assert route.proxy_source == "HTTPS_PROXY"
    assert route.proxy is not None and "hunter2-pw" not in route.proxy
    assert "hunter2-pw" not in report.model_dump_json()
    assert [view.library for view in route.libraries] == [
        "httpx2",
        "httpx",
        "requests",
        "urllib",
    ]


def test_bypass_names_the_matching_entry() -> None:
    """A bypassed route names the NO_PROXY entry that matched, per library."""
    report = _inspect({"HTTPS_PROXY": PROXY, "NO_PROXY": "localhost,.example.com"})
    route = report.proxy.routes[0]

    assert route.proxy is None and route.bypassed_by == ".example.com"
    assert {view.bypassed_by for view in route.libraries} == {".example.com"}
    assert inspection.ROUTE_LIBRARIES_DISAGREE not in _codes(report)


def test_bracketed_ipv6_no_proxy_breaks_httpx_not_the_client() -> None:
    """NO_PROXY=[::1] makes httpx raise at client construction; httpx2 copes."""
    report = _inspect({"HTTPS_PROXY": PROXY, "NO_PROXY": "[::1]"}, "https://[::1]/v1")
    route = report.proxy.routes[0]
    views = {view.library: view for view in route.libraries}

    assert inspection.NO_PROXY_BREAKS_HTTPX in _codes(report)
    assert views["httpx"].error is not None and "InvalidURL" in views["httpx"].error
    assert route.proxy is None and route.bypassed_by == "[::1]"


def test_cidr_entry_is_honoured_by_the_client_and_flagged_for_others() -> None:
    """A CIDR entry bypasses in httpx2 and requests but not httpx or urllib."""
    report = _inspect(
        {"HTTPS_PROXY": PROXY, "NO_PROXY": "10.0.0.0/8"}, "https://10.1.2.3/"
    )
    route = report.proxy.routes[0]
    views = {view.library: view.proxy for view in route.libraries}

    assert route.proxy is None and route.bypassed_by == "10.0.0.0/8"
    assert views["httpx"] == PROXY and views["urllib"] == PROXY
    assert views["requests"] is None
    partial = _messages(report, inspection.NO_PROXY_PARTIAL)
    assert partial and "httpx, urllib" in partial[0]
    assert inspection.ROUTE_LIBRARIES_DISAGREE in _codes(report)


def test_wildcard_entry_is_flagged() -> None:
    """'*.example.com' works in httpx2 only; the others are named."""
    report = _inspect({"HTTPS_PROXY": PROXY, "NO_PROXY": "*.example.com"})

    assert report.proxy.routes[0].bypassed_by == "*.example.com"
    assert (
        "httpx, requests, urllib" in _messages(report, inspection.NO_PROXY_PARTIAL)[0]
    )


def test_openai_proxy_wins_and_warns_with_langchains_route() -> None:
    """OPENAI_PROXY is the route; the warning says plain langchain-openai would
    take HTTPS_PROXY and trust only certifi on its OPENAI_PROXY path."""
    environ = {"OPENAI_PROXY": "http://oai.corp:8080", "HTTPS_PROXY": PROXY}
    report = _inspect(environ)
    route = report.proxy.routes[0]

    assert (
        route.proxy == "http://oai.corp:8080" and route.proxy_source == "OPENAI_PROXY"
    )
    [message] = _messages(report, inspection.OPENAI_PROXY_OVERRIDES_ENV_PROXY)
    assert f"would go through {PROXY}" in message and "certifi" in message


def test_plain_langchain_lets_https_proxy_win(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pins the langchain-openai behaviour the OPENAI_PROXY warning describes."""
    import httpx2
    from langchain_openai import ChatOpenAI

    monkeypatch.setenv("OPENAI_PROXY", "http://oai.corp:8080")
    monkeypatch.setenv("HTTPS_PROXY", PROXY)
    model = ChatOpenAI(api_key="sk-unused-1234", base_url=ENDPOINT)
    client = model.root_async_client._client
    transport = client._transport_for_url(httpx2.URL(ENDPOINT))

    assert str(transport._pool._proxy_url).startswith(
        "URL(scheme=b'http', host=b'proxy"
    )


def test_case_conflict_names_the_winner() -> None:
    """Differing https_proxy / HTTPS_PROXY warn and say Python takes lower case."""
    report = _inspect({"https_proxy": PROXY, "HTTPS_PROXY": "http://other:1"})

    [message] = _messages(report, inspection.PROXY_CASE_CONFLICT)
    assert "take https_proxy" in message
    assert report.proxy.routes[0].proxy == PROXY


def test_proxy_without_scheme_warns_and_assumes_http() -> None:
    """A scheme-less proxy is used as http:// and reported with the fix."""
    report = _inspect({"HTTPS_PROXY": "proxy.corp:3128"})

    assert report.proxy.routes[0].proxy == "http://proxy.corp:3128"
    assert (
        "'http://proxy.corp:3128'"
        in _messages(report, inspection.PROXY_URL_NO_SCHEME)[0]
    )


def test_socks_proxy_names_libraries_without_support() -> None:
    """A SOCKS proxy warns about requests without PySocks and urllib."""
    report = _inspect({"ALL_PROXY": "socks5://socks.corp:1080"})

    [message] = _messages(report, inspection.SOCKS_UNSUPPORTED)
    assert "urllib" in message and "Kai's LLM client can use it" in message


def test_socks_proxy_without_socksio_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without socksio (httpx2's socks extra) the warning says the LLM client
    cannot use the SOCKS proxy and what to install."""
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "socksio" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    report = _inspect({"ALL_PROXY": "socks5://socks.corp:1080"})

    [message] = _messages(report, inspection.SOCKS_UNSUPPORTED)
    assert "cannot use it: install socksio" in message


def test_invalid_proxy_scheme_is_reported() -> None:
    """A proxy scheme httpx2 refuses (socks4) is reported as unusable."""
    report = _inspect({"HTTPS_PROXY": "socks4://socks.corp:1080"})

    assert inspection.PROXY_URL_INVALID in _codes(report)


def test_pythonhttpsverify_has_no_effect() -> None:
    """PYTHONHTTPSVERIFY=0 warns, names KAI_TLS_VERIFY and leaves verify on."""
    report = _inspect({"PYTHONHTTPSVERIFY": "0"})

    assert report.tls.verify
    [message] = _messages(report, inspection.PYTHONHTTPSVERIFY_IGNORED)
    assert "SSL_CERT_FILE" in message and "KAI_TLS_VERIFY=0" in message


def test_tls_verify_off_is_loud() -> None:
    """KAI_TLS_VERIFY=false turns verify off and says so."""
    report = _inspect({"KAI_TLS_VERIFY": "false"})

    assert not report.tls.verify
    assert "disabled" in report.tls.trust_store
    assert (
        "TLS VERIFICATION IS OFF"
        in _messages(report, inspection.TLS_VERIFY_DISABLED)[0]
    )


def test_unknown_tls_verify_value_keeps_verification() -> None:
    """An unrecognised KAI_TLS_VERIFY keeps verification on and warns."""
    report = _inspect({"KAI_TLS_VERIFY": "maybe"})

    assert report.tls.verify
    assert inspection.TLS_VERIFY_SETTING_INVALID in _codes(report)


def test_requests_bundle_alone_is_used_by_the_client(tmp_path: Path) -> None:
    """REQUESTS_CA_BUNDLE without SSL_CERT_FILE warns and the LLM client uses it."""
    bundle = tmp_path / "corp.pem"
    trustme.CA().cert_pem.write_to_path(str(bundle))
    report = _inspect({"REQUESTS_CA_BUNDLE": str(bundle)})

    [source] = report.tls.ca_files
    assert source.used_by_llm_client and source.certificate_count == 1
    assert source.honoured_by == ["requests"]
    [message] = _messages(report, inspection.CA_BUNDLE_REQUESTS_ONLY)
    assert "applies it" in message


def test_ssl_cert_file_and_dir_combine(tmp_path: Path) -> None:
    """SSL_CERT_FILE and SSL_CERT_DIR are both used; REQUESTS_CA_BUNDLE is not."""
    bundle = tmp_path / "corp.pem"
    trustme.CA().cert_pem.write_to_path(str(bundle))
    environ = {
        "SSL_CERT_FILE": str(bundle),
        "SSL_CERT_DIR": str(tmp_path),
        "REQUESTS_CA_BUNDLE": str(bundle),
    }
    report = _inspect(environ)
    used = {s.variable: s.used_by_llm_client for s in report.tls.ca_files}

    assert used == {
        "SSL_CERT_FILE": True,
        "SSL_CERT_DIR": True,
        "REQUESTS_CA_BUNDLE": False,
    }
    assert "SSL_CERT_FILE" in report.tls.trust_store
    assert "SSL_CERT_DIR" in report.tls.trust_store
    assert inspection.CA_DIR_NOT_HASHED in _codes(report)


def test_ca_file_problems_are_reported(tmp_path: Path) -> None:
    """Missing, empty, expired and not-yet-valid CA files each get their code."""
    now = datetime.datetime.now(datetime.UTC)
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    expired = _self_signed(tmp_path / "old.pem", now - datetime.timedelta(days=30), 1)
    future = _self_signed(tmp_path / "new.pem", now + datetime.timedelta(days=30), 9)

    codes = {
        name: _codes(_inspect({"SSL_CERT_FILE": path}))
        for name, path in {
            "missing": "/nonexistent/ca.pem",
            "empty": str(empty),
            "expired": str(expired),
            "future": str(future),
        }.items()
    }

    assert inspection.CA_FILE_MISSING in codes["missing"]
    assert inspection.CA_FILE_NO_CERTIFICATES in codes["empty"]
    assert inspection.CA_CERT_EXPIRED in codes["expired"]
    assert inspection.CA_CERT_NOT_YET_VALID in codes["future"]


def test_default_trust_is_certifi() -> None:
    """With no CA variable the LLM client trusts certifi."""
    assert _inspect({}).tls.trust_store.startswith("certifi")


def test_every_code_is_documented() -> None:
    """Every warning an untidy environment produces has an entry in WARNING_CODES."""
    environ = {
        "HTTPS_PROXY": "proxy.corp:3128",
        "https_proxy": "http://other:1",
        "OPENAI_PROXY": "socks5://s:1080",
        "NO_PROXY": "[::1],10.0.0.0/8,*.example.com",
        "PYTHONHTTPSVERIFY": "0",
        "REQUESTS_CA_BUNDLE": "/nonexistent.pem",
        "KAI_TLS_VERIFY": "0",
    }
    report = _inspect(environ, ENDPOINT, "https://10.0.0.1/")

    assert len(_codes(report)) > 8
    assert set(_codes(report)) <= set(inspection.WARNING_CODES)
