"""Recorder, the recording proxy, normalisation and the replay comparison."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kai_rpc import redact
from kai_rpc.framing import encode_message
from kai_rpc.recording import (
    NORMALISATION_RULES,
    Entry,
    Recorder,
    compare,
    load_recording,
    normalise,
    rules_table,
)
from kai_rpc.redact import REDACTED, Redactor
from tests.support.environ import clean_environ

ROOT = Path(__file__).resolve().parent.parent

# A server that answers every byte with the same byte: whatever reaches the client
# unchanged went through the proxy unchanged in both directions.
ECHO_SERVER = """
import os, sys
while chunk := os.read(0, 7):
    os.write(1, chunk)
sys.exit(int(sys.argv[1]))
"""


@pytest.fixture(autouse=True)
def _forget_secrets() -> Iterator[None]:
    yield
    redact._forget_secrets()


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _record(path: Path, *messages: tuple[bool, Any]) -> list[dict[str, Any]]:
    with Recorder(path, Redactor()) as recorder:
        for from_client, message in messages:
            body = message if isinstance(message, bytes) else json.dumps(message)
            recorder.record(
                from_client, body if isinstance(body, bytes) else body.encode()
            )
    return _lines(path)


def test_recording_is_created_owner_only(tmp_path: Path) -> None:
    """The file is mode 0600 from creation, even under umask 0."""
    old = os.umask(0)
    try:
        _record(tmp_path / "r.jsonl", (True, {"jsonrpc": "2.0", "method": "exit"}))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.jsonl").stat().st_mode) == 0o600


def test_existing_wider_file_is_replaced_not_reused(tmp_path: Path) -> None:
    """A pre-existing world-readable file does not lend the recording its mode."""
    path = tmp_path / "r.jsonl"
    path.write_text("old secrets\n")
    path.chmod(0o644)
    lines = _record(path, (False, {"jsonrpc": "2.0", "id": 1, "result": None}))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(lines) == 1


def test_each_message_is_one_line_with_direction_and_time(tmp_path: Path) -> None:
    """Every record is one JSON line: direction, monotonic t, the message."""
    lines = _record(
        tmp_path / "r.jsonl",
        (True, {"jsonrpc": "2.0", "id": 1, "method": "echo", "params": [1]}),
        (False, {"jsonrpc": "2.0", "id": 1, "result": [1]}),
    )
    assert [line["direction"] for line in lines] == ["client->server", "server->client"]
    assert all(isinstance(line["t"], float) for line in lines)
    assert lines[1]["message"] == {"jsonrpc": "2.0", "id": 1, "result": [1]}


def test_secrets_and_proxy_credentials_are_redacted(tmp_path: Path) -> None:
    """Secret-shaped values, URL passwords and secrets echoed later never reach
    the file."""
    env = {
        "OPENAI_API_KEY": "sk-live-0123456789",
        "HTTPS_PROXY": "http://u:pw9x@p:3128",
    }
    initialize = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"initializationOptions": {"env": env}},
    }
    echoed = {
        "jsonrpc": "2.0",
        "id": 0,
        "error": {"message": "bad key sk-live-0123456789"},
    }
    path = tmp_path / "r.jsonl"
    lines = _record(path, (True, initialize), (False, echoed))

    text = path.read_text()
    assert "sk-live-0123456789" not in text and "pw9x" not in text
    sent = lines[0]["message"]["params"]["initializationOptions"]["env"]
    assert sent == {
        "OPENAI_API_KEY": REDACTED,
        "HTTPS_PROXY": f"http://u:{REDACTED}@p:3128",
    }
    assert lines[1]["message"]["error"]["message"] == f"bad key {REDACTED}"


def test_unparsable_body_is_recorded_as_a_marker(tmp_path: Path) -> None:
    """A body that is not JSON is recorded as a marker, never as its bytes."""
    lines = _record(tmp_path / "r.jsonl", (True, b'{"password": "hunter2'))
    assert lines[0]["message"] == "<unparsable body of 21 bytes>"


def test_closed_recorder_drops_messages(tmp_path: Path) -> None:
    """Records after close() are dropped instead of raising into the server."""
    recorder = Recorder(tmp_path / "r.jsonl", Redactor())
    recorder.close()
    recorder.record(True, b"{}")
    assert (tmp_path / "r.jsonl").read_text() == ""


def test_record_proxy_passes_bytes_through_unchanged(tmp_path: Path) -> None:
    """Headers, odd header case and split frames reach the other side byte-exact,
    and each frame is recorded in both directions; the server's exit code is
    returned."""
    server = tmp_path / "echo_server.py"
    server.write_text(ECHO_SERVER)
    out = tmp_path / "proxy.jsonl"
    frames = (
        encode_message({"jsonrpc": "2.0", "id": 1, "method": "echo", "params": ["é"]})
        + b"content-length: 17\r\nContent-Type: application/vscode-jsonrpc\r\n\r\n"
        + b'{"password":"pw"}'
    )
    command = [sys.executable, "-m", "kai_rpc", "record", "--", "--out", str(out)]
    command += ["--", sys.executable, str(server), "3"]
    done = subprocess.run(
        command,
        input=frames,
        capture_output=True,
        env=clean_environ(),
        timeout=60,
        check=False,
    )

    assert done.stdout == frames
    assert done.returncode == 3
    lines = _lines(out)
    directions = [line["direction"] for line in lines]
    assert sorted(directions) == ["client->server"] * 2 + ["server->client"] * 2
    assert {"password": REDACTED} in [line["message"] for line in lines]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_record_without_a_command_is_a_usage_error(tmp_path: Path) -> None:
    """kai-rpc record with no server command says how to give one."""
    command = [sys.executable, "-m", "kai_rpc.recording", "record"]
    command += ["--out", str(tmp_path / "x.jsonl")]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert "give the server command after --" in done.stderr


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"pid": 4242, "processId": 7}, {"pid": "<pid>", "processId": "<pid>"}),
        ({"pid": None}, {"pid": None}),
        ("worker 4242 exited", "worker <pid> exited"),
        ("worker[4242] INFO", "worker[<pid>] INFO"),
        ({"elapsedMs": 12.5}, {"elapsedMs": "<duration>"}),
        ("ready after 0.52 s", "ready after <duration>"),
        ("at 2026-01-02 03:04:05,678 x", "at <timestamp> x"),
        ("2030-12-31T09:37:37+00:00", "<timestamp>"),
        ("/tmp/pytest-of-me/pytest-3/t0/ca.pem", "<tmp>/ca.pem"),
        ("http://127.0.0.1:41234/v1", "http://127.0.0.1:<port>/v1"),
        ("https://api.openai.com:443/v1", "https://api.openai.com:443/v1"),
        (
            {"version": "2.16.2", "clientVersion": "1"},
            {"version": "<version>"} | {"clientVersion": "<version>"},
        ),
        ({"generation": 2, "state": "ready"}, {"generation": 2, "state": "ready"}),
    ],
)
def test_normalisation_rules(raw: Any, expected: Any) -> None:
    """Each rule replaces exactly what varies between runs and nothing else."""
    assert normalise(raw) == expected


def test_rules_table_lists_every_rule() -> None:
    """The README's table is generated from the one rule table in code."""
    table = rules_table()
    assert all(f"| {rule.name} |" in table for rule in NORMALISATION_RULES)


