# kai-rpc: every target does its own set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
MITM_VENV := .venv-mitm
NODE_DIR := ide-contract
BIN := $(VENV)/bin

# mitmproxy pins exact versions of its own dependencies that clash with current
# httpx, so it lives in a virtual environment of its own. mitmproxy 12 needs
# Python 3.12+; where only 3.11 exists, 11.0.2 is the last release that runs.
MITM_PYTHON := $(shell for p in python3.13 python3.12 \
	$$(ls -d $$HOME/.pyenv/versions/3.1[2-9]*/bin/python3 2>/dev/null) \
	/usr/bin/python3.13 /usr/bin/python3.12; do \
	  if "$$p" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; \
	  then echo "$$p"; break; fi; done)
MITM_SPEC := $(if $(MITM_PYTHON),mitmproxy==12.3.1,mitmproxy==11.0.2)
MITM_PYTHON := $(or $(MITM_PYTHON),$(PYTHON))

.PHONY: install bytecode run test lint format contract bench sessions clean

install: $(VENV)/.installed $(MITM_VENV)/.installed $(NODE_DIR)/node_modules/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

$(MITM_VENV)/.installed:
	"$(MITM_PYTHON)" -m venv $(MITM_VENV)
	$(MITM_VENV)/bin/pip install --quiet '$(MITM_SPEC)'
	$(MITM_VENV)/bin/mitmdump --version >/dev/null
	touch $@

$(NODE_DIR)/node_modules/.installed: $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	npm ci --prefix $(NODE_DIR) --no-audit --no-fund
	touch $@

# pip compiles an installed package to bytecode; an editable install leaves it to
# the first import, and where PYTHONDONTWRITEBYTECODE is set (these machines set
# it) every process would compile kai_rpc from source again at start-up.
bytecode: $(VENV)/.installed
	$(BIN)/python -m compileall -q kai_rpc bench tests

run: install bytecode
	$(BIN)/kai-rpc demo

test: install bytecode
	KAI_RPC_MITMDUMP=$(abspath $(MITM_VENV))/bin/mitmdump $(BIN)/pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check kai_rpc tests bench examples
	$(BIN)/ruff format --check kai_rpc tests bench examples
	$(BIN)/mypy kai_rpc

format: $(VENV)/.installed
	$(BIN)/ruff format kai_rpc tests bench examples
	$(BIN)/ruff check --fix kai_rpc tests bench examples

# The IDE contract: schema, constants and TypeScript declarations, from the models.
contract: $(VENV)/.installed $(NODE_DIR)/node_modules/.installed
	$(BIN)/python -m kai_rpc.contract_export $(NODE_DIR)

# Re-record tests/sessions/*.jsonl: the vscode-jsonrpc client (ide-contract/client)
# runs each scenario against kai-rpc serve through the recording proxy, in an
# environment without this machine's proxy and CA variables.
sessions: install
	$(BIN)/python -m tests.support.replay

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(MITM_VENV) $(NODE_DIR)/node_modules
