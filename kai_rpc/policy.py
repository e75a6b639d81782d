"""The environment policy: which IDE variables reach the worker, and why not.

The worker's environment is built in three layers, last wins::

    inherited (the bridge's own environment)  <  IDE layer  <  locked (policy file)

The IDE layer is untrusted (a cloned repository's workspace settings can set it), so
each of its keys is checked, in this order, and rejected with a reason on the first
failure: a valid name; a string or null value; a value without NUL and within the
size limit; not locked by the policy; not denied (policy ``deny`` or
:data:`BUILTIN_DENY`); matched by ``allow`` when that list is non-empty; within the
total size of the environment. The policy file is TOML::

    allow = ["HTTP*_PROXY", "NO_PROXY", "SSL_CERT_*", "OPENAI_*"]  # allow-list mode
    deny = ["AWS_*"]                     # deny wins, even over allow
    secret = ["*_SIGNATURE"]             # extra secret-shaped names to redact
    allow_insecure_tls = false           # the IDE cannot turn TLS verification off
    [locked]
    NO_PROXY = "localhost,.corp.example" # the IDE cannot change these

Everything but :func:`policy_path` and :func:`load_policy` is pure: no I/O and no
reads of ``os.environ``.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from kai_rpc.contract import VariableEntry
from kai_rpc.exceptions import PolicyFileError
from kai_rpc.redact import REDACTED, Redactor, find_url_credentials, literal_pattern

logger = logging.getLogger(__name__)

# Linux's execve() refuses a single "NAME=value" string over MAX_ARG_STRLEN (32 pages,
# 128 KiB) and all of argv + envp (strings plus one 8-byte pointer each) over
# ARG_MAX, a quarter of the stack limit: 2 MiB with the usual 8 MiB stack. The limits
# below keep one variable at half of MAX_ARG_STRLEN and the whole environment at
# 1 MiB of strings (plus at most 20,000 * 8 bytes of pointers), leaving the rest of
# ARG_MAX to the worker's argv.
MAX_NAME_BYTES = 1024
MAX_VALUE_BYTES = 64 * 1024
MAX_VARIABLES = 20_000
MAX_TOTAL_BYTES = 1024 * 1024

KAI_TLS_VERIFY = "KAI_TLS_VERIFY"

_GIT_CONFIG = "a git config can run programs (core.fsmonitor, core.sshCommand)"

BUILTIN_DENY: Mapping[str, str] = {
    # The dynamic loader and the C library.
    "LD_*": "LD_* changes which code the dynamic loader runs in the worker",
    "DYLD_*": "DYLD_* changes which code the macOS dynamic loader runs in the worker",
    "GCONV_PATH": "glibc loads character-set conversion modules from it",
    "GLIBC_TUNABLES": "it tunes glibc internals and has been an exploit vector "
    "(CVE-2023-4911)",
    # Which program runs.
    "PATH": "it decides which python and git the worker and its children run",
    "PATHEXT": "on Windows it decides which files count as programs",
    "COMSPEC": "on Windows it names the shell that runs commands",
    "HOME": f"git reads ~/.gitconfig from it, and {_GIT_CONFIG}",
    "USERPROFILE": f"git on Windows reads .gitconfig from it, and {_GIT_CONFIG}",
    "XDG_CONFIG_HOME": f"git reads git/config under it, and {_GIT_CONFIG}",
    # Python.
    "PYTHONPATH": "Python imports modules from it before the worker's own",
    "PYTHONHOME": "it replaces the Python standard library the worker runs on",
    "PYTHONPLATLIBDIR": "it changes where Python finds its standard library",
    "PYTHONSTARTUP": "an interactive Python runs the file it names on start-up",
    "PYTHONINSPECT": "it makes Python drop into an interactive prompt on stdin, "
    "which is the protocol pipe",
    "PYTHONUSERBASE": "Python loads site-packages and .pth files, which run code, "
    "from it",
    "PYTHONEXECUTABLE": "it changes what macOS Python reports as sys.executable, "
    "which child processes run",
    "PYTHONWARNINGS": "a warning filter names a category that Python imports",
    "PYTHONBREAKPOINT": "breakpoint() imports and calls the function it names",
    "PYTHONPYCACHEPREFIX": "Python loads compiled bytecode from it",
    # Shells.
    "BASH_ENV": "bash runs the file it names before any non-interactive script",
    "ENV": "an interactive sh runs the file it names on start-up",
    "BASH_FUNC_*": "bash imports exported functions from these, overriding commands",
    "SHELLOPTS": "it turns on shell options such as xtrace in every child shell",
    "BASHOPTS": "it turns on bash options in every child shell",
    "PS4": "shells expand it, running command substitutions, when tracing",
    "PROMPT_COMMAND": "an interactive bash runs it before each prompt",
    "IFS": "it changes how child shells split words and so what they run",
    "ZDOTDIR": "zsh runs its start-up files from it",
    # Other language runtimes the worker may start.
    "NODE_OPTIONS": "node takes --require from it and runs that code",
    "NODE_PATH": "node resolves modules from it",
    "JAVA_TOOL_OPTIONS": "the JVM takes -javaagent from it and runs that code",
    "_JAVA_OPTIONS": "the JVM takes -javaagent from it and runs that code",
    "JDK_JAVA_OPTIONS": "the java launcher takes -javaagent from it and runs that code",
    "CLASSPATH": "the JVM loads classes from it",
    "PERL5OPT": "perl takes -M from it and runs that module",
    "PERL5LIB": "perl loads modules from it",
    "PERLLIB": "perl loads modules from it",
    "PERL5DB": "perl runs its code as the debugger",
    "RUBYOPT": "ruby takes -r from it and runs that file",
    "RUBYLIB": "ruby loads libraries from it",
    # TLS.
    "OPENSSL_CONF": "an OpenSSL config can load engines and providers, which run code",
    "OPENSSL_ENGINES": "OpenSSL loads engine modules from it",
    "OPENSSL_MODULES": "OpenSSL loads provider modules from it",
    "SSLKEYLOGFILE": "TLS libraries write every session key to the file it names, "
    "so traffic to the LLM service can be decrypted",
    # git, which Kai runs.
    "GIT_*": "Kai runs git, and GIT_* variables choose git's config, helper "
    "programs, hooks and trace files",
    "SSH_ASKPASS": "git and ssh run the program it names to ask for credentials",
    # The bridge itself.
    "KAI_RPC_POLICY": "it would pick the policy of a bridge started by the worker",
}
"""Variables the IDE layer may never set or unset: each pattern with why."""

# Each of these turns TLS verification off somewhere in the worker's process tree.
INSECURE_TLS_VARIABLES: Mapping[str, str] = {
    KAI_TLS_VERIFY: "it turns TLS verification off in the worker",
    "PYTHONHTTPSVERIFY": "PYTHONHTTPSVERIFY=0 turns TLS verification off in "
    "urllib on some Python builds",
    "NODE_TLS_REJECT_UNAUTHORIZED": "0 turns TLS verification off in node",
}

REPORTED_INHERITED: frozenset[str] = frozenset(
    {
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
        "openai_proxy",
        "ssl_cert_file",
        "ssl_cert_dir",
        "requests_ca_bundle",
        "curl_ca_bundle",
        "pythonhttpsverify",
        "openai_base_url",
        "openai_api_base",
        KAI_TLS_VERIFY.lower(),
    }
)
"""Lowercase names of the proxy and TLS variables reported when inherited."""


def _name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a variable name, or None when it can.

    Linux's execve takes any bytes up to the first "=" as the name, so every other
    non-empty name passes byte for byte: lowercase, leading "_", dots, spaces,
    non-ASCII. It must encode as UTF-8, which a lone surrogate cannot.
    """
    if not name:
        return "an empty name cannot be set; remove it from the env map"
    if "=" in name:
        return "a name cannot contain '=' (the environment splits at it); rename it"
    if "\0" in name:
        return "a name cannot contain a NUL character; rename it"

    size = _encoded_size(name)
    if size is None:
        return "the name is not valid Unicode (lone surrogate); send UTF-8 text"
    if size > MAX_NAME_BYTES:
        return (
            f"the name is {size} bytes, over the limit of {MAX_NAME_BYTES}; shorten it"
        )
    return None


