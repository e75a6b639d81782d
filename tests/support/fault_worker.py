"""A worker for fault tests: the real worker plus methods and start-up faults.

``FAULT_MODE`` in its environment picks a fault: ``exit`` exits at once with code 3,
``hang`` never becomes ready, ``flood`` writes megabytes of garbage to stdout and
stderr before serving, ``dumpenv`` prints its whole environment to stderr and exits
with code 4 (secrets included, as a careless program would). Extra methods:
``test/sleep`` (waits ``seconds``, cancellable), ``test/crash`` (exits with code 7
at once), ``test/askClient`` (sends a request to the client and returns the
client's answer), ``test/pid``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from kai_rpc.framing import MessageWriter
from kai_rpc.worker import Worker, main


class FaultWorker(Worker):
    def __init__(self, writer: MessageWriter) -> None:
        super().__init__(writer)
        self._client_answers: dict[str, asyncio.Future[Any]] = {}
        self.register("test/sleep", self.sleep)
        self.register("test/crash", self.crash)
        self.register("test/askClient", self.ask_client)
        self.register("test/pid", self.pid)
        if os.environ.get("FAULT_MODE") == "hang":
            self.register("kai/configure", self.hang)

    async def sleep(self, params: Any) -> Any:
        await asyncio.sleep(float(params["seconds"]))
        return {"slept": params["seconds"]}

    async def crash(self, params: Any) -> Any:
        os._exit(7)

    async def hang(self, params: Any) -> Any:
        await asyncio.Event().wait()

    async def pid(self, params: Any) -> Any:
        return os.getpid()

    async def ask_client(self, params: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._client_answers["ask-1"] = future
        self._writer.send(
            {
                "jsonrpc": "2.0",
                "id": "ask-1",
                "method": "test/question",
                "params": params,
            }
        )
        return await future

    def _receive(self, body: bytes) -> None:
        import json

        message = json.loads(body)
        if "method" not in message and message.get("id") in self._client_answers:
            future = self._client_answers.pop(message["id"])
            future.set_result(message.get("result"))
            return
        super()._receive(body)


def _start_faults() -> None:
    mode = os.environ.get("FAULT_MODE")
    if mode == "exit":
        sys.stderr.write("fault worker: exiting at start as asked\n")
        os._exit(3)
    if mode == "dumpenv":
        for name, value in os.environ.items():
            sys.stderr.write(f"{name}={value}\n")
        sys.stderr.flush()
        os._exit(4)
    if mode == "flood":
        garbage = b"garbage without a frame header\n" * 4096
        for _ in range(64):
            os.write(1, garbage)
            os.write(2, garbage)


if __name__ == "__main__":
    _start_faults()
    main(FaultWorker)
