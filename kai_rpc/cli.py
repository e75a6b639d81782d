"""The ``kai-rpc`` command: serve, doctor, record, replay, demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import sys
from collections.abc import Iterator, Sequence

import kai_rpc
from kai_rpc import redact

logger = logging.getLogger(__name__)

_NEVER = 2**30  # a collection threshold that is never reached

_QUIET_LIBRARIES = ("pygls", "asyncio", "httpx", "httpx2", "httpcore", "openai")


def configure_logging(level: str) -> None:
    """Logs to stderr only, every line scrubbed of secrets.

    pygls logs whole message bodies at INFO and DEBUG, so it is held at WARNING
    whatever the level asked for.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s kai-rpc %(levelname)s %(name)s: %(message)s")
    )
    handler.addFilter(redact.ScrubbingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)


def _serve(args: argparse.Namespace) -> int:
    base_env = _without_pydantic_plugins()
    with _long_lived_imports():
        from kai_rpc.exceptions import KaiRpcError
        from kai_rpc.server import ServeOptions, serve
        from kai_rpc.supervisor import Timings

    timings = Timings(ready_timeout=args.ready_timeout, retire_grace=args.retire_grace)
    options = ServeOptions(
        policy_file=args.policy, record=args.record, timings=timings, base_env=base_env
    )
    try:
        return asyncio.run(serve(options))
    except KaiRpcError as exc:
        logger.error("%s", exc.message)
        return 2


def _without_pydantic_plugins() -> dict[str, str]:
    """Turn pydantic plugins off in this process; return the environment as it was.

    Plugins are installed packages' code that would see every message the bridge
    validates, env values and secrets included, and finding them reads the
    metadata of every installed package. Workers get the environment as it was.
    """
    base_env = dict(os.environ)
    os.environ["PYDANTIC_DISABLE_PLUGINS"] = "__all__"
    return base_env


@contextlib.contextmanager
def _long_lived_imports() -> Iterator[None]:
    """Collect only young objects while pygls, lsprotocol and pydantic import.

    They make tens of thousands of objects that live as long as the process, and
    garbage that dies young (attrs replaces each class it decorates). Collecting
    the youngest generation frees the garbage; older collections would only walk
    the survivors again and again. Afterwards the survivors are frozen out of
    collection for good and the usual thresholds return.
    """
    thresholds = gc.get_threshold()
    gc.set_threshold(thresholds[0], _NEVER, _NEVER)
    try:
        yield
    finally:
        gc.freeze()
        gc.set_threshold(*thresholds)


def _doctor(args: argparse.Namespace) -> int:
    from kai_rpc import doctor

    return doctor.main(args.rest)


def _record(args: argparse.Namespace) -> int:
    from kai_rpc import recording

    return recording.record_main(args.rest)


def _replay(args: argparse.Namespace) -> int:
    from kai_rpc import recording

    return recording.replay_main(args.rest)


def _demo(args: argparse.Namespace) -> int:
    from kai_rpc import demo

    return demo.main(args.rest)


# Commands that parse their own arguments.
PASSTHROUGH_COMMANDS = {
    "doctor": (_doctor, "report routes and TLS for this shell's environment"),
    "record": (_record, "record a client-server conversation on stdio"),
    "replay": (_replay, "replay a recorded conversation against a server"),
    "demo": (_demo, "show the bridge at work with a local proxy and LLM"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kai-rpc",
        description="Settings bridge between an IDE and the Kai analysis worker.",
    )
    parser.add_argument("--version", action="version", version=kai_rpc.__version__)
    parser.add_argument(
        "--log-level", default="INFO", help="stderr log level (default INFO)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="JSON-RPC server on stdin/stdout")
    serve.add_argument("--policy", metavar="FILE", help="policy file (TOML)")
    serve.add_argument(
        "--record", metavar="FILE", help="write every message, redacted, to FILE"
    )
    serve.add_argument(
        "--ready-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long a new worker may take to become ready (default 30)",
    )
    serve.add_argument(
        "--retire-grace",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long a replaced worker may finish its requests (default 10)",
    )
    serve.set_defaults(run=_serve)

    for name, (run, text) in PASSTHROUGH_COMMANDS.items():
        sub = commands.add_parser(name, help=text, add_help=False)
        sub.add_argument("rest", nargs=argparse.REMAINDER)
        sub.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    configure_logging(args.log_level)
    sys.exit(args.run(args))


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse the command line; the words after a passthrough command go to it as is.

    argparse will not hand a word starting with "-" to a REMAINDER argument, so
    ``kai-rpc record --out F -- cmd`` is split here, before argparse sees it.
    """
    parser = build_parser()
    for index, word in enumerate(argv):
        after_option_value = index > 0 and argv[index - 1] == "--log-level"
        if word in PASSTHROUGH_COMMANDS and not after_option_value:
            args = parser.parse_args(argv[: index + 1])
            args.rest = argv[index + 1 :]
            return args
    return parser.parse_args(argv)
