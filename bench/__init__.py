"""kai-rpc benchmarks: ``python -m bench`` (``make bench``); see bench/run.py."""
