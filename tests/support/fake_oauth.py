"""A fake OAuth2 token endpoint (client-credentials grant) over real HTTPS."""

from __future__ import annotations

import base64
import itertools
import urllib.parse
from typing import Any

import trustme

from kai_rpc.local_llm import FakeHttpsServer, RecordedRequest


class FakeTokenEndpoint(FakeHttpsServer):
    """Issues ``token-1``, ``token-2``, ... to one client; counts token requests."""

    def __init__(
        self,
        ca: trustme.CA,
        client_id: str,
        client_secret: str,
        expires_in: int = 3600,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.expires_in = expires_in
        self._serial = itertools.count(1)
        super().__init__(ca, self._token, host="127.0.0.1")

    @property
    def url(self) -> str:
        return f"{self.origin}/oauth/token"

    def token_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == "/oauth/token"]

    def _token(self, request: RecordedRequest) -> tuple[int, dict[str, Any]]:
        form = urllib.parse.parse_qs(request.body.decode())
        expected = base64.b64encode(
            f"{self.client_id}:{self.client_secret}".encode()
        ).decode()
        if request.method != "POST" or form.get("grant_type") != ["client_credentials"]:
            return 400, {"error": "unsupported_grant_type"}
        if request.headers.get("authorization") != f"Basic {expected}":
            return 401, {"error": "invalid_client"}
        return 200, {
            "access_token": f"token-{next(self._serial)}",
            "token_type": "Bearer",
            "expires_in": self.expires_in,
        }
