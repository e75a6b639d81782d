"""Recorded sessions in tests: replay one in a line, record them all in one command.

``assert_replays(path)`` starts a fresh ``kai-rpc serve``, replays the recording and
fails the test with the replay's per-message diff. ``python -m tests.support.replay
NAME...`` re-records sessions: the reference vscode-jsonrpc client runs scenario NAME
against ``kai-rpc serve`` wrapped in the recording proxy (this is what ``make
sessions`` runs).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from kai_rpc.recording import ReplayOutcome, replay
from tests.support.environ import clean_environ

ROOT = Path(__file__).resolve().parents[2]
SESSIONS = ROOT / "tests" / "sessions"
CLIENT = ROOT / "ide-contract" / "client" / "kai-client.js"
SERVE = [sys.executable, "-m", "kai_rpc", "serve"]
RECORDED_SCENARIOS = (
    "startup",
    "proxy-change",
    "rejected-key",
    "worker-crash",
    "bad-request",
)


def session_environ() -> dict[str, str]:
    """The server's environment when recording and replaying: no proxy or CA
    variables, and no user policy file (~/.config/kai-rpc/policy.toml)."""
    return clean_environ({"XDG_CONFIG_HOME": str(ROOT / "tests" / "sessions" / "none")})


def replay_session(
    path: Path, command: Sequence[str] | None = None, timeout: float = 30.0
) -> ReplayOutcome:
    """Replay ``path`` against a fresh server started from the repository root."""
    return asyncio.run(
        replay(path, command or SERVE, timeout, cwd=ROOT, env=session_environ())
    )


def assert_replays(path: Path | str, command: Sequence[str] | None = None) -> None:
    """Fail the calling test, with the diff, unless ``path`` replays green."""
    outcome = replay_session(Path(path), command)
    if not outcome.ok:
        pytest.fail(f"replay of {path} differs:\n{outcome.report}", pytrace=False)


def record_session(name: str, out_dir: Path = SESSIONS) -> Path:
    """Run the client's scenario ``name`` through ``kai-rpc record``; the file."""
    out = out_dir / f"{name}.jsonl"
    # The leading "--" keeps kai-rpc's own parser from reading --out as its option.
    recorder = [sys.executable, "-m", "kai_rpc", "record", "--", "--out", str(out)]
    command = ["node", str(CLIENT), "--scenario", name, "--", *recorder, "--", *SERVE]
    subprocess.run(command, cwd=ROOT, env=session_environ(), check=True, timeout=120)
    return out


if __name__ == "__main__":
    for scenario in sys.argv[1:] or RECORDED_SCENARIOS:
        print(f"recorded {record_session(scenario).relative_to(ROOT)}")
