"""The floor for the benchmarks: a pygls language server that only echoes.

It is started the way the bridge is (``python -m bench.bare_echo_server``), answers
``initialize`` and ``shutdown`` through pygls' standard LSP handling, and answers
``echo`` with its params, directly, in-process. Whatever the bridge costs above this
server is the price of the bridge itself: its policy, its worker, its forwarding.
"""

from __future__ import annotations

import logging
from typing import Any

from pygls.lsp.server import LanguageServer

server = LanguageServer("bare-echo", "1.0")


@server.feature("echo")
def echo(params: Any) -> Any:
    """Return the params unchanged."""
    return _plain(params)


def _plain(value: Any) -> Any:
    """pygls hands a custom method's object params over as namedtuples; undo that so
    the answer is the JSON that came in."""
    if hasattr(value, "_asdict"):
        return {key: _plain(item) for key, item in value._asdict().items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    server.start_io()


if __name__ == "__main__":
    main()
