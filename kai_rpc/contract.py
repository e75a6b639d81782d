"""The wire contract between the IDE, the bridge and the worker.

Every message that crosses a pipe is one of these pydantic models. JSON field names
are camelCase; Python attributes are snake_case. This module imports nothing else of
the project, so the IDE contract in ``ide-contract/`` can be generated from it alone.
"""

from __future__ import annotations

import enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool
from pydantic.alias_generators import to_camel

# Methods the IDE sends to the bridge.
INITIALIZE = "initialize"
INITIALIZED = "initialized"
SHUTDOWN = "shutdown"
EXIT = "exit"
SET_ENVIRONMENT = "setEnvironment"
GET_ENVIRONMENT_STATUS = "getEnvironmentStatus"
DID_CHANGE_CONFIGURATION = "workspace/didChangeConfiguration"
CANCEL_REQUEST = "$/cancelRequest"
# Methods the bridge forwards to the worker, which serves them.
PROBE_CONNECTIVITY = "probeConnectivity"
ECHO = "echo"
CHAT = "chat"
# Notifications the bridge sends to the IDE.
ENVIRONMENT_STATUS = "environmentStatus"
LOG_MESSAGE = "window/logMessage"
# Internal: the bridge hands a fresh worker its configuration; the answer is the
# worker's own inspection of its environment, and marks the worker ready.
WORKER_CONFIGURE = "kai/configure"

DEFAULT_ENDPOINT = "https://api.openai.com/v1"


class ErrorCode(enum.IntEnum):
    """JSON-RPC error codes the bridge answers with."""

    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    SERVER_NOT_INITIALIZED = -32002
    REQUEST_CANCELLED = -32800
    REQUEST_FAILED = -32803
    MESSAGE_TOO_LARGE = -32010
    WORKER_START_FAILED = -32011
    WORKER_LOST = -32012
    WORKER_UNAVAILABLE = -32013


class WireModel(BaseModel):
    """Base of every wire model: camelCase on the wire, unknown fields ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        use_attribute_docstrings=False,
        # Build each model on first use: the bridge answers initialize before it
        # needs most of them.
        defer_build=True,
    )

    def wire(self) -> dict[str, Any]:
        """The JSON-ready dict for this model, with camelCase keys."""
        return self.model_dump(mode="json", by_alias=True)


EnvMap = dict[str, Any]
"""Variable name to value. A string sets the variable, ``null`` unsets it. Values of
any other JSON type are rejected per key, with a reason, and the rest is applied."""


class ModelProvider(WireModel):
    """Which LLM client the worker builds, and its constructor arguments."""

    provider: Literal["ChatOpenAI"] = Field(
        "ChatOpenAI", description="The langchain class; only ChatOpenAI is supported."
    )
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments for langchain-openai's ChatOpenAI, such as "
        "model, base_url, api_key, temperature. Secret-shaped ones are redacted "
        "everywhere the bridge reports or logs.",
    )


class WorkerSpec(WireModel):
    """Another worker program than the default ``python -m kai_rpc.worker``."""

    command: list[str] = Field(
        min_length=1, description="Argument list; run without a shell."
    )
    cwd: str | None = Field(None, description="Working directory of the worker.")


class InitializationOptions(WireModel):
    """What ``initialize`` may carry in ``initializationOptions``."""

    env: EnvMap | None = Field(
        None, description="The IDE's environment layer: name to string, null unsets."
    )
    endpoints: list[str] | None = Field(
        None,
        description="URLs whose route the report describes. Default: the LLM base "
        "URL from modelProvider, OPENAI_BASE_URL or OPENAI_API_BASE, else "
        f"{DEFAULT_ENDPOINT}.",
    )
    model_provider: ModelProvider | None = Field(
        None, description="The LLM client the worker builds for chat."
    )
    worker: WorkerSpec | None = Field(
        None, description="Run another worker program than the default."
    )


class SetEnvironmentParams(WireModel):
    """Params of ``setEnvironment``."""

    env: EnvMap = Field(description="Variables to set (string) or unset (null).")
    replace: StrictBool = Field(
        False,
        description="false merges into the IDE layer sent before; true replaces the "
        "whole IDE layer with this map.",
    )


class KaiSettings(WireModel):
    """The ``kai`` section of the IDE's settings."""

    env: EnvMap | None = Field(None, description="As setEnvironment's env, merged.")


