"""Shared fixtures. Fixture modules live in tests/support and are registered here."""

from __future__ import annotations

import os

import pytest

from tests.support.environ import is_cleared

pytest_plugins = ["tests.support.network_fixtures"]


@pytest.fixture(autouse=True)
def _clear_network_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees this machine's proxy or CA variables, in-process or in children."""
    for name in list(os.environ):
        if is_cleared(name):
            monkeypatch.delenv(name, raising=False)
