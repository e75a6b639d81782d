"""The kai-rpc command line: which words reach which command."""

from __future__ import annotations

import json
import sys

from kai_rpc.cli import parse_args
from tests.support.environ import run_command


def test_passthrough_commands_get_every_word_after_them() -> None:
    """Words after record, replay, doctor and demo reach them unchanged, options
    and "--" included, while global options before them are still parsed."""
    args = parse_args(
        ["--log-level", "DEBUG", "record", "--out", "f.jsonl", "--", "kai-rpc", "serve"]
    )
    assert args.log_level == "DEBUG"
    assert args.rest == ["--out", "f.jsonl", "--", "kai-rpc", "serve"]
    assert parse_args(["replay", "--timeout", "5", "f.jsonl"]).rest == [
        "--timeout",
        "5",
        "f.jsonl",
    ]
    assert parse_args(["doctor"]).rest == []


def test_serve_options_are_parsed_by_the_command_line() -> None:
    """serve's own options are parsed, with the documented defaults."""
    args = parse_args(["serve", "--ready-timeout", "2.5"])
    assert args.ready_timeout == 2.5
    assert args.retire_grace == 10.0
    assert args.policy is None and args.record is None


_PROBE_SERVE_START = """
import asyncio, gc, json, os
from kai_rpc import cli

defaults = gc.get_threshold()

def report_instead_of_serving(coroutine):
    options = coroutine.cr_frame.f_locals["options"]
    coroutine.close()
    state = {
        "before": defaults,
        "after": gc.get_threshold(),
        "frozen": gc.get_freeze_count(),
        "plugins": os.environ.get("PYDANTIC_DISABLE_PLUGINS"),
        "worker_base": options.base_env.get("PYDANTIC_DISABLE_PLUGINS"),
    }
    print(json.dumps(state))
    return 0

asyncio.run = report_instead_of_serving
cli.main(["serve"])
"""


def test_serve_restores_the_collector_after_its_imports() -> None:
    """`kai-rpc serve` serves with the collector's usual thresholds again and the
    objects made while importing frozen out of it, so the start-up setting of the
    collector cannot outlive the start."""
    result = run_command([sys.executable, "-c", _PROBE_SERVE_START])
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout)
    assert state["after"] == state["before"]
    assert state["frozen"] > 10_000


def test_serve_runs_without_pydantic_plugins_but_workers_inherit_as_is() -> None:
    """The bridge turns pydantic plugins off for itself (they would see secrets)
    while the environment its workers start from is the one it was given."""
    result = run_command([sys.executable, "-c", _PROBE_SERVE_START])
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout)
    assert state["plugins"] == "__all__"
    assert state["worker_base"] is None
