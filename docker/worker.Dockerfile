# syntax=docker/dockerfile:1
# The worker image: the studio with torch, transformers, peft and trl. CUDA torch by default (the PyPI wheels
# bring their own CUDA libraries; the host needs only the NVIDIA driver and container toolkit); a CPU image with
#   docker build -f docker/worker.Dockerfile --build-arg TORCH_VARIANT=cpu -t fine-tuning-studio-worker:cpu .
# One image serves both roles: `studio worker` (training) and `studio worker --analysis` (short tasks).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# cuda | cpu
ARG TORCH_VARIANT=cuda
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first and pinned, so the worker extra's `torch>=2.4` is already met and never pulls another build.
RUN case "${TORCH_VARIANT}" in \
      cuda) pip install "torch==${TORCH_VERSION}" ;; \
      cpu) pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_CPU_INDEX}" ;; \
      *) echo "TORCH_VARIANT must be cuda or cpu, not ${TORCH_VARIANT}" >&2; exit 1 ;; \
    esac
WORKDIR /app
COPY pyproject.toml ./
# bitsandbytes (qlora) only where there is CUDA to run it.
RUN if [ "${TORCH_VARIANT}" = cuda ]; then pip install -e ".[worker,qlora]"; else pip install -e ".[worker]"; fi
COPY backend ./backend
COPY workers ./workers
COPY migrations ./migrations
COPY frontend ./frontend
# The import check reads the settings, which create the data directory: keep it out of /app.
RUN pip install --no-deps -e . && STUDIO_DATA_DIR=/tmp/studio-build python -c "import workers.main"

FROM ${PYTHON_IMAGE} AS runtime
ARG TORCH_VARIANT=cuda
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH \
    STUDIO_DATA_DIR=/data HF_HOME=/home/studio/.cache/huggingface \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
LABEL org.opencontainers.image.description="Fine-Tuning Studio worker (torch ${TORCH_VARIANT})"
# torch.compile (a job's torch_compile setting) compiles at run time: Triton builds its CUDA launcher with a C
# compiler, and Inductor's CPU kernels need g++.
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 studio \
    && useradd --system --uid 10001 --gid studio --create-home --home-dir /home/studio studio \
    && mkdir -p /data && chown studio:studio /data
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app
COPY docker/worker_healthcheck.py /app/docker/worker_healthcheck.py
WORKDIR /app
USER studio
VOLUME ["/data"]
# The Celery worker is the container's main process (`studio worker` execs it; under an init such as compose's
# `init: true`, its only child): if it dies the container stops. The check adds what a
# live process can still lack: the broker and the database it takes work from and reports to.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "/app/docker/worker_healthcheck.py"]
CMD ["studio", "worker"]
