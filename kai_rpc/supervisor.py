"""Worker processes and their supervision.

A ``WorkerProcess`` is one worker subprocess: its pipes, the requests it holds and
the tail of its stderr. The ``Supervisor`` keeps exactly one current worker: it
replaces it when the environment changes (the old one finishes what it holds, within
a grace period), restarts it with backoff when it dies, and gives up (``failed``)
after repeated failures. Every request a dying worker held is answered with an error
at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from kai_rpc import contract, redact
from kai_rpc.contract import ErrorCode, WorkerInspection, WorkerState, WorkerStatus
from kai_rpc.exceptions import (
    KaiRpcError,
    RemoteError,
    WorkerLost,
    WorkerStartFailed,
    WorkerUnavailable,
)
from kai_rpc.framing import (
    MAX_HEADER_LINE_BYTES,
    WORKER_MAX_MESSAGE_BYTES,
    FrameReader,
    encode_message,
    parse_body,
)

logger = logging.getLogger(__name__)

STDERR_TAIL_LINES = 40
STDERR_LINE_BYTES = 2000
ERROR_TAIL_LINES = 8
STDERR_RELAY_PER_SECOND = 20


@dataclass(frozen=True)
class Timings:
    """How long the supervisor waits, in seconds."""

    ready_timeout: float = 30.0
    retire_grace: float = 10.0
    stop_timeout: float = 2.0
    backoff_first: float = 0.1
    backoff_max: float = 2.0
    max_failures: int = 5
    stable_after: float = 10.0


@dataclass(frozen=True)
class Launch:
    """Everything a worker is started with."""

    command: list[str]
    env: dict[str, str]
    cwd: str | None
    config: contract.WorkerConfig


@dataclass
class _Pending:
    client_id: Any = None
    future: asyncio.Future[Any] | None = None


# Messages the worker sends that are not answers to the bridge's own requests.
MessageSink = Callable[["WorkerProcess", dict[str, Any]], None]


@dataclass(eq=False)
class WorkerProcess:
    """One worker subprocess."""

    launch: Launch
    sink: MessageSink
    on_exit: Callable[[WorkerProcess], None]
    serial: int = 0
    process: asyncio.subprocess.Process | None = None
    inspection: WorkerInspection | None = None
    ready_at: float | None = None
    retiring: bool = False
    _pending: dict[int, _Pending] = field(default_factory=dict)
    _by_client_id: dict[Any, int] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _stderr: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=STDERR_TAIL_LINES)
    )
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _relay_window: float = 0.0
    _relay_count: int = 0
    _relay_dropped: int = 0
    _exited: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        return self.process is not None and not self._exited.is_set()

    async def start(self, timeout: float) -> WorkerInspection:
        """Spawn the worker and wait until it answers ``kai/configure``."""
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.launch.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.launch.env,
                cwd=self.launch.cwd,
                limit=MAX_HEADER_LINE_BYTES,
            )
        except OSError as exc:
            command = self.launch.command[0]
            raise WorkerStartFailed(
                f"cannot start worker {command!r}: {exc.strerror}; check the "
                "worker command and working directory"
            ) from None
        logger.info("worker %d started", self.pid)
        self._tasks = [
            asyncio.create_task(self._read_stdout()),
            asyncio.create_task(self._read_stderr()),
            asyncio.create_task(self._wait()),
        ]
        return await self._configure(timeout)

    async def _configure(self, timeout: float) -> WorkerInspection:
        config = self.launch.config.wire()
        try:
            async with asyncio.timeout(timeout):
                result = await self.request(contract.WORKER_CONFIGURE, config)
        except TimeoutError:
            await self.stop(0.5)
            raise WorkerStartFailed(
                f"worker {self.pid} did not become ready within {timeout:g} s"
                + self.stderr_excerpt()
            ) from None
        except KaiRpcError as exc:
            await self.stop(0.5)
            raise WorkerStartFailed(
                f"worker {self.pid} failed to start: {exc.message}"
                + self.stderr_excerpt()
            ) from None
        self.inspection = WorkerInspection.model_validate(result)
        self.ready_at = time.monotonic()
        return self.inspection

    def stderr_excerpt(self) -> str:
        """The last lines of the worker's stderr, secrets scrubbed, for errors."""
        tail = list(self._stderr)[-ERROR_TAIL_LINES:]
        if not tail:
            return ""
        return "; stderr tail:\n" + "\n".join(tail)

    async def request(self, method: str, params: Any) -> Any:
        """Send a request of the bridge's own and wait for its result."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        request_id = next(self._ids)
        self._pending[request_id] = _Pending(future=future)
        self._send(
            {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        )
        return await future

    def forward_request(self, client_id: Any, message: dict[str, Any]) -> None:
        """Send a client's request under a worker-local id."""
        if not self.alive:
            raise WorkerLost(f"worker {self.pid} has exited")
        request_id = next(self._ids)
        self._pending[request_id] = _Pending(client_id=client_id)
        self._by_client_id[client_id] = request_id
        self._send({**message, "id": request_id})

    def holds(self, client_id: Any) -> bool:
        return client_id in self._by_client_id

    def cancel(self, client_id: Any) -> None:
        """Pass the client's ``$/cancelRequest`` on under the worker-local id."""
        request_id = self._by_client_id.get(client_id)
        if request_id is not None:
            self.send_raw(
                {
                    "jsonrpc": "2.0",
                    "method": contract.CANCEL_REQUEST,
                    "params": {"id": request_id},
                }
            )

    def send_raw(self, message: dict[str, Any]) -> None:
        """Send a notification, or a response to the worker's own request."""
        if self.alive:
            self._send(message)

    def _send(self, message: dict[str, Any]) -> None:
        assert self.process is not None and self.process.stdin is not None
        if self.process.stdin.is_closing():
            raise WorkerLost(f"worker {self.pid} no longer reads its stdin")
        self.process.stdin.write(encode_message(message))

    async def _read_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        reader = FrameReader(self.process.stdout, WORKER_MAX_MESSAGE_BYTES)
        bad_frames = 0
        while True:
            try:
                body = await reader.read_frame()
            except KaiRpcError as exc:
                bad_frames += 1
                if bad_frames in (1, 10, 100, 1000) or bad_frames % 10000 == 0:
                    logger.warning(
                        "worker %d wrote %d bad frame(s) on stdout: %s",
                        self.pid,
                        bad_frames,
                        exc.message,
                    )
                continue
            if body is None:
                return
            self._receive(body)

    def _receive(self, body: bytes) -> None:
        try:
            message = parse_body(body)
        except KaiRpcError as exc:
            logger.warning("worker %d sent a bad message: %s", self.pid, exc.message)
            return
        if "method" in message:
            self.sink(self, message)
            return
        pending = self._pending.pop(message.get("id"), None)  # type: ignore[arg-type]
        if pending is None:
            logger.warning("worker %d answered an unknown id", self.pid)
        elif pending.future is not None:
            _settle(pending.future, message)
        else:
            self._by_client_id.pop(pending.client_id, None)
            self.sink(self, {**message, "id": pending.client_id})

    async def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        partial = b""
        while chunk := await self.process.stderr.read(65536):
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()[-STDERR_LINE_BYTES:]
            for line in lines:
                self._keep_stderr_line(line)
        if partial:
            self._keep_stderr_line(partial)
        self._report_dropped()

    def _keep_stderr_line(self, line: bytes) -> None:
        text = redact.scrub(line[:STDERR_LINE_BYTES].decode("utf-8", "replace"))
        self._stderr.append(text.rstrip())
        self._relay(text.rstrip())

    def _relay(self, text: str) -> None:
        """Pass a line of the worker's stderr on to the bridge's log, at most
        STDERR_RELAY_PER_SECOND a second, so a flooding worker cannot flood it."""
        now = time.monotonic()
        if now - self._relay_window >= 1.0:
            self._report_dropped()
            self._relay_window, self._relay_count = now, 0
        if self._relay_count < STDERR_RELAY_PER_SECOND:
            self._relay_count += 1
            logger.info("worker %d: %s", self.pid, text)
        else:
            self._relay_dropped += 1

    def _report_dropped(self) -> None:
        if self._relay_dropped:
            logger.info(
                "worker %d: %d more lines of its stderr not shown",
                self.pid,
                self._relay_dropped,
            )
            self._relay_dropped = 0

    async def _wait(self) -> None:
        assert self.process is not None
        code = await self.process.wait()
        # Let the pipes drain so the last words and answers are not lost.
        await asyncio.gather(*self._tasks[:2], return_exceptions=True)
        self._exited.set()
        log = logger.info if self.retiring else logger.warning
        log("worker %d exited with code %s", self.pid, code)
        self._fail_pending(code)
        self.on_exit(self)

    def _fail_pending(self, code: int) -> None:
        error = WorkerLost(
            f"worker {self.pid} exited with code {code} while handling the "
            "request; the bridge is restarting it, send the request again"
            + self.stderr_excerpt()
        )
        pending, self._pending = self._pending, {}
        self._by_client_id.clear()
        for entry in pending.values():
            if entry.future is not None:
                if not entry.future.done():
                    entry.future.set_exception(error)
            else:
                self.sink(
                    self,
                    {
                        "jsonrpc": "2.0",
                        "id": entry.client_id,
                        "error": error.to_error(),
                    },
                )

    @property
    def exit_code(self) -> int | None:
        return self.process.returncode if self.process else None

    async def retire(self, grace: float) -> None:
        """Let the worker finish what it holds, then stop it."""
        self.retiring = True
        deadline = time.monotonic() + grace
        while self._pending and time.monotonic() < deadline and self.alive:
            await asyncio.sleep(0.05)
        await self.stop()

    async def stop(self, timeout: float = 2.0) -> None:
        """Close stdin (the worker exits on EOF), then terminate, then kill."""
        self.retiring = True
        process = self.process
        if process is None or process.returncode is not None:
            await self._exited_or_none()
            return
        if process.stdin is not None:
            process.stdin.close()
        for signal_step in (None, process.terminate, process.kill):
            if signal_step is not None:
                with contextlib.suppress(ProcessLookupError):
                    signal_step()
            try:
                async with asyncio.timeout(timeout):
                    await self._exited.wait()
                return
            except TimeoutError:
                continue

    async def _exited_or_none(self) -> None:
        if self.process is not None and self._tasks:
            await self._exited.wait()


