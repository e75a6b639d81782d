"""Redaction: the single path every secret goes through before it is shown.

Three mechanisms, used together:

* **Secret-shaped names.** A variable or JSON key whose name matches a secret pattern
  (``*TOKEN*``, ``*_KEY``, ...; case-insensitive, so ``openai_api_key`` counts) has
  its value replaced by ``<redacted>``.
* **URL credentials.** ``http://user:pass@proxy:3128`` becomes
  ``http://user:<redacted>@proxy:3128``, wherever it appears: in a value, in a
  comma-separated list, in free text. A userinfo with no password
  (``https://TOKEN@host``) is redacted whole, because hosts such as GitHub take an
  access token as the user name.
* **Remembered values.** Once :func:`remember_environment` or :func:`remember_secret`
  has seen a secret value, :func:`scrub` replaces it in any text, e.g. a worker's
  traceback that echoes the API key. :class:`ScrubbingFilter` applies :func:`scrub`
  to every log record.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import threading
import traceback
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import unquote

logger = logging.getLogger(__name__)

REDACTED = "<redacted>"

DEFAULT_SECRET_PATTERNS: tuple[str, ...] = (
    "*SECRET*",
    "*TOKEN*",
    "*PASSWORD*",
    "*PASSWD*",
    "*_PWD",
    "*_KEY",
    "*API_KEY*",
    "*API-KEY*",
    "*APIKEY*",
    "*CREDENTIAL*",
    "*AUTHORIZATION*",
)

MIN_SECRET_LENGTH = 4
"""Remembered values shorter than this are not scrubbed from text. A value such as
``1`` or ``yes`` would turn every occurrence of those characters in every log line
into ``<redacted>``, making logs useless while protecting nothing: a secret that
short is guessed in a handful of tries anyway."""

# Password values that mean "the user name is the credential": GitHub's
# https://TOKEN:x-oauth-basic@github.com form, and an empty password.
_TOKEN_PASSWORDS = frozenset({"", "x-oauth-basic"})

# The authority of a URL ends at whitespace, "/", "?" or "#" (RFC 3986 section 3.2),
# so text splits into runs of other characters, and userinfo is what a run holds
# before its last "@", as urllib's netloc.rpartition("@") reads it. Taking the last
# "@" covers an unencoded "@" or "," inside a password. A scheme-less list
# "u:p@h1,u2:p2@h2" is therefore hidden as one span, "u:<redacted>@h2": that hides
# h1 but never shows a password. Scanning runs with str.rfind keeps this linear; a
# regex with a greedy password and a trailing "@" backtracks quadratically.
_RUN = re.compile(r"[^\s/?#]+")

# A user name alone is redacted only when it is this long: GitHub and GitLab tokens
# are 40 characters and more, while "git" in ssh://git@host is no secret.
_TOKEN_MIN_LENGTH = 16


def _userinfos(text: str) -> Iterator[tuple[int, int, str, str | None]]:
    """(start, end, user, password) of each URL userinfo in ``text``; password is
    None when the user name alone is given after a scheme."""
    for run in _RUN.finditer(text):
        at = run.group().rfind("@")
        if at < 0:
            continue

        start, end = run.start(), run.start() + at
        user, colon, password = text[start:end].partition(":")
        if colon:
            yield start, end, user, password
        elif user and text.endswith("://", 0, start):
            yield start, end, user, None


def _hidden_userinfo(user: str, password: str | None) -> str:
    if password is None or password in _TOKEN_PASSWORDS:
        return REDACTED
    return f"{user}:{REDACTED}"


def redact_url(url: str) -> str:
    """``url`` with the credentials of every URL in it replaced by ``<redacted>``.

    The user name is kept when a password follows it (it tells which proxy account
    is used); a user name alone after a scheme, or with an empty password, is
    redacted whole, since it is then usually a token. Works on scheme-less
    ``user:pass@host:8080``, on comma-separated lists and on free text; anything
    else passes through unchanged. Linear in the length of the text.
    """
    if "@" not in url:
        return url

    pieces: list[str] = []
    done = 0
    for start, end, user, password in _userinfos(url):
        pieces += [url[done:start], _hidden_userinfo(user, password)]
        done = end
    pieces.append(url[done:])
    return "".join(pieces)


def find_url_credentials(text: str) -> list[str]:
    """Every credential :func:`redact_url` hides in ``text``, raw and decoded.

    A user name alone counts only from 16 characters on, so that remembering it
    does not scrub a common word such as "admin" from every log line.
    """
    found: list[str] = []
    if "@" not in text:
        return found

    for _, _, user, password in _userinfos(text):
        if password is not None and password not in _TOKEN_PASSWORDS:
            found.append(password)
        elif len(user) >= _TOKEN_MIN_LENGTH:
            found.append(user)

    decoded = [unquote(value) for value in found]
    return found + [value for value in decoded if value not in found]


def literal_pattern(values: Iterable[str]) -> re.Pattern[str]:
    """One regex matching any of ``values`` literally, the longest where they overlap.

    A flat alternation of thousands of values tries each of them at every position
    of the text. Grouping by the first characters (a trie three levels deep) lets a
    mismatch fail after a few tries instead. Values must be non-empty.
    """
    distinct = set(values)
    if not distinct:
        return re.compile("(?!)")  # matches nothing
    return re.compile(_alternation(distinct, depth=3))


def _alternation(values: set[str], depth: int) -> str:
    if depth == 0 or len(values) < 16 or "" in values:
        # Longest first: the regex takes the first alternative that matches.
        ordered = sorted(values, key=lambda value: (-len(value), value))
        return "|".join(map(re.escape, ordered))

    groups: dict[str, set[str]] = {}
    for value in values:
        groups.setdefault(value[0], set()).add(value[1:])
    branches = [
        f"{re.escape(first)}(?:{_alternation(rest, depth - 1)})"
        for first, rest in sorted(groups.items())
    ]
    return "|".join(branches)


class _SecretRegistry:
    """Process-wide set of secret values, with one compiled pattern for all of them.

    Writers hold the lock and swap in a new frozenset and pattern together; readers
    take the current pattern with a single attribute read, which needs no lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: frozenset[str] = frozenset()
        self.pattern: re.Pattern[str] | None = None

    def add(self, values: Iterable[str]) -> None:
        fresh = {value for value in values if len(value) >= MIN_SECRET_LENGTH}
        fresh.discard(REDACTED)
        if fresh <= self._values:
            return

        with self._lock:
            merged = self._values | fresh
            self.pattern = literal_pattern(merged)
            self._values = merged

    def clear(self) -> None:
        with self._lock:
            self._values = frozenset()
            self.pattern = None


