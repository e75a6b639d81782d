"""``python -m kai_rpc`` is the ``kai-rpc`` command."""

from kai_rpc.cli import main

main()
