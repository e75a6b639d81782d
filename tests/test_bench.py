"""The benchmark harness runs: ``python -m bench --quick`` writes its JSON (no
figure is judged here; benchmarks are not tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.environ import clean_environ

ROOT = Path(__file__).resolve().parent.parent


def test_quick_bench_writes_valid_json(tmp_path: Path) -> None:
    """The quick start-up and forwarding runs finish and write every figure with
    its ratio and target."""
    output = tmp_path / "bench.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--output",
            str(output),
            "--only",
            "startup",
            "--only",
            "forwarding",
        ],
        cwd=ROOT,
        env=clean_environ(),
        check=True,
        capture_output=True,
        timeout=110,
    )
    results = json.loads(output.read_text())
    names = [figure["name"] for figure in results["figures"]]
    assert len(names) == 3
    assert all(figure["target"] for figure in results["figures"])
    assert all(figure["ratio"] > 0 for figure in results["figures"])