def _value_problem(value: str) -> str | None:
    """Why ``value`` cannot be passed to the worker, or None when it can."""
    if "\0" in value:
        return "the value contains a NUL character, which an environment cannot hold"

    size = _encoded_size(value)
    if size is None:
        return "the value is not valid Unicode (lone surrogate); send UTF-8 text"
    if size > MAX_VALUE_BYTES:
        return (
            f"the value is {size} bytes, over the limit of {MAX_VALUE_BYTES} bytes "
            "per variable; pass a file path instead"
        )
    return None


def _encoded_size(text: str) -> int | None:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return None


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


class Policy(BaseModel):
    """The policy file. All lists hold shell-style globs (``*``, ``?``, ``[...]``)."""

    # Strict: "false" in quotes must not pass as a boolean in a security setting.
    # Built on first validation: without a policy file the bridge never needs it.
    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)

    allow: list[str] = []
    deny: list[str] = []
    locked: dict[str, str] = {}
    secret: list[str] = []
    allow_insecure_tls: bool = True

    @field_validator("allow", "deny", "secret")
    @classmethod
    def _patterns_not_empty(cls, patterns: list[str]) -> list[str]:
        if any(not pattern for pattern in patterns):
            raise ValueError("a pattern is an empty string; remove it")
        return patterns

    @field_validator("locked")
    @classmethod
    def _locked_valid(cls, locked: dict[str, str]) -> dict[str, str]:
        for name, value in locked.items():
            problem = _name_problem(name) or _value_problem(value)
            if problem is not None:
                raise ValueError(f"{_shown(name)}: {problem}")
        return locked

    def redactor(self) -> Redactor:
        """The redactor for this policy: default secret patterns plus ``secret``."""
        return Redactor(self.secret)


