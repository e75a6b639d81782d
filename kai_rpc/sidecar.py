"""A real mitmdump on a loopback port: the "sidecar" proxy of ``kai-rpc demo``, the
tests and the benchmarks.

Its confdir lives in a working directory of the caller's, so its CA
(``mitmproxy-ca-cert.pem``) is fresh per run; it trusts a given CA upstream,
optionally demands proxy credentials, and records every flow to a JSON-lines file
through the addon in ``sidecar_flow_log.py``. mitmproxy runs from its own virtual
environment (``.venv-mitm``, or ``KAI_RPC_MITMDUMP``): it is never imported here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RECORDER = Path(__file__).with_name("sidecar_flow_log.py")
_NETWORK_VARIABLES = ("_proxy", "ssl_cert_file", "ssl_cert_dir", "_ca_bundle")
_LISTENING = re.compile(r"proxy listening at .*?:(\d+)")
_START_TIMEOUT_S = 60.0


def environ_without_network_settings() -> dict[str, str]:
    """This process's environment without proxy and CA variables."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.lower().endswith(_NETWORK_VARIABLES)
    }


def mitmdump_path() -> Path:
    """KAI_RPC_MITMDUMP, else the repository's .venv-mitm."""
    configured = os.environ.get("KAI_RPC_MITMDUMP")
    return Path(configured) if configured else REPO / ".venv-mitm/bin/mitmdump"


class Sidecar:
    """One mitmdump process. ``start`` waits until it listens; ``stop`` ends it."""

    def __init__(
        self,
        workdir: Path,
        upstream_ca: Path,
        proxyauth: str | None = None,
        scripts: Sequence[Path] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.confdir = workdir / "confdir"
        self.flow_log = workdir / "flows.jsonl"
        self.output = workdir / "mitmdump.log"
        self.proxyauth = proxyauth
        self._upstream_ca = upstream_ca
        self._scripts = [RECORDER, *scripts]
        self._env = dict(env or {})
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The proxy URL without credentials."""
        return f"http://127.0.0.1:{self.port}"

    def url_with(self, user: str, password: str) -> str:
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        """The sidecar's CA certificate (PEM), which clients must trust."""
        return self.confdir / "mitmproxy-ca-cert.pem"

    def command(self) -> list[str]:
        command = [
            str(mitmdump_path()),
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            "0",
            "--set",
            f"confdir={self.confdir}",
            "--set",
            f"ssl_verify_upstream_trusted_ca={self._upstream_ca}",
            "--set",
            f"kai_flow_log={self.flow_log}",
        ]
        for script in self._scripts:
            command += ["-s", str(script)]
        if self.proxyauth:
            command += ["--proxyauth", self.proxyauth]
        return command

    def start(self) -> Sidecar:
        if not mitmdump_path().exists():
            raise RuntimeError(
                f"mitmdump not found at {mitmdump_path()}: run 'make install' or "
                "set KAI_RPC_MITMDUMP"
            )
        self.confdir.mkdir(parents=True, exist_ok=True)
        self.flow_log.touch()
        with open(self.output, "wb") as output:
            self._process = subprocess.Popen(
                self.command(),
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._environment(),
            )
        self.port = self._wait_listening()
        return self

    def _environment(self) -> dict[str, str]:
        env = environ_without_network_settings()
        env.update(self._env)
        return env

    def _wait_listening(self) -> int:
        deadline = time.monotonic() + _START_TIMEOUT_S
        assert self._process is not None
        while time.monotonic() < deadline:
            match = _LISTENING.search(self.output.read_text(errors="replace"))
            if match and self.ca_file.exists():
                return int(match.group(1))
            if self._process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mitmdump did not start:\n{self.output.read_text()}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def flows(self) -> list[dict[str, Any]]:
        """Every flow recorded so far."""
        lines = self.flow_log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]


class SidecarView:
    """A test's window on a shared sidecar: only the flows since it was made."""

    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar
        self._skip = len(sidecar.flows())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sidecar, name)

    def flows(self) -> list[dict[str, Any]]:
        return self.sidecar.flows()[self._skip :]

    def requests_to(self, host: str, port: int) -> list[dict[str, Any]]:
        """Proxied requests (not CONNECTs) the sidecar forwarded to host:port."""
        return [
            flow
            for flow in self.flows()
            if flow["kind"] == "request"
            and flow["host"] == host
            and flow["port"] == port
        ]
