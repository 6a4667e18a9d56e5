# One image for Service A, Service B and the mqctl CLI; `mqctl` is the entrypoint.
#
#   docker build -t mqctl .
#   docker run --rm -p 8002:8002 -p 8003:8003 mqctl            # both services (mqctl up)
#   docker run --rm -p 8002:8002 -e MQCTL_BROKER_URL=redis://HOST:6379/0 mqctl serve-a --host 0.0.0.0
#
# docker-compose.yml runs it with Redis; tests/integration/test_dockerfile.py checks this file.

# The base is pinned to a full Python version: bump it on purpose, in both stages.
FROM python:3.11.13-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# A venv without pip of its own: the base image's pip fills it, so the final image gets
# only mqctl and its dependencies.
RUN python -m venv --without-pip /opt/venv
WORKDIR /src

# The dependencies alone, at the exact versions and hashes of requirements/main.txt (the lock
# scripts/lock.sh refreshes, the same versions CI tests): this layer is rebuilt only when the
# lock changes, not on every code change. (Every dependency ships a wheel: no compiler.)
COPY requirements/main.txt ./requirements.txt
RUN pip --python /opt/venv/bin/python install --require-hashes --requirement requirements.txt

# Then the code, built with the locked setuptools (no build isolation, so nothing unlocked is
# fetched), which then leaves the venv.
COPY pyproject.toml README.md ./
COPY mqctl ./mqctl
RUN pip --python /opt/venv/bin/python install --no-deps --no-build-isolation . \
    && pip --python /opt/venv/bin/python uninstall --yes setuptools


FROM python:3.11.13-slim-bookworm

# A fixed, unprivileged uid/gid (numeric, so runAsNonRoot-style checks can verify it).
RUN groupadd --system --gid 10001 mqctl \
    && useradd --system --uid 10001 --gid mqctl --create-home --home-dir /home/mqctl \
        --shell /usr/sbin/nologin mqctl

COPY --from=build /opt/venv /opt/venv

# HEALTHCHECK_URL: the /health the check asks; set it to :8003 for a container running serve-b.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HEALTHCHECK_URL=http://127.0.0.1:8002/health

USER 10001:10001
WORKDIR /home/mqctl
EXPOSE 8002 8003

# No curl in a slim image: Python's urllib asks, and an error status or no answer exits 1.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=3)"]

ENTRYPOINT ["mqctl"]
CMD ["up", "--host", "0.0.0.0"]
