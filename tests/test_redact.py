"""Tests of kai_rpc.redact: secret names, URL credentials, remembered values, logs."""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kai_rpc import redact
from kai_rpc.redact import (
    DEFAULT_SECRET_PATTERNS,
    MIN_SECRET_LENGTH,
    REDACTED,
    Redactor,
    ScrubbingFilter,
    find_url_credentials,
    redact_url,
    remember_environment,
    remember_secret,
    scrub,
)


@pytest.fixture(autouse=True)
def _empty_registry() -> Iterator[None]:
    """Each test starts and ends with no remembered secret."""
    redact._forget_secrets()
    yield
    redact._forget_secrets()


class TestSecretNames:
    @pytest.mark.parametrize(
        "name",
        [
            "OPENAI_API_KEY",
            "openai_api_key",
            "OAUTH_CLIENT_SECRET",
            "client_secret",
            "GITHUB_TOKEN",
            "access_token",
            "DB_PASSWORD",
            "password",
            "PGPASSWD",
            "MYSQL_PWD",
            "AWS_SECRET_ACCESS_KEY",
            "api_key",
            "apiKey",
            "x-api-key",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "Authorization",
            "Proxy-Authorization",
            "SIGNING_KEY",
        ],
    )
    def test_secret_shaped(self, name: str) -> None:
        """Names matching a default secret pattern count as secret, in any case."""
        assert Redactor().is_secret(name)

    @pytest.mark.parametrize(
        "name",
        ["PATH", "HTTP_PROXY", "NO_PROXY", "SSL_CERT_FILE", "HOME", "KEYBOARD", ""],
    )
    def test_not_secret(self, name: str) -> None:
        """Ordinary proxy, TLS and system names are not secret-shaped."""
        assert not Redactor().is_secret(name)

    def test_extra_patterns(self) -> None:
        """Patterns from the policy are added to the defaults, not replacing them."""
        redactor = Redactor(["*_SIGNATURE", "CORP_?"])
        assert redactor.is_secret("request_signature")
        assert redactor.is_secret("CORP_X")
        assert not redactor.is_secret("CORP_XY")
        assert redactor.is_secret("OPENAI_API_KEY")

    def test_defaults_include_required(self) -> None:
        """The default patterns cover the kinds the project requires."""
        for pattern in ("*SECRET*", "*TOKEN*", "*PASSWORD*", "*_KEY", "*API_KEY*"):
            assert pattern in DEFAULT_SECRET_PATTERNS

    def test_glob_metacharacters_are_not_regex(self) -> None:
        """A pattern is a shell glob: a dot is literal, not any character."""
        redactor = Redactor(["A.B"])
        assert redactor.is_secret("a.b")
        assert not redactor.is_secret("AXB")


class TestValue:
    def test_secret_name_redacted(self) -> None:
        """A secret-shaped name's value is redacted whole."""
        assert Redactor().value("OPENAI_API_KEY", "sk-123") == REDACTED

    def test_none_stays_none(self) -> None:
        """An unset value stays None, even under a secret name."""
        assert Redactor().value("OPENAI_API_KEY", None) is None
        assert Redactor().value("HTTP_PROXY", None) is None

    def test_plain_value_unchanged(self) -> None:
        """A value with no credentials is shown as it is."""
        assert Redactor().value("NO_PROXY", "localhost,.corp") == "localhost,.corp"

    def test_proxy_password_removed(self) -> None:
        """A proxy URL keeps its user and host but loses its password."""
        shown = Redactor().value("HTTPS_PROXY", "http://alice:s3cr3t@proxy:3128")
        assert shown == f"http://alice:{REDACTED}@proxy:3128"

    def test_list_of_urls(self) -> None:
        """Each URL of a comma-separated list loses its password."""
        shown = Redactor().value("X", "http://a:pw1@h1:80,https://b:pw2@h2")
        assert shown == f"http://a:{REDACTED}@h1:80,https://b:{REDACTED}@h2"

    def test_redacted_value_is_a_copy(self) -> None:
        """An empty secret value is still reported as redacted, not as empty."""
        assert Redactor().value("TOKEN", "") == REDACTED


