"""The bridge end to end: the real ``kai-rpc serve`` over real pipes, real workers."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

from tests.support.client import (
    BridgeClient,
    ResponseError,
    bridge,
    environ_of,
    fault_worker_options,
    pid_alive,
    start_bridge,
)
from tests.support.environ import clean_environ


def entry(report: dict[str, Any], name: str) -> dict[str, Any]:
    matches = [v for v in report["variables"] if v["name"] == name]
    assert len(matches) == 1, f"{name}: {matches}"
    return matches[0]


async def wait_gone(pid: int, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while pid_alive(pid):
            await asyncio.sleep(0.05)


async def test_initialize_answers_before_the_worker_is_ready() -> None:
    """initialize returns the standard result plus a report whose worker is starting,
    and environmentStatus later announces the ready worker."""
    async with bridge() as client:
        result = await client.initialize({"env": {"KAI_DEMO": "1"}})
        assert "capabilities" in result
        assert result["serverInfo"]["name"] == "kai-rpc"
        assert result["environment"]["worker"]["state"] == "starting"
        assert result["environment"]["generation"] == 1
        report = await client.ready()
        assert report["worker"]["pid"] is not None
        assert entry(report, "KAI_DEMO")["status"] == "applied"


async def test_worker_runs_with_exactly_the_effective_environment() -> None:
    """The worker's /proc environ holds the IDE's values, names byte for byte, not
    the keys the IDE unset, and nothing the bridge set for itself."""
    env = {"lower_case": "a", "_UNDERSCORE": "b", "INHERITED": None, "MIXED.Name": "c"}
    started_with = clean_environ({"INHERITED": "from the bridge"})
    async with bridge(env=started_with) as client:
        await client.initialize({"env": env})
        report = await client.ready()
        worker_env = environ_of(report["worker"]["pid"])
        assert set(worker_env) - set(started_with) == {
            "lower_case",
            "_UNDERSCORE",
            "MIXED.Name",
        }
        assert worker_env["lower_case"] == "a"
        assert worker_env["_UNDERSCORE"] == "b"
        assert worker_env["MIXED.Name"] == "c"
        assert "INHERITED" not in worker_env
        assert "PATH" in worker_env
        assert entry(report, "INHERITED")["status"] == "unset"


async def test_set_environment_replaces_the_worker() -> None:
    """setEnvironment answers once a new worker with the new values is ready, and the
    old worker is stopped."""
    async with bridge() as client:
        await client.initialize({"env": {"HTTPS_PROXY": "http://127.0.0.1:9"}})
        first = await client.ready()
        report = await client.request(
            "setEnvironment", {"env": {"HTTPS_PROXY": "http://127.0.0.1:8"}}
        )
        assert report["generation"] == first["generation"] + 1
        assert report["worker"]["state"] == "ready"
        new_pid = report["worker"]["pid"]
        assert new_pid != first["worker"]["pid"]
        assert environ_of(new_pid)["HTTPS_PROXY"] == "http://127.0.0.1:8"
        await wait_gone(first["worker"]["pid"])


async def test_merge_and_replace_semantics() -> None:
    """setEnvironment merges by default, null unsets, and replace drops the rest of
    the IDE layer."""
    async with bridge() as client:
        await client.initialize({"env": {"A_ONE": "1", "A_TWO": "2"}})
        await client.ready()
        merged = await client.request(
            "setEnvironment", {"env": {"A_TWO": None, "A_THREE": "3"}}
        )
        env = environ_of(merged["worker"]["pid"])
        assert (env.get("A_ONE"), env.get("A_TWO"), env.get("A_THREE")) == (
            "1",
            None,
            "3",
        )
        replaced = await client.request(
            "setEnvironment", {"env": {"A_FOUR": "4"}, "replace": True}
        )
        env = environ_of(replaced["worker"]["pid"])
        assert "A_ONE" not in env and "A_THREE" not in env
        assert env["A_FOUR"] == "4"
        assert {v["name"] for v in replaced["variables"]} >= {"A_FOUR"}
        assert "A_ONE" not in {v["name"] for v in replaced["variables"]}


async def test_echo_is_forwarded_with_the_clients_id() -> None:
    """A request the bridge does not own reaches the worker and its answer comes
    back under the client's own id, string or number."""
    async with bridge() as client:
        await client.initialize()
        await client.ready()
        params = {"nested": {"list": [1, "two", None]}, "text": "héllo"}
        assert await client.request("echo", params) == params
        future = client.expect_response("string-id")
        client.send(
            {"jsonrpc": "2.0", "id": "string-id", "method": "echo", "params": [1, 2]}
        )
        response = await asyncio.wait_for(future, 30)
        assert response["result"] == [1, 2]


async def test_unknown_worker_method_is_method_not_found() -> None:
    """A method neither the bridge nor the worker serves is answered -32601."""
    async with bridge() as client:
        await client.initialize()
        await client.ready()
        with pytest.raises(ResponseError) as caught:
            await client.request("no/such/method", {})
        assert caught.value.code == -32601


