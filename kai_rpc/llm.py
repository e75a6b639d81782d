"""The worker's LLM client: ChatOpenAI on HTTP clients built from the environment.

langchain-openai left to itself lets HTTPS_PROXY outrank OPENAI_PROXY, trusts only
certifi on its OPENAI_PROXY path and caches HTTP clients per base URL for the life
of the process. The worker therefore builds the sync and async HTTP clients itself,
from the library the installed openai SDK runs on (httpx2 for openai 3.x, httpx
before), and hands both to ChatOpenAI. The probe uses the very same async client.

Proxy, per URL (the mounts come from :func:`kai_rpc.inspection.llm_mounts`, so the
report and the traffic share one source):

1. a NO_PROXY entry that matches, as the client library understands NO_PROXY:
   direct;
2. otherwise OPENAI_PROXY when set (it wins over HTTPS_PROXY and ALL_PROXY, the
   opposite of plain langchain-openai; the inspection warns when both are set);
3. otherwise the environment proxy as the client library resolves it.

CA trust, first match:

1. SSL_CERT_FILE and SSL_CERT_DIR; when both are set they combine, as OpenSSL's
   own default paths (and so urllib and curl) combine them;
2. REQUESTS_CA_BUNDLE (a file or a directory);
3. CURL_CA_BUNDLE;
4. certifi.

A source that is set but cannot be loaded is an error, never a silent fall-through
to the next one. KAI_TLS_VERIFY=0 (or false/no/off) turns verification off; the
inspection reports it loudly, and a policy may forbid the variable.

Importing this module is cheap: the HTTP library is imported when the first client
is built, langchain-openai only in :meth:`LlmClient.warm`.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kai_rpc import inspection
from kai_rpc.contract import (
    CertificateInfo,
    ChatParams,
    ChatResult,
    ModelProvider,
    ProbeError,
    ProbeErrorKind,
    ProbeParams,
    ProbeResult,
)
from kai_rpc.exceptions import ChatFailed, LlmSetupFailed
from kai_rpc.redact import redact_url, remember_secret, scrub

logger = logging.getLogger(__name__)

DEFAULT_PROBE_TIMEOUT_MS = 10_000
# The openai SDK's own defaults (openai 3.60, _constants.py), which a client passed
# in as http_client does not get from the SDK.
_CONNECT_TIMEOUT_S = 5.0
_TIMEOUT_S = 600.0
_MAX_CONNECTIONS = 1000
_MAX_KEEPALIVE = 100
# Keys of ModelProvider.args the worker decides itself.
_OWNED_ARGS = ("http_client", "http_async_client", "openai_proxy")


def build_ssl_context(environ: Mapping[str, str]) -> ssl.SSLContext:
    """The LLM client's TLS context, per the CA order in the module docstring."""
    verify, _ = inspection.tls_verify_setting(environ)
    if not verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context

    chosen = inspection.llm_ca_variables(environ)
    if not chosen:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())

    cafile: str | None = None
    capath: str | None = None
    for name in chosen:
        path = environ[name]
        _check_ca_path(name, path)
        if Path(path).is_dir():
            capath = path
        else:
            cafile = path
    try:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    except (OSError, ssl.SSLError) as exc:
        names = " and ".join(f"{name}={environ[name]!r}" for name in chosen)
        raise LlmSetupFailed(
            scrub(
                f"{names} cannot be loaded as CA certificates ({exc}). Point it at "
                "a PEM file (-----BEGIN CERTIFICATE-----) of your proxy's or "
                "company's CA."
            ),
            data={"kind": "tls_verify_failed"},
        ) from None


def _check_ca_path(name: str, path: str) -> None:
    if not Path(path).exists():
        problem = "does not exist"
    elif not Path(path).is_dir() and not _readable(path):
        problem = "cannot be read by the worker"
    else:
        return
    raise LlmSetupFailed(
        f"{name}={path!r} {problem}, so no HTTPS call can be verified. Point it at "
        "your proxy's or company's CA certificate (PEM), or unset it.",
        data={"kind": "tls_verify_failed"},
    )


def _readable(path: str) -> bool:
    try:
        with open(path, "rb"):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class HttpClients:
    """The pair handed to ChatOpenAI; ``library`` is e.g. ``httpx2 2.16.2``."""

    sync: Any
    asynchronous: Any
    library: str


