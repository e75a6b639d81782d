"""Secrets and the deny list under attack: canary secrets in every secret-shaped
place never surface, and no case variant, locked key or replace gets round the
policy."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kai_rpc import policy
from tests.support.client import FAULT_WORKER, ResponseError, bridge, environ_of

CANARIES = {
    "OAUTH_CLIENT_SECRET": "canary-secret-1111",
    "GITHUB_TOKEN": "canary-token-2222",
    "OPENAI_API_KEY": "canary-apikey-3333",
    "INTERNAL_API_KEY": "canary-apikey-4444",
    "REQUEST_SIGNATURE": "canary-policy-secret-5555",
}
PROXY_PASSWORDS = {
    "HTTP_PROXY": "canary-http-pw-6666",
    "HTTPS_PROXY": "canary-https/pw@7777",
    "ALL_PROXY": "canary-all-pw-8888",
    "OPENAI_PROXY": "canary-openai-pw-9999",
}
MODEL_KEY = "canary-model-key-0000"
LATER = {"LATE_SECRET": "canary-late-aaaa", "SETTINGS_TOKEN": "canary-settings-bbbb"}
ERROR_SECRET = "canary-error-cccc"


def every_canary() -> list[str]:
    values = [*CANARIES.values(), *PROXY_PASSWORDS.values(), MODEL_KEY, ERROR_SECRET]
    values += LATER.values()
    return values + [quote(v, safe="") for v in values]


def proxy_env() -> dict[str, str]:
    return {
        name: f"http://user:{quote(password, safe='')}@127.0.0.1:9"
        for name, password in PROXY_PASSWORDS.items()
    }


async def test_canary_secrets_appear_nowhere(tmp_path: Path) -> None:
    """Canaries in *_SECRET, *_TOKEN, *_API_KEY, a policy secret pattern, proxy URL
    passwords and modelProvider.args.api_key appear in no message to the client, no
    stderr line at DEBUG, no recording and no error text, even when a worker dumps
    its environment to stderr and parameters are wrong."""
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text('secret = ["*_SIGNATURE"]\n')
    recording = tmp_path / "session.jsonl"
    args = ("--policy", str(policy_file), "--record", str(recording))
    async with bridge(*args) as client:
        await client.initialize(
            {
                "env": {**CANARIES, **proxy_env()},
                "modelProvider": {
                    "args": {"api_key": MODEL_KEY, "base_url": "http://127.0.0.1:9/v1"}
                },
                "worker": {"command": FAULT_WORKER},
            }
        )
        await client.ready()
        await client.request(
            "setEnvironment", {"env": {"LATE_SECRET": LATER["LATE_SECRET"]}}
        )
        client.notify(
            "workspace/didChangeConfiguration",
            {"settings": {"kai": {"env": {"SETTINGS_TOKEN": LATER["SETTINGS_TOKEN"]}}}},
        )
        await client.status_where(
            lambda r: any(v["name"] == "SETTINGS_TOKEN" for v in r["variables"])
        )

        # Error texts: a worker that prints its environment and exits...
        with pytest.raises(ResponseError) as dumped:
            await client.request(
                "setEnvironment",
                {"env": {"FAULT_MODE": "dumpenv", "ERROR_TOKEN": ERROR_SECRET}},
            )
        assert "exited" in dumped.value.message or "failed" in dumped.value.message
        assert "<redacted>" in dumped.value.message
        # ...bad params that carry secret values...
        with pytest.raises(ResponseError):
            await client.request(
                "setEnvironment",
                {"env": {"BAD_TOKEN": 12345678}, "replace": ERROR_SECRET},
            )
        odd = await client.request(
            "setEnvironment", {"env": {"GITHUB_TOKEN": [CANARIES["GITHUB_TOKEN"]]}}
        )
        assert any(v["status"] == "rejected" for v in odd["variables"])
        # ...and worker requests whose failures name the key or the proxy.
        chat = await client.request_raw(
            "chat", {"messages": [{"role": "user", "content": "hi"}]}
        )
        assert "error" in chat
        await client.shutdown_and_exit()

    texts = {
        "messages to the client": json.dumps(client.received),
        "stderr": client.stderr.decode("utf-8", "replace"),
        "recording": recording.read_text(errors="replace"),
    }
    assert texts["recording"], "the recording is empty"
    for where, text in texts.items():
        for canary in every_canary():
            assert canary not in text, f"{canary!r} leaked into {where}"
    assert "<redacted>" in texts["messages to the client"]


async def test_a_probe_url_with_credentials_is_not_echoed() -> None:
    """probeConnectivity of a URL holding credentials answers with the URL
    redacted, never with its password."""
    password = "canary-probe-pw-dddd"
    async with bridge() as client:
        await client.initialize({"env": {"HTTPS_PROXY": "http://127.0.0.1:9"}})
        await client.ready()
        url = f"https://user:{password}@127.0.0.1:9/"
        await client.request_raw("probeConnectivity", {"url": url, "timeoutMs": 500})
    assert password not in json.dumps(client.received)


@pytest.mark.parametrize(
    "name",
    [
        "ld_preload",
        "Ld_Preload",
        "pythonPath",
        "Path",
        "git_dir",
        "Node_Options",
        "bash_func_ls%%",
        "openssl_conf",
        "home",
    ],
)
def test_case_variants_of_denied_names_are_rejected_where_names_fold(name: str) -> None:
    """Where the platform folds variable names (Windows), a denied name in any case
    is rejected and does not reach the environment."""
    result = policy.evaluate(
        {"PATH": "/usr/bin"},
        {name: "/tmp/evil"},
        policy.Policy(),
        case_insensitive=True,
    )
    entry = next(v for v in result.variables if v.name == name)
    assert entry.status == "rejected"
    assert all(v != "/tmp/evil" for v in result.env.values())


def test_policy_deny_and_locked_fold_case_too() -> None:
    """A policy deny pattern and a locked name match in any case where names fold,
    and the locked value survives an attempt in another case."""
    the_policy = policy.Policy(deny=["AWS_*"], locked={"NO_PROXY": "localhost"})
    result = policy.evaluate(
        {},
        {"aws_secret_access_key": "x", "no_proxy": "evil.example"},
        the_policy,
        case_insensitive=True,
    )
    status = {v.name: v.status for v in result.variables}
    assert status["aws_secret_access_key"] == "rejected"
    assert status["no_proxy"] == "locked"
    assert {k.upper(): v for k, v in result.env.items()}["NO_PROXY"] == "localhost"
    assert "evil.example" not in result.env.values()


async def test_locked_keys_hold_against_settings_and_replace(tmp_path: Path) -> None:
    """A locked variable keeps the policy's value when the IDE sets it through
    didChangeConfiguration, unsets it, or replaces its whole layer; denied keys sent
    the same ways never reach a worker."""
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text('[locked]\nNO_PROXY = "localhost,.corp.example"\n')
    locked = "localhost,.corp.example"
    async with bridge("--policy", str(policy_file)) as client:
        await client.initialize({"env": {"NO_PROXY": "evil", "KEEP": "1"}})
        report = await client.ready()
        assert environ_of(report["worker"]["pid"])["NO_PROXY"] == locked

        client.notify(
            "workspace/didChangeConfiguration",
            {
                "settings": {
                    "kai": {
                        "env": {
                            "NO_PROXY": "*",
                            "LD_PRELOAD": "/x.so",
                            "FROM_SETTINGS": "1",
                        }
                    }
                }
            },
        )
        pushed = await client.status_where(
            lambda r: any(v["name"] == "FROM_SETTINGS" for v in r["variables"])
        )
        env = environ_of(pushed["worker"]["pid"])
        assert env["NO_PROXY"] == locked and "LD_PRELOAD" not in env

        for params in (
            {"env": {"NO_PROXY": None}, "replace": True},
            {"env": {}, "replace": True},
            {"env": {"NO_PROXY": "", "LD_PRELOAD": "/x.so"}, "replace": True},
        ):
            report = await client.request("setEnvironment", params)
            env = environ_of(report["worker"]["pid"])
            assert env["NO_PROXY"] == locked
            assert "LD_PRELOAD" not in env
            assert "KEEP" not in env  # replace dropped the rest of the IDE layer


env_names = st.text(min_size=0, max_size=40) | st.sampled_from(
    [*policy.BUILTIN_DENY, "ld_preload", "Path", "HTTPS_PROXY", "A=B", "\0", "é"]
)
env_values = (
    st.none()
    | st.text(max_size=200)
    | st.integers()
    | st.booleans()
    | st.lists(st.text(max_size=5), max_size=3)
)


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.dictionaries(env_names, env_values, max_size=30), st.booleans())
def test_any_env_map_is_evaluated_without_a_crash(
    layer: dict[str, Any], folded: bool
) -> None:
    """Any names and JSON values: evaluate never raises, every key gets an entry,
    only strings are applied, and no denied name reaches the environment."""
    result = policy.evaluate(
        {"PATH": "/usr/bin", "HOME": "/root"},
        layer,
        policy.Policy(),
        case_insensitive=folded,
    )
    reported = {v.name for v in result.variables}
    assert reported >= set(layer)
    applied = {v.name for v in result.variables if v.status == "applied"}
    for name in applied:
        assert isinstance(layer[name], str)
        assert result.env[name] == layer[name]
        assert not denied(name, folded), name


def denied(name: str, folded: bool) -> bool:
    """Whether a built-in deny pattern (all upper case) matches ``name``."""
    probe = name.upper() if folded else name
    return any(fnmatch.fnmatchcase(probe, p) for p in policy.BUILTIN_DENY)
