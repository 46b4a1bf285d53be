# syntax=docker/dockerfile:1
# One image for every in-cluster devstack command: `devstack sidecar` (the dev pod's
# sync sidecar), `devstack agent` (the routing agent) and `devstack provision` (the
# Helm hook). The entrypoint is the `devstack` console script; the chart passes the
# subcommand as the first argument.
#
# The APP image needs nothing: the sidecar writes the shared workspace itself (no
# `tar`, no shell, no `kubectl exec` into the app), and the workspace is seeded with
# this image's static busybox (/opt/devstack/tools/busybox, from Debian's
# busybox-static): a first init container copies it into an emptyDir, and the seed
# init container runs it from there in the app image, distroless or scratch alike.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/devstack
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core/ core/
COPY proto/ proto/
COPY sidecar/ sidecar/
COPY cli/ cli/
COPY agent/ agent/
COPY provision/ provision/
RUN /opt/devstack/bin/pip install --no-deps --upgrade pip setuptools \
 && /opt/devstack/bin/pip install . \
 && /opt/devstack/bin/devstack --help >/dev/null

FROM python:${PYTHON_VERSION}-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends busybox-static \
 && install -D -m 0755 /bin/busybox /opt/devstack/tools/busybox \
 && apt-get purge -y busybox-static \
 && rm -rf /var/lib/apt/lists/*
LABEL org.opencontainers.image.title="devstack" \
      org.opencontainers.image.description="devstack sidecar, agent and provision" \
      org.opencontainers.image.licenses="Apache-2.0"
# Merged into /opt/devstack: tools/ stays.
COPY --from=build /opt/devstack /opt/devstack
ENV PATH=/opt/devstack/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# A numeric non-root user, so that `runAsNonRoot: true` can be verified by the kubelet.
USER 10001:10001
WORKDIR /tmp
EXPOSE 7070 8080
ENTRYPOINT ["/opt/devstack/bin/devstack"]
CMD ["--help"]
