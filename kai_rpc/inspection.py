"""Where the worker's traffic goes and what it trusts, asked of the libraries.

Used by the worker (``kai/configure`` answers with :func:`inspect` of its own
``os.environ``) and by ``kai-rpc doctor`` (the shell's environment or an env file).

Routes are never derived from our own reading of proxy variables. Each library is
asked with its own resolution code:

* httpx2 and httpx: ``_utils.get_environment_proxies()`` (what ``Client`` calls when
  ``trust_env`` is on) turned into mounts, matched by the library's own
  ``Client._transport_for_url`` over its ``URLPattern`` ordering;
* requests: ``requests.utils.get_environ_proxies`` / ``should_bypass_proxies`` and
  ``select_proxy``;
* urllib: ``urllib.request.getproxies`` and ``proxy_bypass`` (its ``ProxyHandler``
  opens a proxy per scheme only, so ``ALL_PROXY`` never applies to it).

All of those read ``os.environ``. :func:`evaluated_in` points the module attribute
``os.environ`` at a plain dict copy of the mapping for the duration of a call, under
a process-wide lock, and puts the real one back. Rebinding the attribute instead of
changing the real environment's contents means no ``putenv`` happens, so a child
process started by another thread meanwhile never inherits the evaluated mapping.
The cost is that another thread reading ``os.environ`` inside the window sees the
mapping; the window is a few library calls long. In the worker the mapping *is*
``os.environ`` and the context manager does nothing.

The LLM client's route (:func:`llm_mounts`) is the one :mod:`kai_rpc.llm` mounts on
its HTTP clients, so the report and the traffic come from the same data: a matching
NO_PROXY entry goes direct; otherwise ``OPENAI_PROXY`` when set; otherwise the
proxy the client library takes from the environment.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import importlib.metadata
import importlib.util
import ipaddress
import logging
import os
import re
import sys
import threading
import urllib.parse
import urllib.request
import warnings as python_warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Final

from kai_rpc.contract import (
    DEFAULT_ENDPOINT,
    CaSource,
    CertificateInfo,
    LibraryRoute,
    ModelProvider,
    ProxyReport,
    ReportWarning,
    Route,
    TlsReport,
    WorkerInspection,
)
from kai_rpc.redact import redact_url, scrub

logger = logging.getLogger(__name__)

# Stable warning codes. The IDE and scripts may match on them; never rename one.
PYTHONHTTPSVERIFY_IGNORED: Final = "PYTHONHTTPSVERIFY_IGNORED"
CA_BUNDLE_REQUESTS_ONLY: Final = "CA_BUNDLE_REQUESTS_ONLY"
OPENAI_PROXY_OVERRIDES_ENV_PROXY: Final = "OPENAI_PROXY_OVERRIDES_ENV_PROXY"
PROXY_CASE_CONFLICT: Final = "PROXY_CASE_CONFLICT"
NO_PROXY_UNUSED_BY_CLIENT: Final = "NO_PROXY_UNUSED_BY_CLIENT"
NO_PROXY_PARTIAL: Final = "NO_PROXY_PARTIAL"
NO_PROXY_BREAKS_HTTPX: Final = "NO_PROXY_BREAKS_HTTPX"
SOCKS_UNSUPPORTED: Final = "SOCKS_UNSUPPORTED"
PROXY_URL_NO_SCHEME: Final = "PROXY_URL_NO_SCHEME"
PROXY_URL_INVALID: Final = "PROXY_URL_INVALID"
ROUTE_LIBRARIES_DISAGREE: Final = "ROUTE_LIBRARIES_DISAGREE"
TLS_VERIFY_DISABLED: Final = "TLS_VERIFY_DISABLED"
TLS_VERIFY_SETTING_INVALID: Final = "TLS_VERIFY_SETTING_INVALID"
CA_FILE_MISSING: Final = "CA_FILE_MISSING"
CA_FILE_UNREADABLE: Final = "CA_FILE_UNREADABLE"
CA_FILE_NO_CERTIFICATES: Final = "CA_FILE_NO_CERTIFICATES"
CA_CERT_EXPIRED: Final = "CA_CERT_EXPIRED"
CA_CERT_NOT_YET_VALID: Final = "CA_CERT_NOT_YET_VALID"
CA_DIR_NOT_HASHED: Final = "CA_DIR_NOT_HASHED"

WARNING_CODES: Final[Mapping[str, str]] = {
    PYTHONHTTPSVERIFY_IGNORED: "PYTHONHTTPSVERIFY is set; no Python 3 client reads "
    "it, so it neither disables nor enables verification.",
    CA_BUNDLE_REQUESTS_ONLY: "REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE is set without "
    "SSL_CERT_FILE; only requests reads them. Says whether the LLM client uses it.",
    OPENAI_PROXY_OVERRIDES_ENV_PROXY: "OPENAI_PROXY and an environment proxy are both "
    "set; Kai sends LLM traffic through OPENAI_PROXY, plain langchain-openai may not.",
    PROXY_CASE_CONFLICT: "Upper- and lower-case forms of a proxy variable differ; "
    "Python takes the lower-case one, other tools may take the other.",
    NO_PROXY_UNUSED_BY_CLIENT: "A NO_PROXY entry the LLM client's library ignores.",
    NO_PROXY_PARTIAL: "A NO_PROXY entry some HTTP libraries honour and others ignore.",
    NO_PROXY_BREAKS_HTTPX: "A NO_PROXY entry that makes httpx raise when a client "
    "is created.",
    SOCKS_UNSUPPORTED: "A SOCKS proxy that some library cannot use (missing extra, "
    "or no SOCKS support at all).",
    PROXY_URL_NO_SCHEME: "A proxy URL without a scheme; libraries assume http://.",
    PROXY_URL_INVALID: "A proxy URL the LLM client cannot use; LLM calls will fail.",
    ROUTE_LIBRARIES_DISAGREE: "HTTP libraries would route the same endpoint "
    "differently under this environment.",
    TLS_VERIFY_DISABLED: "KAI_TLS_VERIFY turns TLS verification off for LLM traffic.",
    TLS_VERIFY_SETTING_INVALID: "KAI_TLS_VERIFY has a value that is neither true "
    "nor false; verification stays on.",
    CA_FILE_MISSING: "A CA variable names a path that does not exist.",
    CA_FILE_UNREADABLE: "A CA variable names a path this process cannot read.",
    CA_FILE_NO_CERTIFICATES: "A CA file or directory holds no certificate.",
    CA_CERT_EXPIRED: "A CA file holds an expired certificate.",
    CA_CERT_NOT_YET_VALID: "A CA file holds a certificate that is not valid yet.",
    CA_DIR_NOT_HASHED: "A CA directory without OpenSSL hash links; OpenSSL finds "
    "no certificate in it.",
}

CA_VARIABLES: Final = (
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
)
"""CA variables in the order the LLM client consults them (see kai_rpc.llm)."""

TLS_VERIFY_VARIABLE: Final = "KAI_TLS_VERIFY"
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})
_TRUE_WORDS = frozenset({"", "1", "true", "yes", "on"})

_PROXY_SCHEMES = ("http", "https", "all")
_SENTINEL_PROXY = "http://kai-sentinel.invalid:9"
_LIBRARIES = ("httpx2", "httpx", "requests", "urllib")
# Certificates listed per CA source; flagged ones (expired, not yet valid) are
# always listed, and certificate_count always counts all of them.
_MAX_LISTED_CERTIFICATES = 10
_HASH_LINK = re.compile(r"[0-9a-f]{8}\.\d+")

_environ_lock = threading.RLock()


@contextlib.contextmanager
def evaluated_in(environ: Mapping[str, str]) -> Iterator[None]:
    """Run the block with ``os.environ`` reading ``environ`` (see module docstring)."""
    if environ is os.environ:
        yield
        return

    with _environ_lock:
        real = os.environ
        setattr(os, "environ", dict(environ))  # noqa: B010 - a plain dict on purpose
        try:
            yield
        finally:
            setattr(os, "environ", real)  # noqa: B010


def tls_verify_setting(environ: Mapping[str, str]) -> tuple[bool, str | None]:
    """Whether KAI_TLS_VERIFY leaves verification on, and its unusable value if any."""
    raw = environ.get(TLS_VERIFY_VARIABLE)
    if raw is None:
        return True, None
    word = raw.strip().lower()
    if word in _FALSE_WORDS:
        return False, None
    if word in _TRUE_WORDS:
        return True, None
    return True, raw


def default_endpoints(
    environ: Mapping[str, str], provider: ModelProvider | None
) -> list[str]:
    """The LLM base URL: provider args, then OPENAI_API_BASE, OPENAI_BASE_URL.

    The environment order is langchain-openai 1.8's: ChatOpenAI reads
    OPENAI_API_BASE itself and leaves OPENAI_BASE_URL to the openai SDK.
    """
    args = provider.args if provider is not None else {}
    for key in ("base_url", "openai_api_base"):
        value = args.get(key)
        if isinstance(value, str) and value:
            return [value]
    for name in ("OPENAI_API_BASE", "OPENAI_BASE_URL"):
        if environ.get(name):
            return [environ[name]]
    return [DEFAULT_ENDPOINT]


# --- The LLM client's library ---------------------------------------------------


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def llm_client_library() -> str:
    """The HTTP library the installed openai SDK runs on: httpx2 from 3.0, else httpx.

    Read from the openai distribution's version, as langchain-openai's own
    ``_compat`` does, so the answer costs no import of openai.
    """
    match = re.match(r"\D*(\d+)", _version("openai"))
    return "httpx2" if match is not None and int(match.group(1)) >= 3 else "httpx"


def library_version(library: str) -> str:
    """Installed version of an HTTP library; urllib reports Python's."""
    if library == "urllib":
        return f"python {sys.version.split()[0]}"
    return _version(library)


