"""``kai-rpc demo``, which ``make run`` shows, run for real so it cannot rot."""

from __future__ import annotations

import sys

from tests.support.environ import run_command


def test_demo_shows_the_proxied_then_the_direct_route() -> None:
    """The demo's chat goes through the sidecar, then after the NO_PROXY change it
    goes direct, the report says so, no secret is printed, and it exits cleanly."""
    result = run_command([sys.executable, "-m", "kai_rpc", "demo"], timeout=240)
    out = result.stdout
    assert result.returncode == 0, result.stderr[-3000:]
    forwarded = [
        line.rsplit(" ", 1)[1]
        for line in out.splitlines()
        if line.startswith("requests the sidecar forwarded")
    ]
    assert forwarded == ["1", "0"]
    assert "direct (NO_PROXY '127.0.0.2')" in out
    assert "issued by 'O=mitmproxy,CN=mitmproxy'" in out
    assert "LD_PRELOAD         rejected" in out
    assert "kai-rpc serve exited with code 0" in out
    assert "sk-demo-this-value" not in out + result.stderr
