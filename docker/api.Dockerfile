# syntax=docker/dockerfile:1
# The API image: the web app, its migrations and pages, without the ML stack (backend/ never imports torch,
# so the image is a few hundred MB rather than several GB). Build from the repository root:
#   docker build -f docker/api.Dockerfile -t fine-tuning-studio-api .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
# Dependencies first, from pyproject.toml alone, so a source change does not reinstall them: with no package
# directories yet, the editable install brings only the dependencies.
COPY pyproject.toml ./
RUN pip install -e .
COPY backend ./backend
COPY workers ./workers
COPY migrations ./migrations
COPY frontend ./frontend
# Editable, at the same /app path in the runtime stage: the app finds frontend/ and migrations/ beside backend/.
RUN pip install --no-deps -e . && STUDIO_DATA_DIR=/tmp/studio-build python -c "import backend.main"

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH \
    STUDIO_DATA_DIR=/data STUDIO_HOST=0.0.0.0 STUDIO_PORT=8000
RUN groupadd --system --gid 10001 studio \
    && useradd --system --uid 10001 --gid studio --create-home --home-dir /home/studio studio \
    && mkdir -p /data && chown studio:studio /data
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app
WORKDIR /app
USER studio
# A named volume mounted here starts with this directory's owner (studio), so the non-root user can write to it.
VOLUME ["/data"]
EXPOSE 8000
# /api/health answers 200 when the database answers, 503 naming it when it does not.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('STUDIO_PORT', '8000')}/api/health\", timeout=4)"]
# `studio api` migrates the database to head first, then serves.
CMD ["studio", "api"]