def build_http_clients(environ: Mapping[str, str]) -> HttpClients:
    """Sync and async clients of the openai SDK's HTTP library, routed on purpose.

    ``trust_env=False``: the clients read nothing from the environment themselves
    (no proxy variables, no SSL_CERT_FILE, no .netrc); everything they do is
    decided here and reported by the inspection.
    """
    name = inspection.llm_client_library()
    lib = importlib.import_module(name)
    context = build_ssl_context(environ)
    mounts = inspection.llm_mounts(environ)
    for key, url in mounts.items():
        if url is not None:
            _check_proxy(lib, name, key, url)

    def client(client_class: Any, transport_class: Any) -> Any:
        limits = lib.Limits(
            max_connections=_MAX_CONNECTIONS,
            max_keepalive_connections=_MAX_KEEPALIVE,
        )
        transports = {
            key: None
            if url is None
            else transport_class(
                proxy=_proxy(lib, url, context),
                verify=context,
                limits=limits,
                trust_env=False,
            )
            for key, url in mounts.items()
        }
        return client_class(
            verify=context,
            trust_env=False,
            mounts=transports,
            limits=limits,
            timeout=lib.Timeout(_TIMEOUT_S, connect=_CONNECT_TIMEOUT_S),
            follow_redirects=True,
        )

    return HttpClients(
        sync=client(lib.Client, lib.HTTPTransport),
        asynchronous=client(lib.AsyncClient, lib.AsyncHTTPTransport),
        library=f"{name} {inspection.library_version(name)}",
    )


def _proxy(lib: Any, url: str, context: ssl.SSLContext) -> Any:
    """The library's Proxy; an https:// proxy is verified with the same trust."""
    is_https = url.lower().startswith("https://")
    return lib.Proxy(url, ssl_context=context if is_https else None)


def _check_proxy(lib: Any, library: str, key: str, url: str) -> None:
    try:
        lib.Proxy(url)
    except Exception as exc:
        raise LlmSetupFailed(
            scrub(
                f"the proxy {redact_url(url)!r} (for {key}) cannot be used by "
                f"{library}: {exc}. Use an http://, https:// or socks5:// URL."
            ),
            data={"kind": "proxy_error"},
        ) from None
    if url.lower().startswith("socks") and importlib.util.find_spec("socksio") is None:
        raise LlmSetupFailed(
            scrub(
                f"the proxy {redact_url(url)!r} is a SOCKS proxy and socksio is not "
                f"installed; install '{library}[socks]' in Kai's environment."
            ),
            data={"kind": "proxy_error"},
        )


# --- Failure classification -------------------------------------------------------


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, its causes and contexts, each once."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [current.__cause__, current.__context__]


def _status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def classify(
    exc: BaseException, url: str, route: inspection.ClientRoute, trust: str
) -> ProbeError:
    """A failure as a kind and words a user can act on; no secret in them."""
    kind, message = _classify(list(_chain(exc)), url, route, trust)
    return ProbeError(kind=kind, message=scrub(message))


def _classify(
    chain: list[BaseException],
    url: str,
    route: inspection.ClientRoute,
    trust: str,
) -> tuple[ProbeErrorKind, str]:
    names = {type(item).__name__ for item in chain}
    text = " | ".join(str(item) for item in chain)
    proxy = redact_url(route.proxy) if route.proxy else None
    via = f"the proxy {proxy} ({route.source})" if proxy else "the network"

    for item in chain:
        if isinstance(item, LlmSetupFailed):
            data = item.data if isinstance(item.data, dict) else {}
            return data.get("kind", "other"), item.message
    verify = next(
        (i for i in chain if isinstance(i, ssl.SSLCertVerificationError)), None
    )
    if verify is not None or "CERTIFICATE_VERIFY_FAILED" in text:
        reason = verify.verify_message if verify is not None else "not trusted"
        return "tls_verify_failed", (
            f"the TLS certificate presented for {url} was rejected ({reason}). "
            f"The client trusts {trust}. If a proxy inspects TLS, set SSL_CERT_FILE "
            "to that proxy's CA certificate (PEM)."
        )
    statuses = [s for s in map(_status_of, chain) if s is not None]
    if 407 in statuses or ("407" in text and "ProxyError" in names):
        return "proxy_auth_required", (
            f"{via} answered 407 Proxy Authentication Required. Add the proxy "
            f"account to {route.source or 'the proxy URL'} as user name and "
            "password in the URL's userinfo, percent-encoding special characters "
            "(reports show the password redacted)."
        )
    if "ProxyError" in names:
        return "proxy_error", (
            f"{via} refused to open a tunnel to {url} ({_last_line(chain)}). Check "
            "that the proxy allows this host and port."
        )
    if any("Timeout" in name for name in names):
        return "timeout", (
            f"no answer from {url} through {via} in time. Check that the host is "
            "reachable from here, or raise timeoutMs."
        )
    if proxy and "ConnectError" in names:
        return "proxy_unreachable", (
            f"cannot connect to {via}: {_last_line(chain)}. Check the proxy URL "
            "and that the proxy is running."
        )
    if any(isinstance(item, socket.gaierror) for item in chain):
        return "dns", (
            f"the host name of {url} does not resolve ({_last_line(chain)}). Check "
            "the URL, or set HTTPS_PROXY if this network only resolves through a "
            "proxy."
        )
    if any(isinstance(item, ConnectionRefusedError) for item in chain):
        return "refused", (
            f"{url} refused the connection. Check the host and port, or whether a "
            "proxy is required here."
        )
    if names & {"UnsupportedProtocol", "InvalidURL", "LocalProtocolError"}:
        return "invalid_url", (
            f"{url!r} is not a URL the client can call ({_last_line(chain)}). Use "
            "an https:// URL."
        )
    answered = next((i for i in chain if _status_of(i) is not None), None)
    if answered is not None:
        status = _status_of(answered)
        hint = " Check the API key." if status in (401, 403) else ""
        return "http_error", (
            f"{url} answered HTTP {status}: {_last_line([answered])}.{hint}"
        )

    return "other", f"the call to {url} failed: {_last_line(chain)}"