def _module(name: str) -> ModuleType:
    return importlib.import_module(name)


# --- Proxy variables --------------------------------------------------------------


def _proxy_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """Every proxy variable set, as named (OPENAI_PROXY excluded)."""
    return {
        name: value
        for name, value in environ.items()
        if name.lower() in {f"{s}_proxy" for s in _PROXY_SCHEMES}
    }


def _with_proxy_variables(
    environ: Mapping[str, str], no_proxy: str | None, proxy: str | None
) -> dict[str, str]:
    """``environ`` with its proxy variables replaced by these two values."""
    cleared = {
        name: value
        for name, value in environ.items()
        if not name.lower().endswith("_proxy") or name == "OPENAI_PROXY"
    }
    if no_proxy is not None:
        cleared["no_proxy"] = no_proxy
    if proxy is not None:
        cleared["all_proxy"] = proxy
    return cleared


def effective_no_proxy(environ: Mapping[str, str]) -> list[str]:
    """NO_PROXY entries as Python reads them (urllib's getproxies: lower case wins)."""
    with evaluated_in(environ):
        value = urllib.request.getproxies_environment().get("no", "")
    return [entry.strip() for entry in value.split(",") if entry.strip()]


def _with_scheme(url: str) -> str:
    """A proxy URL as httpx and requests take a scheme-less one: http:// assumed."""
    return url if "://" in url else f"http://{url}"


