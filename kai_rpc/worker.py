"""The Kai analysis worker: ``python -m kai_rpc.worker``.

The bridge starts one worker per effective environment, with exactly that
environment, and talks to it over stdin/stdout with the same framing as the IDE.
The first request is always ``kai/configure``: the worker answers it with its own
inspection of routes and TLS, which marks it ready. The langchain stack is imported
in a background thread after that, so a settings change never waits for it.

The worker exits when its stdin closes, so it cannot outlive the bridge. It never
imports the bridge's server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from kai_rpc import contract, redact
from kai_rpc.contract import ErrorCode
from kai_rpc.exceptions import (
    InvalidRequest,
    KaiRpcError,
    ParseError,
    validate_params,
)
from kai_rpc.framing import (
    WORKER_MAX_MESSAGE_BYTES,
    FrameReader,
    MessageWriter,
    connect_stdio,
    parse_body,
)

logger = logging.getLogger(__name__)

Handler = Callable[[Any], Awaitable[Any]]


class Worker:
    """Serves one worker process's requests. Subclass or ``register`` to extend."""

    def __init__(self, writer: MessageWriter) -> None:
        self._writer = writer
        self._tasks: dict[Any, asyncio.Task[None]] = {}
        self._handlers: dict[str, Handler] = {
            contract.WORKER_CONFIGURE: self.configure,
            contract.ECHO: self.echo,
            contract.CHAT: self.chat,
            contract.PROBE_CONNECTIVITY: self.probe,
            contract.SHUTDOWN: self.shutdown,
        }
        self._llm: Any = None
        self._warm_thread: threading.Thread | None = None

    def register(self, method: str, handler: Handler) -> None:
        """Serve ``method`` with ``handler`` (params in, JSON-ready result out)."""
        self._handlers[method] = handler

    async def serve(self, reader: FrameReader) -> None:
        """Answer messages until stdin closes."""
        while True:
            try:
                body = await reader.read_frame()
            except KaiRpcError as exc:
                logger.warning("bad frame from the bridge: %s", exc.message)
                self._writer.send(_error(None, exc))
                continue
            if body is None:
                logger.info("stdin closed: worker %d exits", os.getpid())
                return
            self._receive(body)

    def _receive(self, body: bytes) -> None:
        try:
            message = parse_body(body)
        except (ParseError, InvalidRequest) as exc:
            self._writer.send(_error(getattr(exc, "request_id", None), exc))
            return
        method = message.get("method")
        if method == contract.CANCEL_REQUEST:
            self._cancel(message.get("params"))
        elif method == contract.EXIT:
            os._exit(0)
        elif method is not None and "id" in message:
            task = asyncio.create_task(self._answer(message))
            self._tasks[message["id"]] = task
            task.add_done_callback(lambda _: self._tasks.pop(message["id"], None))
        elif method is not None:
            logger.debug("ignoring notification %s", method)

    async def _answer(self, message: dict[str, Any]) -> None:
        request_id, method = message["id"], message["method"]
        handler = self._handlers.get(method)
        try:
            if handler is None:
                raise KaiRpcError(f"method {method!r} is not served by the worker")
            result = await handler(message.get("params"))
        except asyncio.CancelledError:
            cancelled = f"request {request_id!r} was cancelled"
            code = ErrorCode.REQUEST_CANCELLED
            self._writer.send(_error_object(request_id, code, cancelled))
            return
        except KaiRpcError as exc:
            if handler is None:
                exc.code = ErrorCode.METHOD_NOT_FOUND
            self._writer.send(_error(request_id, exc))
            return
        except Exception as exc:
            logger.exception("%s failed", method)
            error = KaiRpcError(redact.scrub(f"{method} failed: {exc}"))
            self._writer.send(_error(request_id, error))
            return
        self._writer.send({"jsonrpc": "2.0", "id": request_id, "result": result})

    def _cancel(self, params: Any) -> None:
        request_id = params.get("id") if isinstance(params, dict) else None
        task = self._tasks.get(request_id)
        if task is not None:
            task.cancel()

    async def configure(self, params: Any) -> Any:
        """Take the bridge's configuration; answer with this process's inspection."""
        from kai_rpc import inspection, llm

        config = validate_params(contract.WorkerConfig, params)
        endpoints = config.endpoints or inspection.default_endpoints(
            os.environ, config.model_provider
        )
        report = inspection.inspect(os.environ, endpoints, config.model_provider)
        self._llm = llm.LlmClient(os.environ, config.model_provider, endpoints)
        self._warm_thread = threading.Thread(
            target=self._warm, name="llm-warm", daemon=True
        )
        self._warm_thread.start()
        logger.info("worker %d ready for generation %d", os.getpid(), config.generation)
        return report.wire()

    def _warm(self) -> None:
        try:
            self._llm.warm()
        except KaiRpcError as exc:
            # An environment problem (no API key, an unusable CA file): the report
            # already says so, and chat answers with the same message.
            logger.warning("the LLM client is not usable: %s", exc.message)
        except Exception:
            logger.exception("loading the LLM client failed; chat will report why")

    async def echo(self, params: Any) -> Any:
        """Return the params unchanged."""
        return params

    async def chat(self, params: Any) -> Any:
        chat_params = validate_params(contract.ChatParams, params)
        result: contract.ChatResult = await self._configured().chat(chat_params)
        return result.wire()

    async def probe(self, params: Any) -> Any:
        probe_params = validate_params(contract.ProbeParams, params)
        result: contract.ProbeResult = await self._configured().probe(probe_params)
        return result.wire()

    async def shutdown(self, params: Any) -> Any:
        return None

    def _configured(self) -> Any:
        if self._llm is None:
            raise KaiRpcError("the worker has not been configured yet")
        return self._llm


def _error(request_id: Any, exc: KaiRpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": exc.to_error()}


def _error_object(request_id: Any, code: int, message: str) -> dict[str, Any]:
    error = {"code": int(code), "message": message}
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


async def run(worker_class: type[Worker] = Worker) -> None:
    """Serve on stdin/stdout until stdin closes."""
    reader, writer = await connect_stdio(WORKER_MAX_MESSAGE_BYTES)
    await worker_class(writer).serve(reader)


def main(worker_class: type[Worker] = Worker) -> None:
    logging.basicConfig(
        level=os.environ.get("KAI_RPC_WORKER_LOG_LEVEL", "INFO"),
        stream=sys.stderr,
        format="%(asctime)s worker[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(redact.ScrubbingFilter())
    redact.remember_environment(os.environ, redact.Redactor())
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(worker_class))
    # Daemon threads (the LLM warm-up) must not keep a worker alive.
    os._exit(0)


if __name__ == "__main__":
    main()
