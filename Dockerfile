# shadow-proxy image. Needs BuildKit (the default builder since Docker 23) for
# RUN --mount.
#
#   docker build -t shadow-proxy .
#
# EXTRAS (a build argument) names the optional parts of the project built in;
# the default, otel, is what OTLP span export (tracing.otlp_endpoint) needs.
# The `semantic` comparator's extra pulls PyTorch and a model (~1 GB with the
# CPU build of torch, several GB with the default CUDA one), so it stays out of
# the default image; build an image with it from PyTorch's CPU index:
#
#   docker build -t shadow-proxy:semantic --build-arg EXTRAS=otel,semantic \
#     --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu .
#   docker run -p 8080:8080 -p 9090:9090 \
#     -e SHADOW_PROXY_BACKENDS__LEGACY__URL=http://legacy:8000 \
#     -e SHADOW_PROXY_BACKENDS__AGENT__URL=http://agent:8000 \
#     -e SHADOW_PROXY_ADMIN__HOST=0.0.0.0 shadow-proxy
#
# The default config (config/proxy.yaml) keeps the admin listener on loopback;
# the Helm chart (helm/shadow-proxy) mounts its own /etc/shadow-proxy/proxy.yaml
# over it and runs this image with the same arguments as CMD below.
#
# No Docker engine is available where the tests run, so tests/deploy/test_image.py
# lints this file with hadolint and replays its build on the host: COPY through
# .dockerignore, and the `python` and `mkdir` commands of each RUN as written,
# container paths mapped into a directory per stage (the user setup is checked
# by reading it). It then starts the result with this file's ENV, WORKDIR,
# ENTRYPOINT and CMD. Keep RUN to plain `&&` chains with no shell variables
# but the stage's ARGs; a command the replay does not know fails the test.
#
# Base image: pinned to an exact Python patch release on Debian bookworm, by tag
# only. The digest (@sha256:...) could not be looked up, because this file was
# written without access to a container registry; add it where one is reachable
# (`docker buildx imagetools inspect python:3.11.17-slim-bookworm`), on both
# FROM lines.

# --- Stage 1: wheels for the project and every dependency -------------------
FROM python:3.11.17-slim-bookworm AS build

# Extras of pyproject.toml built in: one or more, comma-separated (pip has no
# spelling for none). pip reads PIP_EXTRA_INDEX_URL, when given, from the
# environment (e.g. torch's CPU index); unset, it changes nothing.
ARG EXTRAS=otel
ARG PIP_EXTRA_INDEX_URL

WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps out everything else;
# README.md is the package's long description).
COPY pyproject.toml README.md ./
COPY proxy/ proxy/
COPY comparators/ comparators/
# /wheels ends up holding the project and exactly the dependencies it resolves
# to with EXTRAS: the runtime stage installs them all, with no index.
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels ".[${EXTRAS}]"

# --- Stage 2: the runtime, with no build tools and no source tree -----------
FROM python:3.11.17-slim-bookworm

LABEL org.opencontainers.image.title="shadow-proxy" \
      org.opencontainers.image.description="Mirror traffic from a legacy service to an AI agent, compare, shift." \
      org.opencontainers.image.licenses="Apache-2.0"

# No .pyc files written at run time (the root filesystem is read-only in the
# chart); logs leave at once. The venv's bin comes first on PATH.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/shadow-proxy/bin:$PATH

# uid/gid 10001: the Helm chart's podSecurityContext (runAsUser/runAsGroup).
# /var/lib/shadow-proxy (rollout state) and /tmp are the only writable paths.
RUN groupadd --system --gid 10001 shadow-proxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/shadow-proxy --shell /usr/sbin/nologin shadow-proxy \
    && mkdir -p /var/lib/shadow-proxy \
    && chown 10001:10001 /var/lib/shadow-proxy

# A venv without pip or setuptools, filled by the base image's pip from the
# build stage's wheels only (--no-index): no compiler, no source and no wheel
# files end up in this image. Every wheel there is installed: the project and
# its dependencies with the EXTRAS chosen above, nothing else. Bytecode is
# compiled here, at install time, since it cannot be written at run time.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv --without-pip /opt/shadow-proxy \
    && python -m pip --python /opt/shadow-proxy/bin/python install --no-cache-dir --no-index --find-links /wheels /wheels/*.whl

# The default config: every option with its default. The chart mounts its own.
COPY config/proxy.yaml /etc/shadow-proxy/proxy.yaml

WORKDIR /var/lib/shadow-proxy
USER 10001:10001

# 8080: client traffic (listen.port); 9090: /metrics, /healthz, /readyz and the
# admin API (admin.port; loopback-only in the default config, the chart opens it).
EXPOSE 8080 9090

# Exec form: shadow-proxy is PID 1 and receives SIGTERM itself, which drains
# (readiness 503, in-flight requests finish, shadow work gets its grace).
STOPSIGNAL SIGTERM
ENTRYPOINT ["shadow-proxy"]
CMD ["run", "--config", "/etc/shadow-proxy/proxy.yaml"]