def openai_proxy(environ: Mapping[str, str]) -> str | None:
    """OPENAI_PROXY with a scheme, or None. langchain-openai reads this exact name."""
    value = environ.get("OPENAI_PROXY", "").strip()
    return _with_scheme(value) if value else None


# --- httpx-family routing ---------------------------------------------------------


def _env_mounts(library: str, environ: Mapping[str, str]) -> dict[str, str | None]:
    """The library's own map from URL pattern to proxy (None: direct) for environ."""
    utils = _module(f"{library}._utils")
    with evaluated_in(environ):
        mounts: dict[str, str | None] = utils.get_environment_proxies()
    return mounts


def _mount_route(
    library: str, mounts: Mapping[str, str | None], url: str
) -> str | None:
    """Which proxy the library's Client picks for url under these mounts.

    Builds a client whose transports are inert stand-ins (no TLS context, no
    sockets), then asks ``_transport_for_url``: the same matching and ordering a real
    client applies. Raises what the library raises for an unusable pattern.
    """
    lib = _module(library)

    def refuse(request: Any) -> Any:
        raise RuntimeError("inspection transports never send")

    direct = lib.MockTransport(refuse)
    proxies = {key: lib.MockTransport(refuse) for key in mounts}
    client = lib.Client(
        transport=direct,
        trust_env=False,
        mounts={
            key: None if value is None else proxies[key]
            for key, value in mounts.items()
        },
    )
    try:
        chosen = client._transport_for_url(lib.URL(url))
    finally:
        client.close()
    for key, transport in proxies.items():
        if chosen is transport:
            return mounts[key]
    return None


def _bypass_mounts(library: str, environ: Mapping[str, str]) -> dict[str, None] | None:
    """The library's direct mounts from NO_PROXY; None when NO_PROXY bypasses all.

    Asked with a stand-in proxy in place of the real ones, so that NO_PROXY=* (the
    library then returns no mounts at all) is told apart from an empty NO_PROXY.
    """
    no_proxy = ",".join(effective_no_proxy(environ))
    probe_env = _with_proxy_variables(environ, no_proxy, _SENTINEL_PROXY)
    mounts = _env_mounts(library, probe_env)
    if not any(value is not None for value in mounts.values()):
        return None
    return {key: None for key, value in mounts.items() if value is None}


def llm_mounts(environ: Mapping[str, str]) -> dict[str, str | None]:
    """URL pattern -> proxy URL (None: direct) for the worker's LLM HTTP client.

    NO_PROXY entries as the client library maps them come first (host patterns
    outrank the scheme-wide proxy keys in its ordering); then OPENAI_PROXY for every
    URL when set, else the environment proxies as the library resolves them.
    """
    library = llm_client_library()
    bypass = _bypass_mounts(library, environ)
    if bypass is None:
        return {}

    chosen = openai_proxy(environ)
    if chosen is not None:
        return {**bypass, "all://": chosen}
    proxies = {
        key: value
        for key, value in _env_mounts(library, environ).items()
        if value is not None
    }
    return {**bypass, **proxies}


@dataclass(frozen=True)
class ClientRoute:
    """How the LLM client sends one URL. ``proxy`` is unredacted: internal only."""

    proxy: str | None
    source: str | None
    bypassed_by: str | None


def client_route(environ: Mapping[str, str], url: str) -> ClientRoute:
    """The route of ``url`` through the LLM client built from ``environ``."""
    library = llm_client_library()
    proxy = _mount_route(library, llm_mounts(environ), url)
    if proxy is None:
        entry = _httpx_bypass_entry(library, environ, url)
        return ClientRoute(None, None, entry)

    if openai_proxy(environ) == proxy:
        return ClientRoute(proxy, "OPENAI_PROXY", None)
    return ClientRoute(proxy, _proxy_source(environ, proxy), None)


def _proxy_source(environ: Mapping[str, str], proxy: str) -> str | None:
    """The variable whose value the library turned into ``proxy``: lower case first."""
    for scheme in _PROXY_SCHEMES:
        for name in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY"):
            value = environ.get(name)
            if value and _with_scheme(value) == proxy:
                return name
    return None


def _httpx_bypass_entry(
    library: str, environ: Mapping[str, str], url: str
) -> str | None:
    """The first NO_PROXY entry that alone sends url direct in an httpx library."""
    for entry in effective_no_proxy(environ):
        if _httpx_entry_bypasses(library, environ, entry, url):
            return entry
    return None


def _httpx_entry_bypasses(
    library: str, environ: Mapping[str, str], entry: str, url: str
) -> bool:
    probe_env = _with_proxy_variables(environ, entry, _SENTINEL_PROXY)
    try:
        return _mount_route(library, _env_mounts(library, probe_env), url) is None
    except Exception:
        return False


# --- Per-library views ------------------------------------------------------------


