"""The bridge: ``kai-rpc serve``, the JSON-RPC server an IDE extension spawns.

Messages from the IDE arrive on stdin. The bridge answers its own methods
(initialize, setEnvironment, getEnvironmentStatus, didChangeConfiguration, shutdown,
exit) and forwards everything else to the current worker, mapping ids both ways.
pygls and lsprotocol own the standard LSP part (initialize's capabilities, shutdown);
the bridge's own frame reader sits in front of them so that malformed input is
answered, not just logged, and so that forwarded messages pass through untouched.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import sys
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method

import kai_rpc
from kai_rpc import contract, policy, redact
from kai_rpc.contract import EnvironmentReport, ReportWarning
from kai_rpc.exceptions import (
    InvalidParams,
    InvalidRequest,
    KaiRpcError,
    ParseError,
    ServerNotInitialized,
    WorkerUnavailable,
    validate_params,
)
from kai_rpc.framing import FrameReader, MessageWriter, connect_stdio, parse_body
from kai_rpc.supervisor import (
    BackgroundTasks,
    Launch,
    Supervisor,
    Timings,
    WorkerProcess,
)

logger = logging.getLogger(__name__)

# Methods the bridge answers itself; everything else goes to the worker.
BRIDGE_REQUESTS = frozenset(
    {
        contract.INITIALIZE,
        contract.SHUTDOWN,
        contract.SET_ENVIRONMENT,
        contract.GET_ENVIRONMENT_STATUS,
    }
)
BRIDGE_NOTIFICATIONS = frozenset(
    {contract.INITIALIZED, contract.DID_CHANGE_CONFIGURATION, "$/setTrace"}
)
# Messages carrying an env map: their secret values are remembered for scrubbing
# before anything else (including pygls' own logging) can see them.
_ENV_CARRIERS = frozenset(
    {contract.INITIALIZE, contract.SET_ENVIRONMENT, contract.DID_CHANGE_CONFIGURATION}
)
READY_WAIT = 30.0


@dataclass(frozen=True)
class ServeOptions:
    """How ``kai-rpc serve`` was started."""

    policy_file: str | None = None
    record: str | None = None
    timings: Timings = field(default_factory=Timings)
    base_env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    """The environment the bridge was started with, under every worker's."""


class BridgeProtocol(LanguageServerProtocol):
    """pygls' LSP protocol, with the environment report added to initialize."""

    _server: BridgeServer

    @lsp_method(types.INITIALIZE)
    def lsp_initialize(
        self, params: types.InitializeParams
    ) -> Generator[Any, Any, Any]:
        result = yield from super().lsp_initialize(params)
        payload: dict[str, Any] = self._converter.unstructure(result)
        payload["environment"] = self._server.bridge.report().wire()
        return payload


class BridgeServer(LanguageServer):
    """The pygls server object; ``bridge`` holds kai-rpc's own state."""

    bridge: Bridge

    def __init__(self) -> None:
        super().__init__("kai-rpc", kai_rpc.__version__, protocol_cls=BridgeProtocol)


