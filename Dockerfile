# The recovery-ledger image: the `ledger` command and the example jobs, run
# by compose.yaml as the projector and the Kafka consumer.
#
# Only what the package and the example jobs need is copied, not the whole
# work tree: a developer's .venv, .ledger or out/ must never end up in an
# image, and no .dockerignore has to be kept in step for that.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

COPY pyproject.toml README.md ./
COPY ledger ./ledger
COPY projections ./projections
COPY consumers ./consumers
COPY examples ./examples

# Installed as root into the system environment, then run as a user that
# cannot change the code it runs. Its one writable place is the outputs
# directory, which compose.yaml mounts as its own volume; a new volume takes
# the ownership set here.
RUN pip install . \
    && useradd --create-home --uid 10001 --user-group ledger \
    && mkdir -p /var/lib/ledger/out \
    && chown ledger:ledger /var/lib/ledger/out

USER ledger

CMD ["ledger", "--help"]
