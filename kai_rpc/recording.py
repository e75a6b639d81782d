"""Recorded sessions: write every message of a conversation, and replay it later.

A recording is JSON Lines, one message per line::

    {"direction": "client->server", "t": 12.345678, "message": {...}}

``t`` is ``time.monotonic()`` in seconds; ``message`` is the parsed JSON body after
:meth:`Redactor.message`, the same redaction the reports get. A body that is not
JSON is recorded as a marker string (:data:`UNPARSABLE_MARKER`), never as its bytes.
The file is created readable and writable by its owner only.

Three ways in:

- :class:`Recorder`, which ``kai-rpc serve --record FILE`` feeds every frame body;
- :func:`record_proxy` (``kai-rpc record --out FILE -- COMMAND...``), which sits
  between a client on its own stdin/stdout and a server subprocess, passes the bytes
  through unchanged and records each frame on the side;
- :func:`replay` (``kai-rpc replay FILE [-- COMMAND...]``), which starts a fresh
  server, sends the recorded client messages in order and compares what comes back
  with the recording after :data:`NORMALISATION_RULES`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import difflib
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from kai_rpc import contract
from kai_rpc.exceptions import FramingError
from kai_rpc.framing import FrameReader, encode_frame, encode_message
from kai_rpc.redact import Redactor, remember_environment

logger = logging.getLogger(__name__)

CLIENT_TO_SERVER = "client->server"
SERVER_TO_CLIENT = "server->client"
UNPARSABLE_MARKER = "<unparsable body of {size} bytes>"
DEFAULT_SERVER = [sys.executable, "-m", "kai_rpc", "serve"]
DEFAULT_TIMEOUT = 30.0
_CHUNK = 64 * 1024


# --- Recording -----------------------------------------------------------------


def _open_private(path: Path) -> int:
    """A new file that only its owner can read: created with mode 0600 in one
    step, never widened then narrowed. An existing file is replaced, not reused,
    so its old (maybe wider) mode cannot carry over; O_EXCL refuses a symlink."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, flags, 0o600)
    except FileExistsError:
        path.unlink()
        return os.open(path, flags, 0o600)


def _env_maps(message: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The env maps a client message carries, wherever the contract puts them."""
    params = message.get("params")
    if not isinstance(params, dict):
        return
    method = message.get("method")
    if method == contract.INITIALIZE:
        options = params.get("initializationOptions")
        env = options.get("env") if isinstance(options, dict) else None
    elif method == contract.SET_ENVIRONMENT:
        env = params.get("env")
    elif method == contract.DID_CHANGE_CONFIGURATION:
        settings = params.get("settings")
        kai = settings.get("kai") if isinstance(settings, dict) else None
        env = kai.get("env") if isinstance(kai, dict) else None
    else:
        env = None
    if isinstance(env, dict):
        yield env


class Recorder:
    """Writes one redacted JSON line per frame body."""

    def __init__(self, path: str | Path, redactor: Redactor) -> None:
        self.path = Path(path)
        self._redactor = redactor
        self._file: IO[str] | None = os.fdopen(
            _open_private(self.path), "w", encoding="utf-8"
        )
        logger.info("recording messages to %s", self.path)

    def record(self, from_client: bool, body: bytes) -> None:
        """Append one message: parsed, redacted, flushed at once."""
        if self._file is None:
            logger.debug("recorder closed: dropping a %d-byte message", len(body))
            return
        try:
            message: Any = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            message = UNPARSABLE_MARKER.format(size=len(body))

        if from_client and isinstance(message, dict):
            # A secret sent in an env map is scrubbed wherever it shows up again,
            # e.g. echoed in a worker's error text.
            for env in _env_maps(message):
                remember_environment(env, self._redactor)
        line = {
            "direction": CLIENT_TO_SERVER if from_client else SERVER_TO_CLIENT,
            "t": round(time.monotonic(), 6),
            "message": self._redactor.message(message),
        }
        self._file.write(json.dumps(line, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file; later records are dropped."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Tap:
    """Parses a copy of a byte stream into frames for the recorder, on the side:
    the bytes themselves are forwarded by the caller, unchanged and unparsed."""

    def __init__(self, from_client: bool, recorder: Recorder) -> None:
        self._stream = asyncio.StreamReader()
        self._from_client = from_client
        self._recorder = recorder
        self.task = asyncio.create_task(self._run())

    def feed(self, data: bytes) -> None:
        self._stream.feed_data(data)

    def end(self) -> None:
        self._stream.feed_eof()

    async def _run(self) -> None:
        reader = FrameReader(self._stream)
        while True:
            try:
                body = await reader.read_frame()
            except FramingError as exc:
                # The bytes went through as they were; only the record lacks them.
                logger.warning("not recorded: %s", exc.message)
                continue
            if body is None:
                return
            self._recorder.record(self._from_client, body)


async def _pump(
    source: asyncio.StreamReader, sink: asyncio.StreamWriter, tap: _Tap
) -> None:
    """Copy ``source`` to ``sink`` chunk by chunk, feeding the tap a copy."""
    try:
        while chunk := await source.read(_CHUNK):
            sink.write(chunk)
            tap.feed(chunk)
            await sink.drain()
    except (ConnectionError, BrokenPipeError):
        logger.info("the other end closed its pipe; stopping this direction")
    finally:
        tap.end()
        with contextlib.suppress(ConnectionError, BrokenPipeError):
            sink.close()


async def _stdio() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """This process's stdin and stdout as asyncio streams (pipes or sockets)."""
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader(limit=_CHUNK)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stdin), os.fdopen(0, "rb", closefd=False)
    )
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(1, "wb", closefd=False)
    )
    stdout = asyncio.StreamWriter(transport, protocol, None, loop)
    return stdin, stdout


