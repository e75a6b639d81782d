"""A real HTTPS server that answers like an OpenAI-compatible LLM, on loopback.

It plays the LLM in ``kai-rpc demo``, the tests and the benchmarks.

Bound to 127.0.0.2 by default: no default NO_PROXY entry (localhost, 127.0.0.1)
covers it, so a proxy in the environment really applies. Every request it gets is
recorded with its headers, so tests can assert what arrived and through where.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import trustme

Responder = Callable[["RecordedRequest"], tuple[int, dict[str, Any]]]


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class FakeHttpsServer:
    """A threaded HTTPS server with a certificate from ``ca``; answers via respond."""

    def __init__(
        self, ca: trustme.CA, respond: Responder, host: str = "127.0.0.2"
    ) -> None:
        self.host = host
        self.requests: list[RecordedRequest] = []
        self._respond = respond
        self._lock = threading.Lock()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(host, "localhost", "127.0.0.1").configure_cert(context)
        self._server = ThreadingHTTPServer((host, 0), self._handler_class())
        self._server.daemon_threads = True
        # Handshake in the handler thread, so one bad client blocks nobody.
        self._server.socket = context.wrap_socket(
            self._server.socket, server_side=True, do_handshake_on_connect=False
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-https", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def origin(self) -> str:
        return f"https://{self.host}:{self.port}"

    def start(self) -> FakeHttpsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def _record(self, request: RecordedRequest) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append(request)
        return self._respond(request)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = RecordedRequest(
                    method=self.command,
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                status, payload = server._record(request)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = _answer
            do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def completion(request: RecordedRequest) -> tuple[int, dict[str, Any]]:
    """OpenAI chat completion answers: echo the last message back."""
    if request.method == "GET":
        return 200, {"object": "list", "data": []}
    if not request.path.endswith("/chat/completions"):
        return 404, {"error": {"message": f"no route {request.path}"}}
    messages = request.json().get("messages", [])
    last = messages[-1]["content"] if messages else ""
    return 200, {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": "fake-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": f"echo: {last}"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }


class FakeLlm(FakeHttpsServer):
    """An OpenAI-compatible endpoint at ``url`` (``https://127.0.0.2:PORT/v1``)."""

    def __init__(self, ca: trustme.CA, host: str = "127.0.0.2") -> None:
        super().__init__(ca, completion, host)

    @property
    def url(self) -> str:
        return f"{self.origin}/v1"

    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]
