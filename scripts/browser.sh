#!/usr/bin/env bash
# Install the headless browser the web-page test (tests/test_web.py) drives: Debian's chromium and
# its chromedriver. Idempotent: when both are on PATH it installs nothing. apt-get update runs only
# when the package lists do not know chromium yet (a fresh container), so a rerun stays offline.
set -euo pipefail
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-cache show chromium chromium-driver >/dev/null 2>&1; then
    $SUDO apt-get update -qq
  fi
  $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi
echo "chromium:     $(command -v chromium)"
echo "chromedriver: $(command -v chromedriver)"