def _exit_code(returncode: int) -> int:
    """A shell-style exit code: 128 + N for a server killed by signal N."""
    return returncode if returncode >= 0 else 128 - returncode


async def record_proxy(out: Path, command: list[str], redactor: Redactor) -> int:
    """Run ``command`` as the server on this process's stdio, recording to ``out``.

    Bytes pass through unchanged in both directions, headers included. Returns the
    server's exit code once it has exited and its output has been forwarded.
    """
    stdin, stdout = await _stdio()
    server = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert server.stdin is not None and server.stdout is not None
    with Recorder(out, redactor) as recorder:
        to_server = _Tap(True, recorder)
        to_client = _Tap(False, recorder)
        upstream = asyncio.create_task(_pump(stdin, server.stdin, to_server))
        try:
            await _pump(server.stdout, stdout, to_client)
            returncode = await server.wait()
        finally:
            upstream.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upstream
            to_server.end()
            await asyncio.gather(to_server.task, to_client.task)
            if server.returncode is None:
                server.kill()
                await server.wait()
    logger.info("server exited with code %d", returncode)
    return _exit_code(returncode)


def _redactor_for(policy_file: str | None) -> Redactor:
    """The policy's redactor (its extra secret patterns), or the default one."""
    from kai_rpc import policy

    the_policy, _ = policy.load_policy(policy_file, os.environ)
    return the_policy.redactor()


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """Options before ``--``, the server command after it. A leading ``--`` (which
    a caller's own parser may pass on) is dropped first."""
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1 :]


def record_main(argv: list[str]) -> int:
    """``kai-rpc record --out FILE [--policy FILE] -- COMMAND...``"""
    parser = argparse.ArgumentParser(
        prog="kai-rpc record",
        usage="%(prog)s --out FILE [--policy FILE] -- COMMAND...",
        description="Sit between a client (this process's stdin/stdout) and a "
        "server command on stdio, pass every byte through unchanged, and write "
        "each message, redacted, as one JSON line to FILE (mode 0600).",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="FILE")
    parser.add_argument(
        "--policy", metavar="FILE", help="policy whose secret patterns also apply"
    )
    options, command = _split(argv)
    args = parser.parse_args(options)
    if not command:
        parser.error("give the server command after --, e.g. -- kai-rpc serve")
    return asyncio.run(record_proxy(args.out, command, _redactor_for(args.policy)))


# --- Normalisation -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rule:
    """One thing that legitimately differs between runs, and what replaces it."""

    name: str
    why: str
    keys: frozenset[str] = frozenset()
    """Replace the whole value under these keys (at any depth) by ``placeholder``."""
    pattern: re.Pattern[str] | None = None
    """Or replace matches of this pattern inside any string by ``placeholder``."""
    placeholder: str = ""


def _temp_roots() -> str:
    roots = {tempfile.gettempdir(), "/tmp", "/var/tmp", "/private/var/folders"}
    return "|".join(sorted(map(re.escape, roots), key=len, reverse=True))