def _last_line(chain: list[BaseException]) -> str:
    """The most specific non-empty message in the chain, one line."""
    for item in reversed(chain):
        text = str(item).strip()
        if text:
            return f"{type(item).__name__}: {text.splitlines()[0]}"
    return type(chain[0]).__name__


# --- The client -------------------------------------------------------------------


class LlmClient:
    """ChatOpenAI and the probe, on HTTP clients built from ``environ``."""

    def __init__(
        self,
        environ: Mapping[str, str],
        provider: ModelProvider | None,
        endpoints: Sequence[str],
    ) -> None:
        self._environ = environ
        self._provider = provider or ModelProvider()
        self._endpoints = list(endpoints) or inspection.default_endpoints(
            environ, provider
        )
        self._lock = threading.Lock()
        self._http: HttpClients | None = None
        self._setup_error: LlmSetupFailed | None = None
        self._chat_model: Any = None

    def __repr__(self) -> str:
        return f"LlmClient(endpoints={self._endpoints!r})"

    def http_clients(self) -> HttpClients:
        """The HTTP clients, built once (blocking: TLS context, library import)."""
        with self._lock:
            return self._http_locked()

    def _http_locked(self) -> HttpClients:
        if self._setup_error is not None:
            raise self._setup_error
        if self._http is None:
            try:
                self._http = build_http_clients(self._environ)
            except LlmSetupFailed as exc:
                self._setup_error = exc
                raise
        return self._http

    def warm(self) -> None:
        """Import langchain-openai and build ChatOpenAI. Blocking, idempotent.

        Raises LlmSetupFailed when the environment gives no usable client; later
        calls raise the same error.
        """
        with self._lock:
            if self._chat_model is not None:
                return
            http = self._http_locked()
            started = time.perf_counter()
            self._chat_model = self._build_chat_model(http)
            logger.info(
                "ChatOpenAI ready on %s in %.0f ms",
                http.library,
                (time.perf_counter() - started) * 1000,
            )

    def _build_chat_model(self, http: HttpClients) -> Any:
        from langchain_openai import ChatOpenAI

        args = dict(self._provider.args)
        overridden = sorted(key for key in _OWNED_ARGS if args.get(key) is not None)
        if overridden:
            logger.warning(
                "modelProvider.args %s ignored: the worker builds the HTTP clients "
                "from the environment (set OPENAI_PROXY instead of openai_proxy)",
                ", ".join(overridden),
            )
        if not (args.get("base_url") or args.get("openai_api_base")):
            args["base_url"] = self._endpoints[0]
        api_key = args.get("api_key") or args.get("openai_api_key")
        api_key = api_key or self._environ.get("OPENAI_API_KEY")
        if not api_key:
            self._setup_error = LlmSetupFailed(
                "no API key for the LLM: set OPENAI_API_KEY or modelProvider.args."
                "api_key.",
                data={"kind": "other"},
            )
            raise self._setup_error
        remember_secret(str(api_key))
        args.pop("openai_api_key", None)
        args.update(
            api_key=api_key,
            http_client=http.sync,
            http_async_client=http.asynchronous,
            openai_proxy=None,
        )
        # ChatOpenAI reads more variables itself (OPENAI_ORG_ID, LANGCHAIN_*).
        with inspection.evaluated_in(self._environ):
            return ChatOpenAI(**args)

    def _route(self, url: str) -> inspection.ClientRoute:
        return inspection.client_route(self._environ, url)

    async def chat(self, params: ChatParams) -> ChatResult:
        """One chat completion; failures become ChatFailed with a probe kind."""
        url = self._endpoints[0]
        try:
            await asyncio.to_thread(self.warm)
            message = await self._chat_model.ainvoke(
                [(m.role, m.content) for m in params.messages]
            )
        except Exception as exc:
            error = self._describe(exc, url)
            logger.warning("chat failed (%s): %s", error.kind, error.message)
            raise ChatFailed(
                f"chat failed: {error.message}", data={"kind": error.kind}
            ) from None
        metadata = getattr(message, "response_metadata", {}) or {}
        model = metadata.get("model_name") or getattr(
            self._chat_model, "model_name", ""
        )
        return ChatResult(content=_text(message.content), model=str(model))

    def _describe(self, exc: BaseException, url: str) -> ProbeError:
        try:
            route = self._route(url)
        except Exception:
            route = inspection.ClientRoute(None, None, None)
        trust = inspection.trust_store_description(self._environ)
        return classify(exc, url, route, trust)

    async def probe(self, params: ProbeParams) -> ProbeResult:
        """One real GET with the LLM's own async HTTP client, described."""
        url = params.url or self._endpoints[0]
        timeout = (params.timeout_ms or DEFAULT_PROBE_TIMEOUT_MS) / 1000
        library = inspection.llm_client_library()
        result = ProbeResult(
            url=redact_url(url),
            route="direct",
            ok=False,
            elapsed_ms=0.0,
            client=f"{library} {inspection.library_version(library)}",
        )
        started = time.perf_counter()
        try:
            route = self._route(url)
            result.route = "proxy" if route.proxy else "direct"
            result.proxy = redact_url(route.proxy) if route.proxy else None
            http = await asyncio.to_thread(self.http_clients)
            await self._get(http, url, timeout, result)
        except Exception as exc:
            result.error = self._describe(exc, url)
            if result.error.kind == "tls_verify_failed" and self._http is not None:
                result.certificate = await self._unverified_certificate(url, timeout)
        result.elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
        return result

    async def _get(
        self, http: HttpClients, url: str, timeout: float, result: ProbeResult
    ) -> None:
        async with http.asynchronous.stream("GET", url, timeout=timeout) as response:
            result.status = response.status_code
            result.certificate = peer_certificate(response)
        status = result.status
        if status == 407:
            raise _StatusError(status, "407 Proxy Authentication Required")
        if status >= 500:
            raise _StatusError(status, f"HTTP {status} from the server or a proxy")
        # Any other answer proves the route: an API root without a key gives 401
        # or 404 and is still a working connection.
        result.ok = True

    async def _unverified_certificate(
        self, url: str, timeout: float
    ) -> CertificateInfo | None:
        """After a verification failure: the certificate that was presented.

        A second request on the same route with verification off, made only to
        read the certificate so the user sees who issued it (e.g. a proxy's CA).
        It carries no credentials and its answer is discarded.
        """
        unverified = {**self._environ, inspection.TLS_VERIFY_VARIABLE: "0"}
        try:
            http = await asyncio.to_thread(build_http_clients, unverified)
        except LlmSetupFailed:
            return None
        try:
            async with http.asynchronous.stream(
                "GET", url, timeout=timeout
            ) as response:
                return peer_certificate(response)
        except Exception:
            logger.debug("no certificate for %s", url, exc_info=True)
            return None
        finally:
            await http.asynchronous.aclose()
            http.sync.close()

    async def aclose(self) -> None:
        """Close the HTTP clients."""
        http = self._http
        if http is not None:
            await http.asynchronous.aclose()
            http.sync.close()


class _StatusError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.response = type("Answer", (), {"status_code": status})()


def peer_certificate(response: Any) -> CertificateInfo | None:
    """The server certificate of the TLS connection a response came on.

    httpx2 and httpx put the connection's stream in ``response.extensions``
    ("network_stream"); its ``ssl_object`` extra is the TLS object of the
    connection to the server, also inside a proxy tunnel.
    """
    import datetime

    from cryptography import x509

    stream = response.extensions.get("network_stream")
    ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return None
    certificate = x509.load_der_x509_certificate(der)
    now = datetime.datetime.now(datetime.UTC)
    return inspection.certificate_info(certificate, now)


def _text(content: Any) -> str:
    """A message's content as text; multi-part contents are joined."""
    if isinstance(content, str):
        return content
    parts = [
        part.get("text", "") if isinstance(part, dict) else str(part)
        for part in content or []
    ]
    return "".join(parts)