_registry = _SecretRegistry()


def remember_secret(value: str) -> None:
    """Scrub ``value`` from all text from now on (ignored below MIN_SECRET_LENGTH)."""
    _registry.add([value])


def _forget_secrets() -> None:
    """Empty the registry. For tests only: a secret once seen stays secret."""
    _registry.clear()


def remember_environment(env: Mapping[str, Any], redactor: Redactor) -> None:
    """Remember the values of secret-shaped names and the credentials in any URL."""
    values: list[str] = []
    for name, raw in env.items():
        if isinstance(raw, bool) or raw is None:
            continue
        value = str(raw) if isinstance(raw, int | float) else raw
        if not isinstance(value, str):
            continue

        if isinstance(name, str) and redactor.is_secret(name):
            values.append(value)
        values.extend(find_url_credentials(value))
    _registry.add(values)


def scrub(text: str) -> str:
    """``text`` with every remembered secret and every URL credential redacted."""
    pattern = _registry.pattern
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    return redact_url(text)


def _compile_globs(patterns: Iterable[str]) -> re.Pattern[str]:
    parts = [f"(?:{fnmatch.translate(pattern)})" for pattern in patterns]
    return re.compile("|".join(parts), re.IGNORECASE)


class Redactor:
    """Decides which names are secret, and redacts values and whole JSON messages."""

    def __init__(self, secret_patterns: Iterable[str] = ()) -> None:
        self.patterns: tuple[str, ...] = (*DEFAULT_SECRET_PATTERNS, *secret_patterns)
        self._secret = _compile_globs(self.patterns)

    def __repr__(self) -> str:
        return f"Redactor(patterns={self.patterns!r})"

    def is_secret(self, name: str) -> bool:
        """Whether ``name`` matches a secret pattern, ignoring case."""
        return self._secret.match(name) is not None

    def value(self, name: str, value: str | None) -> str | None:
        """The value as it may be shown: redacted whole when the name is secret,
        otherwise with URL credentials removed."""
        if value is None:
            return None
        if self.is_secret(name):
            return REDACTED
        return redact_url(value)

    def message(self, obj: Any) -> Any:
        """A redacted deep copy of a JSON value, for logs, reports and recordings.

        Under a secret-shaped key, strings and numbers (also inside nested lists and
        objects) become ``<redacted>``; booleans and null stay, as they carry no
        secret. Every other string is passed through :func:`scrub`.
        """
        return self._copy(obj, hidden=False)

    def _copy(self, obj: Any, hidden: bool) -> Any:
        if isinstance(obj, dict):
            return {
                self._copy(key, hidden=False): self._copy(
                    value, hidden or (isinstance(key, str) and self.is_secret(key))
                )
                for key, value in obj.items()
            }
        if isinstance(obj, list | tuple):
            return [self._copy(item, hidden) for item in obj]

        if isinstance(obj, bool) or obj is None:
            return obj
        if hidden and isinstance(obj, str | int | float):
            return REDACTED
        if isinstance(obj, str):
            return scrub(obj)
        return obj


class ScrubbingFilter(logging.Filter):
    """Renders each record and stores it back scrubbed; attach it to the handler.

    The rendered message replaces ``msg`` and ``args`` becomes ``None``, so a
    formatter sees only the scrubbed text. Exception and stack text are rendered
    and scrubbed too. The filter never drops a record and never raises.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        self._scrub_message(record)
        self._scrub_exception(record)
        return True

    @staticmethod
    def _scrub_message(record: logging.LogRecord) -> None:
        try:
            record.msg = scrub(record.getMessage())
        except Exception:
            # Bad %-arguments, or an argument whose __str__ raises: keep the
            # template, which is the code's own text, and drop the arguments.
            try:
                template = scrub(str(record.msg))
            except Exception:
                template = "<log message>"
            record.msg = f"{template} (arguments dropped: they could not be rendered)"
        record.args = None

    @staticmethod
    def _scrub_exception(record: logging.LogRecord) -> None:
        try:
            if record.exc_info and not record.exc_text:
                text = "".join(traceback.format_exception(*record.exc_info))
                record.exc_text = text.rstrip("\n")
            if record.exc_text:
                record.exc_text = scrub(record.exc_text)
            if record.stack_info:
                record.stack_info = scrub(record.stack_info)
        except Exception:
            # A formatter would render exc_info again, unscrubbed: drop it.
            record.exc_info = None
            record.exc_text = "<traceback could not be rendered>"
            record.stack_info = None