def default_policy() -> Policy:
    """The policy when there is no file: the field defaults, with nothing to
    validate (so the model is not built either)."""
    return Policy.model_construct()


def policy_path(
    explicit: str | None, environ: Mapping[str, str]
) -> tuple[Path | None, bool]:
    """Where the policy file is, and whether it must exist.

    ``--policy FILE`` first, then ``KAI_RPC_POLICY``; either must exist. Otherwise
    ``$XDG_CONFIG_HOME/kai-rpc/policy.toml`` (``~/.config`` when unset or relative,
    per the XDG Base Directory spec), which may be missing.
    """
    if explicit is not None:
        return Path(explicit), True
    from_env = environ.get("KAI_RPC_POLICY")
    if from_env:
        return Path(from_env), True

    config_home = environ.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(config_home):
        home = environ.get("HOME") or environ.get("USERPROFILE")
        if not home:
            return None, False
        config_home = os.path.join(home, ".config")
    return Path(config_home) / "kai-rpc" / "policy.toml", False


def load_policy(
    explicit: str | None, environ: Mapping[str, str]
) -> tuple[Policy, Path | None]:
    """The policy and the file it came from; the defaults and None when there is none.

    Raises PolicyFileError naming the file, the field and the fix.
    """
    path, required = policy_path(explicit, environ)
    if path is None:
        return default_policy(), None

    try:
        text = path.read_bytes()
    except FileNotFoundError:
        if not required:
            return default_policy(), None
        raise PolicyFileError(
            f"Policy file {path} does not exist; create it, or fix the path given "
            "by --policy or KAI_RPC_POLICY."
        ) from None
    except OSError as error:
        raise PolicyFileError(
            f"Policy file {path} cannot be read ({error.strerror}); "
            "check its permissions."
        ) from error

    policy = _parse_policy(path, text)
    logger.info("Policy loaded from %s", path)
    return policy, path