def _httpx_view(library: str, environ: Mapping[str, str], url: str) -> LibraryRoute:
    view = LibraryRoute(library=library, version=library_version(library))
    try:
        proxy = _mount_route(library, _env_mounts(library, environ), url)
    except Exception as exc:
        view.error = scrub(
            f"{library} {view.version} raises {type(exc).__name__} when a client is "
            f"created under this environment: {exc}"
        )
        return view
    view.proxy = redact_url(proxy) if proxy else None
    if proxy is None:
        view.bypassed_by = _httpx_bypass_entry(library, environ, url)
    return view


def _requests_bypasses(environ: Mapping[str, str], entry: str | None, url: str) -> bool:
    utils = _module("requests.utils")
    with evaluated_in(environ):
        return bool(utils.should_bypass_proxies(url, no_proxy=entry))


def _requests_view(environ: Mapping[str, str], url: str) -> LibraryRoute:
    utils = _module("requests.utils")
    view = LibraryRoute(library="requests", version=library_version("requests"))
    with evaluated_in(environ):
        proxies = utils.get_environ_proxies(url, no_proxy=None)
        proxy = utils.select_proxy(url, proxies) if proxies else None
    if proxy:
        view.proxy = redact_url(_with_scheme(proxy))
        return view
    for entry in effective_no_proxy(environ):
        if _requests_bypasses(environ, entry, url):
            view.bypassed_by = entry
            break
    return view


def _urllib_bypasses(host: str, entry: str) -> bool:
    # proxy_bypass_environment is public in urllib.request but missing from typeshed.
    bypass = getattr(urllib.request, "proxy_bypass_environment")  # noqa: B009
    return bool(bypass(host, {"no": entry}))


def _urllib_view(environ: Mapping[str, str], url: str) -> LibraryRoute:
    view = LibraryRoute(library="urllib", version=library_version("urllib"))
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    with evaluated_in(environ):
        proxies = urllib.request.getproxies()
        # ProxyHandler opens a proxy per scheme; "all" has no opener.
        proxy = proxies.get(parts.scheme)
        bypassed = bool(proxy) and bool(urllib.request.proxy_bypass(host))
    if proxy and not bypassed:
        if proxy.lower().startswith("socks"):
            view.error = "urllib cannot use a SOCKS proxy."
        view.proxy = redact_url(proxy)
        return view
    for entry in effective_no_proxy(environ):
        if _urllib_bypasses(host, entry):
            view.bypassed_by = entry
            break
    return view


def _library_views(environ: Mapping[str, str], url: str) -> list[LibraryRoute]:
    return [
        _httpx_view("httpx2", environ, url),
        _httpx_view("httpx", environ, url),
        _requests_view(environ, url),
        _urllib_view(environ, url),
    ]


def route_for(environ: Mapping[str, str], url: str) -> Route:
    """The report's route for one endpoint: the LLM client's, and each library's."""
    library = llm_client_library()
    route = Route(url=url, client=library, client_version=library_version(library))
    route.libraries = _library_views(environ, url)
    try:
        chosen = client_route(environ, url)
    except Exception as exc:
        # The client cannot be built; llm.py fails with the same error on use.
        logger.warning("no route for %s: %s", url, scrub(str(exc)))
        return route
    route.proxy = redact_url(chosen.proxy) if chosen.proxy else None
    route.proxy_source = chosen.source
    route.bypassed_by = chosen.bypassed_by
    return route


# --- Proxy warnings ---------------------------------------------------------------


def _warn(code: str, message: str) -> ReportWarning:
    return ReportWarning(code=code, message=scrub(message))


def _disagreement(route: Route) -> ReportWarning | None:
    """Libraries that would route the endpoint differently from one another."""
    outcomes = {
        view.library: "error" if view.error else (view.proxy or "direct")
        for view in route.libraries
    }
    if len(set(outcomes.values())) <= 1:
        return None
    listed = "; ".join(f"{lib}: {outcome}" for lib, outcome in outcomes.items())
    return _warn(
        ROUTE_LIBRARIES_DISAGREE,
        f"HTTP libraries route {route.url} differently ({listed}). Kai's LLM client "
        f"({route.client}) goes {route.proxy or 'direct'}; other tools in Kai's "
        "processes may not. Write NO_PROXY entries every library understands: plain "
        "host names, domain suffixes such as .example.com, and single IP addresses.",
    )


def _case_conflicts(environ: Mapping[str, str]) -> list[ReportWarning]:
    warnings = []
    with evaluated_in(environ):
        effective = urllib.request.getproxies_environment()
    for scheme in (*_PROXY_SCHEMES, "no"):
        lower, upper = f"{scheme}_proxy", f"{scheme.upper()}_PROXY"
        if lower not in environ or upper not in environ:
            continue
        if environ[lower] == environ[upper]:
            continue
        taken = effective.get(scheme)
        winner = lower if taken == environ[lower] else upper if taken else "neither"
        warnings.append(
            _warn(
                PROXY_CASE_CONFLICT,
                f"{lower}={environ[lower]!r} and {upper}={environ[upper]!r} differ. "
                f"Python's HTTP libraries take {winner} (an empty lower-case value "
                "unsets the upper-case one); curl and other tools may take the "
                "other. Set both to the same value, or unset one.",
            )
        )
    return warnings