NORMALISATION_RULES: tuple[Rule, ...] = (
    Rule(
        "pid",
        "every run starts new processes",
        keys=frozenset({"pid", "processId"}),
        placeholder="<pid>",
    ),
    Rule(
        "pid in text",
        "messages such as 'worker 4242 exited' name the process",
        pattern=re.compile(r"\b(pid|process|worker)([ =:]+)\d+\b", re.IGNORECASE),
        placeholder=r"\1\2<pid>",
    ),
    Rule(
        "pid in brackets",
        "log lines in a worker's stderr tail: 'worker[4242]'",
        pattern=re.compile(r"(\w)\[\d+\]"),
        placeholder=r"\1[<pid>]",
    ),
    Rule(
        "duration",
        "how long a request took depends on the machine",
        keys=frozenset({"elapsedMs", "durationMs", "uptimeMs"}),
        placeholder="<duration>",
    ),
    Rule(
        "duration in text",
        "'after 0.52 s', 'in 12 ms'",
        pattern=re.compile(r"\b\d+(?:\.\d+)?\s?(?:ms|s|seconds?)\b"),
        placeholder="<duration>",
    ),
    Rule(
        "timestamp",
        "ISO 8601 times: certificate validity of per-run test CAs, log times",
        pattern=re.compile(
            r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?"
            r"(?:Z|[+-]\d{2}:?\d{2})?"
        ),
        placeholder="<timestamp>",
    ),
    Rule(
        "installed package path",
        "the virtual environment lives wherever the checkout is: "
        "'/x/.venv/lib/python3.11/site-packages/certifi' becomes "
        "'<site-packages>/certifi'",
        pattern=re.compile(r"(?:/[^\s\"',;:/]+)+/site-packages/"),
        placeholder="<site-packages>/",
    ),
    Rule(
        "temporary path",
        "temporary directories get a random name per run; the base name is kept",
        pattern=re.compile(rf"(?:{_temp_roots()})/(?:[^\s\"',;:]*/)?([^\s\"',;:/]+)"),
        placeholder=r"<tmp>/\1",
    ),
    Rule(
        "loopback port",
        "test proxies and servers listen on a free port chosen per run",
        pattern=re.compile(r"\b(localhost|127\.0\.0\.1|\[::1\]|0\.0\.0\.0):\d+"),
        placeholder=r"\1:<port>",
    ),
    Rule(
        "version",
        "library and server versions differ between machines, not behaviour",
        keys=frozenset({"version", "clientVersion"}),
        placeholder="<version>",
    ),
)


def _normalise_string(text: str) -> str:
    for rule in NORMALISATION_RULES:
        if rule.pattern is not None:
            text = rule.pattern.sub(rule.placeholder, text)
    return text


def _placeholder_for(key: str) -> str | None:
    for rule in NORMALISATION_RULES:
        if key in rule.keys:
            return rule.placeholder
    return None


def normalise(value: Any) -> Any:
    """A copy of a JSON value with every :data:`NORMALISATION_RULES` applied."""
    if isinstance(value, dict):
        copy: dict[str, Any] = {}
        for key, item in value.items():
            placeholder = _placeholder_for(key)
            keep = placeholder is None or item is None
            copy[key] = normalise(item) if keep else placeholder
        return copy
    if isinstance(value, list):
        return [normalise(item) for item in value]
    if isinstance(value, str):
        return _normalise_string(value)
    return value


def rules_table() -> str:
    """The rules as a Markdown table, for the README and ``--rules``."""
    lines = ["| rule | where | becomes | why |", "|---|---|---|---|"]
    for rule in NORMALISATION_RULES:
        if rule.keys:
            where = "value of " + ", ".join(f"`{k}`" for k in sorted(rule.keys))
        else:
            where = "inside strings"
        shown = rule.placeholder.replace("\\1", "…").replace("\\2", "")
        lines.append(f"| {rule.name} | {where} | `{shown}` | {rule.why} |")
    return "\n".join(lines)


# --- Replay --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Entry:
    """One line of a recording."""

    line: int
    from_client: bool
    message: Any


def load_recording(path: Path) -> list[Entry]:
    """The entries of a recording file, checked for shape."""
    entries = []
    with path.open(encoding="utf-8") as lines:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
                item = json.loads(text)
                direction = item["direction"]
                message = item["message"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"{path}:{number}: not a recording line ({exc}); expected "
                    '{"direction": ..., "t": ..., "message": ...}'
                ) from None
            if direction not in (CLIENT_TO_SERVER, SERVER_TO_CLIENT):
                raise ValueError(
                    f"{path}:{number}: direction {direction!r} is neither "
                    f"{CLIENT_TO_SERVER!r} nor {SERVER_TO_CLIENT!r}"
                )
            entries.append(Entry(number, direction == CLIENT_TO_SERVER, message))
    return entries


