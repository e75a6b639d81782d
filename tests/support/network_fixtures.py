"""Pytest fixtures with real network parts on loopback: a test CA, the fake LLM,
and mitmdump sidecars (plain, and demanding proxy credentials).

Processes and servers are shared per session (mitmdump takes a second or two to
start); each test gets a view that only sees its own flows and requests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from kai_rpc.local_llm import FakeLlm
from kai_rpc.sidecar import Sidecar, SidecarView

PROXY_USER = "kai-user"
PROXY_PASSWORD = "pw-s3cret-for-proxy"


@pytest.fixture(scope="session")
def test_ca() -> trustme.CA:
    """The CA that issued the fake LLM's certificate."""
    return trustme.CA()


@pytest.fixture(scope="session")
def test_ca_file(test_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "test-ca.pem"
    test_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="session")
def _fake_llm_server(test_ca: trustme.CA) -> Iterator[FakeLlm]:
    server = FakeLlm(test_ca).start()
    yield server
    server.stop()


@pytest.fixture
def fake_llm(_fake_llm_server: FakeLlm) -> FakeLlm:
    """The fake LLM on 127.0.0.2, with its request record emptied for this test."""
    _fake_llm_server.clear()
    return _fake_llm_server


def _start_sidecar(
    factory: pytest.TempPathFactory, ca_file: Path, proxyauth: str | None
) -> Iterator[Sidecar]:
    sidecar = Sidecar(factory.mktemp("sidecar"), ca_file, proxyauth=proxyauth)
    sidecar.start()
    yield sidecar
    sidecar.stop()


@pytest.fixture(scope="session")
def _sidecar_process(
    tmp_path_factory: pytest.TempPathFactory, test_ca_file: Path
) -> Iterator[Sidecar]:
    yield from _start_sidecar(tmp_path_factory, test_ca_file, None)


@pytest.fixture(scope="session")
def _auth_sidecar_process(
    tmp_path_factory: pytest.TempPathFactory, test_ca_file: Path
) -> Iterator[Sidecar]:
    yield from _start_sidecar(
        tmp_path_factory, test_ca_file, f"{PROXY_USER}:{PROXY_PASSWORD}"
    )


@pytest.fixture
def sidecar(_sidecar_process: Sidecar) -> SidecarView:
    """A mitmdump proxy trusting the test CA; flows() holds this test's flows."""
    return SidecarView(_sidecar_process)


@pytest.fixture
def auth_sidecar(_auth_sidecar_process: Sidecar) -> SidecarView:
    """A mitmdump proxy that demands PROXY_USER / PROXY_PASSWORD."""
    return SidecarView(_auth_sidecar_process)
