# HatCat backend + workbench: one process (`python app.py`) serving the OpenAI-compatible API,
# /health, /metrics and the Gradio workbench on port 8765. docs/DEPLOYMENT.md explains every option.
#
# CPU (default): python:3.11-slim + CPU torch, runs the embedded Gemma 3 270M with no GPU.
#   docker build -t hatcat:cpu .
# GPU (NVIDIA host with the NVIDIA Container Toolkit): a CUDA base and a CUDA build of torch;
# the embedded model is not pre-converted (a GPU host serves e.g. google/gemma-3-4b-pt):
#   docker build -t hatcat:gpu \
#     --build-arg BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#     --build-arg PRECONVERT=0 .
ARG BASE=python:3.11-slim
FROM ${BASE}

# Where torch comes from (its version is the one pinned in requirements.txt).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# 1: convert the embedded GGUF at build time into $HATCAT_CACHE_DIR (first start in seconds, +1.1 GB image)
ARG PRECONVERT=1
# uid of the non-root user (not 1000: Ubuntu-based CUDA images already have a user with that uid)
ARG UID=10001

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    GRADIO_ANALYTICS_ENABLED=False \
    HATCAT_HOST=0.0.0.0 \
    HATCAT_PORT=8765 \
    HATCAT_CACHE_DIR=/cache/hatcat \
    HF_HOME=/cache/huggingface

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# CUDA bases (Ubuntu) ship no Python: take the distribution's python3 there. Everything goes
# into one virtual environment, so the same steps work on both bases (and PEP 668 is satisfied).
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv \
    && useradd --create-home --uid "${UID}" hatcat \
    && mkdir -p /cache/hatcat /cache/huggingface \
    && chown -R hatcat:hatcat /cache

WORKDIR /app
COPY requirements.txt .
# torch first from TORCH_INDEX (2.13.0+cpu / +cu128 satisfy `torch==2.13.0`), then the rest from PyPI.
# hadolint ignore=DL3013
RUN pip install --index-url "${TORCH_INDEX}" --extra-index-url https://pypi.org/simple "$(grep -E '^torch==' requirements.txt | cut -d' ' -f1)" \
    && pip install -r requirements.txt

# The library alone first, so the one-time conversion layer survives changes to views/, docs, ...
COPY --chown=hatcat:hatcat hatcat ./hatcat
USER ${UID}
RUN if [ "${PRECONVERT}" = "1" ]; then \
        python -c "from hatcat.config import Settings; from hatcat.model import load_model; \
s = Settings.from_env(); m = load_model('embedded:gemma-3-270m', 'cpu', 'float32', s.cache_dir, offline=True); \
print(f'converted {m.name} into {s.cache_dir} in {m.load_seconds:.0f} s')"; \
    fi

# Code, views, probe packs (probes/) and concept packs (data/) baked in; .dockerignore keeps caches and results out.
COPY --chown=hatcat:hatcat . .

# Declared after the conversion: a RUN after VOLUME would have its writes to /cache discarded.
# A new *named* volume starts as a copy of /cache here (the converted model included); a bind
# mount shadows it and the first start converts again (about a minute on 2 cores).
VOLUME ["/cache"]
EXPOSE 8765
# Asks the port the app itself resolved (HATCAT_PORT, GRADIO_SERVER_PORT or PORT); /health never needs the API key.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; from hatcat.config import Settings; urllib.request.urlopen(f'http://127.0.0.1:{Settings.from_env().port}/health', timeout=4)"]
CMD ["python", "app.py"]
