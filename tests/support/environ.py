"""The environment every test subprocess starts from: this machine's, cleared of
proxy and CA variables, so the developer's own network set-up never leaks in."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_CLEARED_NAMES = {
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "ftp_proxy",
    "openai_proxy",
    "ssl_cert_file",
    "ssl_cert_dir",
    "requests_ca_bundle",
    "curl_ca_bundle",
    "pythonhttpsverify",
    "node_extra_ca_certs",
    "kai_rpc_policy",
    "openai_api_key",
    "openai_base_url",
    "openai_api_base",
}


def is_cleared(name: str) -> bool:
    """Whether a test environment drops this variable."""
    lowered = name.lower()
    return lowered in _CLEARED_NAMES or lowered.endswith("_ca_bundle")


def clean_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without proxy and CA variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not is_cleared(k)}
    env.update(extra or {})
    return env


def run_command(
    command: Sequence[str],
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run a command from the repository root to its end, from the clean
    environment unless ``env`` is given; its output is captured as text."""
    return subprocess.run(
        list(command),
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(env) if env is not None else clean_environ(),
        timeout=timeout,
        check=False,
    )
