"""``kai-rpc doctor``: the worker's route and TLS inspection, for a shell or a file.

Usage::

    kai-rpc doctor [--env-file FILE] [--endpoint URL ...] [--probe] [--json]

Without ``--env-file`` it inspects this shell's environment; with it, only the
variables in FILE (``NAME=value`` lines; blank lines, ``#`` comments and a leading
``export`` are allowed; matching quotes around a value are removed). Endpoints
default as the worker's do. ``--probe`` makes one real HTTPS request per endpoint
with the worker's own HTTP client and exits 1 when any fails. ``--json`` prints
the WorkerInspection (with ``--probe``: ``{"inspection": ..., "probes": [...]}``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

from kai_rpc import inspection, redact
from kai_rpc.contract import ProbeParams, ProbeResult, Route, WorkerInspection
from kai_rpc.llm import LlmClient

_WIDTH = 88


class EnvFileError(ValueError):
    """An env file line that is not NAME=value."""


def read_env_file(path: Path) -> dict[str, str]:
    """NAME=value lines of ``path`` as a mapping."""
    environ: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not name.replace("_", "").isalnum():
            raise EnvFileError(
                f"{path}:{number}: expected NAME=value, got {redact.scrub(raw)!r}"
            )
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        environ[name] = value
    return environ


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kai-rpc doctor",
        description="Show where Kai's LLM traffic goes and what it trusts.",
    )
    parser.add_argument(
        "--env-file", type=Path, help="inspect NAME=value lines instead of this shell"
    )
    parser.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="URL",
        help="an endpoint to route (repeatable); default: the LLM base URL",
    )
    parser.add_argument(
        "--probe", action="store_true", help="make one HTTPS request per endpoint"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    return parser


def main(argv: list[str]) -> int:
    """Run the doctor; 0 when fine, 1 when a probe failed, 2 on bad input."""
    args = _parser().parse_args(argv)
    try:
        environ: Mapping[str, str] = (
            read_env_file(args.env_file) if args.env_file else os.environ
        )
    except (OSError, EnvFileError) as exc:
        print(f"kai-rpc doctor: cannot read the env file: {exc}", file=sys.stderr)
        return 2
    redact.remember_environment(environ, redact.Redactor())

    endpoints = args.endpoint or inspection.default_endpoints(environ, None)
    report = inspection.inspect(environ, endpoints, None)
    probes = asyncio.run(_probe_all(environ, endpoints)) if args.probe else []

    if args.json:
        print(json.dumps(_json(report, probes, args.probe), indent=2))
    else:
        print(render(report, probes))
    return 1 if any(not probe.ok for probe in probes) else 0


async def _probe_all(
    environ: Mapping[str, str], endpoints: Sequence[str]
) -> list[ProbeResult]:
    client = LlmClient(environ, None, endpoints)
    try:
        return [await client.probe(ProbeParams(url=url)) for url in endpoints]
    finally:
        await client.aclose()


def _json(report: WorkerInspection, probes: list[ProbeResult], probed: bool) -> object:
    if not probed:
        return report.wire()
    return {"inspection": report.wire(), "probes": [p.wire() for p in probes]}


# --- Text rendering ---------------------------------------------------------------


def render(report: WorkerInspection, probes: Sequence[ProbeResult] = ()) -> str:
    """The report as text: routes, CA sources, warnings, probes."""
    sections = [
        _routes(report.proxy.routes),
        _tls(report),
        _warnings(report),
    ]
    if probes:
        sections.append(render_probes(probes))
    return "\n\n".join(sections)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(width) for cell, width in zip(row, widths, strict=True)
        ).rstrip()
        for row in rows
    ]


def _route_text(proxy: str | None, bypassed_by: str | None, error: str | None) -> str:
    if error:
        return "ERROR (see warnings)"
    if proxy:
        return f"proxy {proxy}"
    return f"direct (NO_PROXY {bypassed_by!r})" if bypassed_by else "direct"


def _routes(routes: Sequence[Route]) -> str:
    lines = ["Routes"]
    for route in routes:
        client = f"{route.client} {route.client_version}"
        source = f" from {route.proxy_source}" if route.proxy_source else ""
        lines.append(f"  {route.url}")
        chosen = _route_text(route.proxy, route.bypassed_by, None)
        rows = [["LLM client", client, chosen + source]]
        rows += [
            [
                "",
                f"{view.library} {view.version}",
                _route_text(view.proxy, view.bypassed_by, view.error),
            ]
            for view in route.libraries
        ]
        lines += [f"    {line}" for line in _table(rows)]
    return "\n".join(lines)


def _tls(report: WorkerInspection) -> str:
    tls = report.tls
    state = "on" if tls.verify else "OFF"
    lines = ["TLS", f"  verification {state}; LLM client trusts {tls.trust_store}"]
    if not tls.ca_files:
        return "\n".join(lines)
    rows = [["variable", "path", "certs", "status", "LLM client"]]
    for source in tls.ca_files:
        flagged = sum(c.expired or c.not_yet_valid for c in source.certificates)
        status = (
            "missing"
            if not source.exists
            else "unreadable"
            if not source.readable
            else f"{flagged} invalid"
            if flagged
            else "ok"
        )
        rows.append(
            [
                source.variable,
                source.path,
                str(source.certificate_count),
                status,
                "used" if source.used_by_llm_client else "not used",
            ]
        )
    lines += [f"  {line}" for line in _table(rows)]
    return "\n".join(lines)


def _wrapped(prefix: str, text: str) -> list[str]:
    return textwrap.wrap(
        text, width=_WIDTH, initial_indent=prefix, subsequent_indent="      "
    )


def _warnings(report: WorkerInspection) -> str:
    if not report.warnings:
        return "Warnings\n  none"
    lines = ["Warnings"]
    for warning in report.warnings:
        lines += _wrapped(f"  [{warning.code}] ", warning.message)
    return "\n".join(lines)


def render_probes(probes: Sequence[ProbeResult]) -> str:
    lines = ["Probes"]
    for probe in probes:
        via = f"proxy {probe.proxy}" if probe.proxy else "direct"
        outcome = (
            f"ok, HTTP {probe.status}"
            if probe.ok
            else f"FAILED ({probe.error.kind})"
            if probe.error
            else f"FAILED, HTTP {probe.status}"
        )
        lines.append(f"  {probe.url} via {via}: {outcome}, {probe.elapsed_ms:.0f} ms")
        if probe.certificate is not None:
            cert = probe.certificate
            lines.append(f"    certificate {cert.subject!r} issued by {cert.issuer!r}")
        if probe.error is not None:
            lines += _wrapped("    ", probe.error.message)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
