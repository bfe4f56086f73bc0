# syntax=docker/dockerfile:1
# The image the Helm chart in helm/ runs: `watcher run --config ...`.
#
#   docker build -t image-tag-watcher:0.1.0 .
#
# Two stages: the first builds a virtualenv with the package and its
# dependencies (wheels only, nothing compiled); the second is the slim
# runtime with git and ssh (the watcher pushes over SSH), no pip, no
# compilers, running as an unprivileged user whose uid the chart's
# podSecurityContext uses (10001).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/watcher
COPY pyproject.toml README.md ./
COPY watcher ./watcher
# --only-binary: a dependency without a wheel fails the build here instead
# of pulling a compiler into the image.
RUN /opt/watcher/bin/pip install --only-binary=:all: --upgrade pip \
 && /opt/watcher/bin/pip install --only-binary=:all: . \
 && /opt/watcher/bin/pip uninstall -y pip \
 && /opt/watcher/bin/watcher --help >/dev/null

FROM ${PYTHON_IMAGE}
# git and ssh for the GitOps remote (ssh-keygen also signs with git.signing's ssh
# format; gpg and its agent, the openpgp one); ca-certificates for the registries.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git openssh-client gpg gpg-agent ca-certificates tini \
 && rm -rf /var/lib/apt/lists/*
# No installer in the runtime image either.
RUN python -m pip uninstall -y pip setuptools wheel
RUN groupadd --system --gid 10001 watcher \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --shell /usr/sbin/nologin watcher
COPY --from=build /opt/watcher /opt/watcher
ENV PATH=/opt/watcher/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
USER 10001:10001
EXPOSE 8080
# tini forwards SIGTERM so the watcher finishes a push in flight and exits 0.
ENTRYPOINT ["/usr/bin/tini", "--", "watcher"]
CMD ["run", "--config", "/etc/watcher/config/shards.yaml"]