def _scheme_warnings(environ: Mapping[str, str]) -> list[ReportWarning]:
    warnings = []
    named = {**_proxy_variables(environ)}
    if environ.get("OPENAI_PROXY"):
        named["OPENAI_PROXY"] = environ["OPENAI_PROXY"]
    for name, value in sorted(named.items()):
        if not value.strip() or "://" in value:
            continue
        warnings.append(
            _warn(
                PROXY_URL_NO_SCHEME,
                f"{name}={value!r} has no scheme. httpx2, httpx and requests assume "
                f"http://; other tools may refuse it. Write {name}="
                f"{_with_scheme(value.strip())!r}.",
            )
        )
    return warnings


def _proxy_urls(environ: Mapping[str, str]) -> dict[str, str]:
    """Variable name -> proxy URL with scheme, for every proxy in effect."""
    named = {
        name: _with_scheme(value)
        for name, value in _proxy_variables(environ).items()
        if value.strip() and not name.lower().startswith("no_")
    }
    chosen = openai_proxy(environ)
    if chosen is not None:
        named["OPENAI_PROXY"] = chosen
    return named


def _invalid_proxy_warnings(environ: Mapping[str, str]) -> list[ReportWarning]:
    """Proxy URLs the LLM client's library refuses to build a proxy from."""
    library = llm_client_library()
    lib = _module(library)
    warnings = []
    for name, url in sorted(_proxy_urls(environ).items()):
        try:
            lib.Proxy(url)
        except Exception as exc:
            warnings.append(
                _warn(
                    PROXY_URL_INVALID,
                    f"{name}={redact_url(url)!r} cannot be used by {library}: "
                    f"{exc}. LLM calls routed through it fail. Use an http://, "
                    "https://, socks5:// or socks5h:// URL.",
                )
            )
    return warnings


def _socks_warnings(environ: Mapping[str, str]) -> list[ReportWarning]:
    warnings = []
    socksio = importlib.util.find_spec("socksio") is not None
    pysocks = importlib.util.find_spec("socks") is not None
    client = llm_client_library()
    for name, url in sorted(_proxy_urls(environ).items()):
        if not url.lower().startswith("socks"):
            continue
        lacking = []
        if not socksio:
            lacking += [f"httpx2 and httpx (pip install '{client}[socks]')"]
        if not pysocks:
            lacking += ["requests (pip install 'requests[socks]')"]
        lacking += ["urllib (no SOCKS support at all)"]
        effect = (
            "Kai's LLM client cannot use it: install socksio in Kai's environment."
            if not socksio
            else "Kai's LLM client can use it."
        )
        warnings.append(
            _warn(
                SOCKS_UNSUPPORTED,
                f"{name}={redact_url(url)!r} is a SOCKS proxy that these cannot use: "
                f"{', '.join(lacking)}. {effect}",
            )
        )
    return warnings


def _openai_proxy_warning(
    environ: Mapping[str, str], endpoints: Sequence[str]
) -> ReportWarning | None:
    """OPENAI_PROXY next to an environment proxy: ours wins; langchain's may not."""
    chosen = openai_proxy(environ)
    library = llm_client_library()
    env_mounts = _env_mounts(library, environ)
    env_proxies = {k: v for k, v in env_mounts.items() if v is not None}
    if chosen is None or not env_proxies:
        return None

    url = endpoints[0] if endpoints else DEFAULT_ENDPOINT
    plain = _langchain_route(environ, env_mounts, chosen, url)
    plain_text = (
        "direct" if plain is None else f"through {redact_url(plain)}"
    ) + f" to {url}"
    names = ", ".join(sorted(_proxy_urls(environ).keys() - {"OPENAI_PROXY"}))
    return _warn(
        OPENAI_PROXY_OVERRIDES_ENV_PROXY,
        f"OPENAI_PROXY={redact_url(chosen)!r} is set next to {names}. Kai sends "
        "LLM traffic through OPENAI_PROXY (it takes precedence over HTTPS_PROXY and "
        "ALL_PROXY; a matching NO_PROXY entry still goes direct) and trusts the "
        "same CA sources as on every other route. Plain langchain-openai "
        f"{_version('langchain-openai')} would go {plain_text}, and on its "
        "OPENAI_PROXY path it trusts only certifi, ignoring SSL_CERT_FILE. Unset "
        "one of them if other tools should agree with Kai.",
    )


def _langchain_route(
    environ: Mapping[str, str],
    env_mounts: Mapping[str, str | None],
    chosen: str,
    url: str,
) -> str | None:
    """Where plain langchain-openai 1.8 sends url when OPENAI_PROXY is set.

    Its ``_build_proxied_*_httpx_client`` mounts OPENAI_PROXY under ``all://`` on a
    client that still trusts the environment, so HTTPS_PROXY ("https://") and
    NO_PROXY host patterns outrank it; with LANGCHAIN_OPENAI_TCP_KEEPALIVE=0 it
    passes ``proxy=`` instead, which drops the environment proxies and NO_PROXY.
    """
    library = llm_client_library()
    if environ.get("LANGCHAIN_OPENAI_TCP_KEEPALIVE", "1") == "0":
        return chosen
    return _mount_route(library, {**env_mounts, "all://": chosen}, url)


