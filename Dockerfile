# syntax=docker/dockerfile:1
# livekit-bus-bridge image: `docker build -t livekit-bus-bridge .`
# Lint: `make deploy-check` runs hadolint on this file. The Helm chart (helm/livekit-bus-bridge) runs it as
# UID/GID 10001 with a read-only root filesystem and an emptyDir at /tmp.

# --- builder: the package and its dependencies in a virtualenv -----------------------------------------
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Only what the wheel is built from (.dockerignore allows nothing else into the context). Every runtime
# dependency ships manylinux wheels, so no compiler is needed here either.
COPY pyproject.toml README.md ./
COPY bridge ./bridge
RUN pip install --no-cache-dir .

# --- runtime: Python, the virtualenv, and nothing else -----------------------------------------------
FROM python:3.11-slim

LABEL org.opencontainers.image.title="livekit-bus-bridge" \
      org.opencontainers.image.description="LiveKit rooms to Kafka/NATS as CloudEvents, commands back in" \
      org.opencontainers.image.licenses="Apache-2.0"

# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only in the chart (pip compiled the .pyc files
# at build time). PYTHONUNBUFFERED: log lines leave at once.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# A numeric, non-root user that matches runAsUser/runAsGroup in the chart, so runAsNonRoot can be checked.
RUN groupadd --system --gid 10001 bridge \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin bridge

COPY --from=builder /opt/venv /opt/venv

USER 10001:10001
WORKDIR /tmp
# http.listen: /livez, /readyz, /metrics and (opt-in) /webhook.
EXPOSE 8080

# Exec form, no shell in between: SIGTERM reaches the bridge, which leaves its rooms and flushes the buses.
ENTRYPOINT ["livekit-bridge"]
CMD ["run", "--config", "/etc/livekit-bridge/config.yaml"]