def _entries(*messages: tuple[bool, Any]) -> list[Entry]:
    return [Entry(i, c, m) for i, (c, m) in enumerate(messages, start=1)]


def _status(generation: int) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "method": "environmentStatus",
        "params": {"g": generation},
    }


def test_responses_match_by_id_whatever_the_interleaving() -> None:
    """A notification overtaking a response is not a difference."""
    request = {"jsonrpc": "2.0", "id": 1, "method": "setEnvironment", "params": {}}
    response = {"jsonrpc": "2.0", "id": 1, "result": {"g": 2}}
    entries = _entries((True, request), (False, response), (False, _status(2)))
    assert compare(Path("s.jsonl"), entries, [_status(2), response]).ok


def test_changed_message_is_named_with_its_line_and_request() -> None:
    """The diff names the recording line, the id and the method it answered."""
    request = {"jsonrpc": "2.0", "id": 1, "method": "setEnvironment", "params": {}}
    entries = _entries(
        (True, request), (False, {"jsonrpc": "2.0", "id": 1, "result": 2})
    )
    changed = {"jsonrpc": "2.0", "id": 1, "result": 3}
    outcome = compare(Path("s.jsonl"), entries, [changed])
    assert not outcome.ok
    assert "changed s.jsonl:2 (response id=1 to setEnvironment)" in outcome.report
    assert '-  "result": 2' in outcome.report and '+  "result": 3' in outcome.report


def test_missing_and_unexpected_notifications_are_reported() -> None:
    """Notifications are compared per method in order; extra and absent ones show."""
    entries = _entries((False, _status(1)))
    outcome = compare(Path("s.jsonl"), entries, [_status(1), _status(2)])
    assert "unexpected notification environmentStatus #2" in outcome.report
    outcome = compare(Path("s.jsonl"), _entries((False, _status(1))), [])
    assert "missing s.jsonl:1 (notification environmentStatus #1)" in outcome.report


def test_recording_with_a_bad_line_names_it(tmp_path: Path) -> None:
    """A malformed recording is refused with its path and line number."""
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"direction": "client->server", "t": 1, "message": {}}\nnot json\n'
    )
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        load_recording(path)


def test_readme_lists_the_rules_as_in_code() -> None:
    """ide-contract/README.md shows exactly the normalisation rules replay applies."""
    readme = (ROOT / "ide-contract" / "README.md").read_text(encoding="utf-8")
    assert rules_table() in readme, "paste recording.rules_table() into the README"
