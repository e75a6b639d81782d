"""Tests of kai_rpc.policy: the policy file, layer merging and evaluation."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kai_rpc.contract import VariableEntry
from kai_rpc.exceptions import PolicyFileError
from kai_rpc.policy import (
    BUILTIN_DENY,
    INSECURE_TLS_VARIABLES,
    MAX_NAME_BYTES,
    MAX_TOTAL_BYTES,
    MAX_VALUE_BYTES,
    MAX_VARIABLES,
    REPORTED_INHERITED,
    Evaluation,
    Policy,
    evaluate,
    load_policy,
    merge_layer,
    policy_path,
)
from kai_rpc.redact import REDACTED

BASE = {"PATH": "/usr/bin:/bin", "HOME": "/home/dev", "LANG": "C.UTF-8"}


def run(
    layer: Mapping[str, Any],
    policy: Policy | None = None,
    base: Mapping[str, str] = BASE,
    *,
    case_insensitive: bool = False,
) -> Evaluation:
    return evaluate(base, layer, policy or Policy(), case_insensitive=case_insensitive)


def entry(evaluation: Evaluation, name: str) -> VariableEntry:
    """The one non-inherited entry named ``name``."""
    found = [
        e for e in evaluation.variables if e.name == name and e.status != "inherited"
    ]
    assert len(found) == 1, found
    return found[0]


def example(pattern: str) -> str:
    """A concrete variable name matched by a deny pattern."""
    return pattern.replace("*", "X").replace("?", "X")


class TestApplied:
    def test_set_on_top_of_base(self) -> None:
        """An IDE value is applied on top of the inherited environment."""
        result = run({"HTTPS_PROXY": "http://proxy:3128"})
        assert result.env == {**BASE, "HTTPS_PROXY": "http://proxy:3128"}
        applied = entry(result, "HTTPS_PROXY")
        assert (applied.status, applied.source) == ("applied", "ide")
        assert applied.value == "http://proxy:3128"
        assert applied.reason is None

    def test_overrides_base(self) -> None:
        """An IDE value replaces the inherited value of the same name."""
        result = run({"LANG": "de_DE.UTF-8"})
        assert result.env["LANG"] == "de_DE.UTF-8"

    def test_base_reaches_worker(self) -> None:
        """PATH, HOME and the locale of the bridge reach the worker untouched."""
        assert run({}).env == BASE

    def test_inputs_not_modified(self) -> None:
        """evaluate copies; neither base nor layer is changed."""
        base = dict(BASE)
        layer: dict[str, Any] = {"LANG": None, "X": "1"}
        run(layer, base=base)
        assert base == BASE
        assert layer == {"LANG": None, "X": "1"}

    @pytest.mark.parametrize(
        "name",
        [
            "lower_case",
            "_LEADING",
            "with.dots",
            "with-dash",
            "with space",
            "Ünïcode",
            "1STARTS_WITH_DIGIT",
            "a" * MAX_NAME_BYTES,
        ],
    )
    def test_legal_names_pass(self, name: str) -> None:
        """Every name execve accepts passes byte for byte."""
        result = run({name: "v"})
        assert entry(result, name).status == "applied"
        assert result.env[name] == "v"

    @pytest.mark.parametrize("value", ["", " ", "a=b", "x" * MAX_VALUE_BYTES, "é\n"])
    def test_legal_values_pass(self, value: str) -> None:
        """Empty, '='-containing, multi-line and maximum-size values are applied."""
        assert run({"V": value}).env["V"] == value

    def test_secret_value_redacted(self) -> None:
        """A secret-shaped name's applied value is reported redacted."""
        result = run({"OPENAI_API_KEY": "sk-abcdef"})
        assert result.env["OPENAI_API_KEY"] == "sk-abcdef"
        assert entry(result, "OPENAI_API_KEY").value == REDACTED

    def test_proxy_password_redacted(self) -> None:
        """A proxy URL is reported without its password, and applied with it."""
        result = run({"HTTPS_PROXY": "http://u:pw12@proxy:3128"})
        assert result.env["HTTPS_PROXY"] == "http://u:pw12@proxy:3128"
        assert entry(result, "HTTPS_PROXY").value == f"http://u:{REDACTED}@proxy:3128"

    def test_policy_secret_patterns(self) -> None:
        """The policy's secret patterns redact more names."""
        result = run({"CORP_SIG": "abcdef"}, Policy(secret=["*_SIG"]))
        assert entry(result, "CORP_SIG").value == REDACTED

    def test_secret_value_under_other_name(self) -> None:
        """A secret value sent again under a plain name is still redacted there."""
        result = run({"OPENAI_API_KEY": "sk-shared-1", "COPY": "x sk-shared-1 y"})
        assert entry(result, "COPY").value == f"x {REDACTED} y"

    def test_entry_order(self) -> None:
        """Entries follow the IDE's order, then locked, then inherited."""
        result = run(
            {"B": "1", "A": "2"},
            Policy(locked={"L": "x"}),
            base={"HTTP_PROXY": "http://p:1"},
        )
        assert [e.name for e in result.variables] == ["B", "A", "L", "HTTP_PROXY"]


