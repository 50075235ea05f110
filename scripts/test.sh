#!/usr/bin/env bash
# Set up (if needed), lint, and run the test suite (pass -m "not slow" for the quick subset).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/browser.sh  # headless chromium + chromedriver for tests/test_web.py (apt, when missing)
bash scripts/java.sh     # Java for the caption metrics (tests/test_metrics.py): default-jre-headless (apt, when missing)
. .venv/bin/activate
ruff check .          # lint (pyproject.toml [tool.ruff]); a finding fails the test command
python -m pytest "$@"
