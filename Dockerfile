# syntax=docker/dockerfile:1
# forestreet-sidecar image: non-root (10001:10001, the Helm chart's runAsUser/runAsGroup/fsGroup),
# runs with a read-only root filesystem, listens on 9877 (/metrics, /healthz, /readyz).
#   docker build -t forestreet-sidecar:0.1.0 .
# Bump the base by its patch tag (a digest pin, python:3.12.12-slim-bookworm@sha256:..., is
# better still once the registry is reachable from CI).
ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm

# ---- builder: build the wheel and install it with its dependencies into a venv -------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Only what the build needs; .dockerignore keeps the rest of the tree out of the context.
COPY pyproject.toml README.md ./
COPY sidecar/ sidecar/

# The venv gets no pip of its own: the builder's pip installs into it (--python), so the final
# image carries neither pip nor setuptools. Bytecode is compiled here with unchecked-hash
# pycs, valid whatever the file times after COPY, so nothing needs writing at run time.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && python -m venv --without-pip /opt/forestreet-sidecar \
 && pip --python /opt/forestreet-sidecar/bin/python install --no-cache-dir --no-compile /wheels/*.whl \
 && python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/forestreet-sidecar/lib \
 && /opt/forestreet-sidecar/bin/forestreet-sidecar --version

# ---- final: the venv on the same slim base, no build tools -----------------------------------
FROM ${PYTHON_IMAGE}

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="forestreet-sidecar" \
      org.opencontainers.image.description="Keeps a fresh Forestreet session token on disk for an application that must never hold the API key." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/forestreet/forestreet-sidecar" \
      org.opencontainers.image.documentation="https://github.com/forestreet/forestreet-sidecar#run-with-docker" \
      org.opencontainers.image.base.name="docker.io/library/python:3.12.12-slim-bookworm"

ENV PATH=/opt/forestreet-sidecar/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Numeric IDs, equal to the chart's defaults, so runAsNonRoot can verify them without
# /etc/passwd. /var/run/forestreet (/run/forestreet) is the default token directory; on a
# read-only root it must be a tmpfs or volume anyway, and this ownership is what a fresh
# volume inherits. The stdlib gets its bytecode here too.
RUN groupadd --system --gid 10001 forestreet \
 && useradd --system --no-log-init --uid 10001 --gid 10001 --home-dir /nonexistent \
      --no-create-home --shell /usr/sbin/nologin forestreet \
 && install -d -o 10001 -g 10001 -m 0750 /var/run/forestreet \
 && python -m compileall -q -j 0 "$(python -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')"

COPY --from=builder /opt/forestreet-sidecar /opt/forestreet-sidecar

USER 10001:10001
EXPOSE 9877
ENTRYPOINT ["forestreet-sidecar"]
CMD ["run"]