class TestUnset:
    def test_unset_inherited(self) -> None:
        """null removes an inherited variable from the worker's environment."""
        result = run({"LANG": None})
        assert "LANG" not in result.env
        unset = entry(result, "LANG")
        assert (unset.status, unset.source, unset.value) == ("unset", "ide", None)
        assert unset.reason is None

    def test_unset_absent(self) -> None:
        """null for a variable nobody set is reported unset and changes nothing."""
        result = run({"NOT_THERE": None})
        assert entry(result, "NOT_THERE").status == "unset"
        assert result.env == BASE

    def test_unset_hides_inherited_proxy(self) -> None:
        """An unset proxy variable is not also reported as inherited."""
        result = run({"HTTP_PROXY": None}, base={"HTTP_PROXY": "http://p:1"})
        assert [e.status for e in result.variables] == ["unset"]
        assert result.env == {}


class TestRejectedName:
    @pytest.mark.parametrize(
        ("name", "words"),
        [
            ("", "empty name"),
            ("A=B", "'='"),
            ("=C:", "'='"),
            ("A\0B", "NUL"),
            ("A\ud800", "lone surrogate"),
            ("a" * (MAX_NAME_BYTES + 1), f"limit of {MAX_NAME_BYTES}"),
            ("é" * (MAX_NAME_BYTES // 2 + 1), f"limit of {MAX_NAME_BYTES}"),
        ],
    )
    def test_invalid_names(self, name: str, words: str) -> None:
        """An invalid name is rejected with a reason naming the problem."""
        result = run({name: "v"})
        rejected = entry(result, name)
        assert (rejected.status, rejected.source, rejected.value) == (
            "rejected",
            "ide",
            None,
        )
        assert rejected.reason is not None and words in rejected.reason
        assert name not in result.env

    def test_non_string_name(self) -> None:
        """A non-string key from a Python caller is rejected, not coerced."""
        result = run({1: "v"})  # type: ignore[dict-item]
        assert [(e.name, e.status) for e in result.variables] == [("1", "rejected")]
        assert "1" not in result.env

    def test_invalid_name_with_null(self) -> None:
        """An invalid name is rejected even when its value is null."""
        assert entry(run({"A=B": None}), "A=B").status == "rejected"


class TestRejectedValue:
    @pytest.mark.parametrize(
        ("value", "json_type"),
        [
            (1, "number"),
            (1.5, "number"),
            (True, "boolean"),
            (False, "boolean"),
            ({"a": "b"}, "object"),
            (["a"], "array"),
        ],
    )
    def test_non_string(self, value: Any, json_type: str) -> None:
        """A non-string value is rejected naming its JSON type, with value None."""
        result = run({"HTTP_PROXY": value})
        rejected = entry(result, "HTTP_PROXY")
        assert (rejected.status, rejected.value) == ("rejected", None)
        assert rejected.reason is not None
        assert f"JSON {json_type}" in rejected.reason
        assert "send a string" in rejected.reason
        assert "HTTP_PROXY" not in result.env

    def test_non_string_secret_not_shown(self) -> None:
        """A secret sent as a number does not appear in the report."""
        result = run({"PIN_PASSWORD": 98765432})
        assert "98765432" not in _text(result)

    @pytest.mark.parametrize(
        ("value", "words"),
        [
            ("a\0b", "NUL"),
            ("x" * (MAX_VALUE_BYTES + 1), f"limit of {MAX_VALUE_BYTES}"),
            ("é" * (MAX_VALUE_BYTES // 2 + 1), f"limit of {MAX_VALUE_BYTES}"),
            ("\udcff", "lone surrogate"),
        ],
    )
    def test_bad_strings(self, value: str, words: str) -> None:
        """A value with NUL, over the limit, or not Unicode is rejected."""
        result = run({"V": value})
        rejected = entry(result, "V")
        assert rejected.status == "rejected"
        assert rejected.reason is not None and words in rejected.reason
        assert "V" not in result.env

    def test_base_kept_when_rejected(self) -> None:
        """A rejected value leaves the inherited one in place."""
        assert run({"LANG": 5}).env["LANG"] == "C.UTF-8"


class TestDeny:
    @pytest.mark.parametrize("pattern", sorted(BUILTIN_DENY))
    def test_builtin(self, pattern: str) -> None:
        """Each built-in pattern rejects a matching name with its pattern and why."""
        name = example(pattern)
        result = run({name: "value"}, base={})
        rejected = entry(result, name)
        assert (rejected.status, rejected.source) == ("rejected", "ide")
        assert rejected.reason is not None
        assert repr(pattern) in rejected.reason
        assert BUILTIN_DENY[pattern] in rejected.reason
        assert "remove it from the env map" in rejected.reason
        assert name not in result.env

    @pytest.mark.parametrize("pattern", sorted(BUILTIN_DENY))
    def test_builtin_unset_rejected(self, pattern: str) -> None:
        """A denied name sent as null is rejected and the inherited value kept."""
        name = example(pattern)
        result = run({name: None}, base={name: "inherited"})
        assert entry(result, name).status == "rejected"
        assert result.env[name] == "inherited"

    @pytest.mark.parametrize(
        "name",
        [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "LD_AUDIT",
            "DYLD_INSERT_LIBRARIES",
            "PYTHONPATH",
            "PYTHONHOME",
            "PYTHONSTARTUP",
            "PYTHONINSPECT",
            "PYTHONUSERBASE",
            "PYTHONEXECUTABLE",
            "BASH_ENV",
            "ENV",
            "PATH",
            "IFS",
            "PS4",
            "NODE_OPTIONS",
            "JAVA_TOOL_OPTIONS",
            "_JAVA_OPTIONS",
            "JDK_JAVA_OPTIONS",
            "PERL5OPT",
            "RUBYOPT",
            "GIT_SSH_COMMAND",
            "GIT_EXEC_PATH",
            "GIT_CONFIG_COUNT",
            "GIT_CONFIG_KEY_0",
            "BASH_FUNC_ls%%",
            "SSLKEYLOGFILE",
            "KAI_RPC_POLICY",
        ],
    )
    def test_required_names(self, name: str) -> None:
        """Every name the project requires denied is denied."""
        assert entry(run({name: "x"}), name).status == "rejected"

    def test_example_reason(self) -> None:
        """LD_PRELOAD's reason explains the loader and the fix."""
        reason = entry(run({"LD_PRELOAD": "/tmp/x.so"}), "LD_PRELOAD").reason
        assert reason is not None
        assert reason.startswith("LD_PRELOAD is denied: LD_* changes which code")
        assert reason.endswith("remove it from the env map.")

    def test_policy_deny(self) -> None:
        """A policy deny pattern rejects and names the pattern."""
        result = run({"AWS_REGION": "x"}, Policy(deny=["AWS_*"]))
        reason = entry(result, "AWS_REGION").reason
        assert reason is not None and "'AWS_*'" in reason

    def test_deny_beats_allow(self) -> None:
        """A name both allowed and denied is rejected."""
        result = run({"AWS_REGION": "x"}, Policy(allow=["AWS_*"], deny=["AWS_REGION"]))
        assert entry(result, "AWS_REGION").status == "rejected"

    def test_builtin_beats_allow(self) -> None:
        """The built-in deny list cannot be allowed away."""
        result = run({"LD_PRELOAD": "x"}, Policy(allow=["*"]))
        assert entry(result, "LD_PRELOAD").status == "rejected"

    def test_base_not_subject_to_deny(self) -> None:
        """The bridge's own environment is trusted: its denied names still pass."""
        base = {"LD_LIBRARY_PATH": "/opt/lib", "AWS_REGION": "eu"}
        assert run({}, Policy(deny=["AWS_*"]), base=base).env == base

    @pytest.mark.parametrize("name", ["ld_preload", "Path", "pythonPath", "Bash_Env"])
    def test_case_variants_posix(self, name: str) -> None:
        """On POSIX, names differing in case are other variables and pass."""
        assert entry(run({name: "x"}), name).status == "applied"

    @pytest.mark.parametrize("name", ["ld_preload", "Path", "pythonPath", "Bash_Env"])
    def test_case_variants_windows(self, name: str) -> None:
        """Case-insensitively, no case variant gets around the deny list."""
        result = run({name: "x"}, case_insensitive=True)
        assert entry(result, name).status == "rejected"
        assert result.env["PATH"] == BASE["PATH"]

    def test_policy_deny_case_windows(self) -> None:
        """Policy deny patterns match any case when case-insensitive."""
        policy = Policy(deny=["AWS_*"])
        assert entry(run({"aws_x": "1"}, policy), "aws_x").status == "applied"
        result = run({"aws_x": "1"}, policy, case_insensitive=True)
        assert entry(result, "aws_x").status == "rejected"


class TestInsecureTls:
    def test_allowed_by_default(self) -> None:
        """Without a policy, the IDE may set KAI_TLS_VERIFY."""
        assert entry(run({"KAI_TLS_VERIFY": "0"}), "KAI_TLS_VERIFY").status == "applied"

    @pytest.mark.parametrize("name", sorted(INSECURE_TLS_VARIABLES))
    def test_forbidden_by_policy(self, name: str) -> None:
        """allow_insecure_tls = false rejects each TLS-off switch, citing the policy."""
        result = run({name: "0"}, Policy(allow_insecure_tls=False))
        rejected = entry(result, name)
        assert rejected.status == "rejected"
        assert rejected.reason is not None
        assert "policy file forbids" in rejected.reason
        assert "allow_insecure_tls = false" in rejected.reason
        assert name not in result.env

    def test_lowercase_forbidden_everywhere(self) -> None:
        """A lowercase variant is rejected even on POSIX: readers differ in case."""
        result = run({"kai_tls_verify": "0"}, Policy(allow_insecure_tls=False))
        assert entry(result, "kai_tls_verify").status == "rejected"

    def test_unset_allowed(self) -> None:
        """Unsetting KAI_TLS_VERIFY cannot weaken TLS and is allowed."""
        policy = Policy(allow_insecure_tls=False)
        result = run({"KAI_TLS_VERIFY": None}, policy, base={"KAI_TLS_VERIFY": "0"})
        assert entry(result, "KAI_TLS_VERIFY").status == "unset"
        assert result.env == {}

    def test_locked_wins(self) -> None:
        """A locked KAI_TLS_VERIFY comes from the policy, not the IDE."""
        policy = Policy(allow_insecure_tls=False, locked={"KAI_TLS_VERIFY": "1"})
        result = run({"KAI_TLS_VERIFY": "0"}, policy)
        assert entry(result, "KAI_TLS_VERIFY").status == "locked"
        assert result.env["KAI_TLS_VERIFY"] == "1"


class TestAllowList:
    def test_not_allowed(self) -> None:
        """In allow-list mode, an unmatched name is rejected with a reason."""
        result = run({"FOO": "1"}, Policy(allow=["HTTP*_PROXY"]))
        rejected = entry(result, "FOO")
        assert rejected.status == "rejected"
        assert rejected.reason is not None and "allow list" in rejected.reason

    def test_allowed(self) -> None:
        """In allow-list mode, a matched name is applied."""
        result = run({"HTTPS_PROXY": "http://p:1"}, Policy(allow=["HTTP*_PROXY"]))
        assert entry(result, "HTTPS_PROXY").status == "applied"

    def test_unset_needs_allow_too(self) -> None:
        """In allow-list mode, unsetting an unmatched name is rejected."""
        result = run({"LANG": None}, Policy(allow=["HTTP*_PROXY"]))
        assert entry(result, "LANG").status == "rejected"
        assert result.env["LANG"] == "C.UTF-8"

    def test_case(self) -> None:
        """Allow patterns are exact-case on POSIX and any-case on Windows."""
        policy = Policy(allow=["HTTPS_PROXY"])
        assert entry(run({"https_proxy": "x"}, policy), "https_proxy").status == (
            "rejected"
        )
        result = run({"https_proxy": "x"}, policy, case_insensitive=True)
        assert entry(result, "https_proxy").status == "applied"

    def test_empty_allow_list_allows_all(self) -> None:
        """An empty allow list does not switch allow-list mode on."""
        assert entry(run({"ANY": "1"}, Policy(allow=[])), "ANY").status == "applied"


class TestLocked:
    def test_locked_not_sent(self) -> None:
        """A locked variable gets an entry and its value even if the IDE is silent."""
        result = run({}, Policy(locked={"NO_PROXY": "localhost"}))
        locked = entry(result, "NO_PROXY")
        assert (locked.status, locked.source, locked.value) == (
            "locked",
            "policy",
            "localhost",
        )
        assert locked.reason is not None
        assert result.env["NO_PROXY"] == "localhost"

    @pytest.mark.parametrize("value", ["other", None, 5])
    def test_locked_ignores_ide(self, value: Any) -> None:
        """A locked name ignores the IDE's set, unset or malformed value."""
        result = run({"NO_PROXY": value}, Policy(locked={"NO_PROXY": "localhost"}))
        locked = entry(result, "NO_PROXY")
        assert (locked.status, locked.source, locked.value) == (
            "locked",
            "policy",
            "localhost",
        ) or (value == 5 and locked.status == "rejected")
        assert result.env["NO_PROXY"] == "localhost"
        if value != 5:
            assert locked.reason is not None and "ignored" in locked.reason

    def test_locked_beats_base(self) -> None:
        """A locked value replaces the inherited one and is not reported inherited."""
        result = run(
            {},
            Policy(locked={"HTTP_PROXY": "http://corp:1"}),
            base={"HTTP_PROXY": "http://home:1"},
        )
        assert result.env == {"HTTP_PROXY": "http://corp:1"}
        assert [e.status for e in result.variables] == ["locked"]

    def test_locked_denied_name(self) -> None:
        """The policy may lock a name the IDE may not send, such as PATH."""
        result = run({"PATH": "/evil"}, Policy(locked={"PATH": "/safe"}))
        assert result.env["PATH"] == "/safe"
        assert entry(result, "PATH").status == "locked"

    def test_locked_secret_redacted(self) -> None:
        """A locked secret is applied but reported redacted."""
        result = run({}, Policy(locked={"OPENAI_API_KEY": "sk-corp-key"}))
        assert result.env["OPENAI_API_KEY"] == "sk-corp-key"
        assert entry(result, "OPENAI_API_KEY").value == REDACTED
        assert "sk-corp-key" not in _text(result)

    def test_locked_case_windows(self) -> None:
        """Case-insensitively, any case variant of a locked name is locked."""
        policy = Policy(locked={"NO_PROXY": "localhost"})
        result = run({"no_proxy": "*"}, policy, case_insensitive=True)
        assert entry(result, "no_proxy").status == "locked"
        assert result.env == {**BASE, "NO_PROXY": "localhost"}
        posix = run({"no_proxy": "*"}, policy)
        assert entry(posix, "no_proxy").status == "applied"

    def test_locked_survives_replace(self) -> None:
        """Replacing the IDE layer never drops a locked variable."""
        policy = Policy(locked={"NO_PROXY": "localhost"})
        layer = merge_layer({"NO_PROXY": "x", "A": "1"}, {"B": "2"}, replace=True)
        result = run(layer, policy)
        assert result.env["NO_PROXY"] == "localhost"
        assert "A" not in result.env


class TestInherited:
    @pytest.mark.parametrize("name", sorted(REPORTED_INHERITED))
    def test_reported(self, name: str) -> None:
        """Each proxy/TLS variable of the base is reported inherited, in any case."""
        for variant in (name, name.upper()):
            result = run({}, base={variant: "http://u:pw12@p:1"})
            (inherited,) = result.variables
            assert (inherited.name, inherited.status, inherited.source) == (
                variant,
                "inherited",
                "inherited",
            )
            assert inherited.value == f"http://u:{REDACTED}@p:1"

    def test_not_reported_when_overridden(self) -> None:
        """An inherited proxy variable the IDE sets is reported once, as applied."""
        result = run({"HTTPS_PROXY": "http://a:1"}, base={"HTTPS_PROXY": "http://b:1"})
        assert [e.status for e in result.variables] == ["applied"]

    def test_reported_when_ide_value_rejected(self) -> None:
        """When the IDE's value is rejected, the inherited one is still reported."""
        result = run({"HTTPS_PROXY": 3}, base={"HTTPS_PROXY": "http://b:1"})
        assert [e.status for e in result.variables] == ["rejected", "inherited"]

    def test_other_case_is_another_variable_on_posix(self) -> None:
        """On POSIX, https_proxy from the IDE does not override HTTPS_PROXY."""
        result = run({"https_proxy": "http://a:1"}, base={"HTTPS_PROXY": "http://b:1"})
        assert [e.status for e in result.variables] == ["applied", "inherited"]
        assert result.env == {"https_proxy": "http://a:1", "HTTPS_PROXY": "http://b:1"}

    def test_other_case_overrides_on_windows(self) -> None:
        """Case-insensitively, https_proxy replaces HTTPS_PROXY: one variable."""
        result = run(
            {"https_proxy": "http://a:1"},
            base={"HTTPS_PROXY": "http://b:1"},
            case_insensitive=True,
        )
        assert [e.status for e in result.variables] == ["applied"]
        assert result.env == {"https_proxy": "http://a:1"}

    def test_non_proxy_not_reported(self) -> None:
        """Ordinary inherited variables (PATH, HOME) get no entry."""
        assert run({}).variables == []

    def test_inherited_secret_redacted(self) -> None:
        """An inherited secret reused in an IDE value is redacted there."""
        base = {"OPENAI_API_KEY": "sk-inherited-1"}
        result = run({"NOTE": "sk-inherited-1"}, base=base)
        assert entry(result, "NOTE").value == REDACTED


class TestLimits:
    def test_ten_thousand_keys(self) -> None:
        """A 10,000-key map of short values is applied whole."""
        layer = {f"VAR_{i:05d}": f"value-{i}" for i in range(10_000)}
        result = run(layer)
        assert all(e.status == "applied" for e in result.variables)
        assert len(result.variables) == 10_000
        assert len(result.env) == 10_000 + len(BASE)

    def test_too_many_variables(self) -> None:
        """Keys past MAX_VARIABLES are rejected with that reason; the rest apply."""
        layer = {f"V{i}": "" for i in range(MAX_VARIABLES + 5)}
        result = run(layer, base={})
        statuses = [e.status for e in result.variables]
        assert statuses.count("applied") == MAX_VARIABLES
        assert statuses.count("rejected") == 5
        assert len(result.env) == MAX_VARIABLES
        last = result.variables[-1]
        assert last.reason is not None and str(MAX_VARIABLES) in last.reason

    def test_total_bytes_edge(self) -> None:
        """The environment may reach MAX_TOTAL_BYTES exactly, but not one byte more."""
        # Each "Vnn=<value>\0" costs len(name) + 1 + len(value) + 1 bytes.
        chunk = MAX_VALUE_BYTES
        layer: dict[str, str] = {}
        used = 0
        index = 0
        while used + 5 + chunk <= MAX_TOTAL_BYTES:
            layer[f"V{index:02d}"] = "x" * chunk
            used += 5 + chunk
            index += 1
        rest = MAX_TOTAL_BYTES - used - 5
        layer["LST"] = "y" * rest
        layer["ONE"] = ""
        result = run(layer, base={})
        assert entry(result, "LST").status == "applied"
        over = entry(result, "ONE")
        assert over.status == "rejected"
        assert over.reason is not None and str(MAX_TOTAL_BYTES) in over.reason

    def test_unset_after_full_frees_room(self) -> None:
        """Replacing a value counts only the difference in size."""
        base = {"BIG": "x" * (MAX_TOTAL_BYTES - 10)}
        result = run({"BIG": "small"}, base=base)
        assert entry(result, "BIG").status == "applied"

    def test_limits_under_linux(self) -> None:
        """The chosen limits stay under Linux's 128 KiB string and 2 MiB ARG_MAX."""
        assert MAX_NAME_BYTES + 1 + MAX_VALUE_BYTES + 1 <= 128 * 1024
        assert MAX_TOTAL_BYTES + 8 * MAX_VARIABLES < 2 * 1024 * 1024


class TestMergeLayer:
    def test_merge(self) -> None:
        """Merging keeps earlier keys and lets the update win."""
        merged = merge_layer({"A": "1", "B": "2"}, {"B": None, "C": 3}, replace=False)
        assert merged == {"A": "1", "B": None, "C": 3}

    def test_replace(self) -> None:
        """Replacing drops everything sent before."""
        assert merge_layer({"A": "1"}, {"B": "2"}, replace=True) == {"B": "2"}

    def test_copies(self) -> None:
        """The result is a new dict; the inputs are not changed."""
        layer = {"A": "1"}
        update = {"B": "2"}
        merge_layer(layer, update, replace=False)["C"] = "3"
        merge_layer(layer, update, replace=True)["D"] = "4"
        assert layer == {"A": "1"}
        assert update == {"B": "2"}


class TestPolicyPath:
    def test_explicit_first(self) -> None:
        """--policy wins over KAI_RPC_POLICY and the XDG default, and is required."""
        environ = {"KAI_RPC_POLICY": "/env.toml", "XDG_CONFIG_HOME": "/xdg"}
        assert policy_path("/cli.toml", environ) == (Path("/cli.toml"), True)

    def test_environment_variable(self) -> None:
        """KAI_RPC_POLICY comes next, and is required."""
        environ = {"KAI_RPC_POLICY": "/env.toml", "XDG_CONFIG_HOME": "/xdg"}
        assert policy_path(None, environ) == (Path("/env.toml"), True)

    def test_xdg(self) -> None:
        """Then $XDG_CONFIG_HOME/kai-rpc/policy.toml, optional."""
        environ = {"XDG_CONFIG_HOME": "/xdg", "HOME": "/home/u"}
        assert policy_path(None, environ) == (
            Path("/xdg/kai-rpc/policy.toml"),
            False,
        )

    @pytest.mark.parametrize("xdg", [None, "", "relative/dir"])
    def test_xdg_default(self, xdg: str | None) -> None:
        """Without a usable XDG_CONFIG_HOME, ~/.config is used."""
        environ = {"HOME": "/home/u", "KAI_RPC_POLICY": ""}
        if xdg is not None:
            environ["XDG_CONFIG_HOME"] = xdg
        assert policy_path(None, environ) == (
            Path("/home/u/.config/kai-rpc/policy.toml"),
            False,
        )

    def test_no_home(self) -> None:
        """With no home directory known, there is no default policy."""
        assert policy_path(None, {}) == (None, False)


class TestLoadPolicy:
    def write(self, tmp_path: Path, text: str) -> str:
        path = tmp_path / "policy.toml"
        path.write_text(text, encoding="utf-8")
        return str(path)

    def test_full_file(self, tmp_path: Path) -> None:
        """Every key of the policy file is read."""
        path = self.write(
            tmp_path,
            'allow = ["HTTP*_PROXY"]\ndeny = ["AWS_*"]\nsecret = ["*_SIG"]\n'
            'allow_insecure_tls = false\n[locked]\nNO_PROXY = "localhost"\n',
        )
        policy, loaded = load_policy(path, {})
        assert loaded == Path(path)
        assert policy == Policy(
            allow=["HTTP*_PROXY"],
            deny=["AWS_*"],
            secret=["*_SIG"],
            allow_insecure_tls=False,
            locked={"NO_PROXY": "localhost"},
        )

    def test_empty_file(self, tmp_path: Path) -> None:
        """An empty file is the default policy."""
        policy, _ = load_policy(self.write(tmp_path, ""), {})
        assert policy == Policy()

    def test_missing_default_is_no_policy(self, tmp_path: Path) -> None:
        """A missing XDG default file means no policy, not an error."""
        assert load_policy(None, {"XDG_CONFIG_HOME": str(tmp_path)}) == (Policy(), None)

    def test_xdg_default_read(self, tmp_path: Path) -> None:
        """The XDG default file is read when present."""
        (tmp_path / "kai-rpc").mkdir()
        (tmp_path / "kai-rpc" / "policy.toml").write_text('deny = ["X"]\n')
        policy, path = load_policy(None, {"XDG_CONFIG_HOME": str(tmp_path)})
        assert policy.deny == ["X"]
        assert path == tmp_path / "kai-rpc" / "policy.toml"

    @pytest.mark.parametrize("source", ["explicit", "environment"])
    def test_missing_required(self, tmp_path: Path, source: str) -> None:
        """A missing file named by --policy or KAI_RPC_POLICY is an error naming it."""
        missing = str(tmp_path / "nope.toml")
        explicit = missing if source == "explicit" else None
        environ = {"KAI_RPC_POLICY": missing} if source == "environment" else {}
        with pytest.raises(PolicyFileError) as caught:
            load_policy(explicit, environ)
        assert missing in caught.value.message
        assert "does not exist" in caught.value.message

    def test_directory(self, tmp_path: Path) -> None:
        """A path that cannot be read is an error naming the file."""
        with pytest.raises(PolicyFileError) as caught:
            load_policy(str(tmp_path), {})
        assert str(tmp_path) in caught.value.message

    @pytest.mark.parametrize(
        ("text", "words"),
        [
            ("deny = [", "not valid TOML"),
            ("denny = []", "unknown key 'denny'"),
            ('deny = "AWS_*"', "deny: Input should be a valid list"),
            ("deny = [1]", "deny item 0"),
            ('deny = [""]', "empty string"),
            ("allow_insecure_tls = 3", "true or false"),
            ('allow_insecure_tls = "false"', "true or false"),
            ("locked = 1", "locked"),
            ("[locked]\nX = 1", "locked X"),
            ('[locked]\n"A=B" = "v"', "'='"),
            ('[locked]\nA = "v\\u0000"', "NUL"),
        ],
    )
    def test_invalid(self, tmp_path: Path, text: str, words: str) -> None:
        """An invalid file raises PolicyFileError naming the file, field and fix."""
        path = self.write(tmp_path, text)
        with pytest.raises(PolicyFileError) as caught:
            load_policy(path, {})
        message = caught.value.message
        assert message.startswith(f"Policy file {path} ")
        assert words in message
        assert message.endswith(".")
        assert "pydantic" not in message
        assert "errors.pydantic.dev" not in message

    def test_secret_not_echoed(self, tmp_path: Path) -> None:
        """A validation error never shows the offending value."""
        path = self.write(tmp_path, 'allow_insecure_tls = "sk-secret-value"')
        with pytest.raises(PolicyFileError) as caught:
            load_policy(path, {})
        assert "sk-secret-value" not in caught.value.message

    def test_not_utf8(self, tmp_path: Path) -> None:
        """A file that is not UTF-8 is an error saying so."""
        path = tmp_path / "policy.toml"
        path.write_bytes(b'deny = ["\xff"]')
        with pytest.raises(PolicyFileError) as caught:
            load_policy(str(path), {})
        assert "UTF-8" in caught.value.message

    def test_redactor(self) -> None:
        """The policy's redactor adds its secret patterns to the defaults."""
        redactor = Policy(secret=["*_SIG"]).redactor()
        assert redactor.is_secret("X_SIG")
        assert redactor.is_secret("OPENAI_API_KEY")


def _text(evaluation: Evaluation) -> str:
    return json.dumps([e.wire() for e in evaluation.variables])


_NAMES = st.one_of(
    st.sampled_from(
        [
            "PATH",
            "Path",
            "LD_PRELOAD",
            "HTTP_PROXY",
            "https_proxy",
            "NO_PROXY",
            "OPENAI_API_KEY",
            "DB_PASSWORD",
            "GITHUB_TOKEN",
            "KAI_TLS_VERIFY",
            "",
            "A=B",
            "A\0B",
            "LANG",
        ]
    ),
    st.text(max_size=12),
)
_PLAIN = st.text(alphabet="abcdefghij:/@.,", max_size=20)
_SECRET_VALUES = st.text(alphabet="KLMNOPQRSTUVWXYZ", min_size=6, max_size=12).map(
    lambda s: f"sk-{s}"
)
_VALUES = st.one_of(
    st.none(),
    _PLAIN,
    _SECRET_VALUES,
    st.text(max_size=8),
    st.integers(),
    st.booleans(),
    st.floats(allow_nan=False),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    layer=st.dictionaries(_NAMES, _VALUES, max_size=12),
    base=st.dictionaries(
        st.sampled_from(["PATH", "HTTP_PROXY", "no_proxy", "OPENAI_API_KEY", "LANG"]),
        st.one_of(_PLAIN, _SECRET_VALUES),
        max_size=5,
    ),
    policy=st.builds(
        Policy,
        allow=st.lists(st.sampled_from(["*", "HTTP*", "*PROXY*", "X"]), max_size=2),
        deny=st.lists(st.sampled_from(["HTTP_*", "OPENAI_*", "Z*"]), max_size=2),
        locked=st.dictionaries(
            st.sampled_from(["NO_PROXY", "OPENAI_API_KEY", "PATH"]),
            st.one_of(_PLAIN, _SECRET_VALUES),
            max_size=2,
        ),
        allow_insecure_tls=st.booleans(),
    ),
    case_insensitive=st.booleans(),
)
def test_evaluate_properties(
    layer: dict[str, Any],
    base: dict[str, str],
    policy: Policy,
    case_insensitive: bool,
) -> None:
    """For any env map: no exception, one entry per key, reasons, no secret shown,
    and a clean str -> str environment."""
    result = evaluate(base, layer, policy, case_insensitive=case_insensitive)

    for name in layer:
        own = [
            e for e in result.variables if e.name == name and e.status != "inherited"
        ]
        assert len(own) == 1

    for variable in result.variables:
        if variable.status == "rejected":
            assert variable.reason
        raw = layer.get(variable.name)
        if variable.source == "ide" and raw is not None and not isinstance(raw, str):
            assert variable.value is None

    redactor = policy.redactor()
    secrets = {
        value
        for source in (layer, base, policy.locked)
        for name, value in source.items()
        if isinstance(value, str)
        and value.startswith("sk-")
        and redactor.is_secret(name)
    }
    text = _text(result)
    for secret in secrets:
        assert secret not in text

    for name, value in result.env.items():
        assert isinstance(name, str) and isinstance(value, str)
        assert name and "=" not in name and "\0" not in name
        assert "\0" not in value


@pytest.mark.skipif(os.name != "posix", reason="execve semantics")
def test_env_is_usable_by_subprocess(tmp_path: Path) -> None:
    """An evaluated environment of odd but legal names is accepted by execve."""
    import subprocess
    import sys

    layer = {"lower": "1", "_X": "2", "a.b": "3", "sp ace": "4", "Ü": "5"}
    result = run(layer, base={})
    code = "import os, json; print(json.dumps(dict(os.environ)))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=result.env,
        capture_output=True,
        check=True,
        text=True,
    )
    seen = json.loads(out.stdout)
    for name, value in layer.items():
        assert seen[name] == value