class BackgroundTasks:
    """Strong references to tasks nobody awaits, with their failures logged."""

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s task failed", self._owner, exc_info=task.exception())

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()


def _settle(future: asyncio.Future[Any], message: dict[str, Any]) -> None:
    if future.done():
        return
    error = message.get("error")
    if isinstance(error, dict):
        code = error.get("code", ErrorCode.INTERNAL_ERROR)
        future.set_exception(RemoteError(code, str(error.get("message", ""))))
    else:
        future.set_result(message.get("result"))


class Supervisor:
    """Keeps one current worker serving, through replacements and crashes."""

    def __init__(
        self,
        sink: MessageSink,
        on_state_change: Callable[[], None],
        timings: Timings | None = None,
    ) -> None:
        self._sink = sink
        self._on_state_change = on_state_change
        self.timings = timings or Timings()
        self.current: WorkerProcess | None = None
        self.state: WorkerState = "stopped"
        self.restarts = 0
        self.last_error: str | None = None
        self._failures = 0
        self._serials = itertools.count(1)
        self._ready = asyncio.Event()
        self._workers: set[WorkerProcess] = set()
        self._background = BackgroundTasks("supervisor")
        self._restart_task: asyncio.Task[None] | None = None
        self._stopping = False

    def status(self) -> WorkerStatus:
        current = self.current
        pid = current.pid if current is not None and current.alive else None
        return WorkerStatus(
            state=self.state,
            pid=pid,
            restarts=self.restarts,
            last_error=self.last_error,
        )

    @property
    def inspection(self) -> WorkerInspection | None:
        return self.current.inspection if self.current is not None else None

    def start(self, launch: Launch) -> None:
        """Start the first worker in the background; readiness is announced."""
        self._set_state("starting")
        self._restart_task = self._background.spawn(
            self._keep_trying(launch, first=True)
        )

    async def replace(self, launch: Launch) -> WorkerInspection:
        """Start a worker for ``launch``; once ready, it takes over.

        Raises WorkerStartFailed, leaving the current worker (and state) as it was.
        """
        worker = self._new_worker(launch)
        inspection = await worker.start(self.timings.ready_timeout)
        if self._stopping:
            await worker.stop()
            raise WorkerUnavailable("the bridge is shutting down")
        self._cancel_restarts()
        self._failures = 0
        self._switch_to(worker)
        return inspection

    def _new_worker(self, launch: Launch) -> WorkerProcess:
        worker = WorkerProcess(
            launch=launch,
            sink=self._sink,
            on_exit=self._on_exit,
            serial=next(self._serials),
        )
        self._workers.add(worker)
        return worker

    def _switch_to(self, worker: WorkerProcess) -> None:
        old, self.current = self.current, worker
        self.state = "ready"
        self._ready.set()
        if old is not None and old.alive:
            logger.info("worker %d replaced by %d", old.pid, worker.pid)
            self._background.spawn(old.retire(self.timings.retire_grace))

    async def _keep_trying(self, launch: Launch, first: bool = False) -> None:
        delay = self.timings.backoff_first
        while not self._stopping:
            if not first:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.timings.backoff_max)
            worker = self._new_worker(launch)
            try:
                await worker.start(self.timings.ready_timeout)
            except WorkerStartFailed as exc:
                self._workers.discard(worker)
                self.last_error = exc.message
                self._failures += 1
                logger.warning(
                    "worker start failed (%d): %s", self._failures, exc.message
                )
                if self._failures >= self.timings.max_failures:
                    self._give_up()
                    return
                if first:
                    self._set_state("restarting")
                first = False
                continue
            if not first:
                self.restarts += 1
            self._switch_to(worker)
            self._on_state_change()
            return

    def _give_up(self) -> None:
        logger.error(
            "worker failed %d times in a row; giving up until the environment "
            "changes: %s",
            self._failures,
            self.last_error,
        )
        self._ready.clear()
        self._set_state("failed")

    def _on_exit(self, worker: WorkerProcess) -> None:
        self._workers.discard(worker)
        if worker is not self.current or worker.retiring or self._stopping:
            return
        stable = (
            worker.ready_at is not None
            and time.monotonic() - worker.ready_at >= self.timings.stable_after
        )
        self._failures = 0 if stable else self._failures
        self._failures += 1
        self.last_error = (
            f"worker {worker.pid} exited with code {worker.exit_code}"
            + worker.stderr_excerpt()
        )
        self._ready.clear()
        if self._failures >= self.timings.max_failures:
            self._give_up()
            return
        self._set_state("restarting")
        self._restart_task = self._background.spawn(self._keep_trying(worker.launch))

    def _set_state(self, state: WorkerState) -> None:
        self.state = state
        self._on_state_change()

    def _cancel_restarts(self) -> None:
        if self._restart_task is not None and not self._restart_task.done():
            self._restart_task.cancel()
        self._restart_task = None

    async def ready_worker(self, wait: float) -> WorkerProcess:
        """The current worker, waiting up to ``wait`` s while it (re)starts."""
        if self.state in ("starting", "restarting"):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._ready.wait()
        current = self.current
        if self.state == "ready" and current is not None and current.alive:
            return current
        reason = f"; last error: {self.last_error}" if self.last_error else ""
        raise WorkerUnavailable(
            f"no worker is ready (state {self.state}){reason}; change the "
            "environment or restart the bridge"
        )

    def holder_of(self, client_id: Any) -> WorkerProcess | None:
        """The worker that holds the client's request ``client_id``."""
        for worker in self._workers:
            if worker.holds(client_id):
                return worker
        return None

    async def stop(self) -> None:
        """Stop every worker, current and retiring; no process is left behind."""
        self._stopping = True
        self._cancel_restarts()
        workers = list(self._workers)
        await asyncio.gather(
            *(w.stop(self.timings.stop_timeout) for w in workers),
            return_exceptions=True,
        )
        self._background.cancel_all()
        self.state = "stopped"
        logger.info("all workers stopped (pid %d)", os.getpid())