def _parse_policy(path: Path, text: bytes) -> Policy:
    import tomllib

    try:
        data = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise PolicyFileError(
            f"Policy file {path} is not UTF-8 text (byte {error.start}); "
            "save it as UTF-8."
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise PolicyFileError(
            f"Policy file {path} is not valid TOML: {error}; fix the syntax."
        ) from None

    try:
        return Policy.model_validate(data)
    except ValidationError as error:
        raise PolicyFileError(_validation_message(path, error)) from None


_FIELD_HELP = {
    "allow": 'a list of name patterns, e.g. allow = ["HTTPS_PROXY", "OPENAI_*"]',
    "deny": 'a list of name patterns, e.g. deny = ["AWS_*"]',
    "secret": 'a list of name patterns, e.g. secret = ["*_SIGNATURE"]',
    "locked": 'a table of name = "value" strings, e.g. [locked] NO_PROXY = "localhost"',
    "allow_insecure_tls": "true or false",
}


def _validation_message(path: Path, error: ValidationError) -> str:
    """One readable sentence per problem; input values are never echoed."""
    problems: list[str] = []
    for detail in error.errors(include_input=False, include_url=False):
        location = detail["loc"]
        field = str(location[0]) if location else "(top level)"

        if detail["type"] == "extra_forbidden":
            problems.append(
                f"unknown key {field!r}; the keys are {', '.join(_FIELD_HELP)}"
            )
            continue

        where = field
        if len(location) > 1:
            item = location[1]
            where += f" item {item}" if isinstance(item, int) else f" {_shown(item)}"
        message = str(detail["msg"]).removeprefix("Value error, ")
        expected = _FIELD_HELP.get(field, "")
        problems.append(f"{where}: {message}; it must be {expected}")

    return f"Policy file {path} is invalid: " + "; ".join(problems) + "."


def merge_layer(
    layer: Mapping[str, Any], update: Mapping[str, Any], replace: bool
) -> dict[str, Any]:
    """The IDE layer after an update: ``update`` alone when replacing, else merged.

    Values are kept raw (None means unset; any other JSON value is kept so that
    :func:`evaluate` can report it as rejected).
    """
    if replace:
        return dict(update)
    return {**layer, **update}


@dataclass(frozen=True)
class Evaluation:
    """The worker's environment and what became of each variable."""

    env: dict[str, str]
    variables: list[VariableEntry]


def _shown(name: str, limit: int = 64) -> str:
    """A name short enough for a message."""
    if len(name) <= limit:
        return name
    return name[:limit] + "..."


class _Patterns:
    """A list of globs matched against names, case-insensitively on Windows.

    All the globs are alternatives of one regex, each in a group named for its
    place in the list. The regex tries them in order, so a match tells at once
    whether any glob matches and, by the group's name, which one comes first.
    """

    def __init__(self, patterns: Iterable[str], case_insensitive: bool) -> None:
        self._patterns = list(patterns)
        alternatives = "|".join(
            f"(?P<p{index}>{fnmatch.translate(pattern)})"
            for index, pattern in enumerate(self._patterns)
        )
        flags = re.IGNORECASE if case_insensitive else 0
        self._regex = re.compile(alternatives or "(?!)", flags)

    def first(self, name: str) -> str | None:
        """The first pattern that matches ``name``."""
        match = self._regex.match(name)
        if match is None or match.lastgroup is None:
            return None
        return self._patterns[int(match.lastgroup[1:])]


class _Environment:
    """The environment being built, with its size kept up to date."""

    def __init__(self, fold: Callable[[str], str]) -> None:
        self.fold = fold
        self.values: dict[str, str] = {}
        self._keys: dict[str, str] = {}  # folded name -> name as stored
        self.size = 0

    @staticmethod
    def cost(name: str, value: str) -> int:
        # "NAME=value\0"; surrogatepass so an odd inherited name still counts.
        data = f"{name}={value}".encode("utf-8", "surrogatepass")
        return len(data) + 1

    def get(self, name: str) -> str | None:
        key = self._keys.get(self.fold(name))
        return None if key is None else self.values[key]

    def fits(self, name: str, value: str) -> bool:
        """Whether setting ``name`` keeps the environment within the limits."""
        key = self._keys.get(self.fold(name))
        count = len(self.values) + (key is None)
        size = self.size + self.cost(name, value)
        if key is not None:
            size -= self.cost(key, self.values[key])
        return count <= MAX_VARIABLES and size <= MAX_TOTAL_BYTES

    def set(self, name: str, value: str) -> None:
        self.unset(name)
        self.values[name] = value
        self._keys[self.fold(name)] = name
        self.size += self.cost(name, value)

    def unset(self, name: str) -> None:
        key = self._keys.pop(self.fold(name), None)
        if key is not None:
            self.size -= self.cost(key, self.values.pop(key))


class _Evaluator:
    """One run of :func:`evaluate`; its state is private to that run."""

    def __init__(
        self, base: Mapping[str, str], policy: Policy, case_insensitive: bool
    ) -> None:
        self.policy = policy
        self.redactor = policy.redactor()
        self.fold: Callable[[str], str] = str.upper if case_insensitive else str
        self.deny = _Patterns(policy.deny, case_insensitive)
        self.builtin_deny = _Patterns(BUILTIN_DENY, case_insensitive)
        self.allow = _Patterns(policy.allow, case_insensitive)
        self.env = _Environment(self.fold)
        self.entries: list[VariableEntry] = []
        self.secrets: set[str] = set()

        for name, value in base.items():
            self.env.set(name, value)
            self.note_secret(name, value)
        self.locked = {self.fold(k): v for k, v in policy.locked.items()}
        for name, value in policy.locked.items():
            self.env.set(name, value)
            self.note_secret(name, value)

    def note_secret(self, name: str, value: Any) -> None:
        """Collect values that must not appear in any entry, under any name."""
        if not isinstance(value, str):
            return
        if self.redactor.is_secret(name) and len(value) >= 4:
            self.secrets.add(value)
        self.secrets.update(v for v in find_url_credentials(value) if len(v) >= 4)

    def add(
        self,
        name: str,
        status: str,
        source: str,
        value: str | None,
        reason: str | None = None,
    ) -> None:
        shown = self.redactor.value(name, value)
        self.entries.append(
            VariableEntry.model_validate(
                {
                    "name": name,
                    "status": status,
                    "source": source,
                    "value": shown,
                    "reason": reason,
                }
            )
        )

    def ide_key(self, name: str, value: Any) -> None:
        """Decide one key of the IDE layer and record its entry."""
        problem = _name_problem(name)
        if problem is not None:
            self.add(name, "rejected", "ide", None, f"Rejected: {problem}.")
            return
        if value is not None and not isinstance(value, str):
            reason = (
                f"{_shown(name)} is a JSON {_json_type(value)}; send a string to "
                "set it or null to unset it."
            )
            self.add(name, "rejected", "ide", None, reason)
            return
        if value is not None:
            problem = _value_problem(value)
            if problem is not None:
                self.add(name, "rejected", "ide", None, f"Rejected: {problem}.")
                return

        locked = self.locked.get(self.fold(name))
        if locked is not None:
            reason = (
                f"{_shown(name)} is locked by the policy file; the IDE's value was "
                "ignored."
            )
            self.add(name, "locked", "policy", locked, reason)
            return

        refusal = self._refusal(name, value)
        if refusal is not None:
            self.add(name, "rejected", "ide", value, refusal)
        elif value is None:
            self.env.unset(name)
            self.add(name, "unset", "ide", None)
        elif not self.env.fits(name, value):
            reason = (
                f"{_shown(name)} would take the worker's environment over its limit "
                f"of {MAX_VARIABLES} variables or {MAX_TOTAL_BYTES} bytes; send "
                "fewer or shorter variables."
            )
            self.add(name, "rejected", "ide", value, reason)
        else:
            self.env.set(name, value)
            self.add(name, "applied", "ide", value)

    def _refusal(self, name: str, value: str | None) -> str | None:
        """Why the policy refuses ``name`` from the IDE, or None."""
        shown = _shown(name)
        pattern = self.deny.first(name)
        if pattern is not None:
            return (
                f"{shown} is denied by the policy file's deny pattern {pattern!r}; "
                "remove it from the env map."
            )
        pattern = self.builtin_deny.first(name)
        if pattern is not None:
            return (
                f"{shown} is denied: {BUILTIN_DENY[pattern]} (built-in deny "
                f"pattern {pattern!r}); remove it from the env map."
            )

        if not self.policy.allow_insecure_tls and value is not None:
            # Matched in any case: unsetting stays allowed, as it cannot weaken TLS.
            for insecure, why in INSECURE_TLS_VARIABLES.items():
                if name.upper() == insecure:
                    return (
                        f"{shown} is rejected: the policy file forbids turning TLS "
                        f"verification off (allow_insecure_tls = false) and {why}; "
                        "install the proxy's CA certificate instead (SSL_CERT_FILE)."
                    )

        if self.policy.allow and self.allow.first(name) is None:
            return (
                f"{shown} is not in the policy file's allow list; ask the "
                "administrator to allow it, or remove it from the env map."
            )
        return None

    def locked_entries(self, sent: set[str]) -> None:
        """Entries for locked variables the IDE did not send."""
        for name, value in self.policy.locked.items():
            if self.fold(name) not in sent:
                self.add(name, "locked", "policy", value, "Locked by the policy file.")

    def inherited_entries(self, base: Mapping[str, str], overridden: set[str]) -> None:
        """Entries for proxy and TLS variables the worker inherits from the bridge."""
        for name in sorted(base):
            if name.lower() not in REPORTED_INHERITED:
                continue
            folded = self.fold(name)
            if folded in overridden or folded in self.locked:
                continue
            self.add(name, "inherited", "inherited", base[name])

    def hide_secrets(self) -> None:
        """Replace every collected secret value inside other entries' values."""
        if not self.secrets:
            return
        pattern = literal_pattern(self.secrets)
        for index, entry in enumerate(self.entries):
            if entry.value is not None and pattern.search(entry.value):
                hidden = pattern.sub(REDACTED, entry.value)
                self.entries[index] = entry.model_copy(update={"value": hidden})


def evaluate(
    base: Mapping[str, str],
    layer: Mapping[str, Any],
    policy: Policy,
    *,
    case_insensitive: bool = os.name == "nt",
) -> Evaluation:
    """Build the worker's environment from the three layers and report each variable.

    Never raises on any content of ``layer``; every problem becomes a rejected entry
    with a reason.
    """
    run = _Evaluator(base, policy, case_insensitive)

    sent: set[str] = set()
    overridden: set[str] = set()
    for raw_name, value in layer.items():
        if not isinstance(raw_name, str):
            reason = "Rejected: a variable name must be a string."
            run.add(repr(raw_name), "rejected", "ide", None, reason)
            continue

        name = raw_name
        run.note_secret(name, value)
        run.ide_key(name, value)

        folded = run.fold(name)
        sent.add(folded)
        if run.entries[-1].status in ("applied", "unset"):
            overridden.add(folded)

    run.locked_entries(sent)
    run.inherited_entries(base, overridden)
    run.hide_secrets()
    return Evaluation(env=run.env.values, variables=run.entries)