Identity = tuple[str, str, int]
"""(kind, name, ordinal): how a server message is matched across runs."""


def _kind(message: Any) -> tuple[str, str]:
    """Responses are matched by id; notifications and server requests by method,
    in order within that method. Order *between* these streams is not compared:
    an environmentStatus may come before or after a response in a different run."""
    if not isinstance(message, dict):
        return ("unparsable", "")
    if "method" in message:
        kind = "request" if "id" in message else "notification"
        return (kind, str(message["method"]))
    return ("response", json.dumps(message.get("id")))


def identities(messages: Sequence[Any]) -> list[Identity]:
    """The identity of each server message, in order."""
    seen: dict[tuple[str, str], int] = {}
    result = []
    for message in messages:
        kind = _kind(message)
        seen[kind] = seen.get(kind, 0) + 1
        result.append((*kind, seen[kind]))
    return result


def _payload(message: Any) -> bytes:
    """The body to send for a recorded client message. An unparsable body was
    recorded as a marker; its text is sent as is, itself not JSON, so the server's
    parse-error answer can still be compared."""
    if isinstance(message, str) and message.startswith("<unparsable"):
        return encode_frame(message.encode())
    if isinstance(message, dict) and message.get("method") == contract.INITIALIZE:
        params = message.get("params")
        if isinstance(params, dict) and params.get("processId") is not None:
            # The recorded client is gone; a server watching its parent would exit.
            message = {**message, "params": {**params, "processId": os.getpid()}}
    return encode_message(message)


class _Server:
    """A fresh server subprocess and everything it has said so far."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.received: list[Any] = []
        self._changed = asyncio.Condition()
        assert process.stdout is not None
        self.reader = asyncio.create_task(self._read(FrameReader(process.stdout)))

    async def _read(self, frames: FrameReader) -> None:
        while True:
            try:
                body = await frames.read_frame()
            except FramingError as exc:
                body = json.dumps(f"<framing error: {exc.message}>").encode()
            if body is None:
                break
            try:
                message = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError):
                message = UNPARSABLE_MARKER.format(size=len(body))
            async with self._changed:
                self.received.append(message)
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    def send(self, message: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(_payload(message))

    async def wait_for(self, wanted: set[Identity], timeout: float) -> bool:
        """Whether every wanted message arrived within ``timeout`` seconds."""

        def arrived() -> bool:
            done = self.reader.done()
            return done or wanted <= set(identities(self.received))

        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(arrived)
        except TimeoutError:
            return False
        return wanted <= set(identities(self.received))

    async def stop(self, timeout: float) -> None:
        """Close stdin, let the server exit, kill it if it does not."""
        assert self.process.stdin is not None
        with contextlib.suppress(ConnectionError):
            self.process.stdin.close()
        try:
            async with asyncio.timeout(timeout):
                await self.process.wait()
        except TimeoutError:
            logger.warning("server did not exit within %s s: killing it", timeout)
            self.process.kill()
            await self.process.wait()
        await self.reader


@dataclasses.dataclass
class ReplayOutcome:
    """What a replay found: ``ok`` and a readable report of each difference."""

    ok: bool
    report: str
    stalled_at: int | None = None
    """The recording line that replay stopped before, waiting in vain."""


@dataclasses.dataclass
class _Stall:
    """Where replay waited in vain: before which line, for which messages."""

    line: int
    missing: list[Identity]


async def _drive(
    entries: list[Entry], server: _Server, timeout: float
) -> _Stall | None:
    """Send the client messages in order, each once the server messages recorded
    before it have arrived. After the first wait in vain, later waits are for
    responses only (matched by id, so still meaningful) to finish in bounded time;
    the comparison then shows what went missing."""
    before: list[Any] = []
    stall: _Stall | None = None
    for entry in [*entries, None]:
        if entry is not None and not entry.from_client:
            before.append(entry.message)
            continue
        wanted = set(identities(before))
        if stall is not None:
            wanted = {identity for identity in wanted if identity[0] == "response"}
        if not await server.wait_for(wanted, timeout) and stall is None:
            got = set(identities(server.received))
            line = entry.line if entry is not None else entries[-1].line
            stall = _Stall(line, sorted(wanted - got))
        if entry is None or server.reader.done():
            break
        server.send(entry.message)
    return stall


async def replay(
    path: Path,
    command: Sequence[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> ReplayOutcome:
    """Replay the recording at ``path`` against a fresh ``command`` (run in ``cwd``,
    where relative paths in the recording resolve, with ``env`` or this process's
    environment) and compare."""
    entries = load_recording(path)
    process = await asyncio.create_subprocess_exec(
        *(command or DEFAULT_SERVER),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=env,
    )
    server = _Server(process)
    try:
        stalled = await _drive(entries, server, timeout)
    finally:
        await server.stop(timeout)
    outcome = compare(path, entries, server.received)
    if stalled is not None:
        methods = _request_methods(entries)
        missing = ", ".join(
            _describe(identity, methods) for identity in stalled.missing
        )
        outcome.ok = False
        outcome.stalled_at = stalled.line
        outcome.report = (
            f"replay waited {timeout} s in vain before sending {path}:{stalled.line} "
            f"for: {missing}\n\n" + outcome.report
        )
    return outcome


def _request_methods(entries: list[Entry]) -> dict[str, str]:
    """Request id (as JSON) to method, for the client's requests."""
    return {
        json.dumps(e.message.get("id")): str(e.message.get("method"))
        for e in entries
        if e.from_client and isinstance(e.message, dict) and "id" in e.message
    }


