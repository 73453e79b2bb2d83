#!/usr/bin/env bash
# One-step set-up and run: creates .venv (if missing), installs spot with its
# test extras from PyPI at the versions CI tested (constraints.txt), then runs
# `spot demo ...` or the test suite.
#   bash tools/run.sh demo [--quick] [--out DIR] [--seed N]
#   bash tools/run.sh test [--slow] [pytest args]   (--slow: also the journeys, as CI;
#   SPOT_TEST_WORKERS=N: N worker processes, default one process)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
STAMP=.venv/.spot-installed
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ constraints.txt -nt "$STAMP" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
  touch "$STAMP"
fi
cmd="${1:-test}"; shift || true
case "$cmd" in
  demo) exec .venv/bin/spot demo "$@" ;;
  # Test files are dealt to SPOT_TEST_WORKERS processes (default 0: one process; 2 is faster
  # but tests/tasks still depend on the order tests run in),
  # each file whole to one worker, so module fixtures are built once.
  test) exec .venv/bin/python -m pytest tests -n "${SPOT_TEST_WORKERS:-0}" --dist loadfile "$@" ;;
  *) echo "usage: bash tools/run.sh demo|test [args]" >&2; exit 2 ;;
esac
