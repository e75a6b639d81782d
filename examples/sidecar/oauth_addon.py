"""mitmproxy addon: OAuth2 client credentials in front of an LLM endpoint.

Kai (or any client) sends its LLM requests through mitmproxy; this addon gets an
access token from the token endpoint with the client-credentials grant (RFC 6749
section 4.4), caches it until shortly before it expires, and sets
``Authorization: Bearer <token>`` on every request to the LLM host(s), replacing
whatever Authorization the client sent.

Configuration, from mitmdump's environment:

    OAUTH_TOKEN_URL      token endpoint, https://... (required)
    OAUTH_CLIENT_ID      client id (required)
    OAUTH_CLIENT_SECRET  client secret (required; never logged)
    OAUTH_SCOPE          space-separated scopes (optional)
    OAUTH_HOSTS          comma-separated LLM hosts, "host" or "host:port"
                         (default: api.openai.com)
    OAUTH_CA_FILE        CA bundle that verifies the token endpoint (optional;
                         default: the system's trust store)

Run: ``mitmdump -s oauth_addon.py``. Runs inside mitmproxy's own Python: standard
library and mitmproxy only.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping

from mitmproxy import http

logger = logging.getLogger(__name__)

# A token is renewed this long before it expires, so no request carries a token
# that lapses in flight. Tokens living shorter than this are fetched per request.
REFRESH_MARGIN_S = 30.0
# Lifetime assumed when the token endpoint omits expires_in (it is optional).
DEFAULT_LIFETIME_S = 300.0
TOKEN_TIMEOUT_S = 15.0


class TokenError(Exception):
    """The token endpoint gave no token; the message holds no secret."""


class OAuthClientCredentials:
    """Fetches and caches one client's access token."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        missing = [
            name
            for name in ("OAUTH_TOKEN_URL", "OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET")
            if not environ.get(name)
        ]
        if missing:
            raise ValueError(
                f"oauth_addon: set {', '.join(missing)} in mitmdump's environment"
            )
        self.token_url = environ["OAUTH_TOKEN_URL"]
        self.client_id = environ["OAUTH_CLIENT_ID"]
        self._secret = environ["OAUTH_CLIENT_SECRET"]
        self.scope = environ.get("OAUTH_SCOPE", "")
        ca_file = environ.get("OAUTH_CA_FILE") or None
        self._context = ssl.create_default_context(cafile=ca_file)
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"OAuthClientCredentials(client_id={self.client_id!r})"

    async def token(self) -> str:
        """A valid access token, fetched only when the cached one is about to lapse."""
        async with self._lock:
            now = time.monotonic()
            if self._token is None or now >= self._expires_at - REFRESH_MARGIN_S:
                token, lifetime = await asyncio.to_thread(self._fetch)
                self._token, self._expires_at = token, now + lifetime
                logger.info(
                    "oauth_addon: new token for client %s, valid %.0f s",
                    self.client_id,
                    lifetime,
                )
            return self._token

    def _fetch(self) -> tuple[str, float]:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        # client_secret_basic (RFC 6749 section 2.3.1): form-encode, then base64.
        pair = ":".join(
            urllib.parse.quote(part, safe="") for part in (self.client_id, self._secret)
        )
        request = urllib.request.Request(
            self.token_url,
            data=urllib.parse.urlencode(form).encode(),
            headers={
                "Authorization": "Basic " + base64.b64encode(pair.encode()).decode(),
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
            },
            method="POST",
        )
        try:
            with urllib.request.urlopen(
                request, timeout=TOKEN_TIMEOUT_S, context=self._context
            ) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise TokenError(
                f"token endpoint {self.token_url} answered HTTP {exc.code}"
                f"{_oauth_error(exc)}; check OAUTH_CLIENT_ID and OAUTH_CLIENT_SECRET"
            ) from None
        except (OSError, ValueError) as exc:
            raise TokenError(
                f"token endpoint {self.token_url} unusable: {type(exc).__name__}: {exc}"
            ) from None
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise TokenError(f"token endpoint {self.token_url} sent no access_token")
        lifetime = body.get("expires_in")
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float):
            lifetime = DEFAULT_LIFETIME_S
        return token, float(lifetime)


def _oauth_error(exc: urllib.error.HTTPError) -> str:
    """The standard ``error`` code of an OAuth error answer, if there is one."""
    try:
        error = json.loads(exc.read()).get("error")
    except (OSError, ValueError, AttributeError):
        return ""
    return f" ({error})" if isinstance(error, str) else ""


class BearerInjector:
    """mitmproxy addon: Authorization: Bearer on requests to the LLM hosts."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        hosts = environ.get("OAUTH_HOSTS") or "api.openai.com"
        self.hosts = {host.strip().lower() for host in hosts.split(",") if host.strip()}
        self.credentials = OAuthClientCredentials(environ)

    def _targets(self, flow: http.HTTPFlow) -> bool:
        host = flow.request.pretty_host.lower()
        return host in self.hosts or f"{host}:{flow.request.port}" in self.hosts

    async def request(self, flow: http.HTTPFlow) -> None:
        if not self._targets(flow):
            return
        try:
            token = await self.credentials.token()
        except TokenError as exc:
            logger.error("oauth_addon: %s", exc)
            flow.response = http.Response.make(
                502,
                json.dumps({"error": {"message": f"sidecar: {exc}"}}),
                {"Content-Type": "application/json"},
            )
            return
        flow.request.headers["Authorization"] = f"Bearer {token}"


addons = [BearerInjector()]