class TestRedactUrl:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("http://user:pass@proxy:3128", f"http://user:{REDACTED}@proxy:3128"),
            ("user:pass@host:8080", f"user:{REDACTED}@host:8080"),
            ("http://proxy:3128", "http://proxy:3128"),
            ("http://proxy:3128/path", "http://proxy:3128/path"),
            ("https://user@host", f"https://{REDACTED}@host"),
            (
                "https://ghp_abc:x-oauth-basic@github.com",
                f"https://{REDACTED}@github.com",
            ),
            ("http://user:@proxy", f"http://{REDACTED}@proxy"),
            ("http://:pw@proxy", f"http://:{REDACTED}@proxy"),
            ("http://u:p@ss@proxy:1", f"http://u:{REDACTED}@proxy:1"),
            ("http://u:pa,ss@proxy", f"http://u:{REDACTED}@proxy"),
            ("http://u:p%40ss@proxy", f"http://u:{REDACTED}@proxy"),
            ("http://u:p@[::1]:8080", f"http://u:{REDACTED}@[::1]:8080"),
            ("socks5h://u:p@proxy:1080", f"socks5h://u:{REDACTED}@proxy:1080"),
            ("http://proxy:3128/a?b=c@d", "http://proxy:3128/a?b=c@d"),
            ("", ""),
            ("@", "@"),
            (":@", f"{REDACTED}@"),
            ("not a url", "not a url"),
            ("bob@example.com", "bob@example.com"),
            ("ssh git@github.com:org/repo", "ssh git@github.com:org/repo"),
            (
                "http://a:b@h1:80,http://c:d@h2",
                f"http://a:{REDACTED}@h1:80,http://c:{REDACTED}@h2",
            ),
            ("u:p1@h1:80,u2:p2@h2:80", f"u:{REDACTED}@h2:80"),
        ],
    )
    def test_examples(self, url: str, expected: str) -> None:
        """Credentials are removed and everything else is kept, per example."""
        assert redact_url(url) == expected

    def test_in_free_text(self) -> None:
        """URLs inside a sentence lose their credentials; the sentence stays."""
        text = "ProxyError('http://bob:hunter22@proxy:3128' refused) at 12:00"
        assert redact_url(text) == (
            f"ProxyError('http://bob:{REDACTED}@proxy:3128' refused) at 12:00"
        )

    def test_scheme_less_list_never_shows_a_password(self) -> None:
        """A scheme-less list with credentials is hidden as one span, leaking none."""
        shown = redact_url("u:pw1111@h1:80,u2:pw2222@h2:80")
        assert "pw1111" not in shown
        assert "pw2222" not in shown

    @given(
        user=st.text(alphabet="abcdefgh_.-", min_size=1, max_size=8),
        password=st.text(
            alphabet=st.characters(blacklist_categories=["Cs", "Zs", "Cc"]),
            min_size=1,
            max_size=20,
        ).filter(lambda p: not set(p) & set("/?#") and p != "x-oauth-basic"),
        host=st.sampled_from(["proxy", "proxy:3128", "10.0.0.1:8080", "[::1]:3128"]),
        scheme=st.sampled_from(["", "http://", "https://", "socks5://"]),
        suffix=st.sampled_from(["", "/", "/v1?x=1", " and more text"]),
    )
    def test_password_never_leaks(
        self, user: str, password: str, host: str, scheme: str, suffix: str
    ) -> None:
        """For any password without URL delimiters, the redacted URL omits it."""
        shown = redact_url(f"{scheme}{user}:{password}@{host}{suffix}")
        assert shown == f"{scheme}{user}:{REDACTED}@{host}{suffix}"

    @pytest.mark.parametrize(
        "text",
        ["@" + "a:" * 50_000, "a:" * 50_000 + "@", "http://" + "u:p@" * 30_000],
    )
    @pytest.mark.timeout(60)
    def test_no_catastrophic_backtracking(self, text: str) -> None:
        """Adversarial text of 100 KB is redacted: a backtracking pattern took 22 s
        on 40 KB, so one would take hours here and hit the hang guard."""
        assert isinstance(redact_url(text), str)
        assert isinstance(find_url_credentials(text), list)

    @given(st.text())
    def test_never_raises(self, text: str) -> None:
        """Any text at all goes through without an exception."""
        assert isinstance(redact_url(text), str)


class TestFindCredentials:
    def test_password_and_decoded(self) -> None:
        """A percent-encoded password is found raw and decoded."""
        assert find_url_credentials("http://u:p%40ss@h") == ["p%40ss", "p@ss"]

    def test_token_user(self) -> None:
        """A long user name with no password is found, since it is likely a token."""
        token = "ghp_" + "a" * 36
        assert find_url_credentials(f"https://{token}@github.com") == [token]
        assert find_url_credentials(f"https://{token}:x-oauth-basic@h") == [token]

    def test_short_user_not_remembered(self) -> None:
        """A short user name alone is redacted in the URL but not remembered."""
        assert find_url_credentials("http://admin@proxy") == []
        assert redact_url("http://admin@proxy") == f"http://{REDACTED}@proxy"

    def test_no_credentials(self) -> None:
        """A URL without userinfo yields nothing."""
        assert find_url_credentials("http://proxy:3128") == []


