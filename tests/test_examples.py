"""The examples run: the policy loads, the settings snippet maps to an env map,
and the extension-side client gets the report the README promises."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from kai_rpc.policy import load_policy
from tests.support.environ import run_command

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
POLICY = EXAMPLES / "policy.toml"
SETTINGS = EXAMPLES / "vscode-settings.json"
EXTENSION_CLIENT = EXAMPLES / "extension-client" / "main.js"


def test_example_policy_loads() -> None:
    """examples/policy.toml validates against the policy model."""
    policy, source = load_policy(str(POLICY), {})
    assert source == POLICY
    assert policy.allow_insecure_tls is False
    assert policy.locked == {"OPENAI_BASE_URL": "https://llm.corp.example/v1"}
    assert policy.redactor().is_secret("OPENAI_PROJECT")


def test_settings_snippet_has_the_env_map_and_proxy_settings() -> None:
    """examples/vscode-settings.json is JSON with kai.env and VS Code's http.*."""
    settings = json.loads(SETTINGS.read_text(encoding="utf-8"))
    assert isinstance(settings["kai.env"], dict)
    assert {"http.proxy", "http.noProxy", "http.proxyStrictSSL"} <= set(settings)


def _run_extension_client() -> dict[str, Any]:
    serve = [sys.executable, "-m", "kai_rpc", "serve", "--policy", str(POLICY)]
    done = run_command(["node", str(EXTENSION_CLIENT), str(SETTINGS), "--", *serve])
    assert done.returncode == 0, done.stderr
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def test_extension_client_maps_settings_under_the_example_policy() -> None:
    """http.proxy, http.noProxy, http.proxyStrictSSL and kai.caBundle reach the
    report as HTTPS_PROXY/HTTP_PROXY, NO_PROXY, a refused KAI_TLS_VERIFY and
    SSL_CERT_FILE; the policy's lock and deny show with reasons."""
    summary = _run_extension_client()
    variables = {v["name"]: v for v in summary["variables"]}

    proxy = "http://build-bot:<redacted>@proxy.corp.example:3128"
    assert variables["HTTPS_PROXY"]["value"] == proxy
    assert variables["HTTP_PROXY"]["value"] == proxy
    assert variables["NO_PROXY"]["value"] == "localhost,127.0.0.1,.corp.example"
    assert variables["SSL_CERT_FILE"]["status"] == "applied"
    assert variables["KAI_TLS_VERIFY"]["status"] == "rejected"
    assert "allow_insecure_tls" in variables["KAI_TLS_VERIFY"]["reason"]
    assert variables["OPENAI_BASE_URL"]["status"] == "locked"
    assert variables["AWS_PROFILE"]["status"] == "rejected"
    assert variables["OPENAI_PROXY"]["status"] == "unset"
    assert summary["tls"] == {"verify": True}
    assert summary["routes"] == [
        {
            "url": "https://llm.corp.example/v1",
            "proxy": None,
            "bypassedBy": ".corp.example",
        }
    ]
    assert "proxy-pass" not in json.dumps(summary)


def test_readmes_reference_each_example() -> None:
    """The contract README points at every example, so none is orphaned."""
    readme = (ROOT / "ide-contract" / "README.md").read_text(encoding="utf-8")
    for example in ("policy.toml", "vscode-settings.json", "extension-client/"):
        assert f"examples/{example}" in readme
