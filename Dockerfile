# syntax=docker/dockerfile:1
# Orchestrion image: one image for `orchestrion serve`, `orchestrion mcp serve`
# and `orchestrion worker` (see compose.yaml). No secrets are baked in:
# configuration comes from the environment at run time.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---- build: install the project into a virtualenv -------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Compilers only in this stage, for any dependency without a wheel.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Optional extras of pyproject.toml, e.g. --build-arg ORCHESTRION_EXTRAS=local-llm
# (the embedded llama.cpp; compiles for several minutes) or gpu (sentence-transformers on PyTorch with CUDA,
# ~4 GB). The compose stack needs neither: it uses an external API or the `llm` service, and embeds with
# ONNX Runtime on CPU.
ARG ORCHESTRION_EXTRAS=
ARG UV_VERSION=0.13.9

WORKDIR /src
COPY . .
# The versions of uv.lock, installed without resolving again: pip would follow the model package's declared
# dependency on sentence-transformers (and so torch), which uv.lock leaves out (pyproject.toml says why).
RUN pip install --upgrade pip "uv==${UV_VERSION}" \
 && extras=$(for extra in $(echo "${ORCHESTRION_EXTRAS}" | tr ',' ' '); do printf -- '--extra %s ' "$extra"; done) \
 && uv export --locked --no-dev --no-emit-project --format requirements-txt $extras -o /tmp/requirements.txt \
 && pip install --no-deps --require-hashes -r /tmp/requirements.txt \
 && pip install --no-deps .

# ---- runtime --------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="orchestrion" \
      org.opencontainers.image.description="Multi-agent orchestration server (MCP + LangGraph + Celery)"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ORCHESTRION_DATA_DIR=/var/lib/orchestrion \
    ORCHESTRION_SERVER__HOST=0.0.0.0

RUN groupadd --system --gid 10001 orchestrion \
 && useradd --system --uid 10001 --gid orchestrion --create-home \
      --home-dir /home/orchestrion --shell /usr/sbin/nologin orchestrion \
 && install -d -o orchestrion -g orchestrion -m 0750 /var/lib/orchestrion

COPY --from=build /opt/venv /opt/venv

USER orchestrion
WORKDIR /home/orchestrion

# 8400 HTTP API (/healthz, /metrics, /mcp), 8401 standalone MCP, 9400 worker metrics
EXPOSE 8400 8401 9400

CMD ["orchestrion", "serve"]