def _describe(identity: Identity, methods: dict[str, str]) -> str:
    kind, name, ordinal = identity
    if kind == "response":
        answered = methods.get(name)
        to = f" to {answered}" if answered else ""
        return f"response id={name}{to}"
    if kind == "unparsable":
        return f"unparsable message #{ordinal}"
    return f"{kind} {name} #{ordinal}"


def _pretty(message: Any) -> list[str]:
    return json.dumps(message, indent=2, sort_keys=True, ensure_ascii=False).split("\n")


def compare(path: Path, entries: list[Entry], received: list[Any]) -> ReplayOutcome:
    """Compare recorded server messages with ``received``, both normalised."""
    recorded = [e for e in entries if not e.from_client]
    methods = _request_methods(entries)
    expected = dict(
        zip(identities([e.message for e in recorded]), recorded, strict=True)
    )
    actual = dict(zip(identities(received), received, strict=True))

    problems = []
    for identity, entry in expected.items():
        where = f"{path}:{entry.line} ({_describe(identity, methods)})"
        old = normalise(entry.message)
        if identity not in actual:
            problems.append(f"missing {where}: the server never sent it")
            continue
        new = normalise(actual[identity])
        if old != new:
            diff = difflib.unified_diff(
                _pretty(old), _pretty(new), "recorded", "replayed", lineterm=""
            )
            problems.append(f"changed {where}:\n" + "\n".join(diff))
    for identity, message in actual.items():
        if identity not in expected:
            what = _describe(identity, methods)
            body = "\n".join(_pretty(normalise(message)))
            problems.append(f"unexpected {what}, not in {path}:\n{body}")

    if not problems:
        return ReplayOutcome(True, f"{path}: {len(recorded)} server messages match")
    return ReplayOutcome(False, "\n\n".join(problems))


def replay_main(argv: list[str], out: IO[str] | None = None) -> int:
    """``kai-rpc replay FILE [--timeout S] [-- COMMAND...]``"""
    parser = argparse.ArgumentParser(
        prog="kai-rpc replay",
        usage="%(prog)s [--timeout SECONDS] FILE [-- COMMAND...]",
        description="Start a fresh server, send the recorded client messages in "
        "order and compare its answers and notifications with the recording. "
        "Responses are matched by id, notifications per method in order. "
        "Exits 1 on any difference, printing a diff per changed message.",
    )
    parser.add_argument("file", type=Path)
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds to wait for each awaited message (default {DEFAULT_TIMEOUT})",
    )
    options, command = _split(argv)
    args = parser.parse_args(options)
    stream = out or sys.stdout
    try:
        outcome = asyncio.run(replay(args.file, command or None, args.timeout))
    except (OSError, ValueError) as exc:
        stream.write(f"kai-rpc replay: {exc}\n")
        return 2
    stream.write(outcome.report + "\n")
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    # python -m kai_rpc.recording {record|replay} ...: the same as kai-rpc record
    # and kai-rpc replay, for callers that want no console script.
    _mains = {"record": record_main, "replay": replay_main}
    if len(sys.argv) < 2 or sys.argv[1] not in _mains:
        sys.exit("usage: python -m kai_rpc.recording {record|replay} ...")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    sys.exit(_mains[sys.argv[1]](sys.argv[2:]))
