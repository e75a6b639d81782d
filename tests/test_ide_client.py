"""The reference vscode-jsonrpc client, typed by the generated contract, holds its
conversation with the real kai-rpc serve."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.environ import run_command

ROOT = Path(__file__).resolve().parent.parent
IDE_CONTRACT = ROOT / "ide-contract"
CLIENT = IDE_CONTRACT / "client" / "kai-client.js"
TSC = IDE_CONTRACT / "node_modules" / ".bin" / "tsc"
SERVE = [sys.executable, "-m", "kai_rpc", "serve"]


def _client(*args: str) -> subprocess.CompletedProcess[str]:
    return run_command(["node", str(CLIENT), *args])


def test_client_typechecks_against_the_generated_declarations() -> None:
    """tsc accepts the client (checkJs, strict) against contract.d.ts and
    methods.ts, so a renamed method or field breaks the build, not the IDE."""
    done = subprocess.run(
        [str(TSC), "-p", str(IDE_CONTRACT / "tsconfig.json")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_conversation_against_the_real_server() -> None:
    """initialize with an env map, setEnvironment, getEnvironmentStatus, echo,
    environmentStatus notifications, shutdown and exit with code 0 all match."""
    done = _client("--", *SERVE)
    assert done.returncode == 0, done.stderr
    assert "scenario conversation passed" in done.stderr


def test_client_fails_clearly_when_the_server_misbehaves() -> None:
    """A server that exits at once makes the client exit 1 naming the scenario."""
    done = _client("--timeout", "5", "--", sys.executable, "-c", "pass")
    assert done.returncode == 1
    assert "kai-client: scenario conversation failed:" in done.stderr


def test_client_rejects_an_unknown_scenario() -> None:
    """A usage error lists the scenarios and exits 2."""
    done = _client("--scenario", "nope", "--", *SERVE)
    assert done.returncode == 2
    assert "worker-crash" in done.stderr