def _representative_url(entry: str) -> str | None:
    """A URL that the entry is meant to exempt, to ask each library about it."""
    if entry == "*" or "://" in entry:
        return None
    text = entry.strip("[]") if entry.startswith("[") and entry.endswith("]") else entry
    with contextlib.suppress(ValueError):
        network = ipaddress.ip_network(text, strict=False)
        address = next(iter(network.hosts()), network.network_address)
        host = f"[{address}]" if address.version == 6 else str(address)
        return f"https://{host}/"
    host = text.removeprefix("*").removeprefix(".")
    if not host or "/" in host:
        return None
    if ":" in host and not host.startswith("["):
        host_part, _, port = host.rpartition(":")
        if port.isdigit() and ":" not in host_part:
            return f"https://kai-probe.{host_part}:{port}/"
    return f"https://kai-probe.{host}/" if entry[0] in "*." else f"https://{host}/"


def _entry_honoured_by(environ: Mapping[str, str], entry: str, url: str) -> list[str]:
    honoured = []
    for library in ("httpx2", "httpx"):
        if _httpx_entry_bypasses(library, environ, entry, url):
            honoured.append(library)
    if _requests_bypasses(
        _with_proxy_variables(environ, None, _SENTINEL_PROXY), entry, url
    ):
        honoured.append("requests")
    if _urllib_bypasses(urllib.parse.urlsplit(url).netloc, entry):
        honoured.append("urllib")
    return honoured


def _httpx_crash(environ: Mapping[str, str], entry: str) -> str | None:
    probe_env = _with_proxy_variables(environ, entry, _SENTINEL_PROXY)
    try:
        _mount_route("httpx", _env_mounts("httpx", probe_env), "https://x.invalid/")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _no_proxy_warnings(environ: Mapping[str, str]) -> list[ReportWarning]:
    warnings = []
    client = llm_client_library()
    proxied = bool(_proxy_urls(environ))
    for entry in effective_no_proxy(environ):
        crash = _httpx_crash(environ, entry)
        if crash is not None:
            warnings.append(
                _warn(
                    NO_PROXY_BREAKS_HTTPX,
                    f"NO_PROXY entry {entry!r} makes httpx {library_version('httpx')} "
                    f"raise when any httpx client is created ({crash}). Kai's LLM "
                    f"client ({client}) "
                    + ("is affected" if client == "httpx" else "is not affected")
                    + "; other httpx users in the process are. Write IPv6 "
                    "addresses without brackets or port, e.g. ::1.",
                )
            )
        url = _representative_url(entry)
        if url is None or not proxied:
            continue
        honoured = _entry_honoured_by(environ, entry, url)
        ignored = [lib for lib in _LIBRARIES if lib not in honoured]
        if not ignored:
            continue
        if client in ignored:
            code, lead = (
                NO_PROXY_UNUSED_BY_CLIENT,
                (
                    f"NO_PROXY entry {entry!r} is ignored by {client}, Kai's LLM "
                    f"client: calls it is meant to exempt go through the proxy."
                ),
            )
        else:
            code, lead = (
                NO_PROXY_PARTIAL,
                (
                    f"NO_PROXY entry {entry!r} is honoured by Kai's LLM client "
                    f"({client}) but ignored by {', '.join(ignored)}."
                ),
            )
        honoured_text = ", ".join(honoured) if honoured else "no library"
        warnings.append(
            _warn(
                code,
                f"{lead} Honoured by: {honoured_text}. CIDR ranges and '*.' "
                "wildcards are not understood everywhere; list host names, "
                "'.domain' suffixes or single addresses instead.",
            )
        )
    return warnings


# --- TLS --------------------------------------------------------------------------


@dataclass
class _Parsed:
    certificates: list[CertificateInfo] = field(default_factory=list)
    error: str | None = None


def certificate_info(certificate: Any, now: datetime.datetime) -> CertificateInfo:
    """A cryptography x509 certificate as the report shows it."""
    not_before = certificate.not_valid_before_utc
    not_after = certificate.not_valid_after_utc
    return CertificateInfo(
        subject=certificate.subject.rfc4514_string(),
        issuer=certificate.issuer.rfc4514_string(),
        not_before=not_before.isoformat(),
        not_after=not_after.isoformat(),
        expired=not_after < now,
        not_yet_valid=not_before > now,
    )


