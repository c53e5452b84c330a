#!/usr/bin/env bash
# The whole test run, from a fresh clone on a fresh machine:
#
#   1. a virtualenv in .venv with the project and its dev extras;
#   2. the real PostgreSQL server (scripts/postgres.sh) and the real Kafka
#      broker (scripts/kafka.sh), both on 127.0.0.1;
#   3. ruff (lint and format check) and mypy --strict;
#   4. pytest, every test, none skipped for a missing server.
#
# Everything it fetches is cached for a second run: pip's cache, the Kafka
# jars, the PostgreSQL cluster. Extra arguments go to pytest.
set -euo pipefail

cd "$(dirname "$0")/.."

# The project, into its own virtualenv.
if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'

# Real servers, started by the repository's own scripts.
scripts/postgres.sh
scripts/kafka.sh

# Style and types hold in CI, not in anyone's memory.
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy

# The tests.
exec .venv/bin/pytest "$@"
