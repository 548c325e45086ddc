# The panelboard image: broker, worker pools and the mock provider are the same install,
# started with different commands (see compose.yaml).
FROM python:3.11.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # The embedded-stack home; unused when a NATS URL is given, but kept writable.
    PANELBOARD_HOME=/tmp/panelboard

WORKDIR /app

# Dependencies from the hashed lock first (a layer that changes only with the lock), then the
# package without resolving anything: every image built from one commit has the same files.
COPY requirements/lock.txt ./requirements/lock.txt
RUN pip install --require-hashes -r requirements/lock.txt

# Only what the package needs: not the repo's .venv, caches or test data.
COPY pyproject.toml README.md ./
COPY panelboard ./panelboard
COPY broker ./broker
COPY workers ./workers
COPY schemas ./schemas
COPY clients ./clients
COPY transport ./transport
COPY loadgen ./loadgen
RUN pip install --no-deps . && rm -rf build

# Configs stay at /app/examples for `--config /app/examples/cluster.yaml`.
COPY examples ./examples

RUN useradd --create-home --uid 10001 panelboard
USER panelboard

# SIGTERM drains (runtime.serve): run as PID 1 via exec form, or with `init: true`.
CMD ["panelboard", "--help"]