class Bridge:
    """The environment layers, the policy, the worker, and the message routing."""

    def __init__(
        self,
        writer: MessageWriter,
        the_policy: policy.Policy,
        base_env: Mapping[str, str],
        timings: Timings,
    ) -> None:
        self._writer = writer
        self._policy = the_policy
        self._redactor = the_policy.redactor()
        self._base = dict(base_env)
        self._server = BridgeServer()
        self._server.bridge = self
        self._server.protocol.set_writer(writer)
        self._supervisor = Supervisor(self._from_worker, self._worker_changed, timings)
        self._layer: dict[str, Any] = {}
        # Nothing is reported before initialize, which evaluates the first layer.
        self._evaluation = policy.Evaluation(env=dict(self._base), variables=[])
        self._generation = 0
        self._options = contract.InitializationOptions()
        self._initialized = False
        self._shutdown = False
        self._queue: list[
            tuple[contract.SetEnvironmentParams, asyncio.Future[Any]]
        ] = []
        self._applier: asyncio.Task[None] | None = None
        self._tasks = BackgroundTasks("bridge")
        self._worker_requests: dict[str, tuple[WorkerProcess, Any]] = {}
        self._request_ids = itertools.count(1)
        self.exit_code: int | None = None

    # -- the report ---------------------------------------------------------

    def report(self) -> EnvironmentReport:
        inspection = self._supervisor.inspection or contract.WorkerInspection()
        return EnvironmentReport(
            generation=self._generation,
            worker=self._supervisor.status(),
            variables=self._evaluation.variables,
            proxy=inspection.proxy,
            tls=inspection.tls,
            warnings=[*inspection.warnings, *self._bridge_warnings()],
        )

    def _bridge_warnings(self) -> list[ReportWarning]:
        status = self._supervisor.status()
        if status.state in ("failed", "restarting") and status.last_error:
            code = f"WORKER_{status.state.upper()}"
            return [ReportWarning(code=code, message=status.last_error)]
        return []

    def _worker_changed(self) -> None:
        self._notify_status()

    def _notify_status(self) -> None:
        if self._initialized and not self._shutdown:
            self._writer.send(
                _notification(contract.ENVIRONMENT_STATUS, self.report().wire())
            )

    def log_to_client(self, level: int, message: str) -> None:
        """A ``window/logMessage`` to the IDE, scrubbed of secrets."""
        if not self._initialized:
            return
        kind = (
            types.MessageType.Error
            if level >= logging.ERROR
            else (
                types.MessageType.Warning
                if level >= logging.WARNING
                else types.MessageType.Info
            )
        )
        params = {"type": int(kind), "message": redact.scrub(message)}
        self._writer.send(_notification(contract.LOG_MESSAGE, params))

    # -- reading the IDE's messages -----------------------------------------

    async def serve(
        self, reader: FrameReader, tap: Callable[[bytes], None] | None
    ) -> int:
        """Serve until ``exit`` or end of input; return the process exit code."""
        while self.exit_code is None:
            try:
                body = await reader.read_frame()
            except KaiRpcError as exc:
                logger.warning("bad frame from the client: %s", exc.message)
                self._reply_error(None, exc)
                continue
            if body is None:
                logger.info("the client closed stdin")
                break
            if tap is not None:
                tap(body)
            self._receive(body)
        await self._stop()
        return (
            self.exit_code
            if self.exit_code is not None
            else (0 if self._shutdown else 1)
        )

    def _receive(self, body: bytes) -> None:
        try:
            message = parse_body(body)
        except ParseError as exc:
            logger.warning("unparsable message from the client: %s", exc.message)
            self._reply_error(None, exc)
            return
        except InvalidRequest as exc:
            logger.warning("invalid message from the client: %s", exc.message)
            self._reply_error(exc.request_id, exc)
            return
        try:
            self._route(message)
        except KaiRpcError as exc:
            if "id" in message and "method" in message:
                self._reply_error(message["id"], exc)
            else:
                logger.warning("%s: %s", message.get("method"), exc.message)

    def _route(self, message: dict[str, Any]) -> None:
        method = message.get("method")
        if method is None:
            self._route_response(message)
            return
        if method in _ENV_CARRIERS:
            # Before anything can log or echo a part of it.
            _remember_secrets(message.get("params"), self._redactor)
        logger.debug("%s %s", method, message.get("id", "(notification)"))
        if method == contract.EXIT:
            self.exit_code = 0 if self._shutdown else 1
            return
        is_request = "id" in message
        if self._shutdown:
            if is_request:
                raise InvalidRequest(
                    f"{method} after shutdown: the bridge only accepts exit now"
                )
            return
        if not self._initialized and method != contract.INITIALIZE:
            if is_request:
                raise ServerNotInitialized(
                    f"{method} before initialize: send initialize first"
                )
            return
        if is_request and method in BRIDGE_REQUESTS:
            self._answer_bridge_request(message)
        elif not is_request and method in BRIDGE_NOTIFICATIONS:
            self._handle_bridge_notification(message)
        elif method == contract.CANCEL_REQUEST:
            self._cancel(message)
        elif is_request:
            self._tasks.spawn(self._forward_request(message))
        else:
            self._tasks.spawn(self._forward_notification(message))

    def _answer_bridge_request(self, message: dict[str, Any]) -> None:
        method = message["method"]
        if method == contract.INITIALIZE:
            self._initialize(message)
        elif method == contract.SHUTDOWN:
            self._shutdown = True
            self._reply(message["id"], None)
        elif method == contract.SET_ENVIRONMENT:
            params = validate_params(
                contract.SetEnvironmentParams, message.get("params")
            )
            self._tasks.spawn(self._answer_set_environment(message["id"], params))
        elif method == contract.GET_ENVIRONMENT_STATUS:
            self._reply(message["id"], self.report().wire())

    def _handle_bridge_notification(self, message: dict[str, Any]) -> None:
        if message["method"] == contract.DID_CHANGE_CONFIGURATION:
            params = validate_params(
                contract.DidChangeConfigurationParams, message.get("params")
            )
            settings = params.settings
            env = settings.kai.env if settings and settings.kai else None
            if env is not None:
                update = contract.SetEnvironmentParams(env=env)
                self._tasks.spawn(self._apply_configuration_change(update))
            return
        self._hand_to_pygls(message)

    # -- initialize ---------------------------------------------------------

    def _initialize(self, message: dict[str, Any]) -> None:
        if self._initialized:
            raise InvalidRequest("initialize was already received")
        params = message.get("params")
        if not isinstance(params, dict):
            raise InvalidParams("initialize params must be an object")
        options = validate_params(
            contract.InitializationOptions, params.get("initializationOptions") or {}
        )
        structured = self._structure(message)
        self._options = options
        self._layer = policy.merge_layer({}, options.env or {}, replace=True)
        self._evaluation = policy.evaluate(self._base, self._layer, self._policy)
        self._generation = 1
        # The worker starts in the background: initialize is answered at once,
        # with state "starting"; environmentStatus announces readiness.
        self._supervisor.start(self._launch(self._evaluation.env, 1))
        self._server.protocol.handle_message(structured)
        self._initialized = True

    def _hand_to_pygls(self, message: dict[str, Any]) -> None:
        """Let pygls structure and handle a standard LSP message."""
        self._server.protocol.handle_message(self._structure(message))

    def _structure(self, message: dict[str, Any]) -> Any:
        try:
            return self._server.protocol.structure_message(message)
        except Exception as exc:
            raise InvalidParams(
                f"{message.get('method')} params do not match the LSP types: "
                f"{_cattrs_reason(exc)}"
            ) from None

    def _launch(self, env: dict[str, str], generation: int) -> Launch:
        spec = self._options.worker
        command = spec.command if spec else [sys.executable, "-m", "kai_rpc.worker"]
        config = contract.WorkerConfig(
            generation=generation,
            endpoints=self._options.endpoints or [],
            model_provider=self._options.model_provider,
        )
        return Launch(
            command=command, env=env, cwd=spec.cwd if spec else None, config=config
        )

    # -- environment changes ------------------------------------------------

    async def _answer_set_environment(
        self, request_id: Any, params: contract.SetEnvironmentParams
    ) -> None:
        try:
            report = await self.set_environment(params)
        except KaiRpcError as exc:
            self._reply_error(request_id, exc)
            return
        self._reply(request_id, report.wire())

    async def _apply_configuration_change(
        self, params: contract.SetEnvironmentParams
    ) -> None:
        generation = self._generation
        try:
            await self.set_environment(params)
        except KaiRpcError as exc:
            # The client log handler passes this warning on as window/logMessage.
            logger.warning("configuration change not applied: %s", exc.message)
        if self._generation == generation:
            # No new worker announced itself: push the report all the same.
            self._notify_status()

    async def set_environment(
        self, params: contract.SetEnvironmentParams
    ) -> EnvironmentReport:
        """Apply a change; changes that queue up behind one are applied together."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((params, future))
        if self._applier is None or self._applier.done():
            self._applier = self._tasks.spawn(self._apply_queued())
        report: EnvironmentReport = await future
        return report

    async def _apply_queued(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            layer = self._layer
            for params, _ in batch:
                layer = policy.merge_layer(layer, params.env, params.replace)
            try:
                report = await self._apply_layer(layer)
            except KaiRpcError as exc:
                for _, future in batch:
                    future.set_exception(exc)
            else:
                for _, future in batch:
                    future.set_result(report)

    async def _apply_layer(self, layer: dict[str, Any]) -> EnvironmentReport:
        evaluation = policy.evaluate(self._base, layer, self._policy)
        unchanged = evaluation.env == self._evaluation.env
        if unchanged and self._supervisor.state in ("ready", "starting"):
            self._layer, self._evaluation = layer, evaluation
            return self.report()
        generation = self._generation + 1
        await self._supervisor.replace(self._launch(evaluation.env, generation))
        self._layer, self._evaluation = layer, evaluation
        self._generation = generation
        logger.info("environment generation %d applied", generation)
        self._notify_status()
        return self.report()

    # -- forwarding ---------------------------------------------------------

    async def _forward_request(self, message: dict[str, Any]) -> None:
        try:
            worker = await self._supervisor.ready_worker(READY_WAIT)
            worker.forward_request(message["id"], message)
        except KaiRpcError as exc:
            self._reply_error(message["id"], exc)

    async def _forward_notification(self, message: dict[str, Any]) -> None:
        try:
            worker = await self._supervisor.ready_worker(READY_WAIT)
        except WorkerUnavailable as exc:
            logger.warning("dropping %s: %s", message["method"], exc.message)
            return
        worker.send_raw(message)

    def _cancel(self, message: dict[str, Any]) -> None:
        params = message.get("params")
        client_id = params.get("id") if isinstance(params, dict) else None
        if not isinstance(client_id, str | int):
            # LSP's CancelParams.id is an integer or a string; anything else (an
            # object is unhashable) cannot name a request.
            logger.warning("ignoring $/cancelRequest without a usable id")
            return
        holder = self._supervisor.holder_of(client_id)
        if holder is not None:
            holder.cancel(client_id)

    def _from_worker(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        """A worker's message for the client: responses, notifications, requests."""
        if "method" in message and "id" in message:
            # Questions from workers that have since exited can no longer be
            # answered; forget them so the map cannot grow without bound.
            self._worker_requests = {
                key: target
                for key, target in self._worker_requests.items()
                if target[0].alive
            }
            bridge_id = f"kai-rpc:{worker.serial}:{next(self._request_ids)}"
            self._worker_requests[bridge_id] = (worker, message["id"])
            message = {**message, "id": bridge_id}
        self._writer.send(message)

    def _route_response(self, message: dict[str, Any]) -> None:
        target = self._worker_requests.pop(message.get("id"), None)  # type: ignore[arg-type]
        if target is None:
            self._hand_to_pygls(message)
            return
        worker, worker_id = target
        worker.send_raw({**message, "id": worker_id})

    # -- plumbing -----------------------------------------------------------

    def _reply(self, request_id: Any, result: Any) -> None:
        self._writer.send({"jsonrpc": "2.0", "id": request_id, "result": result})

    def _reply_error(self, request_id: Any, exc: KaiRpcError) -> None:
        error = exc.to_error()
        error["message"] = redact.scrub(error["message"])
        self._writer.send({"jsonrpc": "2.0", "id": request_id, "error": error})

    async def _stop(self) -> None:
        await self._supervisor.stop()
        self._tasks.cancel_all()


