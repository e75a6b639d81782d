"""mitmproxy addon, loaded by mitmdump in its own venv: every flow to a JSON-lines file.

Options: ``kai_flow_log`` (the file). Records CONNECT requests and proxied requests
with host, port, path and headers; a Proxy-Authorization value is replaced by
"<present>". Standard library and mitmproxy only.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from mitmproxy import ctx, http

_lock = threading.Lock()


def load(loader: Any) -> None:
    loader.add_option("kai_flow_log", str, "", "JSON-lines file of recorded flows.")


def _record(kind: str, flow: http.HTTPFlow) -> None:
    path = ctx.options.kai_flow_log
    if not path:
        return
    headers = {k.lower(): v for k, v in flow.request.headers.items()}
    if "proxy-authorization" in headers:
        headers["proxy-authorization"] = "<present>"
    entry = {
        "kind": kind,
        "method": flow.request.method,
        "host": flow.request.host,
        "port": flow.request.port,
        "path": flow.request.path,
        "headers": headers,
        "status": flow.response.status_code if flow.response else None,
    }
    with _lock, open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(entry) + "\n")


def http_connect(flow: http.HTTPFlow) -> None:
    _record("connect", flow)


def request(flow: http.HTTPFlow) -> None:
    _record("request", flow)