class TestRegistry:
    def test_remembered_value_scrubbed(self) -> None:
        """A remembered secret disappears from any later text."""
        remember_secret("sk-live-abcdef")
        assert (
            scrub("401: key sk-live-abcdef invalid") == f"401: key {REDACTED} invalid"
        )

    def test_short_values_ignored(self) -> None:
        """Values shorter than MIN_SECRET_LENGTH are not scrubbed everywhere."""
        short = "a" * (MIN_SECRET_LENGTH - 1)
        remember_secret(short)
        assert scrub(f"{short} banana") == f"{short} banana"
        remember_secret("a" * MIN_SECRET_LENGTH)
        assert scrub("aaaa") == REDACTED

    def test_longest_first(self) -> None:
        """A secret containing another is replaced whole, not in pieces."""
        remember_secret("abcd")
        remember_secret("abcdefgh")
        assert scrub("xabcdefghx") == f"x{REDACTED}x"

    def test_regex_characters_literal(self) -> None:
        """Secret values are matched literally, regex characters included."""
        remember_secret("a.b*c(d")
        assert scrub("a.b*c(d axbbc(d") == f"{REDACTED} axbbc(d"

    def test_scrub_without_secrets_only_urls(self) -> None:
        """With nothing remembered, scrub still removes URL credentials."""
        assert scrub("plain") == "plain"
        assert scrub("http://u:pw@h") == f"http://u:{REDACTED}@h"

    def test_remember_environment(self) -> None:
        """Secret-named values and proxy passwords of any variable are remembered."""
        remember_environment(
            {
                "OPENAI_API_KEY": "sk-environment",
                "HTTPS_PROXY": "http://u:proxy-pass@p:1",
                "PLAIN": "visible-value",
                "UNSET_TOKEN": None,
                "NUMERIC_TOKEN": 12345678,
                "FLAG_TOKEN": True,
                "NESTED_TOKEN": {"a": 1},
            },
            Redactor(),
        )
        text = scrub("sk-environment proxy-pass visible-value 12345678 True")
        assert text == f"{REDACTED} {REDACTED} visible-value {REDACTED} True"

    def test_remember_environment_policy_patterns(self) -> None:
        """The redactor's extra patterns decide what else is remembered."""
        remember_environment({"CORP_SIG": "signature-1"}, Redactor(["*_SIG"]))
        assert scrub("signature-1") == REDACTED

    def test_concurrent_remember_and_scrub(self) -> None:
        """Threads remembering and scrubbing at once neither fail nor leak."""
        errors: list[BaseException] = []

        def writer(index: int) -> None:
            for n in range(50):
                remember_secret(f"secret-{index}-{n:04d}")

        def reader() -> None:
            try:
                for _ in range(200):
                    scrub("secret-0-0000 and text")
            except BaseException as error:  # pragma: no cover - reported below
                errors.append(error)

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
        threads += [threading.Thread(target=reader) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert errors == []
        assert scrub("secret-3-0049") == REDACTED


class TestMessage:
    def test_env_mapping(self) -> None:
        """An env map's secret-named values are redacted and URLs lose passwords."""
        message = {
            "env": {
                "OPENAI_API_KEY": "sk-1",
                "HTTP_PROXY": "http://u:pw@proxy",
                "NO_PROXY": "localhost",
                "REMOVED": None,
            }
        }
        assert Redactor().message(message) == {
            "env": {
                "OPENAI_API_KEY": REDACTED,
                "HTTP_PROXY": f"http://u:{REDACTED}@proxy",
                "NO_PROXY": "localhost",
                "REMOVED": None,
            }
        }

    def test_numbers_under_secret_keys(self) -> None:
        """A number under a secret key is redacted; a boolean is kept."""
        message = {"pin_password": 1234, "use_token": True, "temperature": 0.5}
        assert Redactor().message(message) == {
            "pin_password": REDACTED,
            "use_token": True,
            "temperature": 0.5,
        }

    def test_nested_under_secret_key(self) -> None:
        """Lists and objects under a secret key have every scalar redacted."""
        message = {"api_keys": ["sk-1", "sk-2"], "credentials": {"user": "bob"}}
        assert Redactor().message(message) == {
            "api_keys": [REDACTED, REDACTED],
            "credentials": {"user": REDACTED},
        }

    def test_remembered_value_anywhere(self) -> None:
        """A remembered secret is removed from strings under any key, and keys."""
        remember_secret("sk-remembered")
        message = {"params": ["echo sk-remembered"], "sk-remembered": 1}
        assert Redactor().message(message) == {
            "params": [f"echo {REDACTED}"],
            REDACTED: 1,
        }

    def test_deep_copy(self) -> None:
        """The input is not modified."""
        message: dict[str, Any] = {
            "env": {"TOKEN": "t0ken-value"},
            "list": [{"a": "b"}],
        }
        copy = Redactor().message(message)
        assert message == {"env": {"TOKEN": "t0ken-value"}, "list": [{"a": "b"}]}
        copy["list"][0]["a"] = "changed"
        assert message["list"][0]["a"] == "b"

    @pytest.mark.parametrize("value", [None, True, 3, 2.5, "text", [], {}])
    def test_scalars(self, value: object) -> None:
        """JSON scalars and empty containers at the top level come back equal."""
        assert Redactor().message(value) == value

    def test_model_provider_args(self) -> None:
        """The model provider's api_key and apiKey are redacted, the model kept."""
        message = {"args": {"api_key": "sk-x", "apiKey": "sk-y", "model": "gpt"}}
        assert Redactor().message(message) == {
            "args": {"api_key": REDACTED, "apiKey": REDACTED, "model": "gpt"}
        }


def _record(msg: str, *args: object, sinfo: str | None = None) -> logging.LogRecord:
    return logging.LogRecord(
        "t", logging.WARNING, __file__, 1, msg, args, None, sinfo=sinfo
    )


class TestScrubbingFilter:
    def test_renders_and_scrubs(self) -> None:
        """The record's message is rendered, scrubbed and stored without args."""
        remember_secret("sk-in-log-line")
        record = _record("key %s via %s", "sk-in-log-line", "http://u:pw@proxy")
        assert ScrubbingFilter().filter(record) is True
        assert record.msg == f"key {REDACTED} via http://u:{REDACTED}@proxy"
        assert record.args is None
        assert record.getMessage() == record.msg

    def test_exception_text(self) -> None:
        """The traceback text of a logged exception is scrubbed too."""
        remember_secret("sk-in-exception")
        try:
            raise ValueError("bad key sk-in-exception")
        except ValueError:
            record = logging.LogRecord(
                "t", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()
            )
        ScrubbingFilter().filter(record)
        assert record.exc_text is not None
        assert "sk-in-exception" not in record.exc_text
        assert "ValueError" in record.exc_text

        formatted = logging.Formatter().format(record)
        assert "sk-in-exception" not in formatted

    def test_stack_info(self) -> None:
        """Stack text is scrubbed."""
        remember_secret("sk-in-stack")
        record = _record("m", sinfo="Stack: sk-in-stack")
        ScrubbingFilter().filter(record)
        assert record.stack_info == f"Stack: {REDACTED}"

    def test_idempotent(self) -> None:
        """Filtering a record twice (two handlers) changes nothing more."""
        remember_secret("sk-twice-filtered")
        record = _record("%s %s", "sk-twice-filtered", "http://u:pw@h")
        ScrubbingFilter().filter(record)
        once = record.getMessage()
        ScrubbingFilter().filter(record)
        assert record.getMessage() == once == f"{REDACTED} http://u:{REDACTED}@h"

    def test_bad_arguments_never_raise(self) -> None:
        """A record whose arguments do not format is kept, without the arguments."""
        record = _record("%d items", "sk-not-a-number")
        assert ScrubbingFilter().filter(record) is True
        assert "sk-not-a-number" not in record.getMessage()
        assert record.getMessage().startswith("%d items (arguments dropped")

    def test_unrenderable_traceback_dropped(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If a traceback cannot be rendered, exc_info is dropped, not left raw."""
        remember_secret("sk-raw-traceback")

        def broken(*args: object) -> list[str]:
            raise RuntimeError("cannot render")

        try:
            raise ValueError("sk-raw-traceback")
        except ValueError:
            record = logging.LogRecord(
                "t", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()
            )
        monkeypatch.setattr(traceback, "format_exception", broken)
        assert ScrubbingFilter().filter(record) is True
        monkeypatch.undo()
        assert record.exc_info is None
        assert "sk-raw-traceback" not in logging.Formatter().format(record)

    def test_through_a_handler(self, caplog: pytest.LogCaptureFixture) -> None:
        """Attached to a handler, the filter keeps secrets out of emitted lines."""
        remember_secret("sk-through-handler")
        handler_filter = ScrubbingFilter()
        caplog.handler.addFilter(handler_filter)
        try:
            logging.getLogger("kai_rpc.test").warning("token=%s", "sk-through-handler")
        finally:
            caplog.handler.removeFilter(handler_filter)
        assert "sk-through-handler" not in caplog.text
        assert REDACTED in caplog.text