def _cattrs_reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    leaves = [str(e) for e in getattr(cause, "exceptions", [])] or [str(cause)]
    return redact.scrub("; ".join(leaves))[:300]


def _notification(method: str, params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params}


def _remember_secrets(value: Any, redactor: redact.Redactor) -> None:
    """Register every secret value inside a message, at any depth."""
    if isinstance(value, dict):
        redact.remember_environment(value, redactor)
        for item in value.values():
            _remember_secrets(item, redactor)
    elif isinstance(value, list):
        for item in value:
            _remember_secrets(item, redactor)


class ClientLogHandler(logging.Handler):
    """Sends the bridge's warnings to the IDE as ``window/logMessage`` too."""

    def __init__(self, bridge: Bridge) -> None:
        super().__init__(logging.WARNING)
        self._bridge = bridge
        self._busy = False

    def emit(self, record: logging.LogRecord) -> None:
        if self._busy or not record.name.startswith("kai_rpc"):
            return
        self._busy = True
        try:
            self._bridge.log_to_client(record.levelno, record.getMessage())
        except Exception:
            self.handleError(record)
        finally:
            self._busy = False


async def serve(options: ServeOptions) -> int:
    """Run the bridge on stdin/stdout; return the exit code."""
    the_policy, source = policy.load_policy(options.policy_file, options.base_env)
    if source is not None:
        logger.info("policy loaded from %s", source)
    reader, writer = await connect_stdio()
    recorder = _open_recorder(options.record, the_policy.redactor())
    tap_in: Callable[[bytes], None] | None = None
    if recorder is not None:
        writer.tap = lambda body: recorder.record(False, body)
        tap_in = lambda body: recorder.record(True, body)  # noqa: E731
    bridge = Bridge(writer, the_policy, options.base_env, options.timings)
    client_log = ClientLogHandler(bridge)
    logging.getLogger().addHandler(client_log)
    try:
        return await bridge.serve(reader, tap_in)
    finally:
        logging.getLogger().removeHandler(client_log)
        if recorder is not None:
            recorder.close()


def _open_recorder(path: str | None, redactor: redact.Redactor) -> Any:
    if path is None:
        return None
    from kai_rpc.recording import Recorder

    return Recorder(path, redactor)
