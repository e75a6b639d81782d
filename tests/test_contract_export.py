"""The committed IDE contract is exactly what the wire models generate."""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from kai_rpc import contract
from kai_rpc.contract_export import (
    GENERATED_FILES,
    METHODS,
    build_methods,
    build_schema,
    main,
)

ROOT = Path(__file__).resolve().parent.parent
IDE_CONTRACT = ROOT / "ide-contract"
JSON2TS = IDE_CONTRACT / "node_modules" / ".bin" / "json2ts"
# Constants of kai_rpc.contract that are not methods an IDE sees.
NOT_IDE_METHODS = {"DEFAULT_ENDPOINT", "WORKER_CONFIGURE"}


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not JSON2TS.is_file():
        pytest.fail(
            f"{JSON2TS} is missing: run `make install` (npm ci in ide-contract)"
        )
    out = tmp_path_factory.mktemp("ide-contract")
    assert main([str(out), "--json2ts", str(JSON2TS)]) == 0
    return out


@pytest.mark.parametrize("relative", GENERATED_FILES, ids=str)
def test_committed_contract_matches_models(regenerated: Path, relative: Path) -> None:
    """A model changed without `make contract` fails here, naming the stale file."""
    committed = IDE_CONTRACT / relative
    fresh = (regenerated / relative).read_text(encoding="utf-8")
    old = committed.read_text(encoding="utf-8") if committed.exists() else ""
    if old != fresh:
        diff = difflib.unified_diff(
            old.splitlines(),
            fresh.splitlines(),
            f"committed ide-contract/{relative}",
            "generated from kai_rpc/contract.py",
            lineterm="",
        )
        shown = "\n".join(list(diff)[:60])
        pytest.fail(f"ide-contract/{relative} is stale: run `make contract`\n{shown}")


def test_generation_is_deterministic() -> None:
    """Two generations in one process give byte-identical schema and constants."""
    first = json.dumps([build_schema(), build_methods()], sort_keys=True)
    second = json.dumps([build_schema(), build_methods()], sort_keys=True)
    assert first == second


def test_every_ide_method_is_in_the_table() -> None:
    """Each method-name constant in kai_rpc.contract appears in the exported table."""
    constants = {
        name: value
        for name, value in vars(contract).items()
        if name.isupper() and isinstance(value, str) and name not in NOT_IDE_METHODS
    }
    table = {spec.constant: spec.name for spec in METHODS}
    assert table == constants


def _described(schema: dict[str, Any]) -> list[str]:
    missing = []
    for model, body in schema["$defs"].items():
        if "description" not in body:
            missing.append(model)
        for field, spec in body.get("properties", {}).items():
            if "description" not in spec:
                missing.append(f"{model}.{field}")
    return missing


def test_every_model_and_field_has_a_description() -> None:
    """Extension authors get a description for every model and every field."""
    assert _described(build_schema()) == []


def test_schema_uses_wire_names() -> None:
    """Field names in the schema are the camelCase names on the wire."""
    report = build_schema()["$defs"]["EnvironmentReport"]["properties"]
    status = build_schema()["$defs"]["WorkerStatus"]["properties"]
    assert "lastError" in status
    assert {"generation", "worker", "variables", "proxy", "tls"} <= set(report)


def test_readme_names_every_method_and_error_code() -> None:
    """The hand-written README covers each method and each error code with its
    number, so it cannot silently fall behind the models."""
    readme = (IDE_CONTRACT / "README.md").read_text(encoding="utf-8")
    missing = [f"`{spec.name}`" for spec in METHODS if f"`{spec.name}`" not in readme]
    for code in contract.ErrorCode:
        if not re.search(
            rf"`{code.name}`.*{int(code)}|{int(code)}.*`{code.name}`", readme
        ):
            missing.append(f"{code.name} ({int(code)})")
    assert missing == [], f"ide-contract/README.md does not mention: {missing}"
