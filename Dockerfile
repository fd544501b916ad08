# syntax=docker/dockerfile:1
# The Offload gateway image: the ASGI gateway alone. It never loads a model, so no vLLM, torch, compilers or
# weights here; engines run in their own images (engines/vllm/) and are reached through the config file.
#
#   docker build -t offload/gateway:0.1.0 .
#   docker run -p 8000:8000 -v ./offload.yaml:/etc/offload/offload.yaml:ro offload/gateway:0.1.0
#
# A patch-level tag so rebuilds do not drift to a new Python; pin the digest too in a registry you control.
# Where no registry is reachable, any Debian image with python3 and python3-venv will do
# (`make base-image` builds one: --build-arg PYTHON_IMAGE=localhost/debian-py:bookworm).
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The virtualenv has the same path in both stages, so its scripts' shebangs stay valid after the COPY below.
# python3, not python: a Debian base has no `python` command (the virtualenv has, for what follows).
RUN python3 -m venv /opt/offload
WORKDIR /src
# README.md is the package's long description (pyproject's `readme`), so the build needs it.
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY engines ./engines
# The gRPC door's code, generated from gateway/rpc/offload.proto (never committed) by grpcio-tools in a
# virtualenv of this stage only: the image gets the generated modules, not the generator.
RUN python3 -m venv /opt/codegen \
    && /opt/codegen/bin/pip install --only-binary=:all: grpcio-tools==1.85.1 \
    && mkdir -p gateway/rpc/generated \
    && touch gateway/rpc/generated/__init__.py \
    && /opt/codegen/bin/python -m grpc_tools.protoc -Igateway/rpc/generated=gateway/rpc \
       --python_out=. --grpc_python_out=. gateway/rpc/generated/offload.proto
# Only the gateway's own dependencies (no `engines` extra). --only-binary: every dependency ships wheels, so
# no compiler is ever needed, and a dependency that stops shipping one fails the build instead of compiling.
RUN /opt/offload/bin/pip install --only-binary=:all: . \
    && /opt/offload/bin/offload --help > /dev/null

FROM ${PYTHON_IMAGE}
# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 offload \
    && useradd --system --uid 10001 --gid offload --home-dir /home/offload --create-home \
       --shell /usr/sbin/nologin offload \
    && mkdir -p /etc/offload /run/offload \
    && chown offload:offload /run/offload
COPY --from=build /opt/offload /opt/offload

# The configuration file is mounted here (compose: a bind mount; Kubernetes: a ConfigMap). None is baked in:
# the built-in default starts local engines, which this image cannot, so a missing file stops the gateway
# at once with a message naming the path.
ENV PATH=/opt/offload/bin:$PATH \
    OFFLOAD_CONFIG=/etc/offload/offload.yaml \
    OFFLOAD_LOG__FORMAT=json \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

USER 10001:10001
WORKDIR /home/offload
# /run/offload: where OFFLOAD_SERVER__UDS=/run/offload/offload.sock puts the Unix socket (a volume mounted
# there starts owned by the gateway's user). The gRPC door, when OFFLOAD_SERVER__GRPC_PORT turns it on,
# listens on that port (e.g. 50051) too.
EXPOSE 8000

# /health answers while the process runs (readiness, which depends on engines, is /ready). curl is not in
# slim images; the standard library is.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('OFFLOAD_SERVER__PORT', '8000'), timeout=2)"]

CMD ["offload", "serve", "--host", "0.0.0.0"]
