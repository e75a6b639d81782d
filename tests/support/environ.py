"""The environment every test subprocess starts from: this machine's, cleared of
proxy and CA variables, so the developer's own network set-up never leaks in."""

from __future__ import annotations

import os
from collections.abc import Mapping

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
