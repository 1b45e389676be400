# HatCat backend + workbench. CPU by default (runs the embedded Gemma 3 270M with no GPU).
# GPU hosts: docker build --build-arg BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    HATCAT_HOST=0.0.0.0 \
    HATCAT_PORT=8765 \
    HATCAT_CACHE_DIR=/cache/hatcat \
    HF_HOME=/cache/huggingface

RUN useradd --create-home --uid 1000 hatcat && mkdir -p /cache && chown hatcat /cache
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir --extra-index-url ${TORCH_INDEX} -r requirements.txt
COPY --chown=hatcat . .

USER hatcat
VOLUME ["/cache"]
EXPOSE 8765
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8765/health').status == 200 else 1)"
CMD ["python", "app.py"]
