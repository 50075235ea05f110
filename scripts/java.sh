#!/usr/bin/env bash
# Install the Java runtime the caption metrics need (vlgraft.eval.metrics.captioning: pycocoevalcap's
# PTB tokenizer and METEOR are Java programs): Debian's default-jre-headless (OpenJDK 17 on bookworm).
# Idempotent: when `java` is on PATH it installs nothing. apt-get update runs only when the package
# lists do not know the package yet (a fresh container), so a rerun stays offline.
set -euo pipefail
if ! command -v java >/dev/null; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-cache show default-jre-headless >/dev/null 2>&1; then
    $SUDO apt-get update -qq
  fi
  # Slim Debian images drop /usr/share/man; the JRE's postinst links its man pages there and fails without it.
  $SUDO mkdir -p /usr/share/man/man1
  $SUDO apt-get install -y -qq --no-install-recommends default-jre-headless >/dev/null
fi
command -v java >/dev/null || { echo "scripts/java.sh: default-jre-headless is installed but java is not on PATH" >&2; exit 1; }
echo "java: $(command -v java) ($(java -version 2>&1 | head -n 1))"