class ConfigurationSettings(WireModel):
    """The settings object of ``workspace/didChangeConfiguration``."""

    kai: KaiSettings | None = Field(
        None, description="Kai's section; other sections are ignored."
    )


class DidChangeConfigurationParams(WireModel):
    """Params of ``workspace/didChangeConfiguration``; only ``settings.kai`` is read."""

    settings: ConfigurationSettings | None = Field(
        None, description="The IDE's settings object."
    )


WorkerState = Literal["starting", "ready", "restarting", "failed", "stopped"]


class WorkerStatus(WireModel):
    """The state of the worker process that serves forwarded requests."""

    state: WorkerState = Field(description="Lifecycle state of the current worker.")
    pid: int | None = Field(None, description="Process id of the current worker.")
    restarts: int = Field(0, description="Restarts after crashes since start-up.")
    last_error: str | None = Field(
        None, description="Why the last worker failed, secrets redacted."
    )


VariableStatus = Literal["applied", "rejected", "unset", "inherited", "locked"]
VariableSource = Literal["ide", "policy", "inherited"]


class VariableEntry(WireModel):
    """What became of one variable."""

    name: str = Field(description="The variable name, exactly as sent.")
    status: VariableStatus = Field(
        description="applied: the IDE value reaches the worker. rejected: it does "
        "not (see reason). unset: the IDE removed it. inherited: the bridge's own "
        "value reaches the worker. locked: the policy's value wins."
    )
    source: VariableSource = Field(description="Whose value the worker sees.")
    value: str | None = Field(
        None, description="The value, redacted when secret-shaped; null when absent."
    )
    reason: str | None = Field(None, description="Why, for rejected and locked.")


class LibraryRoute(WireModel):
    """How one HTTP library would route an endpoint under the worker's environment."""

    library: str = Field(description="Library name, e.g. httpx2, requests, urllib.")
    version: str = Field(description="Installed version of that library.")
    proxy: str | None = Field(None, description="Proxy URL, credentials redacted.")
    bypassed_by: str | None = Field(
        None, description="The NO_PROXY entry that sends the call direct."
    )
    error: str | None = Field(
        None, description="Why the library cannot use this environment at all."
    )


class Route(WireModel):
    """Where calls to one endpoint go, as the LLM client will make them."""

    url: str = Field(description="The endpoint.")
    proxy: str | None = Field(
        None,
        description="Proxy the LLM client uses, credentials redacted; null: direct.",
    )
    proxy_source: str | None = Field(
        None, description="The variable that chose the proxy, e.g. OPENAI_PROXY."
    )
    bypassed_by: str | None = Field(
        None, description="The NO_PROXY entry that sends the call direct."
    )
    client: str = Field("", description="The LLM client's HTTP library.")
    client_version: str = Field("", description="Its installed version.")
    libraries: list[LibraryRoute] = Field(
        default_factory=list,
        description="How other HTTP libraries in Kai's processes would route it.",
    )


class ProxyReport(WireModel):
    """One route per endpoint."""

    routes: list[Route] = Field(
        default_factory=list, description="One route per endpoint."
    )


class CertificateInfo(WireModel):
    """One parsed certificate."""

    subject: str = Field(description="Subject distinguished name.")
    issuer: str = Field(description="Issuer distinguished name.")
    not_before: str = Field(description="ISO 8601, UTC.")
    not_after: str = Field(description="ISO 8601, UTC.")
    expired: bool = Field(False, description="notAfter is in the past.")
    not_yet_valid: bool = Field(False, description="notBefore is in the future.")


class CaSource(WireModel):
    """One CA bundle or directory named by a variable."""

    variable: str = Field(description="The variable that names it, e.g. SSL_CERT_FILE.")
    path: str = Field(description="The path the variable names, as given.")
    exists: bool = Field(description="Whether the path exists.")
    readable: bool = Field(description="Whether the bridge's user can read it.")
    is_directory: bool = Field(
        False, description="A directory of certificates rather than a bundle file."
    )
    certificate_count: int = Field(0, description="Certificates parsed.")
    certificates: list[CertificateInfo] = Field(
        default_factory=list,
        description="The first ten certificates in file order, then every other "
        "expired or not-yet-valid one; certificateCount has the total.",
    )
    honoured_by: list[str] = Field(
        default_factory=list, description="Libraries that read this variable."
    )
    ignored_by: list[str] = Field(
        default_factory=list, description="Libraries that do not."
    )
    used_by_llm_client: bool = Field(
        False, description="Whether the worker's LLM client trusts this source."
    )
    error: str | None = Field(
        None, description="Why the source could not be read or parsed."
    )