async def test_shutdown_then_exit_leaves_no_worker() -> None:
    """exit after shutdown ends the bridge with code 0 and the worker with it."""
    client = await start_bridge()
    try:
        await client.initialize()
        pid = (await client.ready())["worker"]["pid"]
        assert await client.shutdown_and_exit() == 0
        await wait_gone(pid)
    finally:
        await client.close()


async def test_exit_without_shutdown_exits_with_one() -> None:
    """exit without shutdown ends the bridge with code 1, and stops the worker."""
    client = await start_bridge()
    try:
        await client.initialize()
        pid = (await client.ready())["worker"]["pid"]
        client.notify("exit")
        assert await asyncio.wait_for(client.process.wait(), 30) == 1
        await wait_gone(pid)
    finally:
        await client.close()


async def test_requests_out_of_turn_get_lsp_errors() -> None:
    """Before initialize a request is -32002; after shutdown it is -32600."""
    async with bridge() as client:
        with pytest.raises(ResponseError) as early:
            await client.request("getEnvironmentStatus")
        assert early.value.code == -32002
        await client.initialize()
        await client.request("shutdown")
        with pytest.raises(ResponseError) as late:
            await client.request("echo", {})
        assert late.value.code == -32600


async def test_bad_params_name_the_field_and_change_nothing() -> None:
    """setEnvironment with params of the wrong shape is -32602 naming the field, and
    the worker and generation stay as they were."""
    async with bridge() as client:
        await client.initialize({"env": {"KEEP": "me"}})
        before = await client.ready()
        for params, field in (
            ({"env": "not-a-map"}, "env"),
            ({"env": {}, "replace": "yes"}, "replace"),
            ({}, "env"),
        ):
            with pytest.raises(ResponseError) as caught:
                await client.request("setEnvironment", params)
            assert caught.value.code == -32602
            assert field in caught.value.message
        after = await client.request("getEnvironmentStatus")
        assert after["generation"] == before["generation"]
        assert after["worker"]["pid"] == before["worker"]["pid"]


async def test_denied_keys_are_rejected_with_a_reason_and_the_rest_applies() -> None:
    """LD_PRELOAD and PYTHONPATH are rejected with reasons; a good key beside them
    reaches the new worker; denied values never reach it."""
    async with bridge() as client:
        await client.initialize()
        await client.ready()
        report = await client.request(
            "setEnvironment",
            {
                "env": {
                    "LD_PRELOAD": "/tmp/evil.so",
                    "PYTHONPATH": "/tmp",
                    "GOOD_ONE": "yes",
                    "BAD=NAME": "x",
                    "NUMBER": 5,
                }
            },
        )
        for name in ("LD_PRELOAD", "PYTHONPATH", "BAD=NAME", "NUMBER"):
            rejected = entry(report, name)
            assert rejected["status"] == "rejected"
            assert rejected["reason"]
        env = environ_of(report["worker"]["pid"])
        assert env["GOOD_ONE"] == "yes"
        assert "LD_PRELOAD" not in env
        assert env.get("PYTHONPATH") != "/tmp"


async def test_rejected_only_change_keeps_the_worker() -> None:
    """A change whose every key is rejected leaves the same worker and generation."""
    async with bridge() as client:
        await client.initialize()
        before = await client.ready()
        report = await client.request(
            "setEnvironment", {"env": {"LD_PRELOAD": "/tmp/evil.so"}}
        )
        assert report["worker"]["pid"] == before["worker"]["pid"]
        assert report["generation"] == before["generation"]
        assert entry(report, "LD_PRELOAD")["status"] == "rejected"


async def test_secrets_never_reach_the_client_or_stderr() -> None:
    """Values of secret-shaped names and proxy passwords appear in no message to the
    client and nowhere on stderr, even at DEBUG level."""
    secret = "s3cr3t-canary-value"
    password = "pr0xy-canary-pass"
    async with bridge() as client:
        await client.initialize(
            {
                "env": {
                    "OAUTH_CLIENT_SECRET": secret,
                    "HTTPS_PROXY": f"http://user:{password}@127.0.0.1:3128",
                }
            }
        )
        await client.ready()
        await client.request("setEnvironment", {"env": {"MY_API_TOKEN": secret}})
        await client.request("echo", {"harmless": True})
        with pytest.raises(ResponseError):
            await client.request(
                "setEnvironment", {"env": {"X_TOKEN": 5}, "replace": secret}
            )
        await client.request("shutdown")
        client.notify("exit")
        await asyncio.wait_for(client.process.wait(), 30)
    everything = repr(client.received) + client.stderr.decode("utf-8", "replace")
    assert secret not in everything
    assert password not in everything
    assert "<redacted>" in repr(client.received)


async def test_did_change_configuration_pushes_a_report() -> None:
    """settings.kai.env in didChangeConfiguration is applied and the resulting report
    is pushed as environmentStatus."""
    async with bridge() as client:
        await client.initialize()
        await client.ready()
        client.notify(
            "workspace/didChangeConfiguration",
            {"settings": {"kai": {"env": {"FROM_SETTINGS": "1"}}}},
        )
        report = await client.status_where(
            lambda r: any(v["name"] == "FROM_SETTINGS" for v in r["variables"])
        )
        assert environ_of(report["worker"]["pid"])["FROM_SETTINGS"] == "1"


