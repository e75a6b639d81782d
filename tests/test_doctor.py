"""``kai-rpc doctor``: env files, the text and JSON reports, and probes."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from kai_rpc import doctor, inspection
from kai_rpc.local_llm import FakeLlm


def _env_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kai.env"
    path.write_text(text)
    return path


def test_env_file_lines_are_parsed(tmp_path: Path) -> None:
    """Comments, blank lines, export and matching quotes are handled."""
    path = _env_file(
        tmp_path,
        "# proxy\n\nexport HTTPS_PROXY='http://p:1'\nNO_PROXY=\"a,b\"\nX=1=2\n",
    )

    assert doctor.read_env_file(path) == {
        "HTTPS_PROXY": "http://p:1",
        "NO_PROXY": "a,b",
        "X": "1=2",
    }


def test_bad_env_file_line_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A line without '=' is refused with its line number."""
    path = _env_file(tmp_path, "HTTPS_PROXY\n")

    assert doctor.main(["--env-file", str(path)]) == 2
    assert "kai.env:1" in capsys.readouterr().err


def test_json_is_the_worker_inspection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json prints the same WorkerInspection the worker reports, redacted."""
    path = _env_file(
        tmp_path,
        "HTTPS_PROXY=http://bob:pw-very-secret@proxy.corp:3128\nPYTHONHTTPSVERIFY=0\n",
    )

    code = doctor.main(["--env-file", str(path), "--json", "--endpoint", "https://x/"])
    out = capsys.readouterr().out
    report = json.loads(out)

    assert code == 0
    assert report["proxy"]["routes"][0]["proxySource"] == "HTTPS_PROXY"
    assert inspection.PYTHONHTTPSVERIFY_IGNORED in {
        w["code"] for w in report["warnings"]
    }
    assert "pw-very-secret" not in out


def test_text_report_shows_routes_tls_and_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table names the LLM client's route, each library's and the warnings."""
    path = _env_file(tmp_path, "HTTPS_PROXY=http://proxy.corp:3128\nNO_PROXY=[::1]\n")

    doctor.main(["--env-file", str(path), "--endpoint", "https://llm.example/v1"])
    out = capsys.readouterr().out

    assert "LLM client  httpx2" in out
    assert "proxy http://proxy.corp:3128 from HTTPS_PROXY" in out
    assert "ERROR (see warnings)" in out
    assert f"[{inspection.NO_PROXY_BREAKS_HTTPX}]" in out


def test_probe_succeeds_against_the_fake_llm(
    tmp_path: Path,
    fake_llm: FakeLlm,
    test_ca_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--probe makes a real request and exits 0 when it works."""
    path = _env_file(tmp_path, f"SSL_CERT_FILE={test_ca_file}\n")

    code = doctor.main(["--env-file", str(path), "--endpoint", fake_llm.url, "--probe"])

    assert code == 0
    assert "via direct: ok, HTTP 200" in capsys.readouterr().out
    assert fake_llm.requests[0].method == "GET"


def test_failed_probe_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A probe that fails makes the doctor exit 1 and prints the kind."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))
        port = sock.getsockname()[1]
    path = _env_file(tmp_path, "")

    code = doctor.main(
        ["--env-file", str(path), "--endpoint", f"https://127.0.0.2:{port}/", "--probe"]
    )

    assert code == 1
    assert "FAILED (refused)" in capsys.readouterr().out