class TlsReport(WireModel):
    """What the LLM client trusts."""

    verify: bool = Field(True, description="false only when a policy allowed it.")
    trust_store: str = Field(
        "", description="Which source the LLM client's trust store is built from."
    )
    ca_files: list[CaSource] = Field(
        default_factory=list,
        description="CA bundles and directories named by variables.",
    )


class ReportWarning(WireModel):
    """Something the user should know or fix. ``code`` is stable."""

    code: str = Field(description="Stable identifier, for matching.")
    message: str = Field(
        description="What is wrong and what to change, secrets redacted."
    )


class WorkerInspection(WireModel):
    """The worker's own view of its environment: result of ``kai/configure``."""

    proxy: ProxyReport = Field(default_factory=ProxyReport)
    tls: TlsReport = Field(default_factory=TlsReport)
    warnings: list[ReportWarning] = Field(default_factory=list)


class EnvironmentReport(WireModel):
    """The effective environment: result of setEnvironment, getEnvironmentStatus,
    the ``environment`` of initialize's result, and environmentStatus's params."""

    generation: int = Field(description="+1 each time a new environment is applied.")
    worker: WorkerStatus = Field(
        description="The worker process serving forwarded requests."
    )
    variables: list[VariableEntry] = Field(
        default_factory=list, description="What became of each variable."
    )
    proxy: ProxyReport = Field(
        default_factory=ProxyReport,
        description="How calls to each endpoint are routed.",
    )
    tls: TlsReport = Field(
        default_factory=TlsReport,
        description="Whether the LLM client verifies TLS, and against which CAs.",
    )
    warnings: list[ReportWarning] = Field(
        default_factory=list, description="Things the user should know or fix."
    )


class InitializeResultExtension(WireModel):
    """What the bridge adds at the top level of the standard InitializeResult."""

    environment: EnvironmentReport = Field(
        description="The effective environment after initialize."
    )


class WorkerConfig(WireModel):
    """Params of the internal ``kai/configure`` request to a fresh worker."""

    generation: int
    endpoints: list[str] = Field(default_factory=list)
    model_provider: ModelProvider | None = None


class ProbeParams(WireModel):
    """Params of ``probeConnectivity``."""

    url: str | None = Field(None, description="Default: the first endpoint.")
    timeout_ms: int | None = Field(None, gt=0, le=120_000, description="Default 10000.")


ProbeErrorKind = Literal[
    "proxy_auth_required",
    "proxy_unreachable",
    "proxy_error",
    "tls_verify_failed",
    "dns",
    "refused",
    "timeout",
    "http_error",
    "invalid_url",
    "other",
]


class ProbeError(WireModel):
    """Why a probe failed."""

    kind: ProbeErrorKind = Field(description="The failure's category; stable.")
    message: str = Field(description="What failed and what to change; no secrets.")


class ProbeResult(WireModel):
    """One real HTTPS request made with the LLM client's own HTTP client."""

    url: str = Field(description="The URL requested.")
    route: Literal["direct", "proxy"] = Field(
        description="Whether the request went direct or through a proxy."
    )
    proxy: str | None = Field(None, description="The proxy, credentials redacted.")
    ok: bool = Field(description="Whether the request succeeded; else see error.")
    status: int | None = Field(None, description="HTTP status, when one arrived.")
    error: ProbeError | None = Field(None, description="What failed, when not ok.")
    elapsed_ms: float = Field(description="Duration of the request, milliseconds.")
    certificate: CertificateInfo | None = Field(
        None, description="The server certificate the client saw, when it got one."
    )
    client: str = Field("", description="HTTP library and version that made the call.")


class ChatMessage(WireModel):
    """One message of the conversation."""

    role: Literal["system", "user", "assistant"] = Field(description="Who said it.")
    content: str = Field(description="The text.")


class ChatParams(WireModel):
    """Params of ``chat``."""

    messages: list[ChatMessage] = Field(
        min_length=1, description="The conversation, oldest first."
    )


class ChatResult(WireModel):
    """The LLM's answer."""

    content: str = Field(description="The assistant's reply.")
    model: str = Field(description="The model that answered, as its provider names it.")