async def test_a_worker_that_cannot_start_keeps_the_old_one() -> None:
    """When the new worker exits at start, setEnvironment fails with the reason from
    its stderr, and the old worker and environment keep serving."""
    async with bridge() as client:
        await client.initialize(fault_worker_options({"STAGE": "good"}))
        before = await client.ready()
        with pytest.raises(ResponseError) as caught:
            await client.request("setEnvironment", {"env": {"FAULT_MODE": "exit"}})
        assert caught.value.code == -32011
        assert "exiting at start" in caught.value.message
        after = await client.request("getEnvironmentStatus")
        assert after["worker"]["pid"] == before["worker"]["pid"]
        assert after["generation"] == before["generation"]
        assert "FAULT_MODE" not in {v["name"] for v in after["variables"]}
        assert await client.request("echo", {"still": "here"}) == {"still": "here"}


async def test_a_worker_that_never_gets_ready_times_out() -> None:
    """A worker that never answers its configuration is given up after the ready
    timeout and the old one keeps serving."""
    async with bridge("--ready-timeout", "1.5") as client:
        await client.initialize(fault_worker_options())
        before = await client.ready()
        with pytest.raises(ResponseError) as caught:
            await client.request("setEnvironment", {"env": {"FAULT_MODE": "hang"}})
        assert "did not become ready" in caught.value.message
        after = await client.request("getEnvironmentStatus")
        assert after["worker"]["pid"] == before["worker"]["pid"]


async def test_a_crash_fails_held_requests_and_restarts_the_worker() -> None:
    """A worker killed during a request: the request gets an error at once, the
    worker comes back with the same environment, restarts counts it."""
    async with bridge() as client:
        await client.initialize(fault_worker_options({"KEEP": "this"}))
        before = await client.ready()
        sleeper = asyncio.create_task(client.request_raw("test/sleep", {"seconds": 60}))
        await asyncio.sleep(0.5)
        os.kill(before["worker"]["pid"], signal.SIGKILL)
        response = await asyncio.wait_for(sleeper, 10)
        assert response["error"]["code"] == -32012
        report = await client.status_where(
            lambda r: r["worker"]["state"] == "ready" and r["worker"]["restarts"] == 1
        )
        assert report["worker"]["pid"] != before["worker"]["pid"]
        assert environ_of(report["worker"]["pid"])["KEEP"] == "this"
        assert report["generation"] == before["generation"]


async def test_a_worker_that_keeps_dying_ends_failed() -> None:
    """A worker that exits at every start is retried with backoff, then the state
    becomes failed and requests are refused at once."""
    async with bridge() as client:
        await client.initialize(fault_worker_options({"FAULT_MODE": "exit"}))
        report = await client.status_where(
            lambda r: r["worker"]["state"] == "failed", timeout=60
        )
        assert "exiting at start" in report["worker"]["lastError"]
        with pytest.raises(ResponseError) as caught:
            await client.request("echo", {})
        assert caught.value.code == -32013
        recovered = await client.request(
            "setEnvironment", {"env": {"FAULT_MODE": None}}
        )
        assert recovered["worker"]["state"] == "ready"


async def test_cancel_reaches_the_worker_that_holds_the_request() -> None:
    """$/cancelRequest with the client's id cancels the request inside the worker."""
    async with bridge() as client:
        await client.initialize(fault_worker_options())
        await client.ready()
        future = client.expect_response(77)
        client.send(
            {
                "jsonrpc": "2.0",
                "id": 77,
                "method": "test/sleep",
                "params": {"seconds": 60},
            }
        )
        await asyncio.sleep(0.5)
        client.notify("$/cancelRequest", {"id": 77})
        response = await asyncio.wait_for(future, 10)
        assert response["error"]["code"] == -32800


async def test_worker_requests_reach_the_client_and_answers_go_back() -> None:
    """A request the worker sends is forwarded to the client, and the client's answer
    is routed back to that worker."""
    async with bridge() as client:
        await client.initialize(fault_worker_options())
        await client.ready()
        asked = asyncio.create_task(client.request("test/askClient", {"q": 1}))
        question = await asyncio.wait_for(client.requests.get(), 10)
        assert question["method"] == "test/question"
        client.send({"jsonrpc": "2.0", "id": question["id"], "result": {"a": 42}})
        assert await asyncio.wait_for(asked, 10) == {"a": 42}


async def test_killing_the_bridge_ends_the_worker() -> None:
    """SIGKILL on the bridge leaves no worker behind: it exits when stdin closes."""
    client: BridgeClient = await start_bridge()
    try:
        await client.initialize()
        pid = (await client.ready())["worker"]["pid"]
        client.process.kill()
        await client.process.wait()
        await wait_gone(pid, timeout=3)
    finally:
        await client.close()
