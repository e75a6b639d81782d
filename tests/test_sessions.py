"""Recorded sessions replay green against today's server, and a changed behaviour
shows up as a diff naming the changed message."""

from __future__ import annotations

import json
import shutil
import stat
import sys
from pathlib import Path

import pytest

from tests.support.environ import run_command
from tests.support.replay import (
    CLIENT,
    RECORDED_SCENARIOS,
    SERVE,
    SESSIONS,
    assert_replays,
    replay_session,
    session_environ,
)

SESSION_FILES = sorted(SESSIONS.glob("*.jsonl"))


@pytest.mark.parametrize("session", SESSION_FILES, ids=lambda p: p.stem)
def test_session_replays(session: Path) -> None:
    """Each recorded session replays against a fresh kai-rpc serve."""
    assert_replays(session)


def test_every_scenario_has_a_recording() -> None:
    """Start-up, proxy change, rejected key, worker crash and bad request are all
    recorded."""
    assert {p.stem for p in SESSION_FILES} >= set(RECORDED_SCENARIOS)


def test_sessions_hold_no_secrets() -> None:
    """The proxy password the client sent is redacted in every recording."""
    for session in SESSION_FILES:
        assert "proxy-secret" not in session.read_text(), session


def _edit_line(path: Path, line: int, old: str, new: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    assert old in lines[line - 1], f"{old!r} not on line {line} of {path}"
    lines[line - 1] = lines[line - 1].replace(old, new)
    path.write_text("".join(lines))


def _line_of(path: Path, predicate: str) -> int:
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if predicate in text:
            return number
    raise AssertionError(f"no line of {path} contains {predicate!r}")


def test_changed_behaviour_fails_with_a_diff_naming_the_message(tmp_path: Path) -> None:
    """A recording that no longer matches the server (as after a behaviour change)
    fails replay, and the diff names the line, the request and the changed text."""
    copy = tmp_path / "bad-request.jsonl"
    shutil.copy(SESSIONS / "bad-request.jsonl", copy)
    line = _line_of(copy, "is not served by the worker")
    _edit_line(copy, line, "is not served by the worker", "is unknown")

    outcome = replay_session(copy)

    assert not outcome.ok
    request_id = json.loads(copy.read_text().splitlines()[line - 1])["message"]["id"]
    header = f"changed {copy}:{line} (response id={request_id} to kai/noSuchMethod)"
    assert header in outcome.report
    assert '-    "message": "method \'kai/noSuchMethod\' is unknown"' in outcome.report


def test_replay_command_exits_non_zero_with_the_diff(tmp_path: Path) -> None:
    """kai-rpc replay prints the diff and exits 1 when a message changed."""
    copy = tmp_path / "startup.jsonl"
    shutil.copy(SESSIONS / "startup.jsonl", copy)
    _edit_line(copy, _line_of(copy, '"serverInfo"'), '"name": "kai-rpc"', '"name": "x"')

    done = run_command(
        [sys.executable, "-m", "kai_rpc", "replay", str(copy)], session_environ()
    )

    assert done.returncode == 1, done.stdout
    assert "(response id=0 to initialize)" in done.stdout
    assert '-      "name": "x",' in done.stdout


def test_serve_record_writes_a_replayable_session(tmp_path: Path) -> None:
    """kai-rpc serve --record writes an owner-only recording of the vscode-jsonrpc
    client's conversation that then replays green."""
    out = tmp_path / "served.jsonl"
    command = ["node", str(CLIENT), "--", *SERVE, "--record", str(out)]
    done = run_command(command, session_environ())
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert_replays(out)