def _parse_certificates(data: bytes, now: datetime.datetime) -> _Parsed:
    from cryptography import x509
    from cryptography.utils import CryptographyDeprecationWarning

    try:
        # System bundles hold a few old roots with non-positive serial numbers;
        # cryptography warns about each, which is noise for this report.
        with python_warnings.catch_warnings():
            python_warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            if b"-----BEGIN" in data:
                loaded = x509.load_pem_x509_certificates(data)
            else:
                loaded = [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        return _Parsed(error=str(exc))
    return _Parsed([certificate_info(cert, now) for cert in loaded])


def _honouring(variable: str, environ: Mapping[str, str]) -> list[str]:
    """Libraries that read this CA variable, given what else is set."""
    if variable == "SSL_CERT_FILE":
        return ["httpx2", "httpx", "urllib"]
    if variable == "SSL_CERT_DIR":
        # httpx and httpx2 take SSL_CERT_FILE alone when both are set; OpenSSL's
        # default paths (urllib) combine them.
        return (
            ["urllib"]
            if environ.get("SSL_CERT_FILE")
            else ["httpx2", "httpx", "urllib"]
        )
    if variable == "REQUESTS_CA_BUNDLE":
        return ["requests"]
    # requests falls back to CURL_CA_BUNDLE when REQUESTS_CA_BUNDLE is unset.
    return [] if environ.get("REQUESTS_CA_BUNDLE") else ["requests"]


def llm_ca_variables(environ: Mapping[str, str]) -> list[str]:
    """The CA variables the LLM client trusts, in kai_rpc.llm's order.

    SSL_CERT_FILE and SSL_CERT_DIR combine when both are set (as OpenSSL's default
    paths do); otherwise the first of REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE; none
    means certifi.
    """
    chosen = [name for name in ("SSL_CERT_FILE", "SSL_CERT_DIR") if environ.get(name)]
    if chosen:
        return chosen
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        if environ.get(name):
            return [name]
    return []


def _read_directory(path: Path, now: datetime.datetime) -> tuple[_Parsed, bool]:
    """Certificates in a CA directory, deduplicated, and whether it is hashed."""
    seen: dict[str, CertificateInfo] = {}
    hashed = False
    for entry in sorted(path.iterdir()):
        hashed = hashed or bool(_HASH_LINK.fullmatch(entry.name))
        if not entry.is_file():
            continue
        try:
            parsed = _parse_certificates(entry.read_bytes(), now)
        except OSError:
            continue
        for cert in parsed.certificates:
            seen.setdefault(f"{cert.subject}|{cert.not_after}", cert)
    return _Parsed(list(seen.values())), hashed


def ca_source(
    variable: str, environ: Mapping[str, str], now: datetime.datetime | None = None
) -> CaSource:
    """What one CA variable names, parsed."""
    now = now or datetime.datetime.now(datetime.UTC)
    path = Path(environ[variable])
    honoured = _honouring(variable, environ)
    ignored = [lib for lib in _LIBRARIES if lib not in honoured]
    if variable == "SSL_CERT_FILE" and openai_proxy(environ):
        ignored.append("langchain-openai on its OPENAI_PROXY path")
    source = CaSource(
        variable=variable,
        path=str(path),
        exists=path.exists(),
        readable=os.access(path, os.R_OK),
        is_directory=path.is_dir(),
        honoured_by=honoured,
        ignored_by=ignored,
        used_by_llm_client=tls_verify_setting(environ)[0]
        and variable in llm_ca_variables(environ),
    )
    if not source.exists or not source.readable:
        return source

    hashed = True
    try:
        if source.is_directory:
            parsed, hashed = _read_directory(path, now)
        else:
            parsed = _parse_certificates(path.read_bytes(), now)
    except OSError as exc:
        source.readable = False
        source.error = scrub(str(exc))
        return source
    certificates = parsed.certificates
    flagged = [c for c in certificates if c.expired or c.not_yet_valid]
    listed = certificates[:_MAX_LISTED_CERTIFICATES]
    source.certificates = listed + [c for c in flagged if c not in listed]
    source.certificate_count = len(certificates)
    if parsed.error is not None:
        source.error = parsed.error
    elif source.is_directory and certificates and not hashed:
        source.error = "no OpenSSL hash links (run c_rehash or openssl rehash)"
    return source


def _ca_warnings(source: CaSource) -> list[ReportWarning]:
    name = f"{source.variable}={source.path!r}"
    users = "Kai's LLM client" if source.used_by_llm_client else "libraries reading it"
    if not source.exists:
        return [
            _warn(
                CA_FILE_MISSING,
                f"{name} does not exist; {users} cannot load it. Point it at the "
                "PEM file of your proxy's or company's CA, or unset it.",
            )
        ]
    if not source.readable:
        return [
            _warn(
                CA_FILE_UNREADABLE,
                f"{name} cannot be read by this process; {users} cannot load it. "
                "Fix its permissions or point it at a readable copy.",
            )
        ]
    warnings = []
    if source.certificate_count == 0:
        warnings.append(
            _warn(
                CA_FILE_NO_CERTIFICATES,
                f"{name} holds no certificate Kai can parse"
                + (f" ({source.error})" if source.error else "")
                + ". It must contain PEM blocks (-----BEGIN CERTIFICATE-----).",
            )
        )
    elif source.is_directory and source.error:
        warnings.append(
            _warn(
                CA_DIR_NOT_HASHED,
                f"{name} has certificates but {source.error}; OpenSSL looks "
                "certificates up by hash and finds none. Run 'openssl rehash' on it "
                "or use SSL_CERT_FILE with a bundle.",
            )
        )
    warnings += _validity_warnings(name, source)
    return warnings


def _validity_warnings(name: str, source: CaSource) -> list[ReportWarning]:
    """One warning per kind of invalid certificate in a source, not one per cert.

    A system bundle routinely carries a few expired roots, harmless unless a
    server chains to them; a one-certificate proxy CA that expired breaks
    everything. The message says which of the two it is.
    """
    warnings = []
    expired = [c for c in source.certificates if c.expired]
    future = [c for c in source.certificates if c.not_yet_valid]
    total = source.certificate_count
    if expired:
        whole = len(expired) == total
        warnings.append(
            _warn(
                CA_CERT_EXPIRED,
                f"{name}: {len(expired)} of {total} certificates expired "
                f"({_subjects(expired)}). "
                + (
                    "Nothing it should trust can be verified; get a current copy "
                    "of that CA."
                    if whole
                    else "Harmless unless a server you call chains to one of them."
                ),
            )
        )
    if future:
        warnings.append(
            _warn(
                CA_CERT_NOT_YET_VALID,
                f"{name}: {len(future)} of {total} certificates are not valid yet "
                f"({_subjects(future)}, from {future[0].not_before}). Check this "
                "machine's clock.",
            )
        )
    return warnings


def _subjects(certificates: Sequence[CertificateInfo], most: int = 3) -> str:
    names = [repr(c.subject) for c in certificates[:most]]
    more = len(certificates) - most
    return ", ".join(names) + (f" and {more} more" if more > 0 else "")


def trust_store_description(environ: Mapping[str, str]) -> str:
    """Where the LLM client's trust comes from, in words."""
    verify, _ = tls_verify_setting(environ)
    if not verify:
        return f"none: verification disabled by {TLS_VERIFY_VARIABLE}"
    chosen = llm_ca_variables(environ)
    if chosen:
        return " + ".join(f"{name}={environ[name]}" for name in chosen)
    import certifi

    return f"certifi {_version('certifi')} ({certifi.where()})"


def _tls_warnings(environ: Mapping[str, str]) -> list[ReportWarning]:
    warnings = []
    verify, invalid = tls_verify_setting(environ)
    if not verify:
        warnings.append(
            _warn(
                TLS_VERIFY_DISABLED,
                f"TLS VERIFICATION IS OFF: {TLS_VERIFY_VARIABLE}="
                f"{environ[TLS_VERIFY_VARIABLE]!r}. The LLM client accepts any "
                "certificate, so anyone on the path can read and change LLM "
                "traffic, API key included. Set SSL_CERT_FILE to your proxy's CA "
                f"and unset {TLS_VERIFY_VARIABLE}.",
            )
        )
    if invalid is not None:
        warnings.append(
            _warn(
                TLS_VERIFY_SETTING_INVALID,
                f"{TLS_VERIFY_VARIABLE}={invalid!r} is not understood; verification "
                "stays on. Use 1/true or 0/false.",
            )
        )
    if "PYTHONHTTPSVERIFY" in environ:
        warnings.append(
            _warn(
                PYTHONHTTPSVERIFY_IGNORED,
                f"PYTHONHTTPSVERIFY={environ['PYTHONHTTPSVERIFY']!r} has no effect: "
                "no Python 3 HTTP client reads it, so TLS verification stays on. To "
                "trust a TLS-inspecting proxy, set SSL_CERT_FILE to its CA "
                f"certificate (PEM); to turn verification off, set "
                f"{TLS_VERIFY_VARIABLE}=0 (reported, and a policy may forbid it).",
            )
        )
    warnings += _requests_bundle_warnings(environ)
    return warnings


def _requests_bundle_warnings(environ: Mapping[str, str]) -> list[ReportWarning]:
    if environ.get("SSL_CERT_FILE"):
        return []
    chosen = llm_ca_variables(environ)
    warnings = []
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        if not environ.get(name):
            continue
        if name in chosen:
            effect = "Kai's LLM client applies it, as no SSL_CERT_FILE is set"
        else:
            effect = (
                f"Kai's LLM client does not apply it (it uses {' + '.join(chosen)})"
            )
        warnings.append(
            _warn(
                CA_BUNDLE_REQUESTS_ONLY,
                f"{name}={environ[name]!r} is read only by requests; httpx2, httpx "
                f"and urllib ignore it. {effect}. Set SSL_CERT_FILE={environ[name]!r} "
                "so every Python client trusts the same CAs.",
            )
        )
    return warnings


def tls_report(
    environ: Mapping[str, str], now: datetime.datetime | None = None
) -> tuple[TlsReport, list[ReportWarning]]:
    """The LLM client's trust, every CA source named, and what to fix."""
    verify, _ = tls_verify_setting(environ)
    report = TlsReport(verify=verify, trust_store=trust_store_description(environ))
    warnings = _tls_warnings(environ)
    warned_paths: set[str] = set()
    for variable in CA_VARIABLES:
        if environ.get(variable):
            source = ca_source(variable, environ, now)
            report.ca_files.append(source)
            # Several variables often name one bundle: its problems are told once.
            if source.path not in warned_paths:
                warned_paths.add(source.path)
                warnings += _ca_warnings(source)
    return report, warnings


# --- The whole inspection ---------------------------------------------------------


def _guarded(
    what: str, check: Callable[[], list[ReportWarning]]
) -> list[ReportWarning]:
    """One check's warnings; a check that fails is logged, never fatal to the report."""
    try:
        return check()
    except Exception:
        logger.exception("inspection check %r failed", what)
        return []


def inspect(
    environ: Mapping[str, str],
    endpoints: Sequence[str],
    provider: ModelProvider | None,
) -> WorkerInspection:
    """Routes and trust of the LLM client built from ``environ``, with warnings."""
    endpoints = list(endpoints) or default_endpoints(environ, provider)
    routes = [route_for(environ, url) for url in endpoints]
    tls, tls_warnings = tls_report(environ)

    warnings: list[ReportWarning] = []
    warnings += _guarded("case", lambda: _case_conflicts(environ))
    warnings += _guarded("scheme", lambda: _scheme_warnings(environ))
    warnings += _guarded("invalid", lambda: _invalid_proxy_warnings(environ))
    warnings += _guarded("socks", lambda: _socks_warnings(environ))
    openai = _guarded(
        "openai_proxy",
        lambda: [w for w in [_openai_proxy_warning(environ, endpoints)] if w],
    )
    warnings += openai
    warnings += _guarded("no_proxy", lambda: _no_proxy_warnings(environ))
    warnings += [w for w in map(_disagreement, routes) if w is not None]
    warnings += tls_warnings
    return WorkerInspection(
        proxy=ProxyReport(routes=routes), tls=tls, warnings=warnings
    )
