# fopproxy container image: a TLS-terminating sidecar in front of a plain HTTP API.
#
#   docker build -t fopproxy .
#   docker run --read-only -p 8443:8443 -p 9100:9100 \
#     -v "$PWD/etc:/etc/fopproxy:ro" fopproxy
#
# BASE_IMAGE must give python3 with the venv module; both stages use it, so the virtualenv built
# in the first stage runs unchanged in the second. Offline builds: put wheels for fopproxy and its
# pinned dependencies under wheels/ in the build context (pip wheel . -w wheels -c
# deploy/docker/constraints.txt) and pass --build-arg OFFLINE=1; pip then never reaches an index.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG OFFLINE=0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# python3 -m venv rather than the official image's own tooling, so a plain Debian base works too.
RUN python3 -m venv /opt/fopproxy
WORKDIR /src
# The constraints file always matches, so the wildcard may match nothing (no wheels/ folder).
COPY deploy/docker/constraints.txt wheels* /src/wheels/
COPY pyproject.toml README.md /src/
COPY fopproxy /src/fopproxy
# Every dependency is pinned by the constraints file (generated from pyproject.toml, see
# deploy/docker/lock.sh); all pinned packages ship binary wheels, so no compiler is needed. pip
# and setuptools leave the venv afterwards: the runtime image installs nothing.
RUN if [ "${OFFLINE}" = 1 ]; then \
      /opt/fopproxy/bin/pip install --no-index --find-links /src/wheels --only-binary=:all: \
        -c /src/wheels/constraints.txt fopproxy; \
    else \
      /opt/fopproxy/bin/pip install --only-binary=:all: -c /src/wheels/constraints.txt /src; \
    fi \
 && /opt/fopproxy/bin/python -m compileall -q /opt/fopproxy/lib \
 && /opt/fopproxy/bin/fopproxy --version \
 && /opt/fopproxy/bin/python -m pip uninstall -q -y pip setuptools

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="fopproxy" \
      org.opencontainers.image.description="TLS-terminating sidecar proxy for Google Card FOP / Standard Payments partners" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/example/fopproxy" \
      org.opencontainers.image.documentation="https://github.com/example/fopproxy#run-with-docker"
# A fixed numeric UID/GID: Kubernetes' runAsNonRoot can only verify a numeric user.
# Written to /etc/passwd directly so the base needs no useradd.
RUN echo "fopproxy:x:10001:10001:fopproxy:/nonexistent:/usr/sbin/nologin" >> /etc/passwd \
 && echo "fopproxy:x:10001:" >> /etc/group
COPY --from=build /opt/fopproxy /opt/fopproxy
# Nothing is written at run time (bytecode compiled at build, logs to stdout, certificates handed
# to OpenSSL through memfd), so the root filesystem can be mounted read-only.
ENV PATH=/opt/fopproxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /etc/fopproxy
# 8443: the TLS listener (listen); 9100: metrics, /healthz and /readyz (metrics.listen).
EXPOSE 8443 9100
# Python, not curl: the image carries no HTTP client binary.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/opt/fopproxy/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9100/healthz', timeout=4)"]
# SIGTERM drains open connections for up to timeouts.drain; give `docker stop -t` more than that.
STOPSIGNAL SIGTERM
# By absolute path: runc resolves a bare name through the image's PATH as uid 10001, and any
# difference there (a base without a PATH of its own, a folder uid 10001 cannot search) ends in
# `exec: "fopproxy": executable file not found in $PATH` before fopproxy runs at all.
ENTRYPOINT ["/opt/fopproxy/bin/fopproxy"]
CMD ["-c", "/etc/fopproxy/proxy.yaml"]
